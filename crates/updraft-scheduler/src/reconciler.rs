//! The reconciler loop: gather the three observations (the backends' launches first, then
//! the ledger's open jobs, then Buildkite's states — in that order, so a launch that exited
//! after finishing its job is never mistaken for one that died mid-job, and a launch missing
//! from the listing is judged against a ledger read after it), ask `reconcile::decide` what
//! to do, and do it. Irreversible calls re-read what they depend on first: a `finish` or a
//! pending-deadline stop goes ahead only if a fresh read still shows no agent holding the job,
//! and a `finish` Buildkite refuses with 422 (an agent has the job after all) leaves the job
//! open. Runs at start-up and every `[reconcile] interval_ms`, or sooner when a push event
//! says a job finished. After a pass the loop prunes the ledger of long-closed jobs when that
//! is due (`retention`).

use crate::core::{Core, LostAgent};
use crate::ledger::{LaunchRow, LedgerJob, NewReservation};
use crate::reconcile::{awaiting_agent, decide, Action, FleetPolicy, LaunchView, Observed, Stray};
use crate::retention::{prune_if_due, PruneSchedule};
use crate::stats::{Source, Stats};
use crate::telemetry::labels;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use updraft_backends::{Backend, BackendError, JobContext, LaunchName, LaunchPhase};
use updraft_buildkite::stacks::Notification;
use updraft_buildkite::ApiError;
use updraft_model::JobState;
use uuid::Uuid;

/// Why a pass could not complete; everything is left as it was for the next pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    #[error("listing {backend} launches: {source}")]
    Listing {
        backend: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("reading job states: {0}")]
    States(#[source] ApiError),
    #[error("the scheduler is stopping")]
    Stopping,
}

impl PassError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            PassError::Listing { .. } => "listing",
            PassError::States(_) => "job_states",
            PassError::Stopping => "stopping",
        }
    }
}

pub(crate) async fn run(core: Arc<Core>) {
    let mut prune_schedule = PruneSchedule::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(core.config.reconcile.interval) => {}
            _ = core.wake_reconcile.notified() => {}
            _ = core.stopped() => return,
        }
        if let Err(error) = pass(&core).await {
            tracing::warn!("reconcile pass did not complete: {error}");
        }
        let now_ms = core.now_ms();
        prune_if_due(&core, &mut prune_schedule, Instant::now(), now_ms).await;
    }
}

/// A launch as listed, with the backend that listed it.
struct Listed {
    view: LaunchView,
    fleet: String,
    backend: Arc<dyn Backend>,
}

/// One full pass. An error leaves everything as it was for the next pass to retry.
pub(crate) async fn pass(core: &Core) -> Result<(), PassError> {
    let started = Instant::now();
    let result = observe_and_act(core).await;
    core.telemetry
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    Stats::add(&core.stats.reconcile_passes, 1);
    core.telemetry.reconcile_passes.inc();
    if let Err(error) = &result {
        core.telemetry
            .reconcile_failures
            .get_or_create(&labels(&[("reason", error.metric_label())]))
            .inc();
    }
    result
}

async fn observe_and_act(core: &Core) -> Result<(), PassError> {
    let listed_at = core.now_ms();
    let launches = list_launches(core).await?;
    core.forget_stops_except(&launches.keys().copied().collect());
    let open = core
        .ledger(|ledger| ledger.open_jobs())
        .await
        .ok_or(PassError::Stopping)?;
    let open_ids: HashSet<Uuid> = open.iter().map(|j| j.id).collect();
    let mut ids: Vec<Uuid> = open.iter().map(|j| j.id).collect();
    ids.extend(launches.keys().filter(|id| !open_ids.contains(id)));
    let states = read_states(core, &ids).await?;
    let observed: Vec<Observed> = open
        .into_iter()
        .map(|job| Observed {
            state: states.get(&job.id).copied(),
            launch: launches.get(&job.id).map(|l| l.view.clone()),
            job,
        })
        .collect();
    let strays: Vec<Stray> = launches
        .iter()
        .filter(|(id, _)| !open_ids.contains(id))
        .map(|(id, listed)| Stray {
            job: *id,
            fleet: listed.fleet.clone(),
            state: states.get(id).copied(),
            launch: listed.view.clone(),
        })
        .collect();
    let policies: HashMap<String, FleetPolicy> = core
        .config
        .fleets
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                FleetPolicy {
                    pending_deadline: f.pending_deadline,
                    running_deadline: f.running_deadline,
                    relaunch_budget: f.relaunch_budget,
                },
            )
        })
        .collect();
    let actions = decide(&observed, &strays, &policies, core.now_ms(), listed_at);
    explain_pending(core, &observed);
    let lost_now: Vec<Uuid> = actions
        .iter()
        .filter(|a| matches!(a, Action::AgentLost { .. }))
        .map(Action::job)
        .collect();
    let jobs: HashMap<Uuid, &LedgerJob> = observed.iter().map(|o| (o.job.id, &o.job)).collect();
    let plan = Plan {
        states: &states,
        jobs: &jobs,
        launches: &launches,
        strays: &strays,
    };
    execute(core, actions, &plan).await;
    remember_lost_agents(core, &observed, &lost_now);
    Ok(())
}

