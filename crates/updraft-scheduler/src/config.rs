//! The scheduler's configuration: a TOML file, overridden by `UPDRAFT_<SECTION>_<KEY>`
//! environment variables. Each section is a typed struct (`file` module) read with
//! `updraft_config`, which reports every mistake at once with its path; this module then
//! resolves what the file says into the settings the scheduler runs on (secrets looked up,
//! tags parsed, fleet names checked to be unique).
//!
//! Backends own their settings: a top-level table named after a backend (`[local]`,
//! `[kubernetes]`) and a fleet's table named after its backend (`[fleet.kubernetes]`) are kept
//! here as raw values and read by the backend's crate, so the scheduler never depends on
//! Kubernetes or AWS types.

mod file;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;
use updraft_config::{read, read_toml_text, Errors, Path};
pub use updraft_config::{ConfigError, ConfigErrors};
use updraft_model::scaling::PoolSettings;
pub use updraft_model::PriorityOrder;
use updraft_model::{AgentTags, FleetLimits, RuleError, Secret};

pub use file::{
    BuildkiteFile, FleetFile, HttpFile, LedgerFile, LimitsFile, Mode, PushFile, ReconcileFile,
    TemplateFile, DEFAULT_AGENT_TOKEN_ENV, DEFAULT_ENDPOINT, DEFAULT_HTTP_LISTEN,
    DEFAULT_LEDGER_PATH, DEFAULT_REST_ENDPOINT, MIN_LEDGER_RETENTION, MIN_POLL_INTERVAL_MS,
};

/// The sections the scheduler reads itself, in the order the reference lists them.
pub const SECTIONS: [&str; 6] = ["buildkite", "push", "http", "ledger", "limits", "reconcile"];

/// The backends `Config::parse` assumes when the caller names none.
pub const DEFAULT_BACKENDS: [&str; 1] = ["local"];

#[derive(Debug, Clone)]
pub struct Config {
    pub buildkite: BuildkiteConfig,
    pub push: PushConfig,
    pub http: HttpConfig,
    pub ledger: LedgerConfig,
    pub limits: LimitsConfig,
    pub reconcile: ReconcileConfig,
    pub fleets: Vec<FleetConfig>,
    /// Top-level tables named after a backend (`[local]`, `[kubernetes]`), unread: the
    /// backend's crate reads them.
    pub backend_sections: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
pub struct BuildkiteConfig {
    /// The agent API base, e.g. `https://agent.buildkite.com/v3`.
    pub endpoint: String,
    /// The cluster agent token (Stacks API, metrics). Never put into a launch. Empty until
    /// the binary has read `agent_token_from`.
    pub agent_token: Secret,
    /// Where the binary reads the agent token at start-up (`ssm:/name`), if the file says so.
    pub agent_token_from: Option<String>,
    pub stack_key: String,
    pub poll_interval: Duration,
    pub page_limit: u32,
    pub reservation_expiry: Duration,
    pub token_lifetime: Duration,
    pub metrics_interval: Duration,
    /// The REST API base, e.g. `https://api.buildkite.com/v2`.
    pub rest_endpoint: String,
    /// A REST API token for pools to read their agents; `None` without one.
    pub api_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct PushConfig {
    /// A separate listener for the push routes; `None` serves them on `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// The shared webhook token (also the HMAC key for signed webhooks).
    pub webhook_token: Option<Secret>,
    /// Where the binary reads the webhook token at start-up (`ssm:/name`), if the file says so.
    pub webhook_token_from: Option<String>,
    pub allow_unsigned_eventbridge: bool,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub path: PathBuf,
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
    /// The fleet's table named after its backend (`[fleet.kubernetes]`), for the backend's
    /// crate to read.
    pub backend_settings: Option<Value>,
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
    /// The warm pool, for a `mode = "pool"` fleet.
    pub pool: Option<PoolSettings>,
    /// Dollars per second of one launch or pool member.
    pub price_per_second: Option<f64>,
    /// For a one-shot fleet behind a pool: how long a job waits for a pool agent first.
    pub overflow_after: Option<Duration>,
}

impl FleetConfig {
    /// Whether this fleet is a warm pool rather than one-shot launches.
    pub fn is_pool(&self) -> bool {
        self.mode == Mode::Pool
    }

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
    /// Read a file, apply the process environment's overrides, validate (local backend only).
    pub fn load(path: &FsPath) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        Config::parse_with_env(&text, std::env::vars())
            .map_err(|errors| anyhow::anyhow!("{}: {errors}", path.display()))
    }

