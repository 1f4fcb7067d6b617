//! Relay mode, run inside the scheduler's process by the backend: register an agent with
//! the launch's job acquisition token, acquire the job (its token, command and environment),
//! start the build or task with only the command and the job's environment (no Buildkite
//! credential), heartbeat the agent, relay the CloudWatch Logs stream into the job log with
//! `updraft_agent::RelayExecutor`, and finish the job with the command's real exit status.
//!
//! Every step is recorded in the backend's state file before the next begins (the session
//! and job tokens, the request, the build or task, the log position around every chunk), so
//! a relay killed anywhere is resumed by the next process from its last record with no step
//! done twice: the job is acquired once and started once, the build started once (its
//! token), and every chunk sent once more at most with the same bytes (see
//! `updraft_agent::relay`). A cancel (the job on Buildkite, or `Backend::stop`) stops the
//! build or task; the job is finished as cancelled once it has stopped or the fleet's
//! `cancel_grace` has passed.

mod output;

pub use output::LogProgress;

use crate::backend::{Shared, MISSING_GRACE};
use crate::errors::ErrorClass;
use crate::metrics;
use crate::platform::{LaunchLabels, Platform, RelayedJob};
use crate::store::{LaunchRow, RelayRow};
use output::LogOutput;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use updraft_agent::log_streamer::gzip;
use updraft_agent::relay::{LogPosition, Resume};
use updraft_agent::{CommandOutcome, DriveError, DriveOptions, RelayExecutor, StopSwitch};
use updraft_backends::{LaunchName, LaunchPhase};
use updraft_buildkite::agent_api::{
    register, AgentSession, FinishRequest, Job, JobClient, LogChunk, RegisterRequest,
};
use updraft_buildkite::{ApiClient, AuthScheme, Secret};

/// Longest wait between attempts to start a build or task AWS is not taking right now.
const MAX_START_BACKOFF: Duration = Duration::from_secs(30);

/// What the relay keeps of the Job JSON once it has acquired the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub chunks_max_size_bytes: u64,
    pub chunks_interval_seconds: u64,
    pub log_max_size_bytes: u64,
    /// Why the relay will not run the job (it finishes it with this reason instead).
    pub refusal: Option<String>,
}

impl JobRecord {
    fn of(job: &Job, refusal: Option<String>) -> JobRecord {
        JobRecord {
            chunks_max_size_bytes: job.chunks_max_size_bytes,
            chunks_interval_seconds: job.chunks_interval_seconds,
            log_max_size_bytes: job.log_max_size_bytes,
            refusal,
        }
    }

    fn drive_options(
        &self,
        job_id: &str,
        status_interval: Duration,
        drain: Duration,
    ) -> DriveOptions {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": job_id,
            "chunks_max_size_bytes": self.chunks_max_size_bytes,
            "chunks_interval_seconds": self.chunks_interval_seconds,
            "log_max_size_bytes": self.log_max_size_bytes,
        }))
        .expect("a Job from these fields always parses");
        let mut options = DriveOptions::for_job(&job, status_interval);
        options.status_poll_interval = status_interval;
        options.output_drain_timeout = drain;
        options
    }
}

/// Run (or resume) the relay of launch `name` to its end and record how it ended.
pub(crate) async fn run<P: Platform>(shared: Arc<Shared<P>>, name: LaunchName, stop: StopSwitch) {
    let backend = metrics::Backend {
        backend: shared.platform.kind(),
    };
    let running = shared
        .metrics
        .relays_running
        .get_or_create(&backend)
        .clone();
    running.inc();
    let _running = scopeguard(move || {
        running.dec();
    });
    let outcome = match relay(&shared, &name, &stop).await {
        Ok(()) => LaunchPhase::Succeeded,
        Err(reason) => {
            tracing::warn!(launch = %name, reason, "the relay ended without relaying the job to its end");
            LaunchPhase::Failed { reason }
        }
    };
    let key = name.clone();
    let recorded = shared
        .store
        .run(move |store| {
            store.set_relay_finished(&key)?;
            store.set_outcome(&key, &outcome)
        })
        .await;
    if let Err(error) = recorded {
        tracing::error!(launch = %name, %error, "cannot record the end of a relay");
    }
    shared.relay_ended(&name);
}

/// Runs `action` when dropped (also when the relay task is aborted).
fn scopeguard<F: FnOnce()>(action: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(action) = self.0.take() {
                action();
            }
        }
    }
    Guard(Some(action))
}