/// Every launch of every backend (each listed once, however many names it serves under),
/// by job. A BTreeMap: the order of the actions that follow must not depend on hashing.
async fn list_launches(core: &Core) -> Result<BTreeMap<Uuid, Listed>, PassError> {
    let mut distinct: Vec<Arc<dyn Backend>> = Vec::new();
    for backend in core.backends.values() {
        if !distinct.iter().any(|seen| Arc::ptr_eq(seen, backend)) {
            distinct.push(backend.clone());
        }
    }
    let mut launches = BTreeMap::new();
    for backend in distinct {
        let listed = match backend.list().await {
            Ok(listed) => listed,
            Err(source) => {
                count_backend_failure(core, backend.kind(), "list", &source);
                if let BackendError::Fatal { .. } = source {
                    core.fail(format!("listing launches: {source}"));
                }
                return Err(PassError::Listing {
                    backend: backend.kind(),
                    source,
                });
            }
        };
        for status in listed {
            let view = LaunchView {
                phase: status.phase,
                started_at_ms: status.started_at.timestamp_millis(),
                detail: status.detail,
            };
            launches.insert(
                status.name.job_id(),
                Listed {
                    view,
                    fleet: status.fleet,
                    backend: backend.clone(),
                },
            );
        }
    }
    Ok(launches)
}

async fn read_states(core: &Core, ids: &[Uuid]) -> Result<HashMap<Uuid, JobState>, PassError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    match core.buildkite.job_states(ids).await {
        Ok(states) => {
            for (id, raw) in &states.unreadable {
                tracing::warn!(
                    job = id,
                    state = raw,
                    "Buildkite reported a job state we do not know"
                );
            }
            Ok(states.states.into_iter().collect())
        }
        Err(error) => {
            core.check_fatal("reading job states", &error);
            Err(PassError::States(error))
        }
    }
}

/// Tell each job with a launch still pending why (the image is being pulled, the pod cannot
/// be scheduled yet), once per new reason.
fn explain_pending(core: &Core, observed: &[Observed]) {
    let mut notes = Vec::new();
    {
        let mut state = core.state();
        for item in observed {
            let Some(launch) = &item.launch else { continue };
            let (LaunchPhase::Pending, Some(detail)) = (&launch.phase, &launch.detail) else {
                continue;
            };
            if state.notified.get(&item.job.id) != Some(detail) {
                state.notified.insert(item.job.id, detail.clone());
                if let Some(tracked) = state.jobs.get_mut(&item.job.id) {
                    tracked.reason = Some(detail.clone());
                }
                notes.push((
                    item.job.queue.clone(),
                    Notification {
                        job_uuid: item.job.id,
                        detail: detail.clone(),
                        timestamp: None,
                    },
                ));
            }
        }
    }
    for note in notes {
        let _ = core.to_notify.send(note);
    }
}

/// What the executor needs to know beyond the actions.
struct Plan<'a> {
    states: &'a HashMap<Uuid, JobState>,
    jobs: &'a HashMap<Uuid, &'a LedgerJob>,
    launches: &'a BTreeMap<Uuid, Listed>,
    strays: &'a [Stray],
}

