//! The configuration file's sections as written: one typed struct per table, whose doc
//! comments and defaults are also the generated reference (`docs/configuration.md`). Each has
//! a `resolve` that turns it into the settings the scheduler runs on.

use super::{
    fleet_tags, secret, BuildkiteConfig, FleetConfig, Given, HttpConfig, LedgerConfig,
    LimitsConfig, PushConfig, ReconcileConfig, SecretSources, Template,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration as StdDuration;
use updraft_config::{Duration, Errors, Path, Settings};
use updraft_model::scaling::PoolSettings;
use updraft_model::{PriorityOrder, Secret};

pub const DEFAULT_ENDPOINT: &str = "https://agent.buildkite.com/v3";
pub const DEFAULT_REST_ENDPOINT: &str = "https://api.buildkite.com/v2";
pub const DEFAULT_AGENT_TOKEN_ENV: &str = "BUILDKITE_AGENT_TOKEN";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_LEDGER_PATH: &str = "updraft-ledger.sqlite";
/// The reference's floor for polling scheduled-jobs.
pub const MIN_POLL_INTERVAL_MS: u64 = 1000;
/// The shortest ledger retention accepted: closed jobs stay readable (recent launches on
/// `/status`, an operator's look at what happened) for at least this long.
pub const MIN_LEDGER_RETENTION: StdDuration = StdDuration::from_secs(3600);
/// The Stacks API's longest reservation.
const MAX_RESERVATION_EXPIRY: StdDuration = StdDuration::from_secs(3600);

/// How Updraft reaches Buildkite: the agent API and the Stacks API, with a cluster agent token.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildkiteFile {
    /// The agent API base URL. Point it at `updraft emulator` to run offline.
    #[serde(default = "default_endpoint")]
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub endpoint: String,
    /// The cluster agent token, inline. Prefer `agent_token_env`; the default is the
    /// `BUILDKITE_AGENT_TOKEN` environment variable. It is used for the Stacks API and the
    /// metrics endpoint, and pool agents (`mode = "pool"`) register with it, as the Elastic
    /// CI Stack's agents do; it never reaches a one-shot launch, which gets a job acquisition
    /// token for its one job.
    #[schemars(length(min = 1))]
    pub agent_token: Option<String>,
    /// The name of the environment variable holding the cluster agent token.
    #[schemars(length(min = 1))]
    pub agent_token_env: Option<String>,
    /// Where to read the cluster agent token at start-up instead: `"ssm:/buildkite/agent-token"`
    /// (an SSM SecureString) or `"secretsmanager:<name or ARN>"` (needs a build with AWS).
    #[schemars(
        pattern(r"^(ssm|secretsmanager):.+$"),
        extend("x-expected" = "\"ssm:<parameter name>\" or \"secretsmanager:<secret name or ARN>\"")
    )]
    pub agent_token_from: Option<String>,
    /// One Stacks API stack is registered per served queue, keyed `<stack_key>-<queue>`.
    /// Two schedulers must not share a key.
    #[serde(default = "default_stack_key")]
    #[schemars(length(min = 1))]
    pub stack_key: String,
    /// Milliseconds between polls of scheduled jobs (the safety net behind push events).
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(
        range(min = 1000),
        extend("x-expected" = "at least 1000 (the Stacks API asks for ≥ 1 s between polls)")
    )]
    pub poll_interval_ms: u64,
    /// Jobs asked for per page of scheduled jobs.
    #[serde(default = "default_page_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub page_limit: u32,
    /// How long Buildkite holds a job reserved for this scheduler before handing it out again;
    /// at most 1h.
    #[serde(default = "default_reservation_expiry")]
    pub reservation_expiry: Duration,
    /// The lifetime of each job acquisition token (the one-job credential a launch gets).
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime: Duration,
    /// How often queue metrics are read for `/metrics` and `updraft plan` (pools read them as
    /// often as their `interval`, never faster than Buildkite allows).
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval: Duration,
    /// The REST API base URL (the emulator's is `<emulator>/v2`).
    #[serde(default = "default_rest_endpoint")]
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub rest_endpoint: String,
    /// A REST API token with `read_agents`, inline; prefer `api_token_env`. Pools use it to
    /// see which of their agents are busy, to stop only idle members and confirm their agents
    /// are gone before removing them; without it they go by the metrics' counts and their
    /// members' own exits.
    #[schemars(length(min = 1))]
    pub api_token: Option<String>,
    /// The name of the environment variable holding the REST API token.
    #[schemars(length(min = 1))]
    pub api_token_env: Option<String>,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}
