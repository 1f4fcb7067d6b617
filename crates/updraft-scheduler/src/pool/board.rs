//! What the pools last did, for `/status` and `SchedulerHandle::pools`: each pool's
//! decision with its reason, its members and agents, its measured boot times, its recent
//! actions and any error; and the cost book of every fleet.

use super::cost::{CostBook, CostLine, JobCost};
use super::observe::MemberView;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use updraft_backends::MemberPhase;

/// Recent actions kept per pool.
const ACTIONS_KEPT: usize = 20;

/// One pool member as the status page and `SchedulerHandle::pools` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSnapshot {
    pub name: String,
    /// `booting`, `ready`, `draining` or `exited`.
    pub state: &'static str,
    pub agents: u32,
    pub connected: u32,
    pub busy: u32,
    pub capacity: &'static str,
    pub notice: Option<String>,
}

/// A pool at its last step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSnapshot {
    pub fleet: String,
    pub policy: &'static str,
    /// Live members the policy asked for, and why.
    pub desired: u32,
    pub reason: String,
    pub decided_at_ms: i64,
    pub members: Vec<MemberSnapshot>,
    /// The boot time the policy assumes now (a moving average of measured boots).
    pub boot_estimate: Duration,
    /// Measured boots, from launch until every agent connected, oldest first.
    pub boots: Vec<Duration>,
    /// The most recent actions, newest last ("added 2", "drained warm-1a2b3c4d: idle …").
    pub actions: Vec<String>,
    /// The last error talking to the backend or Buildkite, if the last step had one.
    pub error: Option<String>,
}

pub(crate) fn member_state(view: &MemberView) -> &'static str {
    match view.phase {
        MemberPhase::Exited { .. } => "exited",
        MemberPhase::Draining => "draining",
        MemberPhase::Booting | MemberPhase::Running if view.is_ready() => "ready",
        MemberPhase::Booting | MemberPhase::Running => "booting",
    }
}

impl MemberSnapshot {
    pub(crate) fn of(view: &MemberView) -> MemberSnapshot {
        MemberSnapshot {
            name: view.name.to_string(),
            state: member_state(view),
            agents: view.agents,
            connected: view.registered,
            busy: view.busy,
            capacity: view.capacity,
            notice: view.notice.clone(),
        }
    }
}

/// Every pool's last step and the cost book, shared by the pool tasks and the HTTP handlers.
#[derive(Debug, Default)]
pub(crate) struct Board {
    pools: Mutex<BTreeMap<String, PoolSnapshot>>,
    costs: Mutex<CostBook>,
}

impl Board {
    pub fn costs(&self) -> MutexGuard<'_, CostBook> {
        self.costs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pools(&self) -> MutexGuard<'_, BTreeMap<String, PoolSnapshot>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace a pool's snapshot, keeping its recent actions and adding `actions`.
    pub fn publish(&self, mut snapshot: PoolSnapshot, actions: Vec<String>) {
        let mut pools = self.pools();
        let mut kept: VecDeque<String> = pools
            .remove(&snapshot.fleet)
            .map(|old| old.actions.into())
            .unwrap_or_default();
        kept.extend(actions);
        while kept.len() > ACTIONS_KEPT {
            kept.pop_front();
        }
        snapshot.actions = kept.into();
        pools.insert(snapshot.fleet.clone(), snapshot);
    }

    /// Note an error on a pool's snapshot (the step could not finish).
    pub fn error(&self, fleet: &str, error: String) {
        self.pools()
            .entry(fleet.to_string())
            .or_insert_with(|| PoolSnapshot {
                fleet: fleet.to_string(),
                ..PoolSnapshot::default()
            })
            .error = Some(error);
    }

    pub fn snapshots(&self) -> Vec<PoolSnapshot> {
        self.pools().values().cloned().collect()
    }

    pub fn cost_lines(&self) -> Vec<CostLine> {
        self.costs().lines()
    }

    pub fn recent_job_costs(&self, limit: usize) -> Vec<JobCost> {
        self.costs().recent_jobs(limit)
    }
}
