//! The agent's life (reference §1.5): register, connect, heartbeat, then either acquire one
//! named job (one-shot, `--acquire-job`) or ping for jobs and run them one at a time (pool
//! mode) until told to disconnect, idle too long, or stopped; then disconnect. After a
//! one-shot job the agent pings until it learns it is not paused, so a paused agent stays
//! until it is resumed or told to disconnect.

use crate::driver::{DriveError, JobReport, StopReason, StopSwitch};
use crate::runner::{run_local_job, RunnerConfig};
use rand::Rng;
use reqwest::StatusCode;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use updraft_buildkite::agent_api::{
    register, AcquireError, AgentRetries, AgentSession, Job, PingAction, RegisterRequest,
    RegisterResponse,
};
use updraft_buildkite::{ApiError, ClientOptions, Secret};

/// Everything `updraft agent start` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Agent API base, e.g. `https://agent.buildkite.com/v3`.
    pub endpoint: String,
    /// An agent (cluster) token or a job acquisition token.
    pub token: Secret,
    /// `%hostname`, `%spawn` and `%random` are replaced.
    pub name: String,
    pub tags: Vec<String>,
    pub priority: Option<String>,
    pub acquire_job: Option<String>,
    pub disconnect_after_job: bool,
    /// Disconnect after this long without a job (pool mode); `None` waits forever.
    pub disconnect_after_idle_timeout: Option<Duration>,
    pub build_path: PathBuf,
    pub hooks_path: Option<PathBuf>,
    pub shell: Vec<String>,
    pub cancel_grace_period: Duration,
    pub client: ClientOptions,
    pub retries: AgentRetries,
    /// Cap on the cancellation poll interval (the server's `job_status_interval` may be longer).
    pub max_status_poll_interval: Duration,
    pub upload_workers: usize,
    pub output_drain_timeout: Duration,
    pub remove_build_dirs: bool,
    /// Adds to each job's environment before its hooks and checkout (e.g. secrets).
    pub environment: Option<std::sync::Arc<dyn crate::EnvironmentProvider>>,
}

impl AgentConfig {
    pub fn new(endpoint: &str, token: Secret, build_path: PathBuf) -> Self {
        let defaults = RunnerConfig::new(build_path.clone(), endpoint);
        AgentConfig {
            endpoint: endpoint.to_string(),
            token,
            name: "%hostname-%spawn".into(),
            tags: Vec::new(),
            priority: None,
            acquire_job: None,
            disconnect_after_job: false,
            disconnect_after_idle_timeout: None,
            build_path,
            hooks_path: None,
            shell: defaults.shell,
            cancel_grace_period: defaults.cancel_grace_period,
            client: ClientOptions::default(),
            retries: AgentRetries::default(),
            max_status_poll_interval: defaults.max_status_poll_interval,
            upload_workers: defaults.upload_workers,
            output_drain_timeout: defaults.output_drain_timeout,
            remove_build_dirs: defaults.remove_build_dir,
            environment: None,
        }
    }
}

/// How the agent is asked to stop from outside (signals, or a test).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Finish the running job (if any), then disconnect.
    pub graceful: CancellationToken,
    /// Stop the running job now (`signal_reason: agent_stop`), then disconnect.
    pub immediate: CancellationToken,
}

/// What the agent did before it disconnected.
#[derive(Debug, Clone, Default)]
pub struct AgentRun {
    pub agent_id: String,
    pub jobs: Vec<JobReport>,
}

