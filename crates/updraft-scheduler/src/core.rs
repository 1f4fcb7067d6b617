//! The scheduler's shared core: its clients, ledger, backends and the in-memory intake
//! state every task works on. Intake is here: whatever the source (push, pull, start-up),
//! a job id is taken in once — a second sighting is counted and dropped — then routed to a
//! fleet's waiting queue or recorded as unserved with the reason.

use crate::config::{Config, FleetConfig};
use crate::ledger::{now_ms, Ledger, LedgerJob};
use crate::router::{route, Route};
use crate::stackset::StackSet;
use crate::stats::{Source, Stats};
use crate::telemetry::{labels, Telemetry};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch, Notify};
use updraft_backends::Backend;
use updraft_buildkite::stacks::Notification;
use updraft_model::Limiter;
use updraft_model::QueryRules;
use uuid::Uuid;

/// How long the status page keeps showing a job of a queue no fleet serves.
pub(crate) const UNSERVED_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// A job some source has told us about.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: Uuid,
    /// Parsed rules, or why they could not be read.
    pub rules: Result<QueryRules, String>,
    pub priority: i64,
    pub scheduled_at_ms: i64,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No fleet serves it; the reason is in `reason`.
    Unserved,
    /// In its fleet's waiting queue.
    Waiting,
    /// Admitted: holds a slot; the ledger and the reconciler own it from here.
    Owned,
}

#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub fleet: Option<usize>,
    pub queue: String,
    pub priority: i64,
    pub scheduled_at_ms: i64,
    pub seen_at_ms: i64,
    pub source: Source,
    pub phase: Phase,
    pub reason: Option<String>,
    pub picked_up: bool,
}

pub(crate) struct State {
    pub jobs: HashMap<Uuid, Tracked>,
    pub limiter: Limiter,
    /// Jobs whose token-and-launch step is in progress right now.
    pub launching: HashSet<Uuid>,
    /// The last reason sent to Buildkite per job, so a reason is not repeated every pass.
    pub notified: HashMap<Uuid, String>,
    /// Launches already asked to stop; the backend escalates on its own, so one request per
    /// launch is enough (a failed request is forgotten and made again).
    pub stop_requested: HashSet<Uuid>,
}

pub(crate) struct Core {
    pub config: Config,
    pub stacks: StackSet,
    pub ledger: Arc<Ledger>,
    /// Each fleet's backend, by fleet index.
    pub fleet_backends: Vec<Arc<dyn Backend>>,
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    pub state: Mutex<State>,
    pub wake_dispatch: Notify,
    pub wake_reconcile: Notify,
    pub to_reserve: mpsc::UnboundedSender<(usize, Uuid)>,
    pub to_launch: mpsc::UnboundedSender<Uuid>,
    /// (queue, notification): each goes through its queue's stack.
    pub to_notify: mpsc::UnboundedSender<(String, Notification)>,
    pub stats: Stats,
    pub telemetry: Telemetry,
    pub fatal: watch::Sender<Option<String>>,
    /// Set once to stop every task.
    pub stop: watch::Sender<bool>,
    pub ready: watch::Sender<bool>,
}

/// The receiving ends of the core's channels, handed to the tasks that drain them.
pub(crate) struct Inboxes {
    pub to_reserve: mpsc::UnboundedReceiver<(usize, Uuid)>,
    pub to_launch: mpsc::UnboundedReceiver<Uuid>,
    pub to_notify: mpsc::UnboundedReceiver<(String, Notification)>,
}