    /// Parse TOML text with no environment overrides.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with_env(text, std::iter::empty())
    }

    /// Parse TOML text, then apply `UPDRAFT_<SECTION>_<KEY>` overrides from `env`.
    /// `*_env` settings (e.g. `agent_token_env`) are looked up in `env` too.
    pub fn parse_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Config::parse_checked(text, env, &DEFAULT_BACKENDS)
    }

    /// As `parse_with_env`, with the backends this binary has: a fleet's `backend` must be one
    /// of them, and their names are the backend tables allowed at the top and in fleets.
    pub fn parse_checked(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        backends: &[&str],
    ) -> Result<Config, ConfigErrors> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let (raw, mut errors) = Config::prepare(text, &env, backends)?;
        let config = Config::read(&raw, &env, backends, &mut errors);
        match config {
            Some(config) => errors.into_result(config),
            None => Err(errors
                .into_result(())
                .expect_err("reading failed with no error")),
        }
    }

    /// Parse TOML text and apply `UPDRAFT_<SECTION>_<KEY>` overrides from `env`, giving the raw
    /// file `read` (and each backend's reader) works on, and the problems found so far.
    pub fn prepare(
        text: &str,
        env: &BTreeMap<String, String>,
        backends: &[&str],
    ) -> Result<(Value, Errors), ConfigErrors> {
        let mut raw = read_toml_text(text)?;
        let mut errors = Errors::new();
        apply_env(&mut raw, env, backends, &mut errors);
        Ok((raw, errors))
    }

    /// Each fleet's table for `backend` (`[fleet.kubernetes]`) with its path, straight from
    /// the raw file, so a backend can check its settings even when another part of the file
    /// is wrong. A fleet of that backend without the table gets an empty one.
    pub fn fleet_backend_tables(raw: &Value, backend: &str) -> Vec<(Path, String, Value)> {
        let fleets = raw
            .get("fleet")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        fleets
            .iter()
            .enumerate()
            .filter(|(_, fleet)| {
                fleet
                    .get("backend")
                    .and_then(Value::as_str)
                    .unwrap_or("local")
                    == backend
            })
            .map(|(i, fleet)| {
                let name = fleet
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let table = fleet
                    .get(backend)
                    .cloned()
                    .unwrap_or(Value::Object(Default::default()));
                (Path::root().key("fleet").index(i).key(backend), name, table)
            })
            .collect()
    }

    /// Read an already-parsed file (environment overrides applied), adding every problem to
    /// `errors`; `None` when a section could not be read at all. The caller (the binary)
    /// reads the backends' tables into the same `errors` afterwards.
    pub fn read(
        raw: &Value,
        env: &BTreeMap<String, String>,
        backends: &[&str],
        errors: &mut Errors,
    ) -> Option<Config> {
        let root = Path::root();
        let Some(table) = raw.as_object() else {
            errors.push(&root, "expected a table of sections");
            return None;
        };
        let mut backend_sections = BTreeMap::new();
        for (key, value) in table {
            if SECTIONS.contains(&key.as_str()) || key == "fleet" {
                continue;
            }
            if backends.contains(&key.as_str()) {
                backend_sections.insert(key.clone(), value.clone());
            } else {
                let known = SECTIONS.iter().chain(backends).copied().collect::<Vec<_>>();
                errors.push(
                    &root.key(key),
                    format!("unknown section; known: {}, [[fleet]]", known.join(", ")),
                );
            }
        }
        let section = |name: &str| {
            table
                .get(name)
                .cloned()
                .unwrap_or(Value::Object(Default::default()))
        };
        let lookup = |name: &str| env.get(name).cloned();
        let buildkite: Option<BuildkiteFile> =
            read(&section("buildkite"), &root.key("buildkite"), errors);
        let push: Option<PushFile> = read(&section("push"), &root.key("push"), errors);
        let http: Option<HttpFile> = read(&section("http"), &root.key("http"), errors);
        let ledger: Option<LedgerFile> = read(&section("ledger"), &root.key("ledger"), errors);
        let limits: Option<LimitsFile> = read(&section("limits"), &root.key("limits"), errors);
        let reconcile: Option<ReconcileFile> =
            read(&section("reconcile"), &root.key("reconcile"), errors);
        let fleets = read_fleets(table.get("fleet"), backends, errors);
        // Every section is resolved before any is given up on, so each reports its problems.
        let buildkite = buildkite.and_then(|b| b.resolve(&root.key("buildkite"), &lookup, errors));
        let push = push.and_then(|p| p.resolve(&root.key("push"), &lookup, errors));
        let http = http.and_then(|h| h.resolve(&root.key("http"), errors));
        Some(Config {
            buildkite: buildkite?,
            push: push?,
            http: http?,
            ledger: ledger?.resolve(),
            limits: limits?.resolve(),
            reconcile: reconcile?.resolve(),
            fleets: fleets?,
            backend_sections,
        })
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

fn read_fleets(
    raw: Option<&Value>,
    backends: &[&str],
    errors: &mut Errors,
) -> Option<Vec<FleetConfig>> {
    let at = Path::root().key("fleet");
    let items = match raw {
        None => {
            errors.push(&at, "at least one [[fleet]] is required");
            return None;
        }
        Some(Value::Array(items)) if items.is_empty() => {
            errors.push(&at, "at least one [[fleet]] is required");
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(&at, "expected [[fleet]] tables");
            return None;
        }
    };
    let mut fleets = Vec::new();
    let mut complete = true;
    for (i, item) in items.iter().enumerate() {
        let here = at.index(i);
        let (item, backend_settings) = split_backend_table(item, backends, &here, errors);
        let fleet = read::<FleetFile>(&item, &here, errors)
            .and_then(|file| file.resolve(&here, backends, backend_settings, errors));
        match fleet {
            Some(fleet) => fleets.push(fleet),
            None => complete = false,
        }
    }
    for (i, fleet) in fleets.iter().enumerate() {
        let pool_before = fleets[..i]
            .iter()
            .any(|earlier| earlier.is_pool() && earlier.queue == fleet.queue);
        if fleet.overflow_after.is_some() && !fleet.is_pool() && !pool_before {
            errors.push(
                &at.index(i).key("overflow_after"),
                format!(
                    "expected a mode = \"pool\" fleet on queue {:?} listed before this one to take overflow from",
                    fleet.queue
                ),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, fleet) in fleets.iter().enumerate() {
        if !seen.insert(fleet.name.clone()) {
            errors.push(
                &at.index(i).key("name"),
                format!(
                    "{:?} is used by an earlier fleet; names must be unique",
                    fleet.name
                ),
            );
        }
    }
    complete.then_some(fleets)
}

/// Take a fleet's backend table out before the fleet itself is read: it belongs to the
/// backend. A table named after another backend is a mistake worth naming.
fn split_backend_table(
    fleet: &Value,
    backends: &[&str],
    at: &Path,
    errors: &mut Errors,
) -> (Value, Option<Value>) {
    let Some(table) = fleet.as_object() else {
        return (fleet.clone(), None);
    };
    let chosen = table
        .get("backend")
        .and_then(Value::as_str)
        .unwrap_or("local");
    if !backends.is_empty() && !backends.contains(&chosen) {
        errors.push(
            &at.key("backend"),
            format!(
                "unknown backend {chosen:?}; available: {}",
                backends.join(", ")
            ),
        );
    }
    let mut rest = table.clone();
    let mut settings = None;
    for name in backends {
        if let Some(value) = rest.remove(*name) {
            if *name == chosen {
                settings = Some(value);
            } else {
                errors.push(
                    &at.key(name),
                    format!(
                        "settings for backend {name:?}, but this fleet's backend is {chosen:?}"
                    ),
                );
            }
        }
    }
    (Value::Object(rest), settings)
}

/// `UPDRAFT_<SECTION>_<KEY>=value` sets `<key>` in `[<section>]` (the scheduler's sections and
/// the backends' top-level tables); the value is read as a TOML value when it is one (`2500`,
/// `true`), else as a string.
fn apply_env(
    raw: &mut Value,
    env: &BTreeMap<String, String>,
    backends: &[&str],
    errors: &mut Errors,
) {
    let Some(root) = raw.as_object_mut() else {
        return;
    };
    let sections: Vec<&str> = SECTIONS.iter().chain(backends).copied().collect();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("UPDRAFT_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some(section) = sections
            .iter()
            .find(|s| lower.starts_with(&format!("{s}_")))
        else {
            continue;
        };
        let key = lower[section.len() + 1..].to_string();
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .map(updraft_config::to_json)
            .unwrap_or_else(|| Value::String(value.clone()));
        match root
            .entry(section.to_string())
            .or_insert_with(|| Value::Object(Default::default()))
        {
            Value::Object(table) => {
                table.insert(key, parsed);
            }
            _ => errors.push(
                &Path::root().key(section),
                format!("expected a table (while applying {name})"),
            ),
        }
    }
}

/// The ways a secret may be given: inline (`<key>`), by environment variable name
/// (`<key>_env`), by reference to a secret store (`<key>_from`, read by the binary at
/// start-up), or by a default environment variable.
pub(crate) struct SecretSources<'a> {
    pub inline: Option<&'a str>,
    pub env: Option<&'a str>,
    pub from: Option<&'a str>,
    pub default_env: Option<&'a str>,
}

/// A secret as the configuration gives it.
pub(crate) enum Given {
    Value(Secret),
    /// A reference to a secret store (`ssm:/name`), read by the binary at start-up.
    Reference(String),
}

/// Resolve a secret from one of its sources; at most one may be given. `Err` is reported
/// already.
pub(crate) fn secret(
    sources: SecretSources<'_>,
    at: &Path,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Errors,
) -> Result<Option<Given>, ()> {
    let env_key = format!("{key}_env");
    let given: Vec<String> = [
        sources.inline.map(|_| key.to_string()),
        sources.env.map(|_| env_key.clone()),
        sources.from.map(|_| format!("{key}_from")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        errors.push(
            &at.key(key),
            format!("set only one of {}", given.join(", ")),
        );
        return Err(());
    }
    if let Some(value) = sources.inline {
        return Ok(Some(Given::Value(Secret::new(value))));
    }
    if let Some(reference) = sources.from {
        return Ok(Some(Given::Reference(reference.to_string())));
    }
    if let Some(name) = sources.env {
        return match lookup(name).filter(|v| !v.is_empty()) {
            Some(value) => Ok(Some(Given::Value(Secret::new(value)))),
            None => {
                errors.push(
                    &at.key(&env_key),
                    format!("environment variable {name} is not set or empty"),
                );
                Err(())
            }
        };
    }
    Ok(sources
        .default_env
        .and_then(|name| lookup(name).filter(|v| !v.is_empty()))
        .map(|value| Given::Value(Secret::new(value))))
}

/// A fleet's tags with `queue=<queue>` first; `None` when a tag is malformed (reported).
pub(crate) fn fleet_tags(
    raw: &[String],
    queue: &str,
    at: &Path,
    errors: &mut Errors,
) -> Option<AgentTags> {
    let tags_path = at.key("tags");
    let mut tags = match AgentTags::parse(tags_path.as_str(), raw) {
        Ok(tags) => tags,
        Err(e) => {
            let (field, message) = match &e {
                RuleError::NotKeyValue { field, value } => (
                    field.clone(),
                    format!("{value:?} is not a key=value pair (expected e.g. \"queue=linux\")"),
                ),
                RuleError::EmptyKey { field, value } => (
                    field.clone(),
                    format!("{value:?} has an empty key (expected e.g. \"queue=linux\")"),
                ),
            };
            errors.push(&Path::verbatim(&field), message);
            return None;
        }
    };
    if tags.values("queue").any(|q| q != queue) {
        errors.push(
            &tags_path,
            format!("a queue tag must not differ from queue = {queue:?}; set the queue with `queue` only"),
        );
    }
    tags.0.retain(|(k, _)| k != "queue");
    tags.0.insert(0, ("queue".to_string(), queue.to_string()));
    Some(tags)
}

#[cfg(test)]
mod tests;
