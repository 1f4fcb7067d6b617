//! The scheduler's configuration: a TOML file, overridden by `UPDRAFT_<SECTION>_<KEY>`
//! environment variables, read into typed settings. Reading never stops at the first
//! problem: every error is collected with its field path (`fleet[1].max_in_flight: …`), and
//! keys we do not know are refused by path too, so `updraft check` can list them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};
pub use updraft_model::PriorityOrder;
use updraft_model::{AgentTags, FleetLimits, RuleError, Secret};

pub const DEFAULT_ENDPOINT: &str = "https://agent.buildkite.com/v3";
pub const DEFAULT_AGENT_TOKEN_ENV: &str = "BUILDKITE_AGENT_TOKEN";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_LEDGER_PATH: &str = "updraft-ledger.sqlite";
/// How long a closed job's ledger rows are kept by default.
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest retention accepted: closed jobs stay readable (recent launches on
/// `/status`, an operator's look at what happened) for at least this long.
pub const MIN_LEDGER_RETENTION: Duration = Duration::from_secs(3600);
pub const DEFAULT_LOCAL_STATE_DIR: &str = "updraft-local";
/// The reference's floor for polling scheduled-jobs.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One problem in the configuration, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone)]
pub struct Config {
    pub buildkite: BuildkiteConfig,
    pub push: PushConfig,
    pub http: HttpConfig,
    pub ledger: LedgerConfig,
    pub limits: LimitsConfig,
    pub reconcile: ReconcileConfig,
    pub local: LocalConfig,
    pub fleets: Vec<FleetConfig>,
}

#[derive(Debug, Clone)]
pub struct BuildkiteConfig {
    /// The agent API base, e.g. `https://agent.buildkite.com/v3`.
    pub endpoint: String,
    /// The cluster agent token (Stacks API, metrics). Never put into a launch.
    pub agent_token: Secret,
    pub stack_key: String,
    pub poll_interval: Duration,
    pub page_limit: u32,
    pub reservation_expiry: Duration,
    pub token_lifetime: Duration,
    pub metrics_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct PushConfig {
    /// A separate listener for the push routes; `None` serves them on `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// The shared webhook token (also the HMAC key for signed webhooks). Without one the
    /// push routes refuse everything but, if allowed below, unsigned EventBridge events.
    pub webhook_token: Option<Secret>,
    /// Accept EventBridge events that carry no credentials (an EventBridge rule target has
    /// none unless an API destination adds one). A forged event can only make the scheduler
    /// try to reserve a job id, which succeeds only for a job Buildkite really has scheduled
    /// on our queue.
    pub allow_unsigned_eventbridge: bool,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub path: PathBuf,
    /// Closed jobs (with their launches, reservations and transitions) older than this are
    /// pruned by the reconciler; open jobs are never pruned.
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Launches in flight across all fleets; `None` is no global cap.
    pub max_in_flight: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub interval: Duration,
}

/// Settings of the local process backend (used when a fleet says `backend = "local"`).
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where launch directories live.
    pub state_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when a launch is stopped.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Acquire,
}


#[derive(Debug, Clone)]
pub struct Template {
    /// The program and arguments; `{job_id}` in an argument becomes the job's uuid.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub name: String,
    pub queue: String,
    /// The fleet's tags, `queue=<queue>` included: a job is served when its query rules are
    /// matched by these (reference §7.2).
    pub tags: AgentTags,
    pub backend: String,
    pub template: Template,
    pub mode: Mode,
    pub max_in_flight: u32,
    pub launches_per_minute: Option<u32>,
    pub priority: PriorityOrder,
    /// From launch until the job is accepted by its agent.
    pub pending_deadline: Duration,
    /// From acceptance until the job finishes.
    pub running_deadline: Duration,
    /// Relaunches allowed for a job whose launch died before its agent took the job.
    pub relaunch_budget: u32,
}

impl FleetConfig {
    /// The hard limit every launch gets from the backend.
    pub fn launch_deadline(&self) -> Duration {
        self.pending_deadline + self.running_deadline
    }

    /// The caps the limiter holds this fleet to.
    pub fn limits(&self) -> FleetLimits {
        FleetLimits {
            name: self.name.clone(),
            max_in_flight: self.max_in_flight,
            launches_per_minute: self.launches_per_minute,
            order: self.priority,
        }
    }
}

impl Config {
    /// Read a file, apply the process environment's overrides, validate.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        Config::parse_with_env(&text, std::env::vars())
            .map_err(|errors| anyhow::anyhow!("{}: {errors}", path.display()))
    }

    /// Parse TOML text with no environment overrides.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with_env(text, std::iter::empty())
    }

    /// Parse TOML text, then apply `UPDRAFT_<SECTION>_<KEY>` overrides from `env` (only the
    /// single-table sections: buildkite, push, http, ledger, limits, reconcile, local).
    /// `*_env` settings (e.g. `agent_token_env`) are looked up in `env` too.
    pub fn parse_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Config::parse_checked(text, env, &[])
    }

    /// As `parse_with_env`, and every fleet's `backend` must be one of `backends` (the
    /// binary's list; empty skips the check).
    pub fn parse_checked(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        backends: &[&str],
    ) -> Result<Config, ConfigErrors> {
        let mut root: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                path: "(file)".into(),
                message: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut errors = Vec::new();
        apply_env(&mut root, &env, &mut errors);
        let env_lookup = |name: &str| env.get(name).cloned();
        let config = read_root(root, &env_lookup, backends, &mut errors);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Every queue some fleet serves, in order.
    pub fn queues(&self) -> Vec<String> {
        self.fleets
            .iter()
            .map(|f| f.queue.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

const SECTIONS: [&str; 7] = [
    "buildkite",
    "push",
    "http",
    "ledger",
    "limits",
    "reconcile",
    "local",
];

fn apply_env(root: &mut Table, env: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("UPDRAFT_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS
            .iter()
            .find(|s| lower.starts_with(&format!("{s}_")))
        else {
            continue;
        };
        let key = &lower[section.len() + 1..];
        let value = format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.clone()));
        match root
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(table) => {
                table.insert(key.to_string(), value);
            }
            _ => errors.push(ConfigError {
                path: format!("{section} (from {name})"),
                message: "expected a table".into(),
            }),
        }
    }
}

