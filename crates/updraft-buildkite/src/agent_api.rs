//! The agent API v3 client (reference §1): register with an agent token or a job acquisition
//! token, then a session (connect, ping, heartbeat, accept, acquire, disconnect) and, per job,
//! a job-token client (start, log chunks, state, finish, meta-data, pipeline upload,
//! annotations). Server-sent `request_headers` (only `Buildkite-*`) are replayed on every
//! later call of the session and its jobs. Each call retries as the reference says for it.

use crate::http::{
    decode_json, path_segment, ApiClient, ApiError, AuthScheme, ClientOptions, RetryPolicy,
};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use updraft_model::{JobState, Secret};

/// How many times, and how patiently, each kind of call is retried. The defaults follow the
/// reference's attempt counts with shorter first waits; tests pass faster ones.
#[derive(Debug, Clone)]
pub struct AgentRetries {
    pub register: RetryPolicy,
    pub connect: RetryPolicy,
    pub heartbeat: RetryPolicy,
    pub accept: RetryPolicy,
    /// start, finish and job-state-independent job calls.
    pub job_call: RetryPolicy,
    pub chunk: RetryPolicy,
    pub disconnect: RetryPolicy,
    /// Acquire's attempts count 423 (job not yet runnable) as well as 429/5xx.
    pub acquire: RetryPolicy,
}

impl Default for AgentRetries {
    fn default() -> Self {
        let fixed = |attempts: u32, wait: Duration, deadline: Duration| RetryPolicy {
            max_attempts: attempts,
            initial_backoff: wait,
            max_backoff: wait,
            deadline,
        };
        let exponential =
            |attempts: u32, first: Duration, max: Duration, deadline: Duration| RetryPolicy {
                max_attempts: attempts,
                initial_backoff: first,
                max_backoff: max,
                deadline,
            };
        AgentRetries {
            register: fixed(30, Duration::from_secs(10), Duration::from_secs(300)),
            connect: fixed(10, Duration::from_secs(5), Duration::from_secs(60)),
            heartbeat: fixed(10, Duration::from_secs(5), Duration::from_secs(60)),
            accept: fixed(30, Duration::from_secs(5), Duration::from_secs(150)),
            job_call: exponential(
                12,
                Duration::from_millis(500),
                Duration::from_secs(30),
                Duration::from_secs(3600),
            ),
            chunk: exponential(
                12,
                Duration::from_millis(500),
                Duration::from_secs(30),
                Duration::from_secs(3600),
            ),
            disconnect: fixed(4, Duration::from_secs(1), Duration::from_secs(10)),
            acquire: exponential(
                7,
                Duration::from_secs(1),
                Duration::from_secs(64),
                Duration::from_secs(330),
            ),
        }
    }
}

impl AgentRetries {
    /// Every call retried quickly: for tests and benchmarks against a local emulator.
    pub fn fast() -> Self {
        let quick = |attempts: u32| RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            deadline: Duration::from_secs(60),
        };
        AgentRetries {
            register: quick(10),
            connect: quick(10),
            heartbeat: quick(10),
            accept: quick(10),
            job_call: quick(20),
            chunk: quick(20),
            disconnect: quick(4),
            acquire: quick(7),
        }
    }
}

/// `POST /register` body (reference §1.6.1).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisterRequest {
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub script_eval_enabled: bool,
    pub ignore_in_dispatches: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    pub version: String,
    pub build: String,
    pub meta_data: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    pub features: Vec<String>,
}

/// `POST /register` answer.
#[derive(Clone, Deserialize)]
pub struct RegisterResponse {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub access_token: Secret,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ping_interval: u64,
    #[serde(default)]
    pub job_status_interval: u64,
    #[serde(default)]
    pub heartbeat_interval: u64,
    #[serde(default)]
    pub meta_data: Vec<String>,
}