fn default_stack_key() -> String {
    "updraft".into()
}
fn default_poll_interval_ms() -> u64 {
    MIN_POLL_INTERVAL_MS
}
fn default_page_limit() -> u32 {
    1000
}
fn default_reservation_expiry() -> Duration {
    Duration::from_secs(900)
}
fn default_token_lifetime() -> Duration {
    Duration::from_secs(600)
}
fn default_metrics_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_rest_endpoint() -> String {
    DEFAULT_REST_ENDPOINT.into()
}

impl Settings for BuildkiteFile {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if self.reservation_expiry.get() > MAX_RESERVATION_EXPIRY {
            errors.push(
                &at.key("reservation_expiry"),
                format!(
                    "expected at most 1h (the Stacks API maximum), got {}",
                    self.reservation_expiry
                ),
            );
        }
    }
}

impl BuildkiteFile {
    pub(super) fn resolve(
        self,
        at: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Errors,
    ) -> Option<BuildkiteConfig> {
        let token = secret(
            SecretSources {
                inline: self.agent_token.as_deref(),
                env: self.agent_token_env.as_deref(),
                from: self.agent_token_from.as_deref(),
                default_env: Some(DEFAULT_AGENT_TOKEN_ENV),
            },
            at,
            "agent_token",
            lookup,
            errors,
        )
        .ok()?;
        let api_token = secret(
            SecretSources {
                inline: self.api_token.as_deref(),
                env: self.api_token_env.as_deref(),
                from: None,
                default_env: None,
            },
            at,
            "api_token",
            lookup,
            errors,
        );
        let (agent_token, agent_token_from) = match token {
            Some(Given::Value(token)) => (token, None),
            Some(Given::Reference(from)) => (Secret::default(), Some(from)),
            None => {
                errors.push(
                    &at.key("agent_token"),
                    format!("missing: set agent_token, agent_token_env, agent_token_from, or the {DEFAULT_AGENT_TOKEN_ENV} environment variable"),
                );
                return None;
            }
        };
        Some(BuildkiteConfig {
            endpoint: self.endpoint,
            agent_token,
            agent_token_from,
            stack_key: self.stack_key,
            poll_interval: StdDuration::from_millis(self.poll_interval_ms),
            page_limit: self.page_limit,
            reservation_expiry: self.reservation_expiry.get(),
            token_lifetime: self.token_lifetime.get(),
            metrics_interval: self.metrics_interval.get(),
            rest_endpoint: self.rest_endpoint,
            api_token: match api_token.ok()? {
                Some(Given::Value(token)) => Some(token),
                _ => None,
            },
        })
    }
}

/// Push events: Buildkite webhooks (`POST /webhooks/buildkite`) and EventBridge-shaped events
/// (`POST /events/eventbridge`), the fast path to new jobs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushFile {
    /// A separate listener for the push routes, e.g. `"0.0.0.0:7071"`; by default they are
    /// served on `[http] listen`.
    #[schemars(extend("x-expected" = "an address like \"0.0.0.0:7071\""))]
    pub listen: Option<String>,
    /// The webhook token, inline; prefer `webhook_token_env`. Webhooks must carry it as
    /// `X-Buildkite-Token` or sign with it (`X-Buildkite-Signature`). Without one the push
    /// routes refuse everything except, if allowed, unsigned EventBridge events.
    #[schemars(length(min = 1))]
    pub webhook_token: Option<String>,
    /// The name of the environment variable holding the webhook token.
    #[schemars(length(min = 1))]
    pub webhook_token_env: Option<String>,
    /// Where to read the webhook token at start-up instead: `"ssm:<name>"` or
    /// `"secretsmanager:<name or ARN>"` (needs a build with AWS).
    #[schemars(
        pattern(r"^(ssm|secretsmanager):.+$"),
        extend("x-expected" = "\"ssm:<parameter name>\" or \"secretsmanager:<secret name or ARN>\"")
    )]
    pub webhook_token_from: Option<String>,
    /// Accept EventBridge events that carry no credential (an EventBridge rule target has
    /// none). A forged event can only make Updraft try to reserve a job Buildkite really has
    /// scheduled on its queue.
    #[serde(default)]
    pub allow_unsigned_eventbridge: bool,
}