/// Takes fields out of one TOML table, recording errors with their path; whatever is left
/// at `finish` is an unknown key.
struct Fields<'e> {
    path: String,
    table: Table,
    errors: &'e mut Vec<ConfigError>,
}

impl<'e> Fields<'e> {
    fn new(path: &str, table: Table, errors: &'e mut Vec<ConfigError>) -> Self {
        Fields {
            path: path.to_string(),
            table,
            errors,
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        self.errors.push(ConfigError {
            path,
            message: message.into(),
        });
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.table.remove(key)? {
            Value::String(s) => Some(s),
            other => {
                self.error(key, format!("expected a string, got {}", describe(&other)));
                None
            }
        }
    }

    fn non_empty_string(&mut self, key: &str) -> Option<String> {
        let value = self.string(key)?;
        if value.trim().is_empty() {
            self.error(key, "expected a non-empty string, got \"\"");
            return None;
        }
        Some(value)
    }

    fn integer(&mut self, key: &str) -> Option<i64> {
        match self.table.remove(key)? {
            Value::Integer(i) => Some(i),
            other => {
                self.error(
                    key,
                    format!("expected an integer, got {}", describe(&other)),
                );
                None
            }
        }
    }

    fn positive(&mut self, key: &str) -> Option<u32> {
        let value = self.integer(key)?;
        match u32::try_from(value) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.error(key, format!("expected a positive integer, got {value}"));
                None
            }
        }
    }

    fn non_negative(&mut self, key: &str) -> Option<u32> {
        let value = self.integer(key)?;
        u32::try_from(value).ok().or_else(|| {
            self.error(key, format!("expected a whole number ≥ 0, got {value}"));
            None
        })
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.table.remove(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                self.error(
                    key,
                    format!("expected true or false, got {}", describe(&other)),
                );
                None
            }
        }
    }

    fn millis(&mut self, key: &str) -> Option<Duration> {
        let value = self.integer(key)?;
        match u64::try_from(value) {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                self.error(
                    key,
                    format!("expected a positive number of milliseconds, got {value}"),
                );
                None
            }
        }
    }

    /// `"90s"`, `"5m"`, `"2h"`, `"7d"`, `"1500ms"`, or an integer number of seconds.
    fn duration(&mut self, key: &str) -> Option<Duration> {
        let parsed = match self.table.remove(key)? {
            Value::Integer(secs) if secs > 0 && secs as u64 <= MAX_DURATION.as_secs() => {
                Ok(Duration::from_secs(secs as u64))
            }
            Value::String(s) => parse_duration(&s).ok_or_else(|| format!("{s:?}")),
            other => Err(describe(&other)),
        };
        parsed
            .map_err(|got| {
                self.error(
                    key,
                    format!(
                        "expected a positive duration like \"90s\", \"5m\", \"2h\" or \"7d\" (at most 100 years), got {got}"
                    ),
                )
            })
            .ok()
    }

    fn socket_addr(&mut self, key: &str) -> Option<SocketAddr> {
        let raw = self.string(key)?;
        raw.parse()
            .map_err(|_| {
                self.error(
                    key,
                    format!("expected an address like \"127.0.0.1:7070\", got {raw:?}"),
                )
            })
            .ok()
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.table.remove(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s),
                        other => self.error(
                            &format!("{key}[{i}]"),
                            format!("expected a string, got {}", describe(&other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("expected an array of strings, got {}", describe(&other)),
                );
                None
            }
        }
    }

    fn string_map(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
        match self.table.remove(key)? {
            Value::Table(table) => {
                let mut out = BTreeMap::new();
                for (k, v) in table {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => self.error(
                            &format!("{key}.{k}"),
                            format!("expected a string, got {}", describe(&other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("expected a table of strings, got {}", describe(&other)),
                );
                None
            }
        }
    }

    fn table(&mut self, key: &str) -> Table {
        match self.table.remove(key) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.error(key, format!("expected a table, got {}", describe(&other)));
                Table::new()
            }
        }
    }

    fn finish(self) {
        for key in self.table.keys() {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            self.errors.push(ConfigError {
                path,
                message: "unknown key".into(),
            });
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

/// The longest duration any setting accepts; sums and millisecond conversions of durations
/// up to this cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `"1500ms"`, `"90s"`, `"5m"`, `"2h"` or `"7d"`: positive and at most `MAX_DURATION`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let seconds_per_unit = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)).filter(|d| *d <= MAX_DURATION),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return None,
    };
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
}

type EnvLookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

fn read_root(
    root: Table,
    env: &EnvLookup,
    backends: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut top = Fields::new("", root, errors);
    let buildkite = top.table("buildkite");
    let push = top.table("push");
    let http = top.table("http");
    let ledger = top.table("ledger");
    let limits = top.table("limits");
    let reconcile = top.table("reconcile");
    let local = top.table("local");
    let fleets = top.table.remove("fleet");
    let fleet_tables: Vec<Table> = match fleets {
        None => {
            top.error("fleet", "at least one [[fleet]] is required");
            Vec::new()
        }
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::Table(t) => Some(t),
                other => {
                    top.error(
                        &format!("fleet[{i}]"),
                        format!("expected a table, got {}", describe(&other)),
                    );
                    None
                }
            })
            .collect(),
        Some(other) => {
            top.error(
                "fleet",
                format!("expected [[fleet]] tables, got {}", describe(&other)),
            );
            Vec::new()
        }
    };
    top.finish();

    let buildkite = read_buildkite(buildkite, env, errors);
    let push = read_push(push, env, errors);
    let http = read_http(http, errors);
    let ledger = read_ledger(ledger, errors);
    let limits = read_limits(limits, errors);
    let reconcile = read_reconcile(reconcile, errors);
    let local = read_local(local, errors);
    let mut fleets = Vec::new();
    for (i, table) in fleet_tables.into_iter().enumerate() {
        if let Some(fleet) = read_fleet(i, table, backends, errors) {
            fleets.push(fleet);
        }
    }
    let mut seen = BTreeSet::new();
    for (i, fleet) in fleets.iter().enumerate() {
        if !seen.insert(fleet.name.clone()) {
            errors.push(ConfigError {
                path: format!("fleet[{i}].name"),
                message: format!(
                    "{:?} is used by an earlier fleet; names must be unique",
                    fleet.name
                ),
            });
        }
    }
    Some(Config {
        buildkite: buildkite?,
        push: push?,
        http: http?,
        ledger: ledger?,
        limits: limits?,
        reconcile: reconcile?,
        local: local?,
        fleets,
    })
}

