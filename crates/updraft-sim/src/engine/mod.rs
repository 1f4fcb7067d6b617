//! The discrete-event core: virtual time in ms, jobs arriving from the workload, launches
//! admitted by the scheduler's `Limiter`, pools sized by `ScalingPolicy` every interval,
//! boot times and prices drawn from a seeded generator. No I/O; the same settings, jobs
//! and seed give the same report.
//!
//! A job goes to an idle agent of a pool on its queue if there is one; otherwise it waits
//! for one, and if its queue has a one-shot fleet, after that fleet's `overflow_after` it
//! gets its own launch instead (and stays with it). A queue without a pool sends every job
//! to its one-shot fleet at once.

mod fleet;

pub(crate) use fleet::Ledger;

use crate::report::{FleetReport, Report, Sample};
use crate::settings::SimSettings;
use crate::workload::JobArrival;
use fleet::{Fleet, FleetKind, InstanceState, Pool};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use updraft_model::scaling::{AgentCounts, InstanceCounts, JobCounts, Observation, ScalingPolicy};
use updraft_model::{FleetLimits, Limiter, PriorityOrder};
use uuid::Uuid;

/// The most samples a run keeps for its plots.
const MAX_SAMPLES: i64 = 5000;
/// How long past the last arrival a run may go before its jobs are declared stuck.
const STUCK_AFTER_MS: i64 = 30 * 86_400_000;
/// Launch requests of pools are told apart from one-shot jobs in the limiter by this bit.
const POOL_REQUEST: u128 = 1 << 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    BootDone { fleet: u32, slot: u32, serial: u64 },
    JobDone { fleet: u32, slot: u32, job: u32 },
    Tick { fleet: u32 },
    Overflow { job: u32 },
    Sample,
    Admit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Waiting,
    OneShot,
    Running,
    Done,
}

struct Queue {
    /// Waiting jobs by priority, then age; jobs that left the wait are skipped lazily.
    waiting: BinaryHeap<Reverse<(i64, u64, u32)>>,
    scheduled: u32,
    arrivals: u64,
    pools: Vec<usize>,
    one_shot: Option<(usize, i64)>,
}

struct Engine<'a> {
    jobs: &'a [JobArrival],
    state: Vec<JobState>,
    queues: Vec<Queue>,
    queue_of_job: Vec<u32>,
    fleets: Vec<Fleet>,
    limiter: Limiter,
    events: BinaryHeap<Reverse<(i64, u64, Event)>>,
    seq: u64,
    serial: u64,
    rng: ChaCha8Rng,
    start_ms: i64,
    now: i64,
    waits_ms: Vec<u64>,
    done: usize,
    admit_pending: bool,
    samples: Vec<Sample>,
    idle_scratch: Vec<i64>,
    last_reasons: Vec<String>,
}

/// Run one simulation; `label` names it in the report.
pub fn simulate(
    settings: &SimSettings,
    jobs: &[JobArrival],
    label: &str,
) -> Result<Report, String> {
    let errors = settings.validate();
    if let Some((path, message)) = errors.first() {
        return Err(format!("{path}: {message}"));
    }
    let mut engine = Engine::new(settings, jobs)?;
    let sample_ms = {
        let span = jobs.last().map_or(0, |j| j.at_ms as i64) + settings.drain.as_millis() as i64;
        (settings.sample_interval.as_millis() as i64).max(span / MAX_SAMPLES)
    };
    engine.run(settings.drain.as_millis() as i64, sample_ms)?;
    Ok(engine.report(label))
}