impl AgentRun {
    /// The exit status of the last job run, for `--reflect-exit-status`.
    pub fn last_exit_code(&self) -> Option<i32> {
        self.jobs.last().map(JobReport::exit_code)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent token was refused by {endpoint} ({source})")]
    TokenRefused { endpoint: String, source: ApiError },
    #[error("could not register with {endpoint}: {source}")]
    Register { endpoint: String, source: ApiError },
    #[error("could not connect the agent: {0}")]
    Connect(ApiError),
    #[error("job {job_id} was not found ({source})")]
    UnknownJob { job_id: String, source: ApiError },
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("the server refused a ping, so the agent stops: {0}")]
    Ping(ApiError),
    #[error("the server refused a heartbeat, so the agent stops: {0}")]
    Heartbeat(ApiError),
    #[error(transparent)]
    Job(#[from] DriveError),
    #[error("invalid agent setting: {0}")]
    Config(String),
}

impl AgentError {
    /// The process exit code `buildkite-agent start` uses for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Acquire(AcquireError::Rejected { .. }) => 27,
            AgentError::Acquire(AcquireError::StillLocked { .. }) => 28,
            _ => 1,
        }
    }
}

/// Run the agent until it disconnects.
pub async fn run_agent(config: AgentConfig, shutdown: Shutdown) -> Result<AgentRun, AgentError> {
    if config.shell.is_empty() {
        return Err(AgentError::Config(
            "the shell must name a program (e.g. \"/bin/bash -e -c\")".into(),
        ));
    }
    let one_shot = config.acquire_job.is_some();
    let request = register_request(&config, one_shot);
    let (registered, session) = register(
        &config.endpoint,
        &config.token,
        &request,
        config.client.clone(),
        config.retries.clone(),
    )
    .await
    .map_err(|source| {
        if matches!(
            source.status(),
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        ) {
            AgentError::TokenRefused {
                endpoint: config.endpoint.clone(),
                source,
            }
        } else {
            AgentError::Register {
                endpoint: config.endpoint.clone(),
                source,
            }
        }
    })?;
    tracing::info!(agent_id = %registered.id, name = %registered.name, "registered");
    let agent = Registered::new(&config, registered, session);
    agent.session.connect().await.map_err(AgentError::Connect)?;
    let heartbeat_failed = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        agent.session.clone(),
        agent.heartbeat_interval,
        heartbeat_failed.clone(),
    ));

    let result = match &config.acquire_job {
        Some(job_id) => agent.one_shot(job_id, &shutdown, &heartbeat_failed).await,
        None => agent.pool(&config, &shutdown, &heartbeat_failed).await,
    };
    heartbeat.abort();
    let heartbeat_error = heartbeat.await.ok().flatten();
    if let Err(error) = agent.session.disconnect().await {
        tracing::warn!(%error, "could not disconnect; the server will mark the agent lost");
    }
    match heartbeat_error {
        Some(error) if result.is_ok() => Err(AgentError::Heartbeat(error)),
        _ => result,
    }
}