/// A secret given inline (`<key>`) or by environment variable name (`<key>_env`).
fn secret(
    fields: &mut Fields,
    key: &str,
    env: &EnvLookup,
    default_env: Option<&str>,
) -> Option<Option<Secret>> {
    let inline = fields.string(key);
    let env_key = format!("{key}_env");
    let env_name = fields.non_empty_string(&env_key);
    match (inline, env_name) {
        (Some(_), Some(_)) => {
            fields.error(key, format!("set either {key} or {env_key}, not both"));
            None
        }
        (Some(value), None) if value.is_empty() => {
            fields.error(key, "expected a non-empty token");
            None
        }
        (Some(value), None) => Some(Some(Secret::new(value))),
        (None, Some(name)) => match env(&name).filter(|v| !v.is_empty()) {
            Some(value) => Some(Some(Secret::new(value))),
            None => {
                fields.error(
                    &env_key,
                    format!("environment variable {name} is not set or empty"),
                );
                None
            }
        },
        (None, None) => Some(
            default_env
                .and_then(|name| env(name).filter(|v| !v.is_empty()))
                .map(Secret::new),
        ),
    }
}

fn read_buildkite(
    table: Table,
    env: &EnvLookup,
    errors: &mut Vec<ConfigError>,
) -> Option<BuildkiteConfig> {
    let mut f = Fields::new("buildkite", table, errors);
    let endpoint = f
        .non_empty_string("endpoint")
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        f.error(
            "endpoint",
            format!("expected an http:// or https:// URL, got {endpoint:?}"),
        );
    }
    let agent_token = match secret(&mut f, "agent_token", env, Some(DEFAULT_AGENT_TOKEN_ENV)) {
        Some(Some(token)) => Some(token),
        Some(None) => {
            f.error(
                "agent_token",
                format!("missing: set agent_token, agent_token_env, or the {DEFAULT_AGENT_TOKEN_ENV} environment variable"),
            );
            None
        }
        None => None,
    };
    let stack_key = f
        .non_empty_string("stack_key")
        .unwrap_or_else(|| "updraft".to_string());
    let poll_interval = f.millis("poll_interval_ms").unwrap_or(MIN_POLL_INTERVAL);
    if poll_interval < MIN_POLL_INTERVAL {
        f.error(
            "poll_interval_ms",
            format!(
                "expected at least 1000 (the Stacks API asks for ≥ 1 s between polls), got {}",
                poll_interval.as_millis()
            ),
        );
    }
    let page_limit = f.positive("page_limit").unwrap_or(1000);
    if page_limit > 1000 {
        f.error(
            "page_limit",
            format!("expected at most 1000, got {page_limit}"),
        );
    }
    let reservation_expiry = f
        .duration("reservation_expiry")
        .unwrap_or(Duration::from_secs(900));
    if reservation_expiry > Duration::from_secs(3600) {
        f.error(
            "reservation_expiry",
            "expected at most 1h (the Stacks API maximum)",
        );
    }
    let token_lifetime = f
        .duration("token_lifetime")
        .unwrap_or(Duration::from_secs(600));
    let metrics_interval = f
        .duration("metrics_interval")
        .unwrap_or(Duration::from_secs(30));
    f.finish();
    Some(BuildkiteConfig {
        endpoint,
        agent_token: agent_token?,
        stack_key,
        poll_interval,
        page_limit,
        reservation_expiry,
        token_lifetime,
        metrics_interval,
    })
}

