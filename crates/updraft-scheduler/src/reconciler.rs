//! The reconciler loop: gather the three observations (the backends' launches first, then
//! the ledger's open jobs, then Buildkite's states — in that order, so a launch that exited
//! after finishing its job is never mistaken for one that died mid-job), ask
//! `reconcile::decide` what to do, and do it. Runs at start-up and every
//! `[reconcile] interval_ms`, or sooner when a push event says a job finished. After a pass
//! the loop prunes the ledger of long-closed jobs when that is due (`retention`).

use crate::core::Core;
use crate::ledger::{now_ms, LaunchRow};
use crate::pipeline::check_fatal;
use crate::reconcile::{decide, Action, FleetPolicy, LaunchView, Observed, Stray};
use crate::retention::{prune_if_due, PruneSchedule};
use crate::stats::Stats;
use crate::telemetry::labels;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use updraft_backends::{Backend, LaunchName};
use updraft_model::JobState;
use uuid::Uuid;

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
        prune_if_due(&core, &mut prune_schedule, Instant::now(), now_ms()).await;
    }
}

/// One full pass. An error leaves everything as it was for the next pass to retry.
pub(crate) async fn pass(core: &Arc<Core>) -> Result<(), String> {
    let listed_at = now_ms();
    let mut launches: HashMap<Uuid, (LaunchView, Arc<dyn Backend>)> = HashMap::new();
    let mut distinct: Vec<Arc<dyn Backend>> = Vec::new();
    for backend in core.backends.values() {
        // One backend may serve several names; list it once.
        if !distinct.iter().any(|seen| Arc::ptr_eq(seen, backend)) {
            distinct.push(backend.clone());
        }
    }
    for backend in distinct {
        let listed = backend
            .list()
            .await
            .map_err(|e| format!("listing {} launches: {e}", backend.kind()))?;
        for status in listed {
            let view = LaunchView {
                phase: status.phase,
                started_at_ms: status.started_at.timestamp_millis(),
            };
            launches.insert(status.name.job_id(), (view, backend.clone()));
        }
    }
    core.forget_stops_except(&launches.keys().copied().collect());
    let ledger = core.ledger.clone();
    let open = tokio::task::spawn_blocking(move || ledger.open_jobs())
        .await
        .map_err(|e| format!("ledger reader panicked: {e}"))?
        .map_err(|e| e.to_string())?;
    let mut ids: Vec<Uuid> = open.iter().map(|j| j.id).collect();
    let open_ids: HashSet<Uuid> = ids.iter().copied().collect();
    ids.extend(launches.keys().filter(|id| !open_ids.contains(id)));
    let states = if ids.is_empty() {
        HashMap::new()
    } else {
        match core.stacks.any().job_states(&ids).await {
            Ok(states) => {
                for (id, raw) in &states.unreadable {
                    tracing::warn!(
                        job = id,
                        state = raw,
                        "Buildkite reported a job state we do not know"
                    );
                }
                states.states.into_iter().collect::<HashMap<_, _>>()
            }
            Err(error) => {
                check_fatal(core, "reading job states", &error);
                return Err(format!("reading job states: {error}"));
            }
        }
    };
    let queues: HashMap<Uuid, String> = open.iter().map(|j| (j.id, j.queue.clone())).collect();
    let observed: Vec<Observed> = open
        .into_iter()
        .map(|job| {
            let launch = launches.get(&job.id).map(|(view, _)| view.clone());
            Observed {
                state: states.get(&job.id).copied(),
                launch,
                job,
            }
        })
        .collect();
    let strays: Vec<Stray> = launches
        .iter()
        .filter(|(id, _)| !open_ids.contains(id))
        .map(|(id, (view, _))| Stray {
            job: *id,
            state: states.get(id).copied(),
            launch: view.clone(),
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
    let owners: HashMap<Uuid, (String, u32)> = observed
        .iter()
        .map(|o| (o.job.id, (o.job.fleet.clone(), o.job.attempts)))
        .collect();
    let actions = decide(&observed, &strays, &policies, now_ms(), listed_at);
    Stats::add(&core.stats.reconcile_passes, 1);
    core.telemetry.reconcile_passes.inc();
    let backend_of = |job: &Uuid| -> Option<Arc<dyn Backend>> {
        launches
            .get(job)
            .map(|(_, b)| b.clone())
            .or_else(|| core.backend_for(*job))
    };
    execute(
        core, actions, &states, &queues, &owners, &launches, backend_of,
    )
    .await;
    Ok(())
}

async fn execute(
    core: &Arc<Core>,
    actions: Vec<Action>,
    states: &HashMap<Uuid, JobState>,
    queues: &HashMap<Uuid, String>,
    owners: &HashMap<Uuid, (String, u32)>,
    launches: &HashMap<Uuid, (LaunchView, Arc<dyn Backend>)>,
    backend_of: impl Fn(&Uuid) -> Option<Arc<dyn Backend>>,
) {
    let mut to_launch = Vec::new();
    let mut running = Vec::new();
    let mut closed = Vec::new();
    let mut adopted = Vec::new();
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
                if let Some((view, _)) = launches.get(&job) {
                    let (fleet, attempts) = owners.get(&job).cloned().unwrap_or_default();
                    adopted.push(LaunchRow {
                        name: LaunchName::for_job(job).to_string(),
                        job_id: job,
                        fleet,
                        attempt: attempts.max(1),
                        started_at_ms: view.started_at_ms,
                        ended_at_ms: None,
                        outcome: None,
                    });
                }
            }
            Action::Stop { job, reason } => {
                let first_request = core.state().stop_requested.insert(job);
                if let (true, Some(backend)) = (first_request, backend_of(&job)) {
                    tracing::info!(%job, reason, "stopping launch");
                    if let Err(error) = backend.stop(&LaunchName::for_job(job)).await {
                        core.state().stop_requested.remove(&job);
                        tracing::warn!(%error, %job, "stopping launch failed; will retry next pass");
                    }
                }
            }
            Action::Delete { job } => {
                core.state().stop_requested.remove(&job);
                if let Some(backend) = backend_of(&job) {
                    if let Err(error) = backend.delete(&LaunchName::for_job(job)).await {
                        tracing::warn!(%error, %job, "deleting launch failed; will retry next pass");
                    }
                }
            }
            Action::Relaunch { job, reason } => {
                tracing::info!(%job, reason, "relaunching");
                if let Some(backend) = backend_of(&job) {
                    if let Err(error) = backend.delete(&LaunchName::for_job(job)).await {
                        tracing::warn!(%error, %job, "deleting the dead launch failed; will retry next pass");
                        continue;
                    }
                }
                let ledger = core.ledger.clone();
                let written = tokio::task::spawn_blocking(move || {
                    ledger.record_launch_ended(job, &format!("relaunched: {reason}"))?;
                    ledger.record_relaunch(job, &reason)
                })
                .await;
                if let Ok(Err(e)) = written {
                    return core.fail(format!("cannot write the ledger: {e}"));
                }
                to_launch.push(job);
            }
            Action::Finish { job, reason } => {
                tracing::warn!(%job, reason, "finishing the job in Buildkite");
                let queue = queues.get(&job).map(String::as_str).unwrap_or_default();
                match core
                    .stacks
                    .for_queue(queue)
                    .finish_job(job, -1, &reason)
                    .await
                {
                    Ok(()) => closed.push((job, format!("finished by updraft: {reason}"))),
                    Err(error)
                        if error
                            .status()
                            .is_some_and(|s| s.as_u16() == 422 || s.as_u16() == 404) =>
                    {
                        closed.push((
                            job,
                            format!("finished by updraft: {reason} (Buildkite: {error})"),
                        ))
                    }
                    Err(error) => {
                        if check_fatal(core, "finishing a job", &error) {
                            return;
                        }
                        tracing::warn!(%error, %job, "finishing the job failed; will retry next pass");
                    }
                }
            }
        }
    }
    let ledger = core.ledger.clone();
    let closing = closed.clone();
    let written = tokio::task::spawn_blocking(move || {
        ledger.record_launched(&adopted)?;
        ledger.record_running(&running)?;
        ledger.record_done(&closing)
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return core.fail(format!("cannot write the ledger: {e}")),
        Err(e) => return core.fail(format!("ledger writer panicked: {e}")),
    }
    Stats::add(&core.stats.closed, closed.len() as u64);
    for (job, _) in &closed {
        core.release(*job);
    }
    launch_reserved(core, to_launch, states, queues).await;
}