fn register_request(config: &AgentConfig, one_shot: bool) -> RegisterRequest {
    let hostname = hostname();
    let name = config
        .name
        .replace("%hostname", &hostname)
        .replace("%spawn", "1")
        .replace("%random", &format!("{:08x}", rand::rng().random::<u32>()));
    let mut features = vec!["no-plugins".to_string()];
    if one_shot {
        features.push("acquire-job".into());
    }
    if config.disconnect_after_job {
        features.push("disconnect-after-job".into());
    }
    if config.disconnect_after_idle_timeout.is_some() {
        features.push("disconnect-after-idle".into());
    }
    RegisterRequest {
        name,
        hostname,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        script_eval_enabled: true,
        ignore_in_dispatches: one_shot,
        priority: config.priority.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        build: "updraft".into(),
        meta_data: config.tags.clone(),
        pid: Some(std::process::id()),
        machine_id: None,
        features,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Sends heartbeats until aborted; returns the error that ended them (a non-retryable one,
/// or one that outlasted its retries) after pulling `failed`.
async fn heartbeat_loop(
    session: AgentSession,
    interval: Duration,
    failed: CancellationToken,
) -> Option<ApiError> {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = session.heartbeat().await {
            tracing::error!(%error, "heartbeat failed; stopping the agent");
            failed.cancel();
            return Some(error);
        }
    }
}

struct Registered {
    session: AgentSession,
    access_token: Secret,
    agent_id: String,
    ping_interval: Duration,
    heartbeat_interval: Duration,
    job_status_interval: Duration,
    runner: RunnerConfig,
}

impl Registered {
    fn new(config: &AgentConfig, registered: RegisterResponse, session: AgentSession) -> Self {
        let secs = |s: u64, fallback: u64| Duration::from_secs(if s == 0 { fallback } else { s });
        let endpoint = session.client().base().to_string();
        let runner = RunnerConfig {
            hooks_path: config.hooks_path.clone(),
            shell: config.shell.clone(),
            cancel_grace_period: config.cancel_grace_period,
            agent_name: registered.name.clone(),
            agent_id: registered.id.clone(),
            tags: if registered.meta_data.is_empty() {
                config.tags.clone()
            } else {
                registered.meta_data.clone()
            },
            upload_workers: config.upload_workers,
            output_drain_timeout: config.output_drain_timeout,
            ignore_agent_in_dispatches: config.disconnect_after_job || config.acquire_job.is_some(),
            max_status_poll_interval: config.max_status_poll_interval,
            remove_build_dir: config.remove_build_dirs,
            withheld: vec![config.token.clone()],
            environment: config.environment.clone(),
            ..RunnerConfig::new(config.build_path.clone(), &endpoint)
        };
        Registered {
            session,
            access_token: registered.access_token,
            agent_id: registered.id,
            ping_interval: secs(registered.ping_interval, 10),
            heartbeat_interval: secs(registered.heartbeat_interval, 60),
            job_status_interval: secs(registered.job_status_interval, 1),
            runner,
        }
    }

    async fn one_shot(
        &self,
        job_id: &str,
        shutdown: &Shutdown,
        heartbeat_failed: &CancellationToken,
    ) -> Result<AgentRun, AgentError> {
        let job = tokio::select! {
            acquired = self.session.acquire(job_id) => acquired.map_err(|error| match error {
                AcquireError::Api(source) if source.status() == Some(StatusCode::NOT_FOUND) => {
                    AgentError::UnknownJob { job_id: job_id.to_string(), source }
                }
                other => AgentError::Acquire(other),
            })?,
            () = shutdown.graceful.cancelled() => return Ok(self.run_record(Vec::new())),
            () = heartbeat_failed.cancelled() => return Ok(self.run_record(Vec::new())),
        };
        tracing::info!(job_id, "acquired job");
        let report = self.run_job(&job, shutdown, heartbeat_failed).await?;
        self.stay_while_paused(shutdown, heartbeat_failed).await;
        Ok(self.run_record(vec![report]))
    }

    /// After an acquired job (reference §1.5): ping until the answer is not `pause`. A
    /// `disconnect`, a stop, a refused ping, or pings failing `PAUSE_CHECK_ATTEMPTS` times in
    /// a row end the wait; the job is already finished, so none of them is an error.
    async fn stay_while_paused(&self, shutdown: &Shutdown, heartbeat_failed: &CancellationToken) {
        let mut failures = 0;
        let mut wait = Duration::ZERO;
        let mut announced = false;
        loop {
            if shutdown.graceful.is_cancelled() || heartbeat_failed.is_cancelled() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.graceful.cancelled() => return,
                () = heartbeat_failed.cancelled() => return,
            }
            wait = self.ping_interval + jitter(self.ping_interval);
            let ping = match self.session.ping().await {
                Ok(ping) => ping,
                Err(error) if error.is_retryable() && failures + 1 < PAUSE_CHECK_ATTEMPTS => {
                    failures += 1;
                    tracing::warn!(%error, "ping failed; trying again to learn whether the agent is paused");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not learn whether the agent is paused; disconnecting");
                    return;
                }
            };
            failures = 0;
            if let Some(message) = &ping.message {
                tracing::info!(message, "message from the server");
            }
            match ping.action() {
                PingAction::Pause => {
                    if !announced {
                        tracing::info!(
                            "the agent is paused; waiting to be resumed before disconnecting"
                        );
                        announced = true;
                    }
                }
                PingAction::Disconnect => {
                    tracing::info!("the server asked the agent to disconnect");
                    return;
                }
                PingAction::RunJob(job_id) => {
                    tracing::warn!(job_id, "ignoring a job offered to an --acquire-job agent");
                    return;
                }
                PingAction::Idle => return,
            }
        }
    }

    async fn pool(
        &self,
        config: &AgentConfig,
        shutdown: &Shutdown,
        heartbeat_failed: &CancellationToken,
    ) -> Result<AgentRun, AgentError> {
        let mut jobs = Vec::new();
        let mut idle_since = Instant::now();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.graceful.cancelled() => break,
                () = heartbeat_failed.cancelled() => break,
            }
            wait = self.ping_interval + jitter(self.ping_interval);
            let ping = match self.session.ping().await {
                Ok(ping) => ping,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "ping failed; trying again at the next interval");
                    continue;
                }
                Err(error) => return Err(AgentError::Ping(error)),
            };
            if let Some(message) = &ping.message {
                tracing::info!(message, "message from the server");
            }
            match ping.action() {
                PingAction::Disconnect => {
                    tracing::info!("the server asked the agent to disconnect");
                    break;
                }
                PingAction::Pause => idle_since = Instant::now(),
                PingAction::RunJob(job_id) => {
                    let job = match self.session.accept(&job_id).await {
                        Ok(job) => job,
                        Err(error) => {
                            tracing::warn!(job_id, %error, "could not accept the job; going back to pinging");
                            continue;
                        }
                    };
                    tracing::info!(job_id, "accepted job");
                    jobs.push(self.run_job(&job, shutdown, heartbeat_failed).await?);
                    if config.disconnect_after_job {
                        break;
                    }
                    idle_since = Instant::now();
                    wait = jitter(self.ping_interval);
                }
                PingAction::Idle => {
                    if let Some(timeout) = config.disconnect_after_idle_timeout {
                        if idle_since.elapsed() >= timeout {
                            tracing::info!(idle_secs = timeout.as_secs(), "idle timeout reached");
                            break;
                        }
                    }
                }
            }
        }
        Ok(self.run_record(jobs))
    }

    async fn run_job(
        &self,
        job: &Job,
        shutdown: &Shutdown,
        heartbeat_failed: &CancellationToken,
    ) -> Result<JobReport, AgentError> {
        let client = self
            .session
            .job_client(job)
            .map_err(|source| AgentError::Config(source.to_string()))?;
        let access_token = job
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| self.access_token.clone());
        let stop = StopSwitch::default();
        let run = run_local_job(
            &client,
            job,
            &access_token,
            self.job_status_interval,
            &self.runner,
            &stop,
        );
        tokio::pin!(run);
        let report = loop {
            tokio::select! {
                report = &mut run => break report?,
                () = shutdown.immediate.cancelled(), if stop.reason().is_none() => stop.request(StopReason::AgentStop),
                () = heartbeat_failed.cancelled(), if stop.reason().is_none() => stop.request(StopReason::AgentStop),
            }
        };
        tracing::info!(
            job_id = %report.job_id,
            exit_status = %report.exit_status,
            log_bytes = report.log.bytes,
            "finished job"
        );
        Ok(report)
    }

    fn run_record(&self, jobs: Vec<JobReport>) -> AgentRun {
        AgentRun {
            agent_id: self.agent_id.clone(),
            jobs,
        }
    }
}

/// Failed pings in a row after which a one-shot agent stops asking whether it is paused.
const PAUSE_CHECK_ATTEMPTS: u32 = 5;

/// A random wait in `0..=interval`, so many agents do not ping in step.
fn jitter(interval: Duration) -> Duration {
    let millis = interval.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}
