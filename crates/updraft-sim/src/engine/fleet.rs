//! One simulated fleet: its instances (booting or ready, each with its agents), the
//! bookkeeping of agent- and instance-time and cost, and for a pool the order in which
//! idle agents take jobs and idle instances are stopped.

use crate::backend::{BackendModel, DurationDistribution};
use std::cmp::Reverse;
use std::collections::BTreeSet;
use updraft_model::scaling::ScalingPolicy;

/// Which ready instance takes the next job: partly busy ones first (packing), then the
/// most recently active, so the longest-idle instances stay idle and are the ones stopped.
pub(super) type DispatchKey = (bool, Reverse<i64>, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InstanceState {
    Booting,
    Ready,
    Stopped,
}

#[derive(Debug, Clone)]
pub(super) struct Instance {
    /// Unique per launch, so events of a stopped launch are recognised as stale.
    pub serial: u64,
    pub state: InstanceState,
    pub launched_at: i64,
    pub busy: u32,
    pub idle_since: i64,
    pub dispatch_key: Option<DispatchKey>,
    pub price_per_ms: f64,
    /// The job a one-shot launch was started for.
    pub job: Option<u32>,
}

/// A pool's own state beside its instances.
pub(super) struct Pool {
    pub policy: ScalingPolicy,
    pub interval_ms: i64,
    pub agents_per_instance: u32,
    pub desired: u32,
    /// Launch requests waiting in the limiter, by request number (newest last).
    pub requested: BTreeSet<u64>,
    pub dispatchable: BTreeSet<DispatchKey>,
    pub wholly_idle: BTreeSet<(i64, u32)>,
    /// A moving average of the pool's own boot times, ms.
    pub boot_estimate_ms: f64,
    pub running_jobs: u32,
    /// How long a waiting job takes to reach an idle agent (its next ping).
    pub pickup: Option<DurationDistribution>,
}

pub(super) enum FleetKind {
    Pool(Box<Pool>),
    OneShot,
}

/// Time and money a fleet spent, in ms and dollars.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    pub busy_agent_ms: u128,
    pub idle_agent_ms: u128,
    pub booting_instance_ms: u128,
    pub instance_ms: u128,
    pub billed_instance_ms: u128,
    pub cost: f64,
    pub launches: u64,
    pub jobs: u64,
    pub peak_agents: u32,
    pub peak_instances: u32,
}

pub(super) struct Fleet {
    pub name: String,
    pub queue: usize,
    pub model: BackendModel,
    pub kind: FleetKind,
    pub rate_limited: bool,
    /// One-shot jobs waiting in the limiter for a launch.
    pub queued_jobs: u32,
    pub instances: Vec<Instance>,
    free: Vec<u32>,
    pub busy_agents: u32,
    pub ready_agents: u32,
    pub booting: u32,
    pub ready: u32,
    accounted_to: i64,
    pub ledger: Ledger,
}

impl Fleet {
    pub fn new(
        name: String,
        queue: usize,
        model: BackendModel,
        kind: FleetKind,
        rate_limited: bool,
    ) -> Self {
        Fleet {
            name,
            queue,
            model,
            kind,
            rate_limited,
            queued_jobs: 0,
            instances: Vec::new(),
            free: Vec::new(),
            busy_agents: 0,
            ready_agents: 0,
            booting: 0,
            ready: 0,
            accounted_to: 0,
            ledger: Ledger::default(),
        }
    }

    pub fn pool(&mut self) -> Option<&mut Pool> {
        match &mut self.kind {
            FleetKind::Pool(pool) => Some(pool),
            FleetKind::OneShot => None,
        }
    }

    pub fn agents_per_instance(&self) -> u32 {
        match &self.kind {
            FleetKind::Pool(pool) => pool.agents_per_instance,
            FleetKind::OneShot => 1,
        }
    }

    /// Count agent- and instance-time up to `now`; call before any count changes.
    pub fn account(&mut self, now: i64) {
        let dt = (now - self.accounted_to).max(0) as u128;
        self.ledger.busy_agent_ms += self.busy_agents as u128 * dt;
        self.ledger.idle_agent_ms += (self.ready_agents - self.busy_agents) as u128 * dt;
        self.ledger.booting_instance_ms += self.booting as u128 * dt;
        self.accounted_to = now;
    }

