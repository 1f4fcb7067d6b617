//! The launch pipeline, as tasks joined by channels: the dispatcher admits waiting jobs as the
//! limits allow (and tells Buildkite why the rest wait); the reserver writes the ledger and
//! reserves them in batches; the launcher issues a job acquisition token right before each
//! launch and starts it on the fleet's backend; the ledger writer records confirmed launches;
//! the notifier posts the reasons. Each stage drains everything queued when it wakes, so a
//! burst becomes a few batch calls and a lone push event goes straight through.
//!
//! Each task is a thin loop around a step function (`admit`, `reserve_admitted`,
//! `prepare_launches`, `launch_one`, `commit_launched`, `post_notes`) that makes its outside
//! calls through the core's ports and spawns nothing, so the simulation test can run the same
//! steps in any interleaving it chooses.

use crate::core::{Core, Phase};
use crate::ledger::{LaunchRow, NewReservation};
use crate::stats::{Pickup, Stats};
use crate::telemetry::labels;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use updraft_backends::{BackendError, JobContext, LaunchName, LaunchOutcome, LaunchSpec};
use updraft_buildkite::stacks::{Notification, MAX_BATCH};
use updraft_model::Secret;
use uuid::Uuid;

/// Launch calls in flight at once across all backends.
const LAUNCH_CONCURRENCY: usize = 256;
/// How often the dispatcher looks again without being woken (launch-rate refills).
const DISPATCH_TICK: Duration = Duration::from_millis(250);

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
        crate::pool::intake::overflow_due(&core);
        admit(&core);
    }
}

/// Admit what the limits allow (to the reserver) and tell Buildkite why the rest wait.
pub(crate) fn admit(core: &Core) {
    let mut notes = Vec::new();
    let admitted = {
        let mut state = core.state();
        let admitted = state.limiter.admit(core.now_ms());
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

pub(crate) async fn reserver(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<(usize, Uuid)>) {
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        if !reserve_admitted(&core, batch).await {
            return;
        }
    }
}

/// Record admitted jobs in the ledger, then reserve them queue by queue; `false` when the
/// scheduler must stop.
pub(crate) async fn reserve_admitted(core: &Core, batch: Vec<(usize, Uuid)>) -> bool {
    let expiry = core.config.buildkite.reservation_expiry;
    let now = core.now_ms();
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
                    expires_at_ms: now + expiry.as_millis() as i64,
                    context: tracked.context.clone(),
                })
            })
            .collect()
    };
    let mut by_queue: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for row in &rows {
        by_queue.entry(row.queue.clone()).or_default().push(row.id);
    }
    // The ledger learns of the reservation before Buildkite does: a crash between the two
    // leaves a ledger row the reconciler resolves, never a reservation nobody knows.
    if core
        .ledger(move |ledger| ledger.record_reserved(&rows))
        .await
        .is_none()
    {
        return false;
    }
    for (queue, ids) in by_queue {
        if !reserve_batch(core, &queue, ids).await {
            return false;
        }
    }
    true
}