impl Plan<'_> {
    fn queue(&self, job: &Uuid) -> String {
        self.jobs
            .get(job)
            .map(|j| j.queue.clone())
            .unwrap_or_default()
    }
}

async fn execute(core: &Core, actions: Vec<Action>, plan: &Plan<'_>) {
    let fresh = fresh_states(core, &actions).await;
    let mut to_launch = Vec::new();
    let mut running = Vec::new();
    let mut closed = Vec::new();
    let mut adopted = Vec::new();
    let mut strays = Vec::new();
    for action in actions {
        if action.is_correction() {
            Stats::add(&core.stats.corrections, 1);
            core.telemetry
                .corrections
                .get_or_create(&labels(&[("action", action.kind())]))
                .inc();
        }
        match action {
            Action::Launch { job } => to_launch.push(job),
            Action::MarkRunning { job } => running.push(job),
            Action::Close { job, outcome } => closed.push((job, outcome)),
            Action::Adopt { job } => {
                if let (Some(listed), Some(ledger)) = (plan.launches.get(&job), plan.jobs.get(&job))
                {
                    adopted.push(launch_row(
                        job,
                        &listed.fleet,
                        ledger.attempts,
                        &listed.view,
                    ));
                }
            }
            Action::AdoptStray { job, fleet } => {
                if let Some(row) = stray_row(core, plan, job, &fleet) {
                    strays.push(row);
                }
            }
            Action::Stop {
                job,
                reason,
                unless_taken,
            } => {
                if unless_taken && !still_untaken(&fresh, job) {
                    continue;
                }
                stop(core, plan, job, &reason).await;
            }
            Action::Delete { job } => {
                core.state().stop_requested.remove(&job);
                delete(core, plan, job).await;
            }
            Action::Relaunch { job, reason } => {
                tracing::info!(%job, reason, "relaunching");
                if !delete(core, plan, job).await {
                    continue;
                }
                let ended = format!("relaunched: {reason}");
                let written = core
                    .ledger(move |ledger| {
                        ledger.record_launch_ended(job, &ended)?;
                        ledger.record_relaunch(job, &reason)
                    })
                    .await;
                if written.is_none() {
                    return;
                }
                to_launch.push(job);
            }
            Action::Finish { job, reason } => {
                if !still_untaken(&fresh, job) {
                    continue;
                }
                match finish(core, &plan.queue(&job), job, &reason).await {
                    Finished::Closed(outcome) => closed.push((job, outcome)),
                    Finished::Open => {}
                    Finished::Stop => return,
                }
            }
            Action::AgentLost { job, reason } => agent_lost(core, plan, job, reason).await,
        }
    }
    let adopted_jobs: Vec<NewReservation> = strays.iter().map(|(job, _)| job.clone()).collect();
    let closing = closed.clone();
    let written = core
        .ledger(move |ledger| {
            ledger.record_adopted(&strays)?;
            ledger.record_launched(&adopted)?;
            ledger.record_running(&running)?;
            ledger.record_done(&closing)
        })
        .await;
    if written.is_none() {
        return;
    }
    if !adopted_jobs.is_empty() {
        let ids: Vec<Uuid> = adopted_jobs.iter().map(|j| j.id).collect();
        tracing::info!(
            jobs = ids.len(),
            "adopted launches the ledger had no record of"
        );
        if let Some(rows) = core
            .ledger(move |ledger| {
                ids.iter()
                    .filter_map(|id| ledger.job_to_resume(*id).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
        {
            core.adopt_ledger_jobs(&rows);
        }
    }
    Stats::add(&core.stats.closed, closed.len() as u64);
    for (job, _) in &closed {
        core.release(*job);
    }
    launch_reserved(core, to_launch, plan).await;
}

/// A fresh read of the jobs whose next step is irreversible (`Finish`, a guarded `Stop`);
/// an empty map when the read fails, which holds those steps back until the next pass.
async fn fresh_states(core: &Core, actions: &[Action]) -> HashMap<Uuid, JobState> {
    let guarded: Vec<Uuid> = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Finish { .. }
                    | Action::Stop {
                        unless_taken: true,
                        ..
                    }
            )
        })
        .map(Action::job)
        .collect();
    if guarded.is_empty() {
        return HashMap::new();
    }
    match core.buildkite.job_states(&guarded).await {
        Ok(states) => states.states.into_iter().collect(),
        Err(error) => {
            core.check_fatal("re-reading job states", &error);
            tracing::warn!(%error, "re-reading job states before finishing failed; will retry next pass");
            HashMap::new()
        }
    }
}

