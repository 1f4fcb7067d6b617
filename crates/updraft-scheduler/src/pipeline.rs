//! The launch pipeline, as four tasks joined by channels: the dispatcher admits waiting jobs
//! as the limits allow (and tells Buildkite why the rest wait); the reserver writes the
//! ledger and reserves them in batches; the launcher issues a job acquisition token right
//! before each launch and starts it on the fleet's backend; the notifier posts the reasons.
//! Each stage drains everything queued when it wakes, so a burst becomes a few batch calls
//! and a lone push event goes straight through.

use crate::core::{Core, Phase};
use crate::ledger::{now_ms, LaunchRow, NewReservation};
use crate::stats::{Pickup, Stats};
use crate::telemetry::labels;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use updraft_backends::{JobContext, LaunchName, LaunchOutcome, LaunchSpec};
use updraft_buildkite::stacks::{Notification, MAX_BATCH};
use updraft_buildkite::ApiError;
use updraft_model::Secret;
use uuid::Uuid;

/// Launch calls in flight at once across all backends.
const LAUNCH_CONCURRENCY: usize = 256;
/// How often the dispatcher looks again without being woken (launch-rate refills).
const DISPATCH_TICK: Duration = Duration::from_millis(250);

/// A 401 or 403 from Buildkite will not fix itself: stop with a clear message.
pub(crate) fn check_fatal(core: &Core, what: &str, error: &ApiError) -> bool {
    match error.status().map(|s| s.as_u16()) {
        Some(401) => {
            core.fail(format!(
                "{what}: Buildkite refused the agent token (401 Unauthorized); check [buildkite] agent_token: {error}"
            ));
            true
        }
        _ => false,
    }
}