impl Settings for PushFile {}

impl PushFile {
    pub(super) fn resolve(
        self,
        at: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Errors,
    ) -> Option<PushConfig> {
        let listen = match &self.listen {
            Some(raw) => Some(socket_addr(raw, &at.key("listen"), errors)?),
            None => None,
        };
        let webhook_token = secret(
            SecretSources {
                inline: self.webhook_token.as_deref(),
                env: self.webhook_token_env.as_deref(),
                from: self.webhook_token_from.as_deref(),
                default_env: None,
            },
            at,
            "webhook_token",
            lookup,
            errors,
        )
        .ok()?;
        let (webhook_token, webhook_token_from) = match webhook_token {
            Some(Given::Value(token)) => (Some(token), None),
            Some(Given::Reference(from)) => (None, Some(from)),
            None => (None, None),
        };
        Some(PushConfig {
            listen,
            webhook_token,
            webhook_token_from,
            allow_unsigned_eventbridge: self.allow_unsigned_eventbridge,
        })
    }
}

fn socket_addr(raw: &str, at: &Path, errors: &mut Errors) -> Option<std::net::SocketAddr> {
    match raw.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(
                at,
                format!("expected an address like \"127.0.0.1:7070\", got {raw:?}"),
            );
            None
        }
    }
}

/// The scheduler's own HTTP surface: `/status`, `/metrics`, `/healthz`, `/readyz` (and the
/// push routes unless `[push] listen` is set).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Where to listen, e.g. `"0.0.0.0:7070"`.
    #[serde(default = "default_http_listen")]
    #[schemars(extend("x-expected" = "an address like \"127.0.0.1:7070\""))]
    pub listen: String,
}

fn default_http_listen() -> String {
    DEFAULT_HTTP_LISTEN.into()
}

impl Settings for HttpFile {}

impl HttpFile {
    pub(super) fn resolve(self, at: &Path, errors: &mut Errors) -> Option<HttpConfig> {
        Some(HttpConfig {
            listen: socket_addr(&self.listen, &at.key("listen"), errors)?,
        })
    }
}

/// The ledger: a SQLite file recording jobs, reservations, launches and transitions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// The SQLite file (created with its directory if missing).
    #[serde(default = "default_ledger_path")]
    #[schemars(length(min = 1))]
    pub path: String,
    /// Jobs closed longer ago than this are pruned with their launches, reservations and
    /// transitions; open jobs never are. At least 1h.
    #[serde(default = "default_retention")]
    pub retention: Duration,
}

fn default_ledger_path() -> String {
    DEFAULT_LEDGER_PATH.into()
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl Settings for LedgerFile {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if self.retention.get() < MIN_LEDGER_RETENTION {
            errors.push(
                &at.key("retention"),
                format!(
                    "expected at least 1h (closed jobs stay readable at least that long), got {}",
                    self.retention
                ),
            );
        }
    }
}

impl LedgerFile {
    pub(super) fn resolve(self) -> LedgerConfig {
        LedgerConfig {
            path: self.path.into(),
            retention: self.retention.get(),
        }
    }
}

/// Limits across every fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Launches in flight at once across all fleets; unset is no global cap.
    #[schemars(range(min = 1))]
    pub max_in_flight: Option<u32>,
}