fn still_untaken(fresh: &HashMap<Uuid, JobState>, job: Uuid) -> bool {
    fresh.get(&job).is_some_and(|state| awaiting_agent(*state))
}

fn launch_row(job: Uuid, fleet: &str, attempts: u32, view: &LaunchView) -> LaunchRow {
    LaunchRow {
        name: LaunchName::for_job(job).to_string(),
        job_id: job,
        fleet: fleet.to_string(),
        attempt: attempts.max(1),
        started_at_ms: view.started_at_ms,
        ended_at_ms: None,
        outcome: None,
    }
}

/// A stray launch's job, as a ledger row of the fleet the backend says it belongs to.
fn stray_row(
    core: &Core,
    plan: &Plan<'_>,
    job: Uuid,
    fleet: &str,
) -> Option<(NewReservation, LaunchRow)> {
    let stray = plan.strays.iter().find(|s| s.job == job)?;
    let config = core.fleet(core.fleet_index(fleet)?);
    let reservation = NewReservation {
        id: job,
        fleet: fleet.to_string(),
        queue: config.queue.clone(),
        priority: 0,
        scheduled_at_ms: stray.launch.started_at_ms,
        source: Source::Reconcile.as_str(),
        expires_at_ms: stray.launch.started_at_ms,
        context: JobContext {
            queue: config.queue.clone(),
            ..JobContext::default()
        },
    };
    Some((reservation, launch_row(job, fleet, 1, &stray.launch)))
}

fn backend_of(core: &Core, plan: &Plan<'_>, job: Uuid) -> Option<Arc<dyn Backend>> {
    plan.launches
        .get(&job)
        .map(|l| l.backend.clone())
        .or_else(|| core.backend_for(job))
}

async fn stop(core: &Core, plan: &Plan<'_>, job: Uuid, reason: &str) {
    let first_request = core.state().stop_requested.insert(job);
    let Some(backend) = backend_of(core, plan, job).filter(|_| first_request) else {
        return;
    };
    tracing::info!(%job, reason, "stopping launch");
    if let Err(error) = backend.stop(&LaunchName::for_job(job)).await {
        core.state().stop_requested.remove(&job);
        count_backend_failure(core, backend.kind(), "stop", &error);
        tracing::warn!(%error, %job, "stopping launch failed; will retry next pass");
    }
}

/// Delete a launch; `false` if the backend could not (tried again next pass).
async fn delete(core: &Core, plan: &Plan<'_>, job: Uuid) -> bool {
    let Some(backend) = backend_of(core, plan, job) else {
        return true;
    };
    match backend.delete(&LaunchName::for_job(job)).await {
        Ok(()) => true,
        Err(error) => {
            count_backend_failure(core, backend.kind(), "delete", &error);
            tracing::warn!(%error, %job, "deleting launch failed; will retry next pass");
            false
        }
    }
}

enum Finished {
    /// Done with: close the ledger row with this outcome.
    Closed(String),
    /// Keep the row open and look again next pass.
    Open,
    /// The scheduler must stop.
    Stop,
}

/// Fail a job no agent holds, with `reason` shown in the build.
async fn finish(core: &Core, queue: &str, job: Uuid, reason: &str) -> Finished {
    tracing::warn!(%job, reason, "failing the job in Buildkite");
    match core.buildkite.finish(queue, job, -1, reason).await {
        Ok(()) => {
            core.telemetry.jobs_failed_by_scheduler.inc();
            Finished::Closed(format!("finished by updraft: {reason}"))
        }
        Err(error) if error.status().is_some_and(|s| s.as_u16() == 404) => {
            Finished::Closed(format!("unknown to Buildkite when finishing: {error}"))
        }
        Err(error) if error.status().is_some_and(|s| s.as_u16() == 422) => {
            // Someone holds the job after all: it is not done, and not ours to end.
            let note = format!("Buildkite refused to finish the job (an agent has it): {error}");
            tracing::info!(%job, "{note}");
            core.ledger(move |ledger| ledger.record_note(job, &note))
                .await
                .map_or(Finished::Stop, |_| Finished::Open)
        }
        Err(error) => {
            if core.check_fatal("finishing a job", &error) {
                return Finished::Stop;
            }
            tracing::warn!(%error, %job, "finishing the job failed; will retry next pass");
            Finished::Open
        }
    }
}