/// Launch jobs the ledger holds as reserved. A job Buildkite lists as merely `scheduled`
/// lost its reservation (it expired, or the reserve call never landed): reserve it again
/// first, since only a reserved job gets a job acquisition token.
async fn launch_reserved(
    core: &Arc<Core>,
    jobs: Vec<Uuid>,
    states: &HashMap<Uuid, JobState>,
    queues: &HashMap<Uuid, String>,
) {
    let busy: HashSet<Uuid> = core.state().launching.clone();
    let jobs: Vec<Uuid> = jobs.into_iter().filter(|j| !busy.contains(j)).collect();
    let (unreserved, reserved): (Vec<Uuid>, Vec<Uuid>) = jobs
        .into_iter()
        .partition(|j| states.get(j) == Some(&JobState::Scheduled));
    let mut ready = reserved;
    let mut by_queue: std::collections::BTreeMap<&str, Vec<Uuid>> = Default::default();
    for job in unreserved {
        by_queue
            .entry(queues.get(&job).map(String::as_str).unwrap_or_default())
            .or_default()
            .push(job);
    }
    for (queue, jobs) in by_queue {
        match core
            .stacks
            .for_queue(queue)
            .batch_reserve(&jobs, Some(core.config.buildkite.reservation_expiry))
            .await
        {
            Ok(result) => ready.extend(result.reserved),
            Err(error) => {
                check_fatal(core, "reserving jobs again", &error);
                tracing::warn!(%error, queue, "reserving jobs again failed; will retry next pass");
            }
        }
    }
    for job in ready {
        let _ = core.to_launch.send(job);
    }
}