fn read_push(table: Table, env: &EnvLookup, errors: &mut Vec<ConfigError>) -> Option<PushConfig> {
    let mut f = Fields::new("push", table, errors);
    let listen = f.socket_addr("listen");
    let webhook_token = secret(&mut f, "webhook_token", env, None);
    let allow_unsigned_eventbridge = f.boolean("allow_unsigned_eventbridge").unwrap_or(false);
    f.finish();
    Some(PushConfig {
        listen,
        webhook_token: webhook_token?,
        allow_unsigned_eventbridge,
    })
}

fn read_http(table: Table, errors: &mut Vec<ConfigError>) -> Option<HttpConfig> {
    let mut f = Fields::new("http", table, errors);
    let has_listen = f.table.contains_key("listen");
    let listen = f.socket_addr("listen");
    f.finish();
    match listen {
        Some(listen) => Some(HttpConfig { listen }),
        None if !has_listen => DEFAULT_HTTP_LISTEN
            .parse()
            .ok()
            .map(|listen| HttpConfig { listen }),
        None => None,
    }
}

fn read_ledger(table: Table, errors: &mut Vec<ConfigError>) -> Option<LedgerConfig> {
    let mut f = Fields::new("ledger", table, errors);
    let path = f
        .non_empty_string("path")
        .unwrap_or_else(|| DEFAULT_LEDGER_PATH.to_string());
    let retention = f.duration("retention").unwrap_or(DEFAULT_LEDGER_RETENTION);
    if retention < MIN_LEDGER_RETENTION {
        f.error(
            "retention",
            format!(
                "expected at least 1h (closed jobs stay readable at least that long), got {retention:?}"
            ),
        );
    }
    f.finish();
    Some(LedgerConfig {
        path: PathBuf::from(path),
        retention,
    })
}