/// Wait for work, then take everything queued (up to `max`); `None` once stopping.
async fn drain<T>(core: &Core, rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let first = tokio::select! {
        item = rx.recv() => item?,
        _ = core.stopped() => return None,
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

pub(crate) async fn dispatcher(core: Arc<Core>) {
    loop {
        tokio::select! {
            _ = core.wake_dispatch.notified() => {}
            _ = tokio::time::sleep(DISPATCH_TICK) => {}
            _ = core.stopped() => return,
        }
        if core.is_stopping() {
            return;
        }
        let mut notes = Vec::new();
        let admitted = {
            let mut state = core.state();
            let admitted = state.limiter.admit(now_ms());
            for (_, job) in &admitted {
                if let Some(tracked) = state.jobs.get_mut(job) {
                    tracked.phase = Phase::Owned;
                    tracked.reason = None;
                }
            }
            for (job, reason) in state.limiter.hold_reasons() {
                if let Some(tracked) = state.jobs.get_mut(&job) {
                    if tracked.reason.as_ref() != Some(&reason) {
                        tracked.reason = Some(reason.clone());
                    }
                }
                if state.notified.get(&job) != Some(&reason) {
                    state.notified.insert(job, reason.clone());
                    let queue = state
                        .jobs
                        .get(&job)
                        .map(|t| t.queue.clone())
                        .unwrap_or_default();
                    notes.push((
                        queue,
                        Notification {
                            job_uuid: job,
                            detail: reason,
                            timestamp: None,
                        },
                    ));
                }
            }
            core.stats.set_in_flight(state.limiter.in_flight());
            admitted
        };
        for item in admitted {
            let _ = core.to_reserve.send(item);
        }
        for note in notes {
            let _ = core.to_notify.send(note);
        }
    }
}

pub(crate) async fn reserver(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<(usize, Uuid)>) {
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        let expiry = core.config.buildkite.reservation_expiry;
        let rows: Vec<NewReservation> = {
            let state = core.state();
            batch
                .iter()
                .filter_map(|(fleet, job)| {
                    let tracked = state.jobs.get(job)?;
                    Some(NewReservation {
                        id: *job,
                        fleet: core.fleet(*fleet).name.clone(),
                        queue: tracked.queue.clone(),
                        priority: tracked.priority,
                        scheduled_at_ms: tracked.scheduled_at_ms,
                        source: tracked.source.as_str(),
                        expires_at_ms: now_ms() + expiry.as_millis() as i64,
                    })
                })
                .collect()
        };
        let mut by_queue: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
        for row in &rows {
            by_queue.entry(row.queue.clone()).or_default().push(row.id);
        }
        // The ledger learns of the reservation before Buildkite does: a crash between the
        // two leaves a ledger row the reconciler resolves, never a reservation nobody knows.
        let ledger = core.ledger.clone();
        let written = tokio::task::spawn_blocking(move || ledger.record_reserved(&rows)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return core.fail(format!("cannot write the ledger: {e}")),
            Err(e) => return core.fail(format!("ledger writer panicked: {e}")),
        }
        for (queue, ids) in by_queue {
            if !reserve_batch(&core, &queue, ids).await {
                return;
            }
        }
    }
}

/// Reserve one queue's jobs; `false` when the scheduler must stop.
async fn reserve_batch(core: &Arc<Core>, queue: &str, ids: Vec<Uuid>) -> bool {
    let expiry = core.config.buildkite.reservation_expiry;
    match core
        .stacks
        .for_queue(queue)
        .batch_reserve(&ids, Some(expiry))
        .await
    {
        Ok(reservation) => {
            let reserved: std::collections::HashSet<Uuid> =
                reservation.reserved.iter().copied().collect();
            let refused: Vec<Uuid> = ids
                .iter()
                .copied()
                .filter(|id| !reserved.contains(id))
                .collect();
            if !refused.is_empty() {
                tracing::debug!(
                    count = refused.len(),
                    queue,
                    "Buildkite did not reserve some jobs"
                );
                let ledger = core.ledger.clone();
                let closed = tokio::task::spawn_blocking(move || {
                    ledger.record_not_reserved(
                        &refused,
                        "not reserved: taken elsewhere or no longer scheduled",
                    )
                })
                .await;
                match closed {
                    Ok(Ok(closed)) => closed.into_iter().for_each(|job| core.release(job)),
                    Ok(Err(e)) => {
                        core.fail(format!("cannot write the ledger: {e}"));
                        return false;
                    }
                    Err(e) => {
                        core.fail(format!("ledger writer panicked: {e}"));
                        return false;
                    }
                }
            }
            for job in reservation.reserved {
                let _ = core.to_launch.send(job);
            }
        }
        Err(error) => {
            if check_fatal(core, "reserving jobs", &error) {
                return false;
            }
            // The ledger already holds these as reserved; the reconciler reserves and
            // launches them on its next pass.
            tracing::warn!(%error, count = ids.len(), queue, "reserving jobs failed; the reconciler will retry");
            core.wake_reconcile.notify_one();
        }
    }
    true
}

pub(crate) async fn launcher(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<Uuid>) {
    let permits = Arc::new(Semaphore::new(LAUNCH_CONCURRENCY));
    let (launched_tx, launched_rx) = mpsc::unbounded_channel();
    tokio::spawn(ledger_writer(core.clone(), launched_rx));
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        // A job already being launched (asked for twice, e.g. by the reserver and the
        // reconciler) is taken once.
        let mut by_queue: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
        {
            let mut state = core.state();
            for job in batch {
                let Some(queue) = state.jobs.get(&job).map(|t| t.queue.clone()) else {
                    continue;
                };
                if state.launching.insert(job) {
                    by_queue.entry(queue).or_default().push(job);
                }
            }
        }
        for (queue, jobs) in by_queue {
            if !issue_and_launch(&core, &queue, jobs, &permits, &launched_tx).await {
                return;
            }
        }
    }
}

