//! The scheduler's shared core: its ports to Buildkite and the backends, its clock, ledger
//! and the in-memory intake state every task works on. Intake is here: whatever the source
//! (push, pull, start-up), a job id is taken in once — a second sighting is counted and
//! dropped — then routed to a fleet's waiting queue or recorded as unserved with the reason.
//! So is what the launch policy remembers between passes: fleets held back because their
//! platform is full, and jobs waiting out a backoff after a passing failure.

use crate::clock::Clock;
use crate::config::{Config, FleetConfig};
use crate::ledger::{Ledger, LedgerError, ResumableJob};
use crate::pool::board::Board;
use crate::pool::intake::{overflow_fleet, JobLabel, PoolIntake};
use crate::ports::Buildkite;
use crate::router::{route, Route};
use crate::stats::{Source, Stats};
use crate::telemetry::{labels, Telemetry};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use updraft_backends::{Backend, JobContext, PoolBackend};
use updraft_buildkite::metrics::QueueMetrics;
use updraft_buildkite::stacks::Notification;
use updraft_buildkite::ApiError;
use updraft_model::{Limiter, QueryRules};
use uuid::Uuid;

/// How long the status page keeps showing a job of a queue no fleet serves.
pub(crate) const UNSERVED_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);
/// The first wait after a launch failed for a passing reason; it doubles up to `MAX_BACKOFF_MS`.
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 30_000;
/// Job-detail reads from Buildkite in flight at once.
const DETAIL_READS: usize = 32;

/// A job some source has told us about.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: Uuid,
    /// Parsed rules, or why they could not be read.
    pub rules: Result<QueryRules, String>,
    pub priority: i64,
    pub scheduled_at_ms: i64,
    pub source: Source,
    /// What the source said of the job (pipeline, build, step, its agent query rules).
    pub context: JobContext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No fleet serves it; the reason is in `reason`.
    Unserved,
    /// In its fleet's waiting queue.
    Waiting,
    /// Left to a pool's agents, which take it from Buildkite themselves (`pool::intake`).
    Pooled,
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
    pub context: JobContext,
}

/// A fleet held back because its platform said it was full.
#[derive(Debug, Clone)]
pub(crate) struct FleetHold {
    pub until_ms: i64,
    pub failures: u32,
    pub reason: String,
}

/// A job whose launch is gone while Buildkite shows an agent holding it: it waits for
/// Buildkite's lost-agent timeout to fail it.
#[derive(Debug, Clone)]
pub(crate) struct LostAgent {
    pub reason: String,
    pub since_ms: i64,
}

/// A job waiting out a backoff after its launch failed for a passing reason.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub until_ms: i64,
    pub failures: u32,
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
    /// Fleets whose backend answered "at capacity", by fleet index.
    pub holds: BTreeMap<usize, FleetHold>,
    /// Jobs waiting out a backoff before their next launch attempt.
    pub backoff: HashMap<Uuid, Backoff>,
    /// Jobs waiting for Buildkite to notice their agent is gone.
    pub lost_agents: BTreeMap<Uuid, LostAgent>,
    /// Jobs left to pools, their arrivals and their overflow times.
    pub pools: PoolIntake,
}

pub(crate) struct Core {
    pub config: Config,
    pub buildkite: Arc<dyn Buildkite>,
    pub clock: Arc<dyn Clock>,
    pub ledger: Arc<Ledger>,
    /// Run ledger calls on the calling task instead of the blocking pool (the simulation
    /// test, which must decide every interleaving itself).
    pub ledger_inline: bool,
    /// Each one-shot fleet's backend, by fleet index (`None` for a pool fleet).
    pub fleet_backends: Vec<Option<Arc<dyn Backend>>>,
    /// Each pool fleet's backend, by fleet index (`None` for a one-shot fleet).
    pub pool_backends: Vec<Option<Arc<dyn PoolBackend>>>,
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    /// Bounds the job-detail reads in flight: without it a burst's launches would open a
    /// connection to Buildkite each (hundreds, each with its buffers) while the backend
    /// takes them a few dozen at a time anyway.
    pub reading_details: Semaphore,
    pub state: Mutex<State>,
    pub wake_dispatch: Notify,
    pub wake_reconcile: Notify,
    pub to_reserve: mpsc::UnboundedSender<(usize, Uuid)>,
    pub to_launch: mpsc::UnboundedSender<Uuid>,
    /// Launches the backend confirmed, for the ledger writer.
    pub to_commit: mpsc::UnboundedSender<crate::ledger::LaunchRow>,
    /// (queue, notification): each goes through its queue's stack.
    pub to_notify: mpsc::UnboundedSender<(String, Notification)>,
    pub stats: Stats,
    pub telemetry: Telemetry,
    /// The latest queue metrics reading (pools decide from it).
    pub metrics_reading: watch::Sender<Option<Arc<QueueMetrics>>>,
    /// What the pools last did, and the cost book.
    pub pools: Board,
    pub fatal: watch::Sender<Option<String>>,
    /// Set once to stop every task.
    pub stop: watch::Sender<bool>,
    pub ready: watch::Sender<bool>,
    /// `None` without leader election (this process leads alone); else whether it leads now.
    pub leading: Mutex<Option<bool>>,
}