/// Reserve one queue's jobs; `false` when the scheduler must stop.
async fn reserve_batch(core: &Core, queue: &str, ids: Vec<Uuid>) -> bool {
    let expiry = core.config.buildkite.reservation_expiry;
    match core.buildkite.reserve(queue, &ids, expiry).await {
        Ok(reservation) => {
            let reserved: HashSet<Uuid> = reservation.reserved.iter().copied().collect();
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
                let closed = core
                    .ledger(move |ledger| {
                        ledger.record_not_reserved(
                            &refused,
                            "not reserved: taken elsewhere or no longer scheduled",
                        )
                    })
                    .await;
                match closed {
                    Some(closed) => closed.into_iter().for_each(|job| core.release(job)),
                    None => return false,
                }
            }
            for job in reservation.reserved {
                let _ = core.to_launch.send(job);
            }
        }
        Err(error) => {
            if core.check_fatal("reserving jobs", &error) {
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

/// A job with its token, recorded as launching, ready for `launch_one`.
pub(crate) struct Ready {
    pub job: Uuid,
    pub attempt: u32,
    pub token: Secret,
}

pub(crate) async fn launcher(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<Uuid>) {
    let permits = Arc::new(Semaphore::new(LAUNCH_CONCURRENCY));
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        let Some(ready) = prepare_launches(&core, batch).await else {
            return;
        };
        for launch in ready {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let core = core.clone();
            tokio::spawn(async move {
                launch_one(&core, launch).await;
                drop(permit);
            });
        }
    }
}

pub(crate) async fn ledger_writer(core: Arc<Core>, mut inbox: mpsc::UnboundedReceiver<LaunchRow>) {
    while let Some(batch) = drain(&core, &mut inbox, 4 * MAX_BATCH).await {
        if !commit_launched(&core, batch).await {
            return;
        }
    }
}

/// Issue tokens for a batch of jobs (a job already being launched, asked for twice, e.g. by
/// the reserver and the reconciler, is taken once) and record the launch intents; `None` when
/// the scheduler must stop.
pub(crate) async fn prepare_launches(core: &Core, batch: Vec<Uuid>) -> Option<Vec<Ready>> {
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
    let mut ready = Vec::new();
    for (queue, jobs) in by_queue {
        ready.extend(issue_tokens(core, &queue, jobs).await?);
    }
    Some(ready)
}

/// Issue one queue's tokens and write the launch intents; `None` when the scheduler must stop.
async fn issue_tokens(core: &Core, queue: &str, jobs: Vec<Uuid>) -> Option<Vec<Ready>> {
    let lifetime = core.config.buildkite.token_lifetime;
    let issued = match core.buildkite.issue_tokens(queue, &jobs, lifetime).await {
        Ok(issued) => issued,
        Err(error) => {
            if core.check_fatal("issuing job acquisition tokens", &error) {
                return None;
            }
            tracing::warn!(%error, count = jobs.len(), queue, "issuing job acquisition tokens failed; the reconciler will retry");
            let mut state = core.state();
            for job in &jobs {
                state.launching.remove(job);
            }
            return Some(Vec::new());
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
    let attempts = core
        .ledger(move |ledger| ledger.record_launching(&with_token))
        .await?;
    {
        // Jobs the ledger would not move to launching (closed meanwhile) are dropped.
        let launching: HashSet<Uuid> = attempts.iter().map(|(j, _)| *j).collect();
        let mut state = core.state();
        for job in tokens.keys().filter(|j| !launching.contains(j)) {
            state.launching.remove(job);
        }
    }
    Some(
        attempts
            .into_iter()
            .filter_map(|(job, attempt)| {
                let token = tokens.get(&job)?.clone();
                Some(Ready {
                    job,
                    attempt,
                    token,
                })
            })
            .collect(),
    )
}

fn spec_for(
    core: &Core,
    fleet_index: usize,
    job: Uuid,
    token: Secret,
    context: JobContext,
) -> LaunchSpec {
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
        job: context,
        env,
        secrets,
        command,
        deadline: fleet.launch_deadline(),
    }
}

/// Start one launch on its fleet's backend and route the outcome: a started launch goes to
/// the ledger writer; a failure is handled by its class (refused → the reconciler fails the
/// job once; at capacity → the fleet is held back; unavailable → the job backs off; fatal →
/// the scheduler stops).
pub(crate) async fn launch_one(core: &Core, ready: Ready) {
    let Ready {
        job,
        attempt,
        token,
    } = ready;
    let tracked = core
        .state()
        .jobs
        .get(&job)
        .and_then(|t| Some((t.fleet?, t.context.clone())));
    let Some((fleet_index, mut context)) = tracked else {
        core.state().launching.remove(&job);
        return;
    };
    let Some(backend) = core.fleet_backends[fleet_index].clone() else {
        core.state().launching.remove(&job);
        return;
    };
    if backend.needs_job_details() {
        let details = {
            let _permit = core.reading_details.acquire().await;
            core.buildkite.job_details(&context.queue, job).await
        };
        match details {
            Ok(details) => {
                context.env = details.env;
                context.command = details.command;
            }
            Err(error) => {
                let failure = BackendError::Unavailable {
                    backend: backend.kind(),
                    detail: format!("reading the job's details from Buildkite: {error}"),
                };
                return launch_failed(core, job, fleet_index, failure).await;
            }
        }
    }
    let spec = spec_for(core, fleet_index, job, token, context);
    let fleet = spec.fleet.clone();
    let result = backend.launch(&spec).await;
    let now = core.now_ms();
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
            core.clear_hold(fleet_index);
            core.state().backoff.remove(&job);
            // An existing launch of this name (found after a restart) is recorded, not
            // counted: it was launched once already.
            if outcome == LaunchOutcome::Started {
                Stats::add(&core.stats.launched, 1);
            }
            let _ = core.to_commit.send(LaunchRow {
                name: spec.name.to_string(),
                job_id: job,
                fleet: fleet.clone(),
                attempt,
                started_at_ms: now,
                ended_at_ms: None,
                outcome: None,
            });
            record_pickup(core, job, &fleet, now);
        }
        Err(error) => launch_failed(core, job, fleet_index, error).await,
    }
}

async fn launch_failed(core: &Core, job: Uuid, fleet: usize, error: BackendError) {
    Stats::add(&core.stats.launch_failures, 1);
    let backend = core.fleet_backends[fleet]
        .as_ref()
        .map_or("none", |backend| backend.kind());
    core.telemetry
        .backend_failures
        .get_or_create(&labels(&[
            ("backend", backend),
            ("call", "launch"),
            ("kind", error.metric_label()),
        ]))
        .inc();
    let detail = error.to_string();
    let fleet_name = &core.fleet(fleet).name;
    match error {
        BackendError::Invalid { detail: reason, .. } => {
            tracing::warn!(%job, reason, "the backend refused the launch; the job will be failed with the reason");
            core.ledger(move |ledger| ledger.record_refused(job, &reason))
                .await;
            core.wake_reconcile.notify_one();
        }
        BackendError::AtCapacity { .. } => {
            tracing::info!(%job, detail, "the backend is at capacity; holding the fleet back");
            let note = detail.clone();
            core.ledger(move |ledger| ledger.record_launch_failed(job, &note))
                .await;
            core.hold_fleet(fleet, format!("fleet {fleet_name} held back: {detail}"));
        }
        BackendError::Unavailable { .. } => {
            tracing::warn!(%job, detail, "launch failed; retrying after a backoff");
            let note = detail.clone();
            core.ledger(move |ledger| ledger.record_launch_failed(job, &note))
                .await;
            core.back_off(job);
        }
        BackendError::Fatal { .. } => {
            core.fail(format!("launching: {detail}"));
        }
    }
    core.state().launching.remove(&job);
}

fn record_pickup(core: &Core, job: Uuid, fleet: &str, now: i64) {
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
                ("fleet", fleet),
                ("source", pickup.source.as_str()),
            ]))
            .observe(pickup.latency().as_secs_f64());
        core.stats.record_pickup(pickup);
    }
}