fn read_limits(table: Table, errors: &mut Vec<ConfigError>) -> Option<LimitsConfig> {
    let mut f = Fields::new("limits", table, errors);
    let max_in_flight = f.positive("max_in_flight");
    f.finish();
    Some(LimitsConfig { max_in_flight })
}

fn read_reconcile(table: Table, errors: &mut Vec<ConfigError>) -> Option<ReconcileConfig> {
    let mut f = Fields::new("reconcile", table, errors);
    let interval = f.millis("interval_ms").unwrap_or(Duration::from_secs(1));
    f.finish();
    Some(ReconcileConfig { interval })
}

fn read_local(table: Table, errors: &mut Vec<ConfigError>) -> Option<LocalConfig> {
    let mut f = Fields::new("local", table, errors);
    let state_dir = f
        .non_empty_string("state_dir")
        .unwrap_or_else(|| DEFAULT_LOCAL_STATE_DIR.to_string());
    let stop_grace = f.duration("stop_grace").unwrap_or(Duration::from_secs(10));
    f.finish();
    Some(LocalConfig {
        state_dir: PathBuf::from(state_dir),
        stop_grace,
    })
}

fn read_fleet(
    index: usize,
    table: Table,
    backends: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<FleetConfig> {
    let mut f = Fields::new(&format!("fleet[{index}]"), table, errors);
    let name = f.non_empty_string("name");
    if let Some(name) = &name {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            f.error(
                "name",
                format!("expected letters, digits, '-' or '_', got {name:?}"),
            );
        }
    }
    let queue = f.non_empty_string("queue");
    let raw_tags = f.strings("tags").unwrap_or_default();
    let tags_path = f.at("tags");
    let mut tags = match AgentTags::parse(&tags_path, &raw_tags) {
        Ok(tags) => Some(tags),
        Err(e) => {
            let (path, message) = match &e {
                RuleError::NotKeyValue { field, value } => (
                    field.clone(),
                    format!("{value:?} is not a key=value pair (expected e.g. \"queue=linux\")"),
                ),
                RuleError::EmptyKey { field, value } => (
                    field.clone(),
                    format!("{value:?} has an empty key (expected e.g. \"queue=linux\")"),
                ),
            };
            f.errors.push(ConfigError { path, message });
            None
        }
    };
    if let (Some(tags), Some(queue)) = (tags.as_mut(), queue.as_ref()) {
        if tags.values("queue").any(|q| q != queue) {
            f.error("tags", format!("a queue tag must not differ from queue = {queue:?}; set the queue with `queue` only"));
        }
        tags.0.retain(|(k, _)| k != "queue");
        tags.0.insert(0, ("queue".to_string(), queue.clone()));
    }
    let backend = f
        .non_empty_string("backend")
        .unwrap_or_else(|| "local".to_string());
    if !backends.is_empty() && !backends.contains(&backend.as_str()) {
        f.error(
            "backend",
            format!(
                "unknown backend {backend:?}; available: {}",
                backends.join(", ")
            ),
        );
    }
    let template_table = f.table("template");
    let template = read_template(&f.at("template"), template_table, f.errors);
    let mode = match f.string("mode").as_deref() {
        None | Some("acquire") => Some(Mode::Acquire),
        Some(other @ ("relay" | "pool")) => {
            f.error(
                "mode",
                format!("{other:?} is not supported yet; only \"acquire\" is"),
            );
            None
        }
        Some(other) => {
            f.error("mode", format!("expected \"acquire\", got {other:?}"));
            None
        }
    };
    let has_max_in_flight = f.table.contains_key("max_in_flight");
    let max_in_flight =
        f.positive("max_in_flight")
            .or(if has_max_in_flight { None } else { Some(10) });
    let launches_per_minute = f.positive("launches_per_minute");
    let priority = match f.string("priority").as_deref() {
        None | Some("job") => Some(PriorityOrder::JobPriority),
        Some("fifo") => Some(PriorityOrder::Fifo),
        Some(other) => {
            f.error(
                "priority",
                format!("expected \"job\" or \"fifo\", got {other:?}"),
            );
            None
        }
    };
    let pending_deadline = f
        .duration("pending_deadline")
        .unwrap_or(Duration::from_secs(300));
    let running_deadline = f
        .duration("running_deadline")
        .unwrap_or(Duration::from_secs(3 * 3600));
    let relaunch_budget = f.non_negative("relaunch_budget").unwrap_or(1);
    f.finish();
    Some(FleetConfig {
        name: name?,
        queue: queue?,
        tags: tags?,
        backend,
        template: template?,
        mode: mode?,
        max_in_flight: max_in_flight?,
        launches_per_minute,
        priority: priority?,
        pending_deadline,
        running_deadline,
        relaunch_budget,
    })
}