/// Issue tokens for one queue's jobs and start their launches; `false` when the scheduler
/// must stop.
async fn issue_and_launch(
    core: &Arc<Core>,
    queue: &str,
    jobs: Vec<Uuid>,
    permits: &Arc<Semaphore>,
    launched_tx: &mpsc::UnboundedSender<LaunchRow>,
) -> bool {
    let lifetime = core.config.buildkite.token_lifetime;
    let issued = match core
        .stacks
        .for_queue(queue)
        .issue_job_acquisition_tokens(&jobs, lifetime)
        .await
    {
        Ok(issued) => issued,
        Err(error) => {
            if check_fatal(core, "issuing job acquisition tokens", &error) {
                return false;
            }
            tracing::warn!(%error, count = jobs.len(), queue, "issuing job acquisition tokens failed; the reconciler will retry");
            let mut state = core.state();
            for job in &jobs {
                state.launching.remove(job);
            }
            return true;
        }
    };
    if !issued.not_issued.is_empty() {
        // Usually a job whose agent took it meanwhile; the reconciler settles the rest.
        tracing::info!(jobs = ?issued.not_issued, "Buildkite issued no job acquisition token; those jobs are not launched");
        let mut state = core.state();
        for job in &issued.not_issued {
            state.launching.remove(job);
        }
    }
    let tokens: HashMap<Uuid, Secret> = issued
        .job_acquisition_tokens
        .into_iter()
        .map(|t| (t.job_uuid, t.job_acquisition_token))
        .collect();
    let with_token: Vec<Uuid> = jobs
        .iter()
        .copied()
        .filter(|j| tokens.contains_key(j))
        .collect();
    let ledger = core.ledger.clone();
    let attempts =
        match tokio::task::spawn_blocking(move || ledger.record_launching(&with_token)).await {
            Ok(Ok(attempts)) => attempts,
            Ok(Err(e)) => {
                core.fail(format!("cannot write the ledger: {e}"));
                return false;
            }
            Err(e) => {
                core.fail(format!("ledger writer panicked: {e}"));
                return false;
            }
        };
    {
        // Jobs the ledger would not move to launching (closed meanwhile) are dropped.
        let launching: std::collections::HashSet<Uuid> = attempts.iter().map(|(j, _)| *j).collect();
        let mut state = core.state();
        for job in tokens.keys().filter(|j| !launching.contains(j)) {
            state.launching.remove(job);
        }
    }
    for (job, attempt) in attempts {
        let Some(token) = tokens.get(&job).cloned() else {
            continue;
        };
        let permit = match permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return false,
        };
        let core = core.clone();
        let launched_tx = launched_tx.clone();
        tokio::spawn(async move {
            launch_one(&core, job, attempt, token, &launched_tx).await;
            drop(permit);
        });
    }
    true
}

fn spec_for(core: &Core, fleet_index: usize, job: Uuid, token: Secret) -> LaunchSpec {
    let fleet = core.fleet(fleet_index);
    let id = job.to_string();
    let name = LaunchName::for_job(job);
    let mut env = fleet.template.env.clone();
    env.insert(
        "BUILDKITE_AGENT_ENDPOINT".into(),
        core.config.buildkite.endpoint.clone(),
    );
    env.insert("BUILDKITE_AGENT_ACQUIRE_JOB".into(), id.clone());
    env.insert("BUILDKITE_AGENT_NAME".into(), name.to_string());
    env.insert(
        "BUILDKITE_AGENT_TAGS".into(),
        fleet.tags.to_strings().join(","),
    );
    env.insert("UPDRAFT_FLEET".into(), fleet.name.clone());
    let secrets = [("BUILDKITE_AGENT_TOKEN".to_string(), token)]
        .into_iter()
        .collect();
    let command = fleet
        .template
        .command
        .iter()
        .map(|arg| arg.replace("{job_id}", &id))
        .collect();
    LaunchSpec {
        name,
        job_id: job,
        fleet: fleet.name.clone(),
        job: JobContext {
            queue: fleet.queue.clone(),
            ..JobContext::default()
        },
        env,
        secrets,
        command,
        deadline: fleet.launch_deadline(),
    }
}