impl<'a> Engine<'a> {
    fn new(settings: &SimSettings, jobs: &'a [JobArrival]) -> Result<Self, String> {
        let start_ms = settings.start_ms()?;
        let mut queue_index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut queues = Vec::new();
        let mut fleets = Vec::new();
        let mut limits = Vec::new();
        for (i, f) in settings.fleets.iter().enumerate() {
            let queue = *queue_index.entry(f.queue.as_str()).or_insert_with(|| {
                queues.push(Queue {
                    waiting: BinaryHeap::new(),
                    scheduled: 0,
                    arrivals: 0,
                    pools: Vec::new(),
                    one_shot: None,
                });
                queues.len() - 1
            });
            let model = f.model();
            let kind = match &f.pool {
                Some(pool) => {
                    queues[queue].pools.push(i);
                    FleetKind::Pool(Box::new(Pool {
                        policy: ScalingPolicy::new(pool.clone()),
                        interval_ms: pool.interval.as_millis() as i64,
                        agents_per_instance: pool.agents_per_instance,
                        desired: 0,
                        requested: BTreeSet::new(),
                        dispatchable: BTreeSet::new(),
                        wholly_idle: BTreeSet::new(),
                        boot_estimate_ms: model.boot_time.median_ms() as f64,
                        running_jobs: 0,
                        pickup: f.pickup.clone(),
                    }))
                }
                None => {
                    if queues[queue].one_shot.is_some() {
                        return Err(format!(
                            "fleet[{i}]: queue {:?} already has a one-shot fleet; give each queue at most one",
                            f.queue
                        ));
                    }
                    let after = f.overflow_after.map_or(0, |d| d.as_millis() as i64);
                    queues[queue].one_shot = Some((i, after));
                    FleetKind::OneShot
                }
            };
            let cap = match &f.pool {
                Some(pool) => f.max_in_flight.unwrap_or(u32::MAX).min(pool.max),
                None => f.max_in_flight.unwrap_or(u32::MAX),
            };
            limits.push(FleetLimits {
                name: f.name.clone(),
                max_in_flight: cap,
                launches_per_minute: f.launches_per_minute,
                order: PriorityOrder::JobPriority,
            });
            fleets.push(Fleet::new(
                f.name.clone(),
                queue,
                model,
                kind,
                f.launches_per_minute.is_some(),
            ));
        }
        let mut queue_of_job = Vec::with_capacity(jobs.len());
        for (n, job) in jobs.iter().enumerate() {
            let queue = *queue_index.get(job.queue.as_str()).ok_or_else(|| {
                format!(
                    "job {n} (at {} ms) is on queue {:?}, which no fleet serves",
                    job.at_ms, job.queue
                )
            })?;
            queue_of_job.push(queue as u32);
        }
        if jobs.windows(2).any(|w| w[0].at_ms > w[1].at_ms) {
            return Err("the jobs are not in order of arrival".into());
        }
        if jobs.len() >= u32::MAX as usize {
            return Err("too many jobs for one run".into());
        }
        Ok(Engine {
            jobs,
            state: vec![JobState::Waiting; jobs.len()],
            queues,
            queue_of_job,
            limiter: Limiter::new(&limits, settings.max_in_flight, 0),
            fleets,
            events: BinaryHeap::new(),
            seq: 0,
            serial: 0,
            rng: ChaCha8Rng::seed_from_u64(settings.seed),
            start_ms,
            now: 0,
            waits_ms: Vec::with_capacity(jobs.len()),
            done: 0,
            admit_pending: false,
            samples: Vec::new(),
            idle_scratch: Vec::new(),
            last_reasons: vec![String::new(); settings.fleets.len()],
        })
    }

