//! The one `Backend` both AWS platforms share, over their `Platform`: launches recorded in
//! the backend's state file before anything is asked of AWS, started under a token that makes
//! a repeated start the same start, listed from that file (so a launch whose `launch` call
//! returned is always listed) with states from a batched describe, stopped, ended at their
//! deadline, and deleted with everything they made (per-launch SSM parameters, an ECS task
//! definition revision).
//!
//! In acquire mode a launch is an agent for its one job, its job acquisition token in a
//! per-launch SSM SecureString. In relay mode `launch` records the launch and hands it to a
//! relay task in this process (`crate::relay`), which acquires the job itself, starts the
//! build or task with only the command, relays its CloudWatch Logs into the job log and
//! finishes the job; the launch lists as running until the relay is done. Relays in flight
//! when the process died are resumed when the backend is opened again.

mod board;
mod shared;

use shared::{tick_forever, Starting};

use crate::errors::{AwsError, ErrorClass};
use crate::metrics::{AwsMetrics, LaunchKind};
use crate::parameters::Parameters;
use crate::platform::Platform;
use crate::settings::{AwsSettings, RunMode};
use crate::store::{LaunchRow, RelayRow, Store, StoreError};
use crate::AwsClients;
use async_trait::async_trait;
use board::Board;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use updraft_agent::StopSwitch;
use updraft_backends::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus,
};
use updraft_buildkite::agent_api::AgentRetries;
use updraft_buildkite::ClientOptions;

/// The variable the scheduler puts the job acquisition token in.
pub const TOKEN_VARIABLE: &str = "BUILDKITE_AGENT_TOKEN";
/// The variable the scheduler puts the agent API endpoint in.
pub const ENDPOINT_VARIABLE: &str = "BUILDKITE_AGENT_ENDPOINT";
/// The variable the scheduler puts the fleet's agent tags in.
pub const TAGS_VARIABLE: &str = "BUILDKITE_AGENT_TAGS";
/// A build or task the platform does not list this long after it started (or after a relay
/// began waiting for it) is gone.
pub(crate) const MISSING_GRACE: Duration = Duration::from_secs(120);

/// Timing and client settings of a backend, from `[aws]` (tests shorten them).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub status_interval: Duration,
    pub log_poll_interval: Duration,
    pub log_settle: Duration,
    /// How often a relay reads its job's state to notice a cancel.
    pub job_status_interval: Duration,
    pub agent_retries: AgentRetries,
    pub client_options: ClientOptions,
}

impl BackendOptions {
    pub fn from_settings(settings: &AwsSettings) -> BackendOptions {
        BackendOptions {
            status_interval: settings.status_interval.get(),
            log_poll_interval: settings.log_poll_interval.get(),
            log_settle: settings.log_settle.get(),
            job_status_interval: Duration::from_millis(500),
            agent_retries: AgentRetries::default(),
            client_options: ClientOptions::default(),
        }
    }
}

/// A CodeBuild or ECS backend. Cheap to clone.
pub struct AwsBackend<P: Platform> {
    shared: Arc<Shared<P>>,
}

impl<P: Platform> Clone for AwsBackend<P> {
    fn clone(&self) -> Self {
        AwsBackend {
            shared: self.shared.clone(),
        }
    }
}

/// What the backend, its ticker and its relays share.
pub(crate) struct Shared<P: Platform> {
    pub platform: P,
    pub store: Store,
    pub parameters: Parameters,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub options: BackendOptions,
    pub metrics: AwsMetrics,
    pub board: Board,
    /// One connection pool for every relay's agent API calls.
    pub http: reqwest::Client,
    relays: Mutex<HashMap<LaunchName, Relaying>>,
    /// Launches whose start this process is making right now.
    starting: Mutex<HashSet<LaunchName>>,
}

/// A relay running in this process.
struct Relaying {
    stop: StopSwitch,
    task: JoinHandle<()>,
}