impl fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("access_token", &self.access_token)
            .field("endpoint", &self.endpoint)
            .field("ping_interval", &self.ping_interval)
            .field("job_status_interval", &self.job_status_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PingJob {
    pub id: String,
}

/// `GET /ping` answer (reference §1.6.3).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PingResponse {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub job: Option<PingJob>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
}

/// What a ping asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingAction {
    Disconnect,
    Pause,
    RunJob(String),
    Idle,
}

impl PingResponse {
    pub fn action(&self) -> PingAction {
        match self.action.as_deref() {
            Some("disconnect") => PingAction::Disconnect,
            Some("pause") => PingAction::Pause,
            _ => match &self.job {
                Some(job) if !job.id.is_empty() => PingAction::RunJob(job.id.clone()),
                _ => PingAction::Idle,
            },
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeartbeatResponse {
    #[serde(default)]
    pub sent_at: Option<String>,
    #[serde(default)]
    pub received_at: Option<String>,
}

/// The command step inside the Job JSON; only the fields the runner reads are typed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobStep {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub command: Option<Value>,
    #[serde(default)]
    pub commands: Option<Value>,
    #[serde(default)]
    pub plugins: Option<Value>,
    #[serde(default)]
    pub signature: Option<Value>,
}

/// The Job JSON from accept / acquire (reference §2.1).
#[derive(Clone, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub step: JobStep,
    #[serde(default)]
    pub chunks_max_size_bytes: u64,
    #[serde(default)]
    pub chunks_interval_seconds: u64,
    #[serde(default)]
    pub log_max_size_bytes: u64,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub runnable_at: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
}

impl fmt::Debug for Job {
    /// The env may hold a pipeline's secrets, so only the shape is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("env_vars", &self.env.len())
            .field("chunks_max_size_bytes", &self.chunks_max_size_bytes)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// The script to run: `BUILDKITE_COMMAND`, else the step's `command`/`commands` (a list
    /// is joined with newlines, as the Go agent does).
    pub fn command(&self) -> Option<String> {
        if let Some(command) = self
            .env
            .get("BUILDKITE_COMMAND")
            .filter(|c| !c.trim().is_empty())
        {
            return Some(command.clone());
        }
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        };
        self.step
            .command
            .as_ref()
            .and_then(text)
            .or_else(|| self.step.commands.as_ref().and_then(text))
            .filter(|c| !c.trim().is_empty())
    }

    /// The plugin names the step asks for, from `BUILDKITE_PLUGINS` (a JSON array of one-key
    /// objects) or `step.plugins`. Empty, `null` and `[]` mean none.
    pub fn plugin_names(&self) -> Vec<String> {
        let from_env = self
            .env
            .get("BUILDKITE_PLUGINS")
            .filter(|raw| !raw.trim().is_empty())
            .map(|raw| {
                serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone()))
            });
        let value = from_env
            .or_else(|| self.step.plugins.clone())
            .unwrap_or(Value::Null);
        plugin_names_of(&value)
    }
}

fn plugin_names_of(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().flat_map(plugin_names_of).collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        Value::String(s) if s.trim().is_empty() || s.trim() == "null" => Vec::new(),
        other => vec![other
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| other.to_string())],
    }
}

/// `PUT jobs/{id}/finish` body (reference §1.6.11).
#[derive(Debug, Clone, Serialize)]
pub struct FinishRequest {
    pub exit_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_reason: Option<String>,
    pub finished_at: String,
    pub chunks_failed_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_agent_in_dispatches: Option<bool>,
}

/// One log chunk, already gzipped; `size` is the uncompressed length.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub sequence: u64,
    pub offset: u64,
    pub size: u64,
    pub gzipped: Bytes,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Annotation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Meta-data lives on a job or on a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaDataScope {
    Job,
    Build,
}