fn read_template(path: &str, table: Table, errors: &mut Vec<ConfigError>) -> Option<Template> {
    let mut f = Fields::new(path, table, errors);
    let command = f.strings("command").unwrap_or_else(|| {
        ["updraft", "agent", "start", "--acquire-job", "{job_id}"]
            .map(String::from)
            .to_vec()
    });
    if command.is_empty() {
        f.error("command", "expected at least the program to run, got []");
    }
    let env = f.string_map("env").unwrap_or_default();
    f.finish();
    Some(Template { command, env })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [buildkite]
        agent_token = "bkct_test"
        [[fleet]]
        name = "linux"
        queue = "linux"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        let fleet = &config.fleets[0];
        assert_eq!(fleet.tags.to_strings(), vec!["queue=linux"]);
        assert_eq!(fleet.mode, Mode::Acquire);
        assert_eq!(fleet.backend, "local");
        assert_eq!(config.buildkite.poll_interval, Duration::from_secs(1));
        assert_eq!(config.buildkite.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(fleet.template.command[4], "{job_id}");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            bogus = 1
            [buildkite]
            agent_token = "bkct_test"
            poll_interval_ms = 200
            [[fleet]]
            name = "a"
            queue = "linux"
            [[fleet]]
            name = "b"
            queue = "gpu"
            max_in_flight = 0
            mode = "relay"
            tags = ["gpu"]
            colour = "red"
            pending_deadline = "soon"
        "#;
        let errors = Config::parse(text).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        for expected in [
            "bogus: unknown key",
            "buildkite.poll_interval_ms: expected at least 1000 (the Stacks API asks for ≥ 1 s between polls), got 200",
            "fleet[1].max_in_flight: expected a positive integer, got 0",
            "fleet[1].mode: \"relay\" is not supported yet; only \"acquire\" is",
            "fleet[1].colour: unknown key",
            "fleet[1].tags[0]: \"gpu\" is not a key=value pair (expected e.g. \"queue=linux\")",
        ] {
            assert!(lines.iter().any(|l| l == expected), "missing {expected:?} in {lines:#?}");
        }
        assert!(lines
            .iter()
            .any(|l| l.starts_with("fleet[1].pending_deadline: expected a positive duration")));
    }

    #[test]
    fn duplicate_fleet_names_and_missing_token_are_errors() {
        let text = r#"
            [[fleet]]
            name = "a"
            queue = "x"
            [[fleet]]
            name = "a"
            queue = "y"
        "#;
        let errors = Config::parse_with_env(text, Vec::new()).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"fleet[1].name"), "{paths:?}");
        if std::env::var(DEFAULT_AGENT_TOKEN_ENV).is_err() {
            assert!(paths.contains(&"buildkite.agent_token"), "{paths:?}");
        }
    }

    #[test]
    fn environment_overrides_sections() {
        let env = vec![
            (
                "UPDRAFT_BUILDKITE_POLL_INTERVAL_MS".to_string(),
                "2500".to_string(),
            ),
            ("UPDRAFT_HTTP_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "UPDRAFT_LEDGER_PATH".to_string(),
                "/tmp/x.sqlite".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let config = Config::parse_with_env(MINIMAL, env).unwrap();
        assert_eq!(config.buildkite.poll_interval, Duration::from_millis(2500));
        assert_eq!(config.http.listen.port(), 0);
        assert_eq!(config.ledger.path, PathBuf::from("/tmp/x.sqlite"));
    }

    #[test]
    fn queue_tag_is_added_and_extra_tags_kept() {
        let text = format!("{MINIMAL}\ntags = [\"docker=true\"]\n");
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config.fleets[0].tags.to_strings(),
            vec!["queue=linux", "docker=true"]
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let env = vec![
            ("BUILDKITE_AGENT_TOKEN".to_string(), "bkct_x".to_string()),
            ("UPDRAFT_WEBHOOK_TOKEN".to_string(), "w".to_string()),
        ];
        let text = include_str!("../updraft.example.toml");
        let config = Config::parse_checked(text, env, &["local"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.fleets.len(), 2);
        assert_eq!(config.fleets[0].launches_per_minute, Some(600));
        assert_eq!(
            config.fleets[0].template.env["BUILDKITE_BUILD_PATH"],
            "/tmp/builds"
        );
        assert_eq!(config.queues(), vec!["linux"]);
        assert_eq!(config.ledger.retention, DEFAULT_LEDGER_RETENTION);
    }

    #[test]
    fn ledger_retention_defaults_to_a_week_and_refuses_less_than_an_hour() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.ledger.retention, DEFAULT_LEDGER_RETENTION);
        let env = vec![("UPDRAFT_LEDGER_RETENTION".to_string(), "30d".to_string())];
        let config = Config::parse_with_env(MINIMAL, env).unwrap();
        assert_eq!(config.ledger.retention, Duration::from_secs(30 * 24 * 3600));
        for (retention, expected) in [
            (
                "\"10m\"",
                "ledger.retention: expected at least 1h (closed jobs stay readable at least that long), got 600s",
            ),
            (
                "\"forever\"",
                "ledger.retention: expected a positive duration like \"90s\", \"5m\", \"2h\" or \"7d\" (at most 100 years), got \"forever\"",
            ),
        ] {
            let text = format!("[ledger]\nretention = {retention}\n{MINIMAL}");
            let errors = Config::parse(&text).unwrap_err();
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert_eq!(lines, vec![expected.to_string()]);
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("7d"),
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("36501d"), None);
        assert_eq!(parse_duration("99999999999999999d"), None);
        assert_eq!(parse_duration("soon"), None);
    }
}