async fn launch_one(
    core: &Core,
    job: Uuid,
    attempt: u32,
    token: Secret,
    launched: &mpsc::UnboundedSender<LaunchRow>,
) {
    let Some(fleet_index) = core.state().jobs.get(&job).and_then(|t| t.fleet) else {
        core.state().launching.remove(&job);
        return;
    };
    let spec = spec_for(core, fleet_index, job, token);
    let fleet = spec.fleet.clone();
    let result = core.fleet_backends[fleet_index].launch(&spec).await;
    let now = now_ms();
    let outcome = match &result {
        Ok(LaunchOutcome::Started) => "started",
        Ok(LaunchOutcome::AlreadyExists) => "already_exists",
        Err(_) => "failed",
    };
    core.telemetry
        .launches
        .get_or_create(&labels(&[("fleet", &fleet), ("outcome", outcome)]))
        .inc();
    match result {
        Ok(outcome) => {
            // An existing launch of this name (found after a restart) is recorded, not
            // counted: it was launched once already.
            if outcome == LaunchOutcome::Started {
                Stats::add(&core.stats.launched, 1);
            }
            let _ = launched.send(LaunchRow {
                name: spec.name.to_string(),
                job_id: job,
                fleet: fleet.clone(),
                attempt,
                started_at_ms: now,
                ended_at_ms: None,
                outcome: None,
            });
            let pickup = {
                let mut state = core.state();
                state.jobs.get_mut(&job).filter(|t| !t.picked_up).map(|t| {
                    t.picked_up = true;
                    Pickup {
                        job,
                        source: t.source,
                        scheduled_at_ms: t.scheduled_at_ms,
                        seen_at_ms: t.seen_at_ms,
                        launched_at_ms: now,
                    }
                })
            };
            if let Some(pickup) = pickup {
                core.telemetry
                    .pickup_latency
                    .get_or_create(&labels(&[
                        ("fleet", &fleet),
                        ("source", pickup.source.as_str()),
                    ]))
                    .observe(pickup.latency().as_secs_f64());
                core.stats.record_pickup(pickup);
            }
        }
        Err(error) => {
            Stats::add(&core.stats.launch_failures, 1);
            tracing::warn!(%error, %job, fleet, "launch failed; the reconciler will retry it");
            let ledger = core.ledger.clone();
            let detail = error.to_string();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || ledger.record_launch_failed(job, &detail)).await
            {
                core.fail(format!("cannot write the ledger: {e}"));
            }
            core.state().launching.remove(&job);
        }
    }
}

/// Confirmed launches reach the ledger in batches; the intent written before each launch
/// keeps a crash in between recoverable (the reconciler adopts the running launch). A job
/// stays marked as launching until its launch is committed here, so no second launch
/// attempt can slip in between the backend's answer and the ledger's record.
async fn ledger_writer(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<LaunchRow>) {
    while let Some(batch) = drain(&core, &mut inbox, 4 * MAX_BATCH).await {
        let ledger = core.ledger.clone();
        let jobs: Vec<Uuid> = batch.iter().map(|row| row.job_id).collect();
        match tokio::task::spawn_blocking(move || ledger.record_launched(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return core.fail(format!("cannot write the ledger: {e}")),
            Err(e) => return core.fail(format!("ledger writer panicked: {e}")),
        }
        let mut state = core.state();
        for job in jobs {
            state.launching.remove(&job);
        }
    }
}

pub(crate) async fn notifier(
    core: Arc<Core>,
    mut inbox: mpsc::UnboundedReceiver<(String, Notification)>,
) {
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        let mut by_queue: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
        for (queue, note) in batch {
            by_queue.entry(queue).or_default().push(note);
        }
        for (queue, notes) in by_queue {
            match core.stacks.for_queue(&queue).notify(&notes).await {
                Ok(result) => {
                    for error in result.errors {
                        tracing::debug!(
                            error = error.error,
                            count = error.indexes.len(),
                            "Buildkite refused some notifications"
                        );
                    }
                }
                Err(error) => {
                    if check_fatal(&core, "posting notifications", &error) {
                        return;
                    }
                    tracing::warn!(%error, count = notes.len(), queue, "posting notifications failed");
                }
            }
        }
    }
}