impl Settings for LimitsFile {}

impl LimitsFile {
    pub(super) fn resolve(self) -> LimitsConfig {
        LimitsConfig {
            max_in_flight: self.max_in_flight,
        }
    }
}

/// The reconciler, which converges the ledger, Buildkite and the backends.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileFile {
    /// Milliseconds between reconcile passes (a push saying a job finished starts one early).
    #[serde(default = "default_reconcile_interval_ms")]
    #[schemars(range(min = 1))]
    pub interval_ms: u64,
}

fn default_reconcile_interval_ms() -> u64 {
    1000
}

impl Settings for ReconcileFile {}

impl ReconcileFile {
    pub(super) fn resolve(self) -> ReconcileConfig {
        ReconcileConfig {
            interval: StdDuration::from_millis(self.interval_ms),
        }
    }
}

/// How a fleet's launches run their job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each launch runs an agent bound to exactly one job (`--acquire-job`), holding only a
    /// job acquisition token for it.
    #[default]
    Acquire,
    /// A warm pool (`[fleet.pool]`): long-lived agents registered with the cluster agent
    /// token take the fleet's jobs from Buildkite themselves; the pool's scaling policy
    /// decides how many there are.
    Pool,
}

/// The order a fleet takes the jobs it holds back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityFile {
    /// Higher job priority first, then oldest first (Buildkite's dispatch order).
    #[default]
    Job,
    /// Oldest first, ignoring job priority.
    Fifo,
}

/// A fleet: which jobs it serves (`queue` plus `tags`), where it launches them (`backend`
/// and `template`), and the limits and deadlines it keeps.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The fleet's name: letters, digits, `-` and `_`; unique.
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"), extend("x-expected" = "letters, digits, '-' or '_'"))]
    pub name: String,
    /// The Buildkite queue it serves (a job's `agents: {queue: …}`).
    #[schemars(length(min = 1))]
    pub queue: String,
    /// More agent tags (`"docker=true"`), matched against each job's agent query rules; several
    /// fleets on one queue are told apart by them. The queue tag comes from `queue`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where launches run: `local` processes, or a backend this build has (see its
    /// `[fleet.<backend>]` table).
    #[serde(default = "default_backend")]
    #[schemars(length(min = 1))]
    pub backend: String,
    /// What each launch runs.
    #[serde(default)]
    pub template: TemplateFile,
    /// How launches run their job.
    #[serde(default)]
    pub mode: Mode,
    /// Launches in flight at once for this fleet.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1))]
    pub max_in_flight: u32,
    /// Launches started per minute at most; unset is no rate limit.
    #[schemars(range(min = 1))]
    pub launches_per_minute: Option<u32>,
    /// The order held-back jobs are taken in.
    #[serde(default)]
    pub priority: PriorityFile,
    /// From launch until the job's agent takes it; a launch past it is stopped.
    #[serde(default = "default_pending_deadline")]
    pub pending_deadline: Duration,
    /// From the agent taking the job until it finishes; a job past it is stopped and failed.
    #[serde(default = "default_running_deadline")]
    pub running_deadline: Duration,
    /// Relaunches allowed for a job whose launch died before its agent took the job.
    #[serde(default = "default_relaunch_budget")]
    pub relaunch_budget: u32,
    /// The warm pool of a `mode = "pool"` fleet: its bounds, step interval, scaling policy and
    /// scheduled minimums. Its template runs `updraft agent start` (or `buildkite-agent
    /// start`) without `--acquire-job`.
    #[serde(default, skip_serializing)]
    pub pool: Option<PoolSettings>,
    /// What one launch or pool member of this fleet costs per second, in dollars (e.g.
    /// 0.0000231 for a t3.large's $0.0832/h); each job's share shows on `/metrics` and
    /// `/status`. Unset: time is still attributed, at no cost.
    #[schemars(range(min = 0.0))]
    pub price_per_second: Option<f64>,
    /// A one-shot fleet behind a pool on the same queue: a job the pool's agents have not
    /// taken this long after it became runnable gets its own launch here instead. The pool
    /// fleet must come first in the file.
    pub overflow_after: Option<Duration>,
}