fn store_failure(backend: &'static str) -> impl Fn(StoreError) -> BackendError {
    move |error| BackendError::Fatal {
        backend,
        detail: error.to_string(),
    }
}

impl<P: Platform> AwsBackend<P> {
    /// Open the backend's state under `[aws] state_dir`, finish what a previous process left
    /// half done (a start whose answer was lost), resume its relays and start the ticker
    /// that refreshes states and enforces deadlines. The platform is checked by its own
    /// preflight before this.
    pub async fn open(
        platform: P,
        clients: &AwsClients,
        settings: &AwsSettings,
        options: BackendOptions,
        metrics: AwsMetrics,
    ) -> Result<AwsBackend<P>, BackendError> {
        let kind = platform.kind();
        let dir = Path::new(&settings.state_dir).to_path_buf();
        let store =
            tokio::task::spawn_blocking(move || Store::open(&dir, &format!("{kind}.sqlite")))
                .await
                .map_err(|e| BackendError::Fatal {
                    backend: kind,
                    detail: format!("opening the state file: {e}"),
                })?
                .map_err(store_failure(kind))?;
        let http = reqwest::Client::builder()
            .timeout(options.client_options.request_timeout)
            .connect_timeout(options.client_options.connect_timeout)
            .build()
            .map_err(|e| BackendError::Fatal {
                backend: kind,
                detail: format!("building the HTTP client: {e}"),
            })?;
        let shared = Arc::new(Shared {
            parameters: Parameters::new(
                clients.ssm(),
                &settings.parameter_prefix,
                settings.parameter_kms_key.clone(),
            ),
            logs: clients.logs(),
            platform,
            store,
            options,
            metrics,
            board: Board::new(),
            http,
            relays: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
        });
        let backend = AwsBackend { shared };
        let rows = backend.rows().await?;
        let relays = rows
            .iter()
            .filter(|row| row.mode == RunMode::Relay && row.outcome.is_none())
            .count();
        if !rows.is_empty() {
            tracing::info!(
                backend = kind,
                launches = rows.len(),
                relays,
                "found launches from before"
            );
        }
        for row in rows.into_iter().filter(|row| row.outcome.is_none()) {
            match row.mode {
                RunMode::Relay => backend.shared.spawn_relay(&row.name),
                RunMode::Acquire if row.platform_id.is_none() => {
                    if let Err(error) = backend.shared.recover_start(&row).await {
                        tracing::warn!(launch = %row.name, %error, "cannot settle an interrupted start yet; will retry");
                    }
                }
                RunMode::Acquire => {}
            }
        }
        tokio::spawn(tick_forever(Arc::downgrade(&backend.shared)));
        Ok(backend)
    }