impl MetaDataScope {
    fn path(self) -> &'static str {
        match self {
            MetaDataScope::Job => "jobs",
            MetaDataScope::Build => "builds",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// 422: the job was already acquired, started, finished or cancelled (exit code 27).
    #[error("job {job_id} cannot be acquired: {message}")]
    Rejected { job_id: String, message: String },
    /// 423 every time: the job never became runnable (exit code 28).
    #[error("job {job_id} is still waiting on its dependencies after {attempts} attempts")]
    StillLocked { job_id: String, attempts: u32 },
    #[error(transparent)]
    Api(#[from] ApiError),
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineUploadError {
    #[error("pipeline upload {upload_id} was {state}: {message}")]
    Refused {
        upload_id: String,
        state: String,
        message: String,
    },
    #[error("pipeline upload answered 202 with Location {location:?}, expected …/jobs/<job>/pipelines/{upload_id}")]
    BadLocation { location: String, upload_id: String },
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// The `Buildkite-*` headers the server asked us to replay, shared by a session and its jobs.
#[derive(Debug, Clone, Default)]
pub struct ServerHeaders(Arc<RwLock<HeaderMap>>);

impl ServerHeaders {
    /// A missing map leaves the headers as they are; an empty one clears them; keys not
    /// starting with `Buildkite-` are dropped.
    pub fn update(&self, headers: Option<&BTreeMap<String, String>>) {
        let Some(headers) = headers else { return };
        let mut kept = HeaderMap::new();
        for (name, value) in headers {
            if !name.to_ascii_lowercase().starts_with("buildkite-") {
                continue;
            }
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    kept.insert(name, value);
                }
                _ => {
                    tracing::warn!(header = %name, "ignoring a server-sent header that is not a valid HTTP header")
                }
            }
        }
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = kept;
    }

    pub fn snapshot(&self) -> HeaderMap {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        request.headers(self.snapshot())
    }
}

/// Register an agent. `token` is an agent (cluster) token or a job acquisition token. The
/// returned session follows the server's `endpoint` if it named one.
pub async fn register(
    endpoint: &str,
    token: &Secret,
    request: &RegisterRequest,
    options: ClientOptions,
    retries: AgentRetries,
) -> Result<(RegisterResponse, AgentSession), ApiError> {
    let client = ApiClient::new(endpoint, token, AuthScheme::Token, options)?;
    let response = client
        .send_with(
            client.request(Method::POST, "register").json(request),
            &retries.register,
        )
        .await?;
    let registered: RegisterResponse = decode_json(response).await?;
    let base = registered
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or(endpoint);
    let session_client = ApiClient::with_http(
        client.http().clone(),
        base,
        &registered.access_token,
        AuthScheme::Token,
        client.options().clone(),
    )?;
    let headers = ServerHeaders::default();
    headers.update(registered.request_headers.as_ref());
    let session = AgentSession {
        client: Arc::new(RwLock::new(session_client)),
        headers,
        retries,
    };
    Ok((registered, session))
}

/// Calls made with the session (agent access) token. The endpoint can move when a ping
/// names a new one (after a test ping there succeeds), so it is shared behind a lock.
#[derive(Debug, Clone)]
pub struct AgentSession {
    client: Arc<RwLock<ApiClient>>,
    headers: ServerHeaders,
    retries: AgentRetries,
}

impl AgentSession {
    /// A session from a session token obtained elsewhere (e.g. by an earlier register).
    pub fn new(client: ApiClient, retries: AgentRetries) -> Self {
        AgentSession {
            client: Arc::new(RwLock::new(client)),
            headers: ServerHeaders::default(),
            retries,
        }
    }

    /// The client for the current endpoint.
    pub fn client(&self) -> ApiClient {
        self.client
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn server_headers(&self) -> &ServerHeaders {
        &self.headers
    }

    pub fn retries(&self) -> &AgentRetries {
        &self.retries
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.headers.apply(self.client().request(method, path))
    }

    pub async fn connect(&self) -> Result<(), ApiError> {
        self.client()
            .send_with(self.request(Method::POST, "connect"), &self.retries.connect)
            .await
            .map(drop)
    }

    pub async fn disconnect(&self) -> Result<(), ApiError> {
        self.client()
            .send_with(
                self.request(Method::POST, "disconnect"),
                &self.retries.disconnect,
            )
            .await
            .map(drop)
    }

    /// One ping, no retries: the ping loop tries again at its next tick. Server headers in
    /// the answer replace ours.
    pub async fn ping(&self) -> Result<PingResponse, ApiError> {
        let response = self
            .client()
            .send_once(self.request(Method::GET, "ping"))
            .await?;
        let ping: PingResponse = decode_json(response).await?;
        self.headers.update(ping.request_headers.as_ref());
        if let Some(endpoint) = ping
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            self.follow_endpoint(endpoint).await;
        }
        Ok(ping)
    }

    /// Switch to `endpoint` if it differs from ours and answers a ping; otherwise stay.
    async fn follow_endpoint(&self, endpoint: &str) {
        let current = self.client();
        if current.base() == endpoint.trim_end_matches('/') {
            return;
        }
        let moved = match current.with_base(endpoint) {
            Ok(moved) => moved,
            Err(error) => return tracing::warn!(%error, "ignoring the endpoint the server sent"),
        };
        match moved
            .send_once(self.headers.apply(moved.request(Method::GET, "ping")))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    endpoint = moved.base(),
                    "switching to the endpoint the server sent"
                );
                *self
                    .client
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = moved;
            }
            Err(error) => {
                tracing::warn!(%error, "the endpoint the server sent does not answer; staying")
            }
        }
    }

    pub async fn heartbeat(&self) -> Result<HeartbeatResponse, ApiError> {
        let body = serde_json::json!({ "sent_at": Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true) });
        let response = self
            .client()
            .send_with(
                self.request(Method::POST, "heartbeat").json(&body),
                &self.retries.heartbeat,
            )
            .await?;
        decode_json(response).await
    }

    pub async fn accept(&self, job_id: &str) -> Result<Job, ApiError> {
        let path = format!("jobs/{}/accept", path_segment(job_id));
        let response = self
            .client()
            .send_with(self.request(Method::PUT, &path), &self.retries.accept)
            .await?;
        decode_json(response).await
    }

    /// `PUT jobs/{id}/acquire` with the lock header: 423 and 429/5xx are retried (waiting
    /// `Retry-After` when given), 422 is final.
    pub async fn acquire(&self, job_id: &str) -> Result<Job, AcquireError> {
        let policy = &self.retries.acquire;
        let path = format!("jobs/{}/acquire", path_segment(job_id));
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self
                .request(Method::PUT, &path)
                .header("X-Buildkite-Lock-Acquire-Job", "1")
                .header("X-Buildkite-Backoff-Sequence", attempt.to_string());
            let error = match self.client().send_once(request).await {
                Ok(response) => return Ok(decode_json(response).await?),
                Err(error) => error,
            };
            let locked = error.status() == Some(StatusCode::LOCKED);
            if error.status() == Some(StatusCode::UNPROCESSABLE_ENTITY) {
                let message = match &error {
                    ApiError::Status { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                return Err(AcquireError::Rejected {
                    job_id: job_id.to_string(),
                    message,
                });
            }
            if !(locked || error.is_retryable()) {
                return Err(error.into());
            }
            let wait = error
                .retry_after()
                .unwrap_or_else(|| policy.backoff(attempt));
            if attempt >= policy.max_attempts || started.elapsed() + wait > policy.deadline {
                return Err(if locked {
                    AcquireError::StillLocked {
                        job_id: job_id.to_string(),
                        attempts: attempt,
                    }
                } else {
                    ApiError::GaveUp {
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        last: Box::new(error),
                    }
                    .into()
                });
            }
            tracing::debug!(%error, attempt, wait_ms = wait.as_millis() as u64, "acquire will retry");
            tokio::time::sleep(wait).await;
        }
    }

    /// The client for one job's calls: its job token, or the session token if the job
    /// carries none (reference §1.2).
    pub fn job_client(&self, job: &Job) -> Result<JobClient, ApiError> {
        let client = match job.token.as_ref().filter(|t| !t.is_empty()) {
            Some(token) => self.client().with_token(token, AuthScheme::Token)?,
            None => self.client(),
        };
        Ok(JobClient {
            client,
            headers: self.headers.clone(),
            retries: self.retries.clone(),
            job_id: job.id.clone(),
        })
    }
}