/// The receiving ends of the core's channels, handed to the tasks that drain them.
pub(crate) struct Inboxes {
    pub to_reserve: mpsc::UnboundedReceiver<(usize, Uuid)>,
    pub to_launch: mpsc::UnboundedReceiver<Uuid>,
    pub to_commit: mpsc::UnboundedReceiver<crate::ledger::LaunchRow>,
    pub to_notify: mpsc::UnboundedReceiver<(String, Notification)>,
}

/// What a `Core` is made of.
pub(crate) struct Parts {
    pub config: Config,
    pub buildkite: Arc<dyn Buildkite>,
    pub ledger: Arc<Ledger>,
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    pub fleet_backends: Vec<Option<Arc<dyn Backend>>>,
    pub pool_backends: Vec<Option<Arc<dyn PoolBackend>>>,
    pub ledger_inline: bool,
}

impl Core {
    pub fn new(parts: Parts) -> (Core, Inboxes) {
        let (to_reserve, reserve_rx) = mpsc::unbounded_channel();
        let (to_launch, launch_rx) = mpsc::unbounded_channel();
        let (to_commit, commit_rx) = mpsc::unbounded_channel();
        let (to_notify, notify_rx) = mpsc::unbounded_channel();
        let clock = parts.ledger.clock().clone();
        let limits: Vec<_> = parts
            .config
            .fleets
            .iter()
            .map(FleetConfig::limits)
            .collect();
        let limiter = Limiter::new(&limits, parts.config.limits.max_in_flight, clock.now_ms());
        let core = Core {
            config: parts.config,
            buildkite: parts.buildkite,
            clock,
            ledger: parts.ledger,
            ledger_inline: parts.ledger_inline,
            reading_details: Semaphore::new(DETAIL_READS),
            fleet_backends: parts.fleet_backends,
            pool_backends: parts.pool_backends,
            backends: parts.backends,
            state: Mutex::new(State {
                jobs: HashMap::new(),
                limiter,
                launching: HashSet::new(),
                notified: HashMap::new(),
                stop_requested: HashSet::new(),
                holds: BTreeMap::new(),
                backoff: HashMap::new(),
                lost_agents: BTreeMap::new(),
                pools: PoolIntake::default(),
            }),
            wake_dispatch: Notify::new(),
            wake_reconcile: Notify::new(),
            to_reserve,
            to_launch,
            to_commit,
            to_notify,
            stats: Stats::default(),
            telemetry: Telemetry::new(),
            metrics_reading: watch::channel(None).0,
            pools: Board::default(),
            fatal: watch::channel(None).0,
            stop: watch::channel(false).0,
            ready: watch::channel(false).0,
            leading: Mutex::new(None),
        };
        (
            core,
            Inboxes {
                to_reserve: reserve_rx,
                to_launch: launch_rx,
                to_commit: commit_rx,
                to_notify: notify_rx,
            },
        )
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
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

    /// Run `f` on the ledger (on the blocking pool: SQLite calls block). A ledger that cannot
    /// be written stops the scheduler, since nothing it does is safe without one; `None` then.
    pub async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Option<T> {
        let result = if self.ledger_inline {
            f(&self.ledger)
        } else {
            let ledger = self.ledger.clone();
            match tokio::task::spawn_blocking(move || f(&ledger)).await {
                Ok(result) => result,
                Err(panic) => {
                    self.fail(format!("the ledger writer panicked: {panic}"));
                    return None;
                }
            }
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(format!("cannot use the ledger: {error}"));
                None
            }
        }
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

    /// A 401 from Buildkite will not fix itself: stop with a clear message. `true` when it
    /// stopped the scheduler.
    pub fn check_fatal(&self, what: &str, error: &ApiError) -> bool {
        match error.status().map(|s| s.as_u16()) {
            Some(401) => {
                self.fail(format!(
                    "{what}: Buildkite refused the agent token (401 Unauthorized); check [buildkite] agent_token: {error}"
                ));
                true
            }
            _ => false,
        }
    }

    /// Resolves once the scheduler is asked to stop.
    pub async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Whether this replica schedules (always, without leader election).
    pub fn is_leading(&self) -> bool {
        self.leading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(true)
    }

    /// `"leading"`, `"following"`, or `None` without leader election.
    pub fn role(&self) -> Option<&'static str> {
        self.leading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|leading| if leading { "leading" } else { "following" })
    }

    /// Take jobs in. Returns how many were new.
    pub fn intake(&self, candidates: Vec<Candidate>) -> usize {
        let now = self.now_ms();
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
                    Some(index) if self.config.fleets[index].is_pool() => {
                        let overflow = candidate.rules.as_ref().ok().and_then(|rules| {
                            overflow_fleet(&self.config.fleets, index, rules).map(
                                |(fleet, after)| {
                                    (fleet, candidate.scheduled_at_ms + after.as_millis() as i64)
                                },
                            )
                        });
                        let label = JobLabel::of(&candidate.context, &queue);
                        state.pools.take(candidate.id, index, overflow, label, now);
                        Phase::Pooled
                    }
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
                let reason = match phase {
                    Phase::Pooled => fleet.map(|index| {
                        format!("waiting for an agent of pool {}", self.fleet(index).name)
                    }),
                    _ => reason,
                };
                let mut context = candidate.context;
                context.queue = queue.clone();
                context.priority = candidate.priority;
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
                        context,
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

    /// Jobs the ledger holds open (at start-up, or adopted from a backend's listing): they
    /// hold their slots. A job already tracked keeps its entry.
    pub fn adopt_ledger_jobs(&self, jobs: &[ResumableJob]) {
        let mut state = self.state();
        for ResumableJob { job, context } in jobs {
            if state.jobs.contains_key(&job.id) {
                continue;
            }
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
                    context: context.clone(),
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
        state.backoff.remove(&job);
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
        fleet.and_then(|index| self.fleet_backends[index].clone())
    }

    /// The backend said the fleet's platform is full: hold the fleet's launches back for a
    /// while (doubling with each refusal), and say why on `/status`.
    pub fn hold_fleet(&self, fleet: usize, reason: String) {
        let now = self.now_ms();
        let mut state = self.state();
        let failures = state.holds.get(&fleet).map_or(0, |h| h.failures) + 1;
        let wait = backoff_ms(failures);
        state.holds.insert(
            fleet,
            FleetHold {
                until_ms: now + wait,
                failures,
                reason,
            },
        );
    }

    /// A launch of the fleet started: its platform has room again.
    pub fn clear_hold(&self, fleet: usize) {
        self.state().holds.remove(&fleet);
    }

    /// A launch failed for a passing reason: wait before trying the job again.
    pub fn back_off(&self, job: Uuid) {
        let now = self.now_ms();
        let mut state = self.state();
        let failures = state.backoff.get(&job).map_or(0, |b| b.failures) + 1;
        state.backoff.insert(
            job,
            Backoff {
                until_ms: now + backoff_ms(failures),
                failures,
            },
        );
    }

    /// Whether `job` (of fleet `fleet`) may be launched now, or waits out a hold or backoff.
    pub fn may_launch(&self, job: Uuid, fleet: Option<usize>, now_ms: i64) -> bool {
        let state = self.state();
        let held = fleet
            .and_then(|f| state.holds.get(&f))
            .is_some_and(|h| h.until_ms > now_ms);
        let backing_off = state.backoff.get(&job).is_some_and(|b| b.until_ms > now_ms);
        !held && !backing_off
    }
}

/// 1 s, 2 s, 4 s … up to 30 s.
fn backoff_ms(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF_MS << doublings).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::stackset::StackSet;

    fn core(dir: &std::path::Path) -> Core {
        let config = Config::parse(
            "[buildkite]\nendpoint = \"http://127.0.0.1:9/v3\"\nagent_token = \"t\"\n[[fleet]]\nname = \"linux\"\nqueue = \"linux\"\n",
        )
        .unwrap();
        let stacks = StackSet::new(&config).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
        let ledger = Arc::new(Ledger::open_with_clock(&dir.join("l.sqlite"), clock).unwrap());
        Core::new(Parts {
            config,
            buildkite: Arc::new(stacks),
            ledger,
            backends: BTreeMap::new(),
            fleet_backends: Vec::new(),
            pool_backends: Vec::new(),
            ledger_inline: true,
        })
        .0
    }

    fn candidate(rules: &[&str], source: Source) -> Candidate {
        Candidate {
            id: Uuid::new_v4(),
            rules: Ok(QueryRules::parse("r", rules).unwrap()),
            priority: 0,
            scheduled_at_ms: 0,
            source,
            context: JobContext::default(),
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
        core.forget_old_unserved(core.now_ms() + UNSERVED_MEMORY.as_millis() as i64 + 1);
        let state = core.state();
        assert!(!state.jobs.contains_key(&foreign.id));
        // A served queue's listing decides about this one (`forget_unlisted`).
        assert!(state.jobs.contains_key(&mismatched.id));
    }

    #[test]
    fn holds_and_backoffs_double_up_to_a_cap_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let job = Uuid::new_v4();
        let now = core.now_ms();
        core.back_off(job);
        assert!(!core.may_launch(job, None, now));
        assert!(core.may_launch(job, None, now + 1_001));
        core.hold_fleet(0, "full".into());
        core.hold_fleet(0, "full".into());
        assert!(!core.may_launch(Uuid::new_v4(), Some(0), now + 1_500));
        assert!(core.may_launch(Uuid::new_v4(), Some(0), now + 2_500));
        core.clear_hold(0);
        assert!(core.may_launch(Uuid::new_v4(), Some(0), now));
        assert_eq!(backoff_ms(10), MAX_BACKOFF_MS);
    }
}