    /// Stop every relay task in this process at once, as if it had been killed: nothing is
    /// finished or recorded. Their state stays for a backend opened later to resume.
    pub fn abandon_relays(&self) {
        let relays: Vec<Relaying> = self
            .shared
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, relaying)| relaying)
            .collect();
        for relaying in relays {
            relaying.task.abort();
        }
    }

    /// The state file (for operators and tests).
    pub fn state_path(&self) -> &Path {
        self.shared.store.path()
    }

    async fn rows(&self) -> Result<Vec<LaunchRow>, BackendError> {
        self.shared
            .store
            .run(|store| store.launches())
            .await
            .map_err(store_failure(self.shared.platform.kind()))
    }

    fn invalid(&self, spec: &LaunchSpec, detail: String) -> BackendError {
        BackendError::Invalid {
            backend: self.shared.platform.kind(),
            name: spec.name.to_string(),
            detail,
        }
    }

    fn new_row(&self, spec: &LaunchSpec, mode: RunMode, parameters: Vec<String>) -> LaunchRow {
        let now = Utc::now().timestamp_millis();
        let deadline_ms = i64::try_from(spec.deadline.as_millis()).unwrap_or(i64::MAX);
        LaunchRow {
            name: spec.name.clone(),
            fleet: spec.fleet.clone(),
            mode,
            // The clock part makes a relaunch after a delete a new start, not the old one.
            token: format!("{}-{now}", spec.name),
            request: None,
            platform_id: None,
            parameters,
            extra: None,
            created_at_ms: now,
            deadline_at_ms: now.saturating_add(deadline_ms),
            outcome: None,
            stop_requested: false,
        }
    }

    async fn launch_agent(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let shared = &self.shared;
        let kind = shared.platform.kind();
        let names = shared.parameters.names(&spec.name, &spec.secrets);
        let row = self.new_row(spec, RunMode::Acquire, names.values().cloned().collect());
        let inserted = {
            let row = row.clone();
            shared
                .store
                .run(move |store| store.insert(&row, None))
                .await
                .map_err(store_failure(kind))?
        };
        if !inserted {
            return Ok(LaunchOutcome::AlreadyExists);
        }
        self.start_agent(spec, &row).await?;
        shared
            .metrics
            .launches
            .get_or_create(&LaunchKind {
                backend: kind,
                mode: "acquire",
            })
            .inc();
        Ok(LaunchOutcome::Started)
    }

    /// Write the launch's secrets, record its request, start it. A passing failure keeps the
    /// record (a retry starts with the same token); any other undoes it. Nothing is done
    /// while another task of this process is starting the same launch.
    async fn start_agent(&self, spec: &LaunchSpec, row: &LaunchRow) -> Result<(), BackendError> {
        let shared = &self.shared;
        let kind = shared.platform.kind();
        let Some(_starting) = Starting::try_claim(shared, &spec.name) else {
            return Ok(());
        };
        let attempt = async {
            shared.parameters.put_all(&spec.name, &spec.secrets).await?;
            let names = shared.parameters.names(&spec.name, &spec.secrets);
            let request = shared
                .platform
                .agent_request(spec, &names)
                .map_err(|detail| AwsError {
                    operation: "launch",
                    code: None,
                    class: ErrorClass::Invalid,
                    detail,
                })?;
            let parameters: Vec<String> = names.values().cloned().collect();
            let (name, recorded) = (spec.name.clone(), request.clone());
            shared
                .store
                .run(move |store| store.set_request(&name, &recorded, &parameters))
                .await
                .map_err(|e| AwsError::internal("recording the request", e))?;
            let mut row = row.clone();
            row.request = Some(request);
            shared.start_recorded(&row).await
        };
        match attempt.await {
            Ok(()) => Ok(()),
            Err(error) => {
                shared.metrics.failed(kind, &error);
                if error.class != ErrorClass::Unavailable {
                    shared.forget_failed_start(row).await;
                }
                Err(error.into_backend(kind, spec.name.as_str()))
            }
        }
    }

    async fn launch_relay(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let shared = &self.shared;
        let kind = shared.platform.kind();
        let endpoint = spec
            .env
            .get(ENDPOINT_VARIABLE)
            .ok_or_else(|| self.invalid(spec, format!("the launch has no {ENDPOINT_VARIABLE}")))?;
        let token = spec
            .secrets
            .get(TOKEN_VARIABLE)
            .ok_or_else(|| self.invalid(spec, format!("the launch has no {TOKEN_VARIABLE}")))?;
        let row = self.new_row(spec, RunMode::Relay, Vec::new());
        let relay = RelayRow {
            endpoint: endpoint.clone(),
            job_id: spec.job_id.to_string(),
            tags: spec.env.get(TAGS_VARIABLE).cloned().unwrap_or_default(),
            acquisition_token: Some(token.expose().to_string()),
            ..RelayRow::default()
        };
        let inserted = shared
            .store
            .run(move |store| store.insert(&row, Some(&relay)))
            .await
            .map_err(store_failure(kind))?;
        if !inserted {
            return Ok(LaunchOutcome::AlreadyExists);
        }
        shared
            .metrics
            .launches
            .get_or_create(&LaunchKind {
                backend: kind,
                mode: "relay",
            })
            .inc();
        shared.spawn_relay(&spec.name);
        Ok(LaunchOutcome::Started)
    }

    fn phase_of(&self, row: &LaunchRow) -> (LaunchPhase, Option<String>) {
        if let Some(outcome) = &row.outcome {
            return (outcome.clone(), None);
        }
        let observed = row
            .platform_id
            .as_deref()
            .and_then(|id| self.shared.board.get(id));
        match observed {
            // A relay lists as running until it has finished its job.
            Some(observed) if row.mode == RunMode::Relay && observed.phase.is_finished() => {
                (LaunchPhase::Running, None)
            }
            Some(observed) => (observed.phase, observed.detail),
            None if row.mode == RunMode::Relay && row.platform_id.is_some() => {
                (LaunchPhase::Running, None)
            }
            None => (LaunchPhase::Pending, None),
        }
    }
}