    fn at(&mut self, time: i64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((time, self.seq, event)));
    }

    fn run(&mut self, drain_ms: i64, sample_ms: i64) -> Result<(), String> {
        for fleet in 0..self.fleets.len() {
            if self.fleets[fleet].pool().is_some() {
                self.at(
                    0,
                    Event::Tick {
                        fleet: fleet as u32,
                    },
                );
            }
        }
        self.at(0, Event::Sample);
        let last_arrival = self.jobs.last().map_or(0, |j| j.at_ms as i64);
        let mut next_job = 0;
        let mut end = if self.jobs.is_empty() {
            Some(drain_ms)
        } else {
            None
        };
        loop {
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let arrival = self.jobs.get(next_job).map(|j| j.at_ms as i64);
            let time = match (next_event, arrival) {
                (Some(e), Some(a)) => e.min(a),
                (Some(e), None) => e,
                (None, Some(a)) => a,
                (None, None) => break,
            };
            if end.is_some_and(|end| time > end) {
                break;
            }
            if time > last_arrival + STUCK_AFTER_MS {
                return Err(format!(
                    "{} of {} jobs never ran within 30 days of the last arrival; the fleets cannot serve them",
                    self.jobs.len() - self.done,
                    self.jobs.len()
                ));
            }
            self.now = time;
            if next_event == Some(time) {
                let Reverse((_, _, event)) = self.events.pop().expect("peeked");
                self.handle(event, sample_ms);
            } else {
                self.arrive(next_job as u32);
                next_job += 1;
            }
            if end.is_none() && self.done == self.jobs.len() && next_job == self.jobs.len() {
                end = Some(self.now + drain_ms);
            }
        }
        let end = end.unwrap_or(self.now);
        self.now = end;
        for fleet in &mut self.fleets {
            let live: Vec<u32> = (0..fleet.instances.len() as u32)
                .filter(|&s| fleet.instances[s as usize].state != InstanceState::Stopped)
                .collect();
            for slot in live {
                fleet.stop(end, slot);
            }
            fleet.account(end);
        }
        Ok(())
    }

    fn handle(&mut self, event: Event, sample_ms: i64) {
        match event {
            Event::BootDone {
                fleet,
                slot,
                serial,
            } => self.boot_done(fleet as usize, slot, serial),
            Event::JobDone { fleet, slot, job } => self.job_done(fleet as usize, slot, job),
            Event::Tick { fleet } => self.tick(fleet as usize),
            Event::Overflow { job } => {
                if self.state[job as usize] == JobState::Waiting {
                    let queue = self.queue_of_job[job as usize] as usize;
                    self.queues[queue].scheduled -= 1;
                    self.hand_to_one_shot(job);
                }
            }
            Event::Sample => {
                self.sample();
                self.at(self.now + sample_ms, Event::Sample);
            }
            Event::Admit => {
                self.admit_pending = false;
                self.admit();
            }
        }
    }

    fn arrive(&mut self, job: u32) {
        let arrival = &self.jobs[job as usize];
        let queue = self.queue_of_job[job as usize] as usize;
        let q = &mut self.queues[queue];
        q.arrivals += 1;
        if q.pools.is_empty() {
            self.hand_to_one_shot(job);
            return;
        }
        q.waiting
            .push(Reverse((-arrival.priority, arrival.at_ms, job)));
        q.scheduled += 1;
        let one_shot = q.one_shot;
        for i in 0..self.queues[queue].pools.len() {
            let fleet = self.queues[queue].pools[i];
            self.dispatch(fleet, false);
        }
        if self.state[job as usize] == JobState::Waiting {
            if let Some((_, after)) = one_shot {
                if after == 0 {
                    self.queues[queue].scheduled -= 1;
                    self.hand_to_one_shot(job);
                } else {
                    self.at(self.now + after, Event::Overflow { job });
                }
            }
        }
    }

    fn hand_to_one_shot(&mut self, job: u32) {
        let queue = self.queue_of_job[job as usize] as usize;
        let (fleet, _) = self.queues[queue]
            .one_shot
            .expect("a one-shot fleet on the queue");
        self.state[job as usize] = JobState::OneShot;
        self.fleets[fleet].queued_jobs += 1;
        let arrival = &self.jobs[job as usize];
        self.limiter.enqueue(
            fleet,
            Uuid::from_u128(job as u128),
            arrival.priority,
            arrival.at_ms as i64,
        );
        self.admit();
    }

    /// Idle agents of a pool take waiting jobs of its queue: at once (`at_boot`: a booting
    /// agent's first ping), or after the pool's pickup delay (an idle agent's next ping).
    fn dispatch(&mut self, fleet: usize, at_boot: bool) {
        let queue = self.fleets[fleet].queue;
        loop {
            let Some(pool) = self.fleets[fleet].pool() else {
                return;
            };
            let Some(&(_, _, slot)) = pool.dispatchable.first() else {
                return;
            };
            let q = &mut self.queues[queue];
            let job = loop {
                match q.waiting.pop() {
                    None => return,
                    Some(Reverse((_, _, job))) if self.state[job as usize] == JobState::Waiting => {
                        break job
                    }
                    Some(_) => {}
                }
            };
            q.scheduled -= 1;
            let delay = match (&pool.pickup, at_boot) {
                (Some(pickup), false) => pickup.sample_ms(&mut self.rng),
                _ => 0,
            };
            self.start(fleet, slot, job, delay);
        }
    }

    /// The agent in `slot` takes `job` now; the job starts `delay` ms later (the agent's
    /// ping), and the agent counts as busy from now.
    fn start(&mut self, fleet: usize, slot: u32, job: u32, delay: i64) {
        let arrival = &self.jobs[job as usize];
        self.state[job as usize] = JobState::Running;
        self.waits_ms
            .push((self.now + delay - arrival.at_ms as i64) as u64);
        self.fleets[fleet].start_job(self.now, slot);
        let done = self.now + delay + arrival.duration_ms as i64;
        self.at(
            done,
            Event::JobDone {
                fleet: fleet as u32,
                slot,
                job,
            },
        );
    }

    fn boot_done(&mut self, fleet: usize, slot: u32, serial: u64) {
        let instance = &self.fleets[fleet].instances[slot as usize];
        if instance.serial != serial || instance.state != InstanceState::Booting {
            return;
        }
        self.fleets[fleet].boot_done(self.now, slot);
        match self.fleets[fleet].pool() {
            Some(_) => self.dispatch(fleet, true),
            None => {
                let job = self.fleets[fleet].instances[slot as usize]
                    .job
                    .expect("a one-shot job");
                self.start(fleet, slot, job, 0);
            }
        }
    }

    fn job_done(&mut self, fleet: usize, slot: u32, job: u32) {
        self.state[job as usize] = JobState::Done;
        self.done += 1;
        self.fleets[fleet].finish_job(self.now, slot);
        match self.fleets[fleet].pool() {
            Some(_) => self.dispatch(fleet, false),
            None => {
                self.fleets[fleet].stop(self.now, slot);
                self.limiter.release(fleet);
                self.admit();
            }
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Start every launch the limiter lets through.
    fn admit(&mut self) {
        for (fleet, id) in self.limiter.admit(self.now) {
            let id = id.as_u128();
            let job = if id & POOL_REQUEST != 0 {
                let pool = self.fleets[fleet].pool().expect("a pool's request");
                pool.requested.remove(&(id as u64));
                None
            } else {
                self.fleets[fleet].queued_jobs -= 1;
                Some(id as u32)
            };
            let serial = self.next_serial();
            let price = self.fleets[fleet].model.price.sample_per_ms(&mut self.rng);
            let boot = self.fleets[fleet].model.boot_time.sample_ms(&mut self.rng);
            let slot = self.fleets[fleet].launch(self.now, serial, price, job);
            self.at(
                self.now + boot,
                Event::BootDone {
                    fleet: fleet as u32,
                    slot,
                    serial,
                },
            );
        }
        let held = self.fleets.iter().any(|f| {
            f.rate_limited
                && match &f.kind {
                    FleetKind::Pool(pool) => !pool.requested.is_empty(),
                    FleetKind::OneShot => f.queued_jobs > 0,
                }
        });
        if held && !self.admit_pending {
            self.admit_pending = true;
            self.at(self.now + 1000, Event::Admit);
        }
    }

    /// A pool's policy step: observe, decide, launch up to or stop down to the decision.
    fn tick(&mut self, fleet: usize) {
        let now_ms = self.start_ms + self.now;
        let queue = self.fleets[fleet].queue;
        let (scheduled, arrivals) = (self.queues[queue].scheduled, self.queues[queue].arrivals);
        let f = &mut self.fleets[fleet];
        let (busy, ready_agents, ready, booting) =
            (f.busy_agents, f.ready_agents, f.ready, f.booting);
        let FleetKind::Pool(pool) = &mut f.kind else {
            return;
        };
        self.idle_scratch.clear();
        self.idle_scratch.extend(
            pool.wholly_idle
                .iter()
                .map(|&(since, _)| self.start_ms + since),
        );
        let obs = Observation {
            now_ms,
            jobs: JobCounts {
                scheduled,
                running: pool.running_jobs,
                waiting: 0,
            },
            agents: AgentCounts {
                busy,
                idle: ready_agents - busy,
                booting: booting * pool.agents_per_instance,
            },
            instances: InstanceCounts {
                desired: pool.desired,
                in_service: ready,
                booting,
            },
            arrivals_total: arrivals,
            idle_since_ms: &self.idle_scratch,
            boot_time_ms: pool.boot_estimate_ms as i64,
        };
        let decision = pool.policy.decide(&obs);
        pool.desired = decision.desired;
        let interval = pool.interval_ms;
        self.last_reasons[fleet] = decision.reason;
        self.resize(fleet);
        self.at(
            self.now + interval,
            Event::Tick {
                fleet: fleet as u32,
            },
        );
    }

    /// Launch requests up to the pool's desired count, or give up requests, then idle
    /// instances (longest idle first), then booting ones (newest first) down to it.
    fn resize(&mut self, fleet: usize) {
        let f = &mut self.fleets[fleet];
        let live = f.ready + f.booting;
        let FleetKind::Pool(pool) = &mut f.kind else {
            return;
        };
        let desired = pool.desired;
        let have = live + pool.requested.len() as u32;
        if desired > have {
            for _ in have..desired {
                let request = self.next_serial();
                let pool = self.fleets[fleet].pool().expect("pool");
                pool.requested.insert(request);
                self.limiter.enqueue(
                    fleet,
                    Uuid::from_u128(POOL_REQUEST | request as u128),
                    0,
                    self.now,
                );
            }
            self.admit();
            return;
        }
        let mut surplus = have - desired;
        while surplus > 0 {
            let pool = self.fleets[fleet].pool().expect("pool");
            let Some(request) = pool.requested.pop_last() else {
                break;
            };
            self.limiter
                .remove_waiting(fleet, Uuid::from_u128(POOL_REQUEST | request as u128));
            surplus -= 1;
        }
        while surplus > 0 {
            let pool = self.fleets[fleet].pool().expect("pool");
            let Some(&(_, slot)) = pool.wholly_idle.first() else {
                break;
            };
            self.fleets[fleet].stop(self.now, slot);
            self.limiter.release(fleet);
            surplus -= 1;
        }
        if surplus > 0 {
            for slot in self.fleets[fleet]
                .booting_newest_first()
                .into_iter()
                .take(surplus as usize)
            {
                self.fleets[fleet].stop(self.now, slot);
                self.limiter.release(fleet);
            }
        }
        self.admit();
    }

    fn sample(&mut self) {
        let mut sample = Sample {
            t_s: self.now as f64 / 1000.0,
            queued: self.queues.iter().map(|q| q.scheduled).sum(),
            ..Sample::default()
        };
        for fleet in &self.fleets {
            sample.busy += fleet.busy_agents;
            match fleet.kind {
                FleetKind::Pool(_) => {
                    sample.pool_agents += fleet.ready_agents;
                    sample.booting += fleet.booting * fleet.agents_per_instance();
                }
                FleetKind::OneShot => {
                    sample.queued += fleet.queued_jobs + fleet.booting;
                    sample.one_shot += fleet.ready_agents + fleet.booting;
                }
            }
        }
        self.samples.push(sample);
    }

    fn report(mut self, label: &str) -> Report {
        self.waits_ms.sort_unstable();
        let fleets = self
            .fleets
            .iter()
            .zip(&self.last_reasons)
            .map(|(f, reason)| FleetReport::new(&f.name, &f.ledger, reason))
            .collect();
        Report::new(
            label,
            &self.waits_ms,
            fleets,
            std::mem::take(&mut self.samples),
            self.now,
        )
    }
}