/// Confirmed launches reach the ledger in batches; the intent written before each launch
/// keeps a crash in between recoverable (the reconciler adopts the running launch). A job
/// stays marked as launching until its launch is committed here, so no second launch
/// attempt can slip in between the backend's answer and the ledger's record. `false` when
/// the scheduler must stop.
pub(crate) async fn commit_launched(core: &Core, batch: Vec<LaunchRow>) -> bool {
    let jobs: Vec<Uuid> = batch.iter().map(|row| row.job_id).collect();
    if core
        .ledger(move |ledger| ledger.record_launched(&batch))
        .await
        .is_none()
    {
        return false;
    }
    let mut state = core.state();
    for job in jobs {
        state.launching.remove(&job);
    }
    true
}

pub(crate) async fn notifier(
    core: Arc<Core>,
    mut inbox: mpsc::UnboundedReceiver<(String, Notification)>,
) {
    while let Some(batch) = drain(&core, &mut inbox, MAX_BATCH).await {
        if !post_notes(&core, batch).await {
            return;
        }
    }
}

/// Post a batch of notifications, queue by queue; `false` when the scheduler must stop.
pub(crate) async fn post_notes(core: &Core, batch: Vec<(String, Notification)>) -> bool {
    let mut by_queue: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
    for (queue, note) in batch {
        by_queue.entry(queue).or_default().push(note);
    }
    for (queue, notes) in by_queue {
        match core.buildkite.notify(&queue, &notes).await {
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
                if core.check_fatal("posting notifications", &error) {
                    return false;
                }
                tracing::warn!(%error, count = notes.len(), queue, "posting notifications failed");
            }
        }
    }
    true
}