#[async_trait]
impl<P: Platform> Backend for AwsBackend<P> {
    fn kind(&self) -> &'static str {
        self.shared.platform.kind()
    }

    fn needs_job_details(&self) -> bool {
        true
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let kind = self.kind();
        let Some(mode) = self.shared.platform.mode(&spec.fleet) else {
            return Err(self.invalid(
                spec,
                format!("fleet {} has no [fleet.{kind}] table", spec.fleet),
            ));
        };
        self.shared
            .platform
            .check(&spec.fleet, &spec.job.env)
            .map_err(|detail| self.invalid(spec, detail))?;
        let name = spec.name.clone();
        let existing = self
            .shared
            .store
            .run(move |store| store.launch(&name))
            .await
            .map_err(store_failure(kind))?;
        if let Some(row) = existing {
            let unstarted =
                row.mode == RunMode::Acquire && row.platform_id.is_none() && row.outcome.is_none();
            if unstarted {
                self.start_agent(spec, &row).await?;
            }
            return Ok(LaunchOutcome::AlreadyExists);
        }
        match mode {
            RunMode::Acquire => self.launch_agent(spec).await,
            RunMode::Relay => self.launch_relay(spec).await,
        }
    }

    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        let kind = self.kind();
        self.shared
            .stop(name, "stop requested")
            .await
            .map_err(|error| {
                self.shared.metrics.failed(kind, &error);
                error.into_backend(kind, name.as_str())
            })
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        let kind = self.kind();
        if let Err(error) = self.shared.refresh().await {
            return Err(error.into_backend(kind, ""));
        }
        let rows = self.rows().await?;
        Ok(rows
            .iter()
            .map(|row| {
                let (phase, detail) = self.phase_of(row);
                LaunchStatus {
                    name: row.name.clone(),
                    fleet: row.fleet.clone(),
                    phase,
                    started_at: DateTime::from_timestamp_millis(row.created_at_ms)
                        .unwrap_or_default(),
                    detail,
                }
            })
            .collect())
    }

    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        let shared = &self.shared;
        let kind = self.kind();
        let relaying = shared
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(relaying) = relaying {
            relaying.task.abort();
        }
        let key = name.clone();
        let Some(row) = shared
            .store
            .run(move |store| store.launch(&key))
            .await
            .map_err(store_failure(kind))?
        else {
            return Ok(());
        };
        let fail = |error: AwsError| {
            shared.metrics.failed(kind, &error);
            error.into_backend(kind, name.as_str())
        };
        if let (None, Some(id)) = (&row.outcome, &row.platform_id) {
            shared
                .platform
                .stop(&row.fleet, id, "launch deleted")
                .await
                .map_err(fail)?;
        }
        shared
            .parameters
            .delete_all(&row.parameters)
            .await
            .map_err(fail)?;
        if let Some(extra) = &row.extra {
            shared.platform.clean_up(extra).await.map_err(fail)?;
        }
        let key = name.clone();
        shared
            .store
            .run(move |store| store.delete(&key))
            .await
            .map_err(store_failure(kind))?;
        if let Some(id) = &row.platform_id {
            shared.board.forget(id);
        }
        Ok(())
    }
}