async fn relay<P: Platform>(
    shared: &Arc<Shared<P>>,
    name: &LaunchName,
    stop: &StopSwitch,
) -> Result<(), String> {
    let key = name.clone();
    let (row, relay) = shared
        .store
        .run(move |store| Ok((store.launch(&key)?, store.relay(&key)?)))
        .await
        .map_err(|e| e.to_string())?;
    let (Some(row), Some(relay)) = (row, relay) else {
        return Err("its record is gone".into());
    };
    if relay.finished {
        return Ok(());
    }
    let session = session(shared, name, &relay).await?;
    let heartbeat = tokio::spawn(heartbeat(
        session.clone(),
        Duration::from_secs(relay.heartbeat_secs.max(1)),
    ));
    let _heartbeat = scopeguard(move || heartbeat.abort());
    let (client, record, row) = acquired(shared, name, &row, &relay, &session).await?;
    let result = match &record.refusal {
        Some(reason) => refuse(&client, reason).await,
        None => relay_build(shared, &row, &relay, client, &record, stop).await,
    };
    if let Err(error) = session.disconnect().await {
        tracing::debug!(launch = %name, %error, "disconnecting the relay's agent failed");
    }
    result
}

fn api_client<P: Platform>(
    shared: &Shared<P>,
    endpoint: &str,
    token: &str,
) -> Result<ApiClient, String> {
    ApiClient::with_http(
        shared.http.clone(),
        endpoint,
        &Secret::new(token),
        AuthScheme::Token,
        shared.options.client_options.clone(),
    )
    .map_err(|e| e.to_string())
}

/// The agent session: the recorded one, or a new registration with the acquisition token.
async fn session<P: Platform>(
    shared: &Shared<P>,
    name: &LaunchName,
    relay: &RelayRow,
) -> Result<AgentSession, String> {
    let retries = shared.options.agent_retries.clone();
    if let Some(token) = &relay.session_token {
        return Ok(AgentSession::new(
            api_client(shared, &relay.endpoint, token)?,
            retries,
        ));
    }
    let Some(acquisition_token) = &relay.acquisition_token else {
        return Err("it has neither an agent session nor a job acquisition token".into());
    };
    let request = RegisterRequest {
        name: name.to_string(),
        hostname: "updraft-relay".into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        script_eval_enabled: true,
        ignore_in_dispatches: true,
        version: env!("CARGO_PKG_VERSION").into(),
        build: "relay".into(),
        meta_data: relay
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        features: vec!["acquire-job".into()],
        ..RegisterRequest::default()
    };
    let (registered, session) = register(
        &relay.endpoint,
        &Secret::new(acquisition_token.clone()),
        &request,
        shared.options.client_options.clone(),
        retries,
    )
    .await
    .map_err(|e| format!("registering the relay's agent: {e}"))?;
    let (key, endpoint, token) = (
        name.clone(),
        session.client().base().to_string(),
        registered.access_token.expose().to_string(),
    );
    let heartbeat = registered.heartbeat_interval.max(1);
    shared
        .store
        .run(move |store| store.set_session(&key, &endpoint, &token, heartbeat))
        .await
        .map_err(|e| e.to_string())?;
    session
        .connect()
        .await
        .map_err(|e| format!("connecting the relay's agent: {e}"))?;
    Ok(session)
}