/// Calls made with one job's token.
#[derive(Debug, Clone)]
pub struct JobClient {
    client: ApiClient,
    headers: ServerHeaders,
    retries: AgentRetries,
    job_id: String,
}

impl JobClient {
    /// A job client from a job token obtained elsewhere.
    pub fn new(client: ApiClient, job_id: &str, retries: AgentRetries) -> Self {
        JobClient {
            client,
            headers: ServerHeaders::default(),
            retries,
            job_id: job_id.to_string(),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn server_headers(&self) -> &ServerHeaders {
        &self.headers
    }

    fn path(&self, rest: &str) -> String {
        if rest.is_empty() {
            format!("jobs/{}", path_segment(&self.job_id))
        } else {
            format!("jobs/{}/{rest}", path_segment(&self.job_id))
        }
    }

    fn request(&self, method: Method, rest: &str) -> RequestBuilder {
        self.headers
            .apply(self.client.request(method, &self.path(rest)))
    }

    pub async fn start(&self) -> Result<(), ApiError> {
        let body = serde_json::json!({ "started_at": Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true) });
        self.client
            .send_with(
                self.request(Method::PUT, "start").json(&body),
                &self.retries.job_call,
            )
            .await
            .map(drop)
    }

    /// Upload one gzipped chunk (raw body, `sequence`/`offset`/`size` in the query).
    pub async fn upload_chunk(&self, chunk: &LogChunk) -> Result<(), ApiError> {
        let request = self
            .request(Method::POST, "chunks")
            .query(&[
                ("sequence", chunk.sequence),
                ("offset", chunk.offset),
                ("size", chunk.size),
            ])
            .header(CONTENT_TYPE, "text/plain")
            .header(CONTENT_ENCODING, "gzip")
            .body(chunk.gzipped.clone());
        self.client
            .send_with(request, &self.retries.chunk)
            .await
            .map(drop)
    }

    /// The job's state as the server sees it (one attempt: the caller polls).
    pub async fn state(&self) -> Result<Option<JobState>, ApiError> {
        #[derive(Deserialize)]
        struct StateBody {
            state: String,
        }
        let response = self.client.send_once(self.request(Method::GET, "")).await?;
        let body: StateBody = decode_json(response).await?;
        Ok(body.state.parse().ok())
    }

    pub async fn finish(&self, finish: &FinishRequest) -> Result<(), ApiError> {
        self.client
            .send_with(
                self.request(Method::PUT, "finish").json(finish),
                &self.retries.job_call,
            )
            .await
            .map(drop)
    }

    pub async fn set_meta_data(&self, key: &str, value: &str) -> Result<(), ApiError> {
        if key.trim().is_empty() || value.trim().is_empty() {
            return Err(ApiError::Config(
                "meta-data key and value must not be empty or only whitespace".into(),
            ));
        }
        let body = serde_json::json!({ "key": key, "value": value });
        self.client
            .send_with(
                self.request(Method::POST, "data/set").json(&body),
                &self.retries.job_call,
            )
            .await
            .map(drop)
    }

    fn scoped(&self, scope: MetaDataScope, id: &str, rest: &str) -> RequestBuilder {
        let path = format!("{}/{}/data/{rest}", scope.path(), path_segment(id));
        self.headers.apply(self.client.request(Method::POST, &path))
    }

    /// `None` when the key is unset (404).
    pub async fn get_meta_data(
        &self,
        scope: MetaDataScope,
        id: &str,
        key: &str,
    ) -> Result<Option<String>, ApiError> {
        #[derive(Deserialize)]
        struct Got {
            value: String,
        }
        let request = self
            .scoped(scope, id, "get")
            .json(&serde_json::json!({ "key": key }));
        match self.client.send_with(request, &self.retries.job_call).await {
            Ok(response) => Ok(Some(decode_json::<Got>(response).await?.value)),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn meta_data_exists(
        &self,
        scope: MetaDataScope,
        id: &str,
        key: &str,
    ) -> Result<bool, ApiError> {
        #[derive(Deserialize)]
        struct Exists {
            exists: bool,
        }
        let request = self
            .scoped(scope, id, "exists")
            .json(&serde_json::json!({ "key": key }));
        let response = self
            .client
            .send_with(request, &self.retries.job_call)
            .await?;
        Ok(decode_json::<Exists>(response).await?.exists)
    }

    pub async fn meta_data_keys(
        &self,
        scope: MetaDataScope,
        id: &str,
    ) -> Result<Vec<String>, ApiError> {
        let response = self
            .client
            .send_with(self.scoped(scope, id, "keys"), &self.retries.job_call)
            .await?;
        decode_json(response).await
    }

    /// Upload a pipeline (already parsed to JSON) and wait until the server applied it.
    /// `upload_id` stays the same across retries so the server can deduplicate.
    pub async fn upload_pipeline(
        &self,
        upload_id: &str,
        pipeline: &Value,
        replace: bool,
    ) -> Result<(), PipelineUploadError> {
        let mut body = serde_json::json!({ "uuid": upload_id, "pipeline": pipeline });
        if replace {
            body["replace"] = Value::Bool(true);
        }
        let request = self
            .request(Method::POST, "pipelines")
            .query(&[("async", "true")])
            .header("X-Buildkite-Backoff-Sequence", "1")
            .json(&body);
        let response = self
            .client
            .send_with(request, &self.retries.job_call)
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Ok(());
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let expected_suffix = format!("jobs/{}/pipelines/{upload_id}", self.job_id);
        if !location.trim_end_matches('/').ends_with(&expected_suffix) {
            return Err(PipelineUploadError::BadLocation {
                location,
                upload_id: upload_id.to_string(),
            });
        }
        let mut wait = wait_from(response.headers()).unwrap_or(Duration::from_secs(1));
        loop {
            tokio::time::sleep(wait).await;
            #[derive(Deserialize)]
            struct Status {
                state: String,
                #[serde(default)]
                message: Option<String>,
            }
            let path = format!("pipelines/{}", path_segment(upload_id));
            let response = self
                .client
                .send_with(self.request(Method::GET, &path), &self.retries.job_call)
                .await?;
            let next_wait = wait_from(response.headers());
            let status: Status = decode_json(response).await?;
            match status.state.as_str() {
                "applied" => return Ok(()),
                "pending" | "processing" => wait = next_wait.unwrap_or(Duration::from_secs(5)),
                other => {
                    return Err(PipelineUploadError::Refused {
                        upload_id: upload_id.to_string(),
                        state: other.to_string(),
                        message: status.message.unwrap_or_default(),
                    })
                }
            }
        }
    }

    pub async fn annotate(&self, annotation: &Annotation) -> Result<(), ApiError> {
        self.client
            .send_with(
                self.request(Method::POST, "annotations").json(annotation),
                &self.retries.job_call,
            )
            .await
            .map(drop)
    }

    pub async fn remove_annotation(
        &self,
        context: &str,
        scope: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut request = self.request(
            Method::DELETE,
            &format!("annotations/{}", path_segment(context)),
        );
        if let Some(scope) = scope {
            request = request.query(&[("scope", scope)]);
        }
        self.client
            .send_with(request, &self.retries.job_call)
            .await
            .map(drop)
    }
}

fn wait_from(headers: &HeaderMap) -> Option<Duration> {
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Job {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ping_actions() {
        let ping = |json: &str| serde_json::from_str::<PingResponse>(json).unwrap().action();
        assert_eq!(ping("{}"), PingAction::Idle);
        assert_eq!(ping(r#"{"action":"idle"}"#), PingAction::Idle);
        assert_eq!(ping(r#"{"action":"pause"}"#), PingAction::Pause);
        assert_eq!(
            ping(r#"{"action":"disconnect","job":{"id":"j"}}"#),
            PingAction::Disconnect
        );
        assert_eq!(
            ping(r#"{"job":{"id":"j-1"}}"#),
            PingAction::RunJob("j-1".into())
        );
    }

    #[test]
    fn command_comes_from_env_then_step() {
        assert_eq!(
            job(r#"{"id":"j","env":{"BUILDKITE_COMMAND":"make"}}"#)
                .command()
                .as_deref(),
            Some("make")
        );
        assert_eq!(
            job(r#"{"id":"j","step":{"command":["a","b"]}}"#)
                .command()
                .as_deref(),
            Some("a\nb")
        );
        assert_eq!(
            job(r#"{"id":"j","step":{"commands":"c"}}"#)
                .command()
                .as_deref(),
            Some("c")
        );
        assert_eq!(job(r#"{"id":"j"}"#).command(), None);
    }

    #[test]
    fn plugins_are_named_from_env_or_step() {
        let env =
            r#"{"id":"j","env":{"BUILDKITE_PLUGINS":"[{\"docker#v5.0.0\":{\"image\":\"x\"}}]"}}"#;
        assert_eq!(job(env).plugin_names(), vec!["docker#v5.0.0"]);
        let step = r#"{"id":"j","step":{"plugins":[{"a#v1":null},"b#v2"]}}"#;
        assert_eq!(job(step).plugin_names(), vec!["a#v1", "b#v2"]);
        for none in [
            r#"{"id":"j","env":{"BUILDKITE_PLUGINS":"[]"}}"#,
            r#"{"id":"j","env":{"BUILDKITE_PLUGINS":"null"}}"#,
            r#"{"id":"j"}"#,
        ] {
            assert!(job(none).plugin_names().is_empty(), "{none}");
        }
    }

    #[test]
    fn job_debug_hides_token_and_env_values() {
        let j = job(r#"{"id":"j","token":"bkaj_sekrit","env":{"DB_PASSWORD":"hunter2"}}"#);
        let shown = format!("{j:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn server_headers_keep_only_buildkite_ones_and_clear_on_empty() {
        let headers = ServerHeaders::default();
        let mut sent = BTreeMap::new();
        sent.insert("Buildkite-Hint".to_string(), "a".to_string());
        sent.insert("X-Other".to_string(), "b".to_string());
        headers.update(Some(&sent));
        let now = headers.snapshot();
        assert_eq!(now.get("buildkite-hint").unwrap(), "a");
        assert!(now.get("x-other").is_none());
        headers.update(None);
        assert_eq!(headers.snapshot().len(), 1);
        headers.update(Some(&BTreeMap::new()));
        assert!(headers.snapshot().is_empty());
    }

    #[test]
    fn finish_sends_exit_status_as_a_string() {
        let finish = FinishRequest {
            exit_status: "-1".into(),
            signal: Some("SIGTERM".into()),
            signal_reason: Some("cancel".into()),
            finished_at: "2026-11-22T16:00:00Z".into(),
            chunks_failed_count: 0,
            ignore_agent_in_dispatches: None,
        };
        let json = serde_json::to_value(&finish).unwrap();
        assert_eq!(json["exit_status"], "-1");
        assert!(json.get("ignore_agent_in_dispatches").is_none());
    }
}