impl Core {
    pub fn new(
        config: Config,
        stacks: StackSet,
        ledger: Arc<Ledger>,
        backends: BTreeMap<String, Arc<dyn Backend>>,
        fleet_backends: Vec<Arc<dyn Backend>>,
    ) -> (Core, Inboxes) {
        let (to_reserve, reserve_rx) = mpsc::unbounded_channel();
        let (to_launch, launch_rx) = mpsc::unbounded_channel();
        let (to_notify, notify_rx) = mpsc::unbounded_channel();
        let limits: Vec<_> = config.fleets.iter().map(FleetConfig::limits).collect();
        let limiter = Limiter::new(&limits, config.limits.max_in_flight, now_ms());
        let core = Core {
            config,
            stacks,
            ledger,
            fleet_backends,
            backends,
            state: Mutex::new(State {
                jobs: HashMap::new(),
                limiter,
                launching: HashSet::new(),
                notified: HashMap::new(),
                stop_requested: HashSet::new(),
            }),
            wake_dispatch: Notify::new(),
            wake_reconcile: Notify::new(),
            to_reserve,
            to_launch,
            to_notify,
            stats: Stats::default(),
            telemetry: Telemetry::new(),
            fatal: watch::channel(None).0,
            stop: watch::channel(false).0,
            ready: watch::channel(false).0,
        };
        (
            core,
            Inboxes {
                to_reserve: reserve_rx,
                to_launch: launch_rx,
                to_notify: notify_rx,
            },
        )
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fleet_index(&self, name: &str) -> Option<usize> {
        self.config.fleets.iter().position(|f| f.name == name)
    }

    pub fn fleet(&self, index: usize) -> &FleetConfig {
        &self.config.fleets[index]
    }

    /// Stop everything with an error a person can act on (e.g. a revoked token).
    pub fn fail(&self, message: String) {
        tracing::error!("{message}");
        self.fatal.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(message);
                true
            } else {
                false
            }
        });
        self.stop.send_replace(true);
    }

    /// Resolves once the scheduler is asked to stop.
    pub async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Take jobs in. Returns how many were new.
    pub fn intake(&self, candidates: Vec<Candidate>) -> usize {
        let now = now_ms();
        let mut fresh = 0;
        let mut notes = Vec::new();
        {
            let mut state = self.state();
            for candidate in candidates {
                if state.jobs.contains_key(&candidate.id) {
                    Stats::add(&self.stats.duplicates_ignored, 1);
                    continue;
                }
                fresh += 1;
                self.telemetry
                    .jobs_seen
                    .get_or_create(&labels(&[("source", candidate.source.as_str())]))
                    .inc();
                let (fleet, queue, reason) = match &candidate.rules {
                    Ok(rules) => match route(&self.config.fleets, rules) {
                        Route::Fleet(index) => (Some(index), rules.queue().to_string(), None),
                        Route::Unserved(reason) => (None, rules.queue().to_string(), Some(reason)),
                    },
                    Err(problem) => (
                        None,
                        String::new(),
                        Some(format!("unreadable agent_query_rules: {problem}")),
                    ),
                };
                let phase = match fleet {
                    Some(index) => {
                        state.limiter.enqueue(
                            index,
                            candidate.id,
                            candidate.priority,
                            candidate.scheduled_at_ms,
                        );
                        Phase::Waiting
                    }
                    None => Phase::Unserved,
                };
                if let Some(reason) = &reason {
                    if state.notified.insert(candidate.id, reason.clone()).as_ref() != Some(reason)
                    {
                        notes.push((
                            queue.clone(),
                            Notification {
                                job_uuid: candidate.id,
                                detail: reason.clone(),
                                timestamp: None,
                            },
                        ));
                    }
                }
                state.jobs.insert(
                    candidate.id,
                    Tracked {
                        fleet,
                        queue,
                        priority: candidate.priority,
                        scheduled_at_ms: candidate.scheduled_at_ms,
                        seen_at_ms: now,
                        source: candidate.source,
                        phase,
                        reason,
                        picked_up: false,
                    },
                );
            }
        }
        Stats::add(&self.stats.jobs_seen, fresh as u64);
        for note in notes {
            let _ = self.to_notify.send(note);
        }
        if fresh > 0 {
            self.wake_dispatch.notify_one();
        }
        fresh
    }

    /// Jobs the ledger holds open at start-up: they hold their slots again.
    pub fn adopt_ledger_jobs(&self, jobs: &[LedgerJob]) {
        let mut state = self.state();
        for job in jobs {
            let fleet = self.fleet_index(&job.fleet);
            if let Some(index) = fleet {
                state.limiter.occupy(index);
            }
            state.jobs.insert(
                job.id,
                Tracked {
                    fleet,
                    queue: job.queue.clone(),
                    priority: job.priority,
                    scheduled_at_ms: job.scheduled_at_ms,
                    seen_at_ms: job.stage_since_ms,
                    source: Source::Reconcile,
                    phase: Phase::Owned,
                    reason: None,
                    picked_up: true,
                },
            );
        }
        self.stats.set_in_flight(state.limiter.in_flight());
    }

    /// A job this process had admitted is no longer ours: free its slot.
    pub fn release(&self, job: Uuid) {
        let mut state = self.state();
        if let Some(tracked) = state.jobs.remove(&job) {
            if let (Some(index), Phase::Owned) = (tracked.fleet, &tracked.phase) {
                state.limiter.release(index);
                self.stats.set_in_flight(state.limiter.in_flight());
            }
        }
        state.notified.remove(&job);
        state.stop_requested.remove(&job);
        state.launching.remove(&job);
        drop(state);
        self.wake_dispatch.notify_one();
    }

    /// A full poll of `queue` that started at `poll_started_ms` did not list these waiting
    /// jobs: someone else took them, or they were canceled. Forget them.
    pub fn forget_unlisted(&self, queue: &str, listed: &HashSet<Uuid>, poll_started_ms: i64) {
        let mut state = self.state();
        let gone: Vec<(Uuid, Option<usize>)> = state
            .jobs
            .iter()
            .filter(|(id, t)| {
                t.queue == queue
                    && t.phase != Phase::Owned
                    && t.seen_at_ms < poll_started_ms
                    && !listed.contains(id)
            })
            .map(|(id, t)| (*id, t.fleet))
            .collect();
        for (id, fleet) in gone {
            if let Some(index) = fleet {
                state.limiter.remove_waiting(index, id);
            }
            state.jobs.remove(&id);
            state.notified.remove(&id);
        }
    }

    /// Forget jobs of queues no fleet serves once they are older than `UNSERVED_MEMORY`.
    /// No poll lists those queues, so nothing else would ever drop them, and an
    /// organization-wide webhook sends every job of every queue.
    pub fn forget_old_unserved(&self, now_ms: i64) {
        let served = self.config.queues();
        let cutoff = now_ms - UNSERVED_MEMORY.as_millis() as i64;
        let mut state = self.state();
        let old: Vec<Uuid> = state
            .jobs
            .iter()
            .filter(|(_, t)| {
                t.phase == Phase::Unserved && t.seen_at_ms < cutoff && !served.contains(&t.queue)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            state.jobs.remove(&id);
            state.notified.remove(&id);
        }
    }

    /// Keep stop requests only for launches the backends still list. A request for a launch
    /// of a closed job is dropped by `release`, but a stray launch (no open ledger job) that
    /// vanishes without our delete — removed by hand, or by the backend itself — would
    /// otherwise hold its entry for as long as the process runs.
    pub fn forget_stops_except(&self, listed: &HashSet<Uuid>) {
        self.state()
            .stop_requested
            .retain(|job| listed.contains(job));
    }

    pub fn backend_for(&self, job: Uuid) -> Option<Arc<dyn Backend>> {
        let fleet = self.state().jobs.get(&job).and_then(|t| t.fleet);
        fleet.map(|index| self.fleet_backends[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(dir: &std::path::Path) -> Core {
        let config = Config::parse(
            "[buildkite]\nendpoint = \"http://127.0.0.1:9/v3\"\nagent_token = \"t\"\n[[fleet]]\nname = \"linux\"\nqueue = \"linux\"\n",
        )
        .unwrap();
        let stacks = StackSet::new(&config).unwrap();
        let ledger = Arc::new(Ledger::open(&dir.join("l.sqlite")).unwrap());
        Core::new(config, stacks, ledger, BTreeMap::new(), Vec::new()).0
    }

    fn candidate(rules: &[&str], source: Source) -> Candidate {
        Candidate {
            id: Uuid::new_v4(),
            rules: Ok(QueryRules::parse("r", rules).unwrap()),
            priority: 0,
            scheduled_at_ms: 0,
            source,
        }
    }

    #[test]
    fn a_job_is_taken_in_once_whatever_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let job = candidate(&["queue=linux"], Source::Push);
        assert_eq!(core.intake(vec![job.clone()]), 1);
        assert_eq!(
            core.intake(vec![Candidate {
                source: Source::Pull,
                ..job
            }]),
            0
        );
        let stats = core.stats.snapshot();
        assert_eq!((stats.jobs_seen, stats.duplicates_ignored), (1, 1));
    }

    #[test]
    fn stop_requests_are_kept_only_for_launches_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let (listed, vanished) = (Uuid::new_v4(), Uuid::new_v4());
        core.state().stop_requested.extend([listed, vanished]);
        core.forget_stops_except(&HashSet::from([listed]));
        assert_eq!(core.state().stop_requested, HashSet::from([listed]));
    }

    #[test]
    fn jobs_of_unserved_queues_are_forgotten_after_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let foreign = candidate(&["queue=gpu"], Source::Push);
        let mismatched = candidate(&["queue=linux", "arch=arm64"], Source::Push);
        core.intake(vec![foreign.clone(), mismatched.clone()]);
        assert_eq!(
            core.state().jobs[&foreign.id].reason.as_deref(),
            Some("no fleet serves queue=gpu")
        );
        core.forget_old_unserved(now_ms() + UNSERVED_MEMORY.as_millis() as i64 + 1);
        let state = core.state();
        assert!(!state.jobs.contains_key(&foreign.id));
        // A served queue's listing decides about this one (`forget_unlisted`).
        assert!(state.jobs.contains_key(&mismatched.id));
    }
}