async fn heartbeat(session: AgentSession, every: Duration) {
    loop {
        if let Err(error) = session.heartbeat().await {
            tracing::warn!(%error, "the relay's agent heartbeat failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// The job's client and record, acquiring the job (and building its request) unless done.
async fn acquired<P: Platform>(
    shared: &Shared<P>,
    name: &LaunchName,
    row: &LaunchRow,
    relay: &RelayRow,
    session: &AgentSession,
) -> Result<(JobClient, JobRecord, LaunchRow), String> {
    let retries = shared.options.agent_retries.clone();
    if let (Some(token), Some(job)) = (&relay.job_token, &relay.job) {
        let record: JobRecord =
            serde_json::from_str(job).map_err(|e| format!("its job record cannot be read: {e}"))?;
        let client = JobClient::new(
            api_client(shared, session.client().base(), token)?,
            &relay.job_id,
            retries,
        );
        return Ok((client, record, row.clone()));
    }
    let job = session
        .acquire(&relay.job_id)
        .await
        .map_err(|e| format!("acquiring the job: {e}"))?;
    let client = session.job_client(&job).map_err(|e| e.to_string())?;
    let plan = relayed_job(shared, name, &row.fleet, &job)
        .and_then(|relayed| shared.platform.relay_request(&row.fleet, &relayed));
    let (record, request) = match plan {
        Ok(request) => (JobRecord::of(&job, None), Some(request)),
        Err(reason) => (JobRecord::of(&job, Some(reason)), None),
    };
    let token = job
        .token
        .as_ref()
        .filter(|t| !t.is_empty())
        .map(|t| t.expose().to_string())
        .or_else(|| relay.session_token.clone())
        .unwrap_or_default();
    let (key, kept, recorded) = (
        name.clone(),
        serde_json::to_string(&record).map_err(|e| e.to_string())?,
        request.clone(),
    );
    shared
        .store
        .run(move |store| store.set_acquired(&key, &token, &kept, recorded.as_deref()))
        .await
        .map_err(|e| e.to_string())?;
    let mut row = row.clone();
    row.request = request;
    Ok((client, record, row))
}

/// The command and environment the build or task gets: the job's, without any Buildkite
/// credential, checked against the fleet.
fn relayed_job<P: Platform>(
    shared: &Shared<P>,
    name: &LaunchName,
    fleet: &str,
    job: &Job,
) -> Result<RelayedJob, String> {
    let plugins = job.plugin_names();
    if !plugins.is_empty() {
        return Err(format!(
            "relay mode runs only the command, and this step uses plugins ({}); run it on a fleet in acquire mode",
            plugins.join(", ")
        ));
    }
    let command = job.command().ok_or("the job has no command")?;
    shared.platform.check(fleet, &job.env)?;
    let token = job
        .token
        .as_ref()
        .map(|t| t.expose().to_string())
        .unwrap_or_default();
    let env: BTreeMap<String, String> = job
        .env
        .iter()
        .filter(|(key, value)| !is_credential(key) && (token.is_empty() || **value != token))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let labels = LaunchLabels {
        launch: name.to_string(),
        fleet: fleet.to_string(),
        job: job.id.clone(),
        pipeline: job.env.get("BUILDKITE_PIPELINE_SLUG").cloned(),
        build: job.env.get("BUILDKITE_BUILD_NUMBER").cloned(),
    };
    Ok(RelayedJob {
        command,
        env,
        labels,
    })
}

/// Buildkite credentials an agent would hold or pass on; none reaches a relayed build.
fn is_credential(key: &str) -> bool {
    matches!(
        key,
        "BUILDKITE_AGENT_ACCESS_TOKEN" | "BUILDKITE_AGENT_TOKEN"
    ) || (key.starts_with("BUILDKITE_AGENT_") && key.ends_with("_TOKEN"))
}

/// Finish a job the relay will not run, with the reason as its log (each step may be
/// repeated after a crash: the same chunk again, a finish of a finished job).
async fn refuse(client: &JobClient, reason: &str) -> Result<(), String> {
    let text = format!("updraft: {reason}\n");
    if let Err(error) = client.start().await {
        tracing::debug!(%error, "starting a refused job failed (it may be started already)");
    }
    let gzipped = gzip(text.as_bytes()).map_err(|e| e.to_string())?;
    let chunk = LogChunk {
        sequence: 1,
        offset: 0,
        size: text.len() as u64,
        gzipped,
    };
    if let Err(error) = client.upload_chunk(&chunk).await {
        tracing::warn!(%error, "cannot upload why the job was refused");
    }
    let finish = FinishRequest {
        exit_status: "-1".into(),
        signal: None,
        signal_reason: Some("agent_refused".into()),
        finished_at: chrono::Utc::now().to_rfc3339(),
        chunks_failed_count: 0,
        ignore_agent_in_dispatches: None,
    };
    match client.finish(&finish).await {
        Ok(()) => Ok(()),
        Err(error) if error.status().is_some_and(|s| s.as_u16() == 422) => Ok(()),
        Err(error) => Err(format!("finishing a refused job: {error}")),
    }
}

/// Start the build or task (unless it was), relay its log and finish the job.
async fn relay_build<P: Platform>(
    shared: &Arc<Shared<P>>,
    row: &LaunchRow,
    relay: &RelayRow,
    client: JobClient,
    record: &JobRecord,
    stop: &StopSwitch,
) -> Result<(), String> {
    let name = &row.name;
    let id = match &row.platform_id {
        Some(id) => id.clone(),
        None => match start(shared, row, stop).await {
            Ok(id) => id,
            Err(reason) => return refuse(&client, &reason).await,
        },
    };
    let options = &shared.options;
    let drain = options.log_settle + Duration::from_secs(30);
    let grace = shared.platform.cancel_grace(&row.fleet);
    let executor = RelayExecutor::with_options(
        client,
        record.drive_options(&relay.job_id, options.job_status_interval, drain),
        grace,
    );
    let job_stop = executor.stop_switch();
    let output = LogOutput::new(
        shared.clone(),
        name.clone(),
        id.clone(),
        LogProgress {
            token: relay.log_token.clone(),
            skip: relay.log_skip,
        },
        job_stop.clone(),
    );
    let resume = Resume {
        started: relay.started,
        next: LogPosition {
            sequence: relay.sequence,
            offset: relay.offset,
        },
        pending: relay.pending,
    };
    let command = ended(shared, &row.fleet, &id, stop.clone(), job_stop);
    match executor.run_resumable(output, resume, command).await {
        Ok(report) => {
            tracing::info!(launch = %name, exit_status = report.exit_status, bytes = report.log.bytes, "relayed job finished");
            Ok(())
        }
        Err(error) => {
            if let Err(stop_error) = shared
                .platform
                .stop(&row.fleet, &id, "the relay stopped")
                .await
            {
                tracing::warn!(launch = %name, error = %stop_error, "cannot stop the build or task of a failed relay");
            }
            Err(match error {
                DriveError::Start { source, .. } => {
                    format!("the job could not be started: {source}")
                }
                other => other.to_string(),
            })
        }
    }
}

/// Start the recorded request, retrying while AWS is unavailable; the build or task id, or
/// why it cannot be started (to finish the job with).
async fn start<P: Platform>(
    shared: &Arc<Shared<P>>,
    row: &LaunchRow,
    stop: &StopSwitch,
) -> Result<String, String> {
    let mut wait = Duration::from_millis(500);
    loop {
        match shared.start_recorded(row).await {
            Ok(()) => break,
            Err(error) if error.class == ErrorClass::Unavailable && stop.reason().is_none() => {
                shared.metrics.failed(shared.platform.kind(), &error);
                tracing::warn!(launch = %row.name, %error, "starting the relayed job's build or task failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_START_BACKOFF);
            }
            Err(error) => {
                shared.metrics.failed(shared.platform.kind(), &error);
                return Err(format!(
                    "{} would not run the job: {error}",
                    shared.platform.kind()
                ));
            }
        }
    }
    let key = row.name.clone();
    let row = shared
        .store
        .run(move |store| store.launch(&key))
        .await
        .map_err(|e| e.to_string())?;
    row.and_then(|r| r.platform_id)
        .ok_or_else(|| "the start was not recorded".to_string())
}

/// The relayed command's outcome: wait for the build or task to end, stopping it once a
/// stop is asked for (by the backend or by the job's cancellation).
async fn ended<P: Platform>(
    shared: &Arc<Shared<P>>,
    fleet: &str,
    id: &str,
    backend_stop: StopSwitch,
    job_stop: StopSwitch,
) -> CommandOutcome {
    let mut changes = shared.board.subscribe();
    let waiting_since = Instant::now();
    let mut stopping = false;
    loop {
        match shared.board.get(id) {
            Some(observed) => {
                if let Some(outcome) = observed.outcome {
                    return outcome;
                }
            }
            None if waiting_since.elapsed() > MISSING_GRACE => {
                return CommandOutcome::FailedToStart(format!(
                    "{} no longer knows {id}",
                    shared.platform.kind()
                ));
            }
            None => {}
        }
        let reason = backend_stop.reason().or(job_stop.reason());
        if let (Some(reason), false) = (reason, stopping) {
            stopping = true;
            job_stop.request(reason);
            if let Err(error) = shared
                .platform
                .stop(fleet, id, "the job was cancelled")
                .await
            {
                tracing::warn!(id, %error, "cannot stop a relayed build or task; the grace period still ends the job");
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = backend_stop.requested(), if !stopping => {}
            _ = job_stop.requested(), if !stopping => {}
        }
    }
}