fn default_backend() -> String {
    "local".into()
}
fn default_max_in_flight() -> u32 {
    10
}
fn default_pending_deadline() -> Duration {
    Duration::from_secs(300)
}
fn default_running_deadline() -> Duration {
    Duration::from_secs(3 * 3600)
}
fn default_relaunch_budget() -> u32 {
    1
}

impl Settings for FleetFile {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        match (self.mode, &self.pool) {
            (Mode::Pool, None) => errors.push(
                &at.key("pool"),
                "missing: a mode = \"pool\" fleet needs a [fleet.pool] table (at least max)",
            ),
            (Mode::Acquire, Some(_)) => errors.push(
                &at.key("pool"),
                "only a mode = \"pool\" fleet has a pool; set mode = \"pool\" or remove the table",
            ),
            (Mode::Pool, Some(pool)) => {
                for (path, message) in pool.validate(at.key("pool").as_str()) {
                    errors.push(&Path::verbatim(&path), message);
                }
                if self.overflow_after.is_some() {
                    errors.push(
                        &at.key("overflow_after"),
                        "only a one-shot fleet (mode = \"acquire\") takes a pool's overflow",
                    );
                }
                if self
                    .template
                    .command
                    .iter()
                    .any(|arg| arg.contains("{job_id}"))
                    && self.template.command != default_command()
                {
                    errors.push(
                        &at.key("template").key("command"),
                        "a pool agent serves many jobs: remove {job_id} and --acquire-job",
                    );
                }
            }
            (Mode::Acquire, None) => {}
        }
    }
}

impl FleetFile {
    pub(super) fn resolve(
        self,
        at: &Path,
        backends: &[&str],
        backend_settings: Option<Value>,
        errors: &mut Errors,
    ) -> Option<FleetConfig> {
        let tags = fleet_tags(&self.tags, &self.queue, at, errors);
        // An unknown backend was named when its table was split off.
        if !backends.is_empty() && !backends.contains(&self.backend.as_str()) {
            return None;
        }
        if self.template.command.is_empty() {
            errors.push(
                &at.key("template").key("command"),
                "expected at least the program to run, got []",
            );
            return None;
        }
        let command = match self.mode {
            Mode::Pool if self.template.command == default_command() => default_pool_command(),
            _ => self.template.command,
        };
        Some(FleetConfig {
            name: self.name,
            queue: self.queue,
            tags: tags?,
            backend: self.backend,
            backend_settings,
            template: Template {
                command,
                env: self.template.env,
            },
            mode: self.mode,
            max_in_flight: self.max_in_flight,
            launches_per_minute: self.launches_per_minute,
            priority: match self.priority {
                PriorityFile::Job => PriorityOrder::JobPriority,
                PriorityFile::Fifo => PriorityOrder::Fifo,
            },
            pending_deadline: self.pending_deadline.get(),
            running_deadline: self.running_deadline.get(),
            relaunch_budget: self.relaunch_budget,
            pool: self.pool,
            price_per_second: self.price_per_second,
            overflow_after: self.overflow_after.map(Duration::get),
        })
    }
}

/// What each launch of a fleet runs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    /// The program and its arguments; `{job_id}` in an argument becomes the job's uuid. The
    /// default runs `updraft agent start --acquire-job {job_id}`, or `updraft agent start` in
    /// a pool.
    #[serde(default = "default_command")]
    pub command: Vec<String>,
    /// Environment variables for the launch (never put a secret here: it is plain config).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Default for TemplateFile {
    fn default() -> Self {
        TemplateFile {
            command: default_command(),
            env: BTreeMap::new(),
        }
    }
}

fn default_command() -> Vec<String> {
    ["updraft", "agent", "start", "--acquire-job", "{job_id}"]
        .map(String::from)
        .to_vec()
}

fn default_pool_command() -> Vec<String> {
    ["updraft", "agent", "start"].map(String::from).to_vec()
}