    pub fn launch(&mut self, now: i64, serial: u64, price_per_ms: f64, job: Option<u32>) -> u32 {
        self.account(now);
        let instance = Instance {
            serial,
            state: InstanceState::Booting,
            launched_at: now,
            busy: 0,
            idle_since: now,
            dispatch_key: None,
            price_per_ms,
            job,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.instances[slot as usize] = instance;
                slot
            }
            None => {
                self.instances.push(instance);
                (self.instances.len() - 1) as u32
            }
        };
        self.booting += 1;
        self.ledger.launches += 1;
        self.ledger.peak_instances = self.ledger.peak_instances.max(self.booting + self.ready);
        slot
    }

    /// A booted instance's agents connect; in a pool they are idle and take jobs.
    pub fn boot_done(&mut self, now: i64, slot: u32) {
        self.account(now);
        let api = self.agents_per_instance();
        self.booting -= 1;
        self.ready += 1;
        self.ready_agents += api;
        self.ledger.peak_agents = self.ledger.peak_agents.max(self.ready_agents);
        let launched_at = self.instances[slot as usize].launched_at;
        self.instances[slot as usize].state = InstanceState::Ready;
        self.instances[slot as usize].idle_since = now;
        if let FleetKind::Pool(pool) = &mut self.kind {
            let boot = (now - launched_at) as f64;
            pool.boot_estimate_ms = 0.8 * pool.boot_estimate_ms + 0.2 * boot;
            let key = (true, Reverse(now), slot);
            pool.dispatchable.insert(key);
            pool.wholly_idle.insert((now, slot));
            self.instances[slot as usize].dispatch_key = Some(key);
        }
    }

    /// One more agent of the instance is busy.
    pub fn start_job(&mut self, now: i64, slot: u32) {
        self.account(now);
        self.busy_agents += 1;
        self.ledger.jobs += 1;
        let api = self.agents_per_instance();
        let instance = &mut self.instances[slot as usize];
        instance.busy += 1;
        let (busy, idle_since, old_key) = (
            instance.busy,
            instance.idle_since,
            instance.dispatch_key.take(),
        );
        if let FleetKind::Pool(pool) = &mut self.kind {
            pool.running_jobs += 1;
            if busy == 1 {
                pool.wholly_idle.remove(&(idle_since, slot));
            }
            if let Some(key) = old_key {
                pool.dispatchable.remove(&key);
            }
            if busy < api {
                let key = (false, Reverse(now), slot);
                pool.dispatchable.insert(key);
                self.instances[slot as usize].dispatch_key = Some(key);
            }
        }
    }

    /// An agent of the instance finished its job.
    pub fn finish_job(&mut self, now: i64, slot: u32) {
        self.account(now);
        self.busy_agents -= 1;
        let instance = &mut self.instances[slot as usize];
        instance.busy -= 1;
        let (busy, old_key) = (instance.busy, instance.dispatch_key.take());
        if busy == 0 {
            instance.idle_since = now;
        }
        if let FleetKind::Pool(pool) = &mut self.kind {
            pool.running_jobs -= 1;
            if let Some(key) = old_key {
                pool.dispatchable.remove(&key);
            }
            let key = (busy == 0, Reverse(now), slot);
            pool.dispatchable.insert(key);
            if busy == 0 {
                pool.wholly_idle.insert((now, slot));
            }
            self.instances[slot as usize].dispatch_key = Some(key);
        }
    }

    /// Stop an instance (never one with a busy agent) and bill it.
    pub fn stop(&mut self, now: i64, slot: u32) {
        self.account(now);
        let api = self.agents_per_instance();
        let instance = &mut self.instances[slot as usize];
        assert_eq!(instance.busy, 0, "a busy instance is never stopped");
        let life = (now - instance.launched_at) as u128;
        let billed = life.max(self.model.minimum_billing.as_millis());
        self.ledger.instance_ms += life;
        self.ledger.billed_instance_ms += billed;
        self.ledger.cost += billed as f64 * instance.price_per_ms;
        let (state, idle_since, key) = (
            instance.state,
            instance.idle_since,
            instance.dispatch_key.take(),
        );
        instance.state = InstanceState::Stopped;
        match state {
            InstanceState::Booting => self.booting -= 1,
            InstanceState::Ready => {
                self.ready -= 1;
                self.ready_agents -= api;
                if let FleetKind::Pool(pool) = &mut self.kind {
                    pool.wholly_idle.remove(&(idle_since, slot));
                    if let Some(key) = key {
                        pool.dispatchable.remove(&key);
                    }
                }
            }
            InstanceState::Stopped => unreachable!("stopped twice"),
        }
        self.free.push(slot);
    }

    /// Live instances, newest first among the booting ones: the order in which a pool
    /// gives up instances it no longer wants after its idle ones.
    pub fn booting_newest_first(&self) -> Vec<u32> {
        let mut booting: Vec<(i64, u32)> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.state == InstanceState::Booting)
            .map(|(slot, i)| (i.launched_at, slot as u32))
            .collect();
        booting.sort_unstable_by_key(|&(t, slot)| (Reverse(t), slot));
        booting.into_iter().map(|(_, slot)| slot).collect()
    }
}