/// The launch is gone while an agent holds the job: Buildkite fails it once it marks the
/// agent lost. Say so once, in the build and the metrics, and keep the job on `/status`.
async fn agent_lost(core: &Core, plan: &Plan<'_>, job: Uuid, reason: String) {
    let recorded = reason.clone();
    let Some(first) = core
        .ledger(move |ledger| ledger.record_agent_lost(job, &recorded))
        .await
    else {
        return;
    };
    let since = core.now_ms();
    core.state().lost_agents.entry(job).or_insert(LostAgent {
        reason: reason.clone(),
        since_ms: since,
    });
    if first {
        core.telemetry.agents_lost.inc();
        tracing::warn!(%job, reason, "the job's agent is gone; Buildkite will fail the job after its lost-agent timeout");
        let detail = format!("{reason}; Buildkite will fail the job once it marks the agent lost");
        let _ = core.to_notify.send((
            plan.queue(&job),
            Notification {
                job_uuid: job,
                detail,
                timestamp: None,
            },
        ));
    }
}

/// Keep `/status`'s list of jobs waiting on a lost agent to the open jobs the ledger (as read
/// this pass) or this pass itself found so.
fn remember_lost_agents(core: &Core, observed: &[Observed], lost_now: &[Uuid]) {
    let mut state = core.state();
    let lost: BTreeMap<Uuid, i64> = observed
        .iter()
        .filter_map(|o| Some((o.job.id, o.job.agent_lost_since_ms?)))
        .collect();
    state
        .lost_agents
        .retain(|job, _| lost.contains_key(job) || lost_now.contains(job));
    for (job, since_ms) in lost {
        state.lost_agents.entry(job).or_insert(LostAgent {
            reason: "its launch ended while Buildkite showed an agent holding the job".into(),
            since_ms,
        });
    }
    core.telemetry
        .jobs_waiting_on_lost_agent
        .set(state.lost_agents.len() as i64);
}

fn count_backend_failure(
    core: &Core,
    backend: &'static str,
    call: &'static str,
    error: &BackendError,
) {
    core.telemetry
        .backend_failures
        .get_or_create(&labels(&[
            ("backend", backend),
            ("call", call),
            ("kind", error.metric_label()),
        ]))
        .inc();
}

/// Launch jobs the ledger holds as reserved, unless a launch of theirs is in progress, their
/// fleet is held back or they wait out a backoff. A job Buildkite lists as merely `scheduled`
/// lost its reservation (it expired, or the reserve call never landed): reserve it again
/// first, since only a reserved job gets a job acquisition token.
async fn launch_reserved(core: &Core, jobs: Vec<Uuid>, plan: &Plan<'_>) {
    let now = core.now_ms();
    let jobs: Vec<Uuid> = jobs
        .into_iter()
        .filter(|job| {
            let (busy, fleet) = {
                let state = core.state();
                (
                    state.launching.contains(job),
                    state.jobs.get(job).and_then(|t| t.fleet),
                )
            };
            !busy && core.may_launch(*job, fleet, now)
        })
        .collect();
    let (unreserved, reserved): (Vec<Uuid>, Vec<Uuid>) = jobs
        .into_iter()
        .partition(|j| plan.states.get(j) == Some(&JobState::Scheduled));
    let mut ready = reserved;
    let mut by_queue: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for job in unreserved {
        by_queue.entry(plan.queue(&job)).or_default().push(job);
    }
    for (queue, jobs) in by_queue {
        match core
            .buildkite
            .reserve(&queue, &jobs, core.config.buildkite.reservation_expiry)
            .await
        {
            Ok(result) => ready.extend(result.reserved),
            Err(error) => {
                core.check_fatal("reserving jobs again", &error);
                tracing::warn!(%error, queue, "reserving jobs again failed; will retry next pass");
            }
        }
    }
    for job in ready {
        let _ = core.to_launch.send(job);
    }
}
