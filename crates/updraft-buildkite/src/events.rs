//! Push events: Buildkite webhooks (`X-Buildkite-Event` + JSON body) and Amazon EventBridge
//! envelopes (`detail-type` + `detail`) parsed into one `PushEvent`, and the webhook checks
//! (`X-Buildkite-Token` in constant time, `X-Buildkite-Signature` HMAC-SHA256 over
//! `<timestamp>.<body>` inside a replay window). Every refusal is a `Rejection` that says why.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use subtle::ConstantTimeEq;
use updraft_model::{JobState, QueryRules, Secret};

pub const EVENT_HEADER: &str = "x-buildkite-event";
pub const TOKEN_HEADER: &str = "x-buildkite-token";
pub const SIGNATURE_HEADER: &str = "x-buildkite-signature";

/// Receivers should refuse signatures older (or newer) than this (reference §6.2).
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// What happened. Webhook names and EventBridge detail-types that mean the same thing map to
/// the same kind (`build.running` = "Build Started", `build.scheduled` = "Build Created").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Ping,
    BuildScheduled,
    BuildRunning,
    BuildFailing,
    BuildBlocked,
    BuildFinished,
    BuildSkipped,
    JobScheduled,
    JobStarted,
    JobFinished,
    JobActivated,
    JobPromisedExitStatus,
    AgentConnected,
    AgentLost,
    AgentDisconnected,
    AgentStopping,
    AgentStopped,
    AgentBlocked,
    ClusterTokenRegistrationBlocked,
    AuditEventLogged,
}

/// (kind, webhook event name, EventBridge detail-type)
const KINDS: [(EventKind, Option<&str>, Option<&str>); 20] = [
    (EventKind::Ping, Some("ping"), None),
    (
        EventKind::BuildScheduled,
        Some("build.scheduled"),
        Some("Build Created"),
    ),
    (
        EventKind::BuildRunning,
        Some("build.running"),
        Some("Build Started"),
    ),
    (
        EventKind::BuildFailing,
        Some("build.failing"),
        Some("Build Failing"),
    ),
    (EventKind::BuildBlocked, None, Some("Build Blocked")),
    (
        EventKind::BuildFinished,
        Some("build.finished"),
        Some("Build Finished"),
    ),
    (EventKind::BuildSkipped, Some("build.skipped"), None),
    (
        EventKind::JobScheduled,
        Some("job.scheduled"),
        Some("Job Scheduled"),
    ),
    (
        EventKind::JobStarted,
        Some("job.started"),
        Some("Job Started"),
    ),
    (
        EventKind::JobFinished,
        Some("job.finished"),
        Some("Job Finished"),
    ),
    (
        EventKind::JobActivated,
        Some("job.activated"),
        Some("Job Activated"),
    ),
    (
        EventKind::JobPromisedExitStatus,
        Some("job.promised_exit_status"),
        Some("Job Promised Exit Status"),
    ),
    (
        EventKind::AgentConnected,
        Some("agent.connected"),
        Some("Agent Connected"),
    ),
    (EventKind::AgentLost, Some("agent.lost"), Some("Agent Lost")),
    (
        EventKind::AgentDisconnected,
        Some("agent.disconnected"),
        Some("Agent Disconnected"),
    ),
    (
        EventKind::AgentStopping,
        Some("agent.stopping"),
        Some("Agent Stopping"),
    ),
    (
        EventKind::AgentStopped,
        Some("agent.stopped"),
        Some("Agent Stopped"),
    ),
    (
        EventKind::AgentBlocked,
        Some("agent.blocked"),
        Some("Agent Blocked"),
    ),
    (
        EventKind::ClusterTokenRegistrationBlocked,
        Some("cluster_token.registration_blocked"),
        Some("Cluster Token Registration Blocked"),
    ),
    (
        EventKind::AuditEventLogged,
        None,
        Some("Audit Event Logged"),
    ),
];

impl EventKind {
    pub fn from_webhook(name: &str) -> Option<Self> {
        KINDS
            .iter()
            .find(|(_, webhook, _)| *webhook == Some(name))
            .map(|(kind, _, _)| *kind)
    }

    pub fn from_detail_type(detail_type: &str) -> Option<Self> {
        KINDS
            .iter()
            .find(|(_, _, eb)| *eb == Some(detail_type))
            .map(|(kind, _, _)| *kind)
    }

    /// The webhook spelling where one exists, else the EventBridge one.
    pub fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(kind, _, _)| *kind == self)
            .and_then(|(_, webhook, eb)| webhook.or(*eb))
            .unwrap_or("unknown")
    }

    pub fn is_job_event(self) -> bool {
        matches!(
            self,
            EventKind::JobScheduled
                | EventKind::JobStarted
                | EventKind::JobFinished
                | EventKind::JobActivated
                | EventKind::JobPromisedExitStatus
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Webhook,
    EventBridge,
}

/// The job an event is about, from a webhook's REST Job or EventBridge's `detail.job`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// The job UUID (`job.id` in webhooks, `job.uuid` in EventBridge).
    pub id: String,
    pub state: Option<JobState>,
    pub agent_query_rules: QueryRules,
    pub priority: Option<i64>,
    pub runnable_at: Option<DateTime<Utc>>,
    pub label: Option<String>,
    pub step_key: Option<String>,
    pub command: Option<String>,
    pub exit_status: Option<i64>,
    pub signal_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildInfo {
    pub id: Option<String>,
    pub number: Option<u64>,
    pub state: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineInfo {
    pub id: Option<String>,
    pub slug: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub connection_state: Option<String>,
}

/// One push event, whatever carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushEvent {
    pub kind: EventKind,
    pub source: EventSource,
    /// EventBridge's envelope `id` (unique per delivery attempt's event); webhooks have none.
    pub delivery_id: Option<String>,
    /// When the event was produced, if the carrier says (EventBridge `time`).
    pub time: Option<DateTime<Utc>>,
    pub organization_slug: Option<String>,
    pub job: Option<JobInfo>,
    pub build: Option<BuildInfo>,
    pub pipeline: Option<PipelineInfo>,
    pub agent: Option<AgentInfo>,
}

impl PushEvent {
    pub fn job_id(&self) -> Option<&str> {
        self.job.as_ref().map(|job| job.id.as_str())
    }
}

/// Why a push was refused. The `Display` text is safe to log and to return to the sender: it
/// never contains the shared token or the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing X-Buildkite-Event header")]
    MissingEventHeader,
    #[error("neither X-Buildkite-Token nor X-Buildkite-Signature is present")]
    MissingCredentials,
    #[error("header {header} is not valid text")]
    UnreadableHeader { header: &'static str },
    #[error("X-Buildkite-Token does not match the configured webhook token")]
    TokenMismatch,
    #[error("X-Buildkite-Signature is malformed: {detail} (expected \"timestamp=<unix seconds>,signature=<hex>\")")]
    MalformedSignature { detail: String },
    #[error("X-Buildkite-Signature does not match the body")]
    SignatureMismatch,
    #[error("X-Buildkite-Signature timestamp is {age_secs} s old, outside the {window_secs} s replay window")]
    StaleSignature { age_secs: i64, window_secs: u64 },
    #[error(
        "X-Buildkite-Signature timestamp is {ahead_secs} s in the future, outside the {window_secs} s replay window"
    )]
    FutureSignature { ahead_secs: i64, window_secs: u64 },
    #[error("body is not a JSON object: {detail}")]
    NotJson { detail: String },
    #[error("unknown event {name:?}")]
    UnknownEvent { name: String },
    #[error("X-Buildkite-Event says {header:?} but the body's event is {body:?}")]
    EventMismatch { header: String, body: String },
    #[error("{path}: missing")]
    MissingField { path: String },
    #[error("{path}: {detail}")]
    InvalidField { path: String, detail: String },
}

/// Checks a webhook's credentials: the shared token, or the HMAC signature made with it.
#[derive(Clone)]
pub struct WebhookVerifier {
    token: Secret,
    replay_window: Duration,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("token", &self.token)
            .field("replay_window", &self.replay_window)
            .finish()
    }
}

impl WebhookVerifier {
    pub fn new(token: Secret) -> Self {
        WebhookVerifier {
            token,
            replay_window: DEFAULT_REPLAY_WINDOW,
        }
    }

    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Accept when every credential present checks out (a request carrying both must pass
    /// both); refuse a request with none.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let token = header_text(headers, TOKEN_HEADER, "X-Buildkite-Token")?;
        let signature = header_text(headers, SIGNATURE_HEADER, "X-Buildkite-Signature")?;
        if token.is_none() && signature.is_none() {
            return Err(Rejection::MissingCredentials);
        }
        if let Some(token) = token {
            self.verify_token(token)?;
        }
        if let Some(signature) = signature {
            self.verify_signature(signature, body, now)?;
        }
        Ok(())
    }

    pub fn verify_token(&self, presented: &str) -> Result<(), Rejection> {
        let equal: bool = presented
            .as_bytes()
            .ct_eq(self.token.expose().as_bytes())
            .into();
        if equal {
            Ok(())
        } else {
            Err(Rejection::TokenMismatch)
        }
    }

    /// `timestamp=<unix>,signature=<hex HMAC-SHA256(token, "<timestamp>.<body>")>`.
    pub fn verify_signature(
        &self,
        header: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let (timestamp, signature_hex) = parse_signature_header(header)?;
        let window = self.replay_window.as_secs();
        let age = now.timestamp() - timestamp;
        if age > window as i64 {
            return Err(Rejection::StaleSignature {
                age_secs: age,
                window_secs: window,
            });
        }
        if -age > window as i64 {
            return Err(Rejection::FutureSignature {
                ahead_secs: -age,
                window_secs: window,
            });
        }
        let presented = hex::decode(signature_hex).map_err(|e| Rejection::MalformedSignature {
            detail: format!("signature is not hex ({e})"),
        })?;
        let mut mac = self.mac();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&presented)
            .map_err(|_| Rejection::SignatureMismatch)
    }

    /// The header value a sender with this token would attach (used by the emulator and tests).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "timestamp={timestamp},signature={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.token.expose().as_bytes())
            .expect("HMAC accepts any key length")
    }
}

fn header_text<'h>(
    headers: &'h HeaderMap,
    name: &str,
    shown: &'static str,
) -> Result<Option<&'h str>, Rejection> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| Rejection::UnreadableHeader { header: shown }),
    }
}

fn parse_signature_header(header: &str) -> Result<(i64, &str), Rejection> {
    let malformed = |detail: &str| Rejection::MalformedSignature {
        detail: detail.to_string(),
    };
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| malformed("a part has no '='"))?;
        match key.trim() {
            "timestamp" => timestamp = Some(value.trim()),
            "signature" => signature = Some(value.trim()),
            _ => {
                return Err(malformed(
                    "unknown part (only timestamp and signature are allowed)",
                ))
            }
        }
    }
    let timestamp = timestamp.ok_or_else(|| malformed("no timestamp"))?;
    let timestamp = timestamp
        .parse::<i64>()
        .map_err(|_| malformed("timestamp is not a whole number of seconds"))?;
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("no signature"))?;
    Ok((timestamp, signature))
}

/// Verify a webhook's credentials, then parse it.
pub fn verify_and_parse_webhook(
    verifier: &WebhookVerifier,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<PushEvent, Rejection> {
    verifier.verify(headers, body, now)?;
    parse_webhook(headers, body)
}

/// Parse a webhook whose credentials were already checked (or need none).
pub fn parse_webhook(headers: &HeaderMap, body: &[u8]) -> Result<PushEvent, Rejection> {
    let name = header_text(headers, EVENT_HEADER, "X-Buildkite-Event")?
        .ok_or(Rejection::MissingEventHeader)?;
    let kind = EventKind::from_webhook(name).ok_or_else(|| Rejection::UnknownEvent {
        name: name.to_string(),
    })?;
    let root = json_object(body)?;
    if let Some(in_body) = root.get("event").and_then(Value::as_str) {
        if in_body != name {
            return Err(Rejection::EventMismatch {
                header: name.to_string(),
                body: in_body.to_string(),
            });
        }
    }
    let job = match root.get("job").filter(|v| !v.is_null()) {
        Some(job) => Some(parse_job(job, "job", "id")?),
        None if kind.is_job_event() => return Err(Rejection::MissingField { path: "job".into() }),
        None => None,
    };
    Ok(PushEvent {
        kind,
        source: EventSource::Webhook,
        delivery_id: None,
        time: None,
        organization_slug: org_slug(&root),
        job,
        build: root
            .get("build")
            .filter(|v| !v.is_null())
            .map(|b| parse_build(b, "id"))
            .transpose()?,
        pipeline: root
            .get("pipeline")
            .filter(|v| !v.is_null())
            .map(|p| parse_pipeline(p, "id")),
        agent: root
            .get("agent")
            .filter(|v| !v.is_null())
            .map(|a| parse_agent(a, "id")),
    })
}

/// Parse an EventBridge envelope (as delivered by a rule target, or an SQS message body).
pub fn parse_eventbridge(body: &[u8]) -> Result<PushEvent, Rejection> {
    let root = json_object(body)?;
    let detail_type =
        str_field(&root, "detail-type", "detail-type")?.ok_or_else(|| Rejection::MissingField {
            path: "detail-type".into(),
        })?;
    let kind = EventKind::from_detail_type(detail_type).ok_or_else(|| Rejection::UnknownEvent {
        name: detail_type.to_string(),
    })?;
    let detail = root
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or_else(|| Rejection::MissingField {
            path: "detail".into(),
        })?;
    let job = match detail.get("job").filter(|v| !v.is_null()) {
        Some(job) => Some(parse_job(job, "detail.job", "uuid")?),
        None if kind.is_job_event() => {
            return Err(Rejection::MissingField {
                path: "detail.job".into(),
            })
        }
        None => None,
    };
    let time = str_field(&root, "time", "time")?
        .map(|t| parse_time("time", t))
        .transpose()?;
    Ok(PushEvent {
        kind,
        source: EventSource::EventBridge,
        delivery_id: str_field(&root, "id", "id")?.map(str::to_string),
        time,
        organization_slug: org_slug(detail),
        job,
        build: detail
            .get("build")
            .filter(|v| !v.is_null())
            .map(|b| parse_build(b, "uuid"))
            .transpose()?,
        pipeline: detail
            .get("pipeline")
            .filter(|v| !v.is_null())
            .map(|p| parse_pipeline(p, "uuid")),
        agent: detail
            .get("agent")
            .filter(|v| !v.is_null())
            .map(|a| parse_agent(a, "uuid")),
    })
}

/// Parse either form, telling them apart by the envelope's `detail-type`.
pub fn parse_any(headers: &HeaderMap, body: &[u8]) -> Result<PushEvent, Rejection> {
    let looks_like_eventbridge = serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("detail-type").is_some());
    if looks_like_eventbridge {
        parse_eventbridge(body)
    } else {
        parse_webhook(headers, body)
    }
}

fn json_object(body: &[u8]) -> Result<Value, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::NotJson {
        detail: e.to_string(),
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(Rejection::NotJson {
            detail: "the top level is not an object".into(),
        })
    }
}

fn str_field<'v>(object: &'v Value, key: &str, path: &str) -> Result<Option<&'v str>, Rejection> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Rejection::InvalidField {
            path: path.to_string(),
            detail: format!("expected a string, got {other}"),
        }),
    }
}

fn owned(object: &Value, key: &str, path: &str) -> Result<Option<String>, Rejection> {
    Ok(str_field(object, key, &format!("{path}.{key}"))?.map(str::to_string))
}

/// Integers arrive as numbers in webhooks and sometimes as strings (`"0"`); accept both.
fn int_field(object: &Value, key: &str, path: &str) -> Result<Option<i64>, Rejection> {
    let path = format!("{path}.{key}");
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| Rejection::InvalidField {
            path,
            detail: format!("expected a whole number, got {n}"),
        }),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Rejection::InvalidField {
                path,
                detail: format!("expected a whole number, got {s:?}"),
            }),
        Some(other) => Err(Rejection::InvalidField {
            path,
            detail: format!("expected a whole number, got {other}"),
        }),
    }
}

/// RFC 3339 / ISO 8601, or EventBridge's `YYYY-MM-DD hh:mm:ss UTC`.
pub fn parse_time(path: &str, raw: &str) -> Result<DateTime<Utc>, Rejection> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Some(naive) = raw.strip_suffix(" UTC") {
        if let Ok(time) = NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f") {
            return Ok(Utc.from_utc_datetime(&time));
        }
    }
    Err(Rejection::InvalidField {
        path: path.to_string(),
        detail: format!("{raw:?} is not a time (expected RFC 3339 or \"YYYY-MM-DD hh:mm:ss UTC\")"),
    })
}

fn time_field(object: &Value, key: &str, path: &str) -> Result<Option<DateTime<Utc>>, Rejection> {
    let path = format!("{path}.{key}");
    str_field(object, key, &path)?
        .map(|raw| parse_time(&path, raw))
        .transpose()
}

fn parse_job(job: &Value, path: &str, id_key: &str) -> Result<JobInfo, Rejection> {
    let id = str_field(job, id_key, &format!("{path}.{id_key}"))?
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Rejection::MissingField {
            path: format!("{path}.{id_key}"),
        })?
        .to_string();
    let state = str_field(job, "state", &format!("{path}.state"))?
        .map(|s| {
            s.parse::<JobState>().map_err(|e| Rejection::InvalidField {
                path: format!("{path}.state"),
                detail: e.to_string(),
            })
        })
        .transpose()?;
    let rules_path = format!("{path}.agent_query_rules");
    let agent_query_rules = match job.get("agent_query_rules") {
        None | Some(Value::Null) => QueryRules::default(),
        Some(Value::Array(items)) => {
            let raw = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str().ok_or_else(|| Rejection::InvalidField {
                        path: format!("{rules_path}[{i}]"),
                        detail: format!("expected a \"key=value\" string, got {item}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            QueryRules::parse(&rules_path, &raw).map_err(|e| Rejection::InvalidField {
                path: rules_path.clone(),
                detail: e.to_string(),
            })?
        }
        Some(other) => {
            return Err(Rejection::InvalidField {
                path: rules_path,
                detail: format!("expected a list of strings, got {other}"),
            })
        }
    };
    // REST puts priority in `{"number": n}`; other payloads use a bare number.
    let priority = match job.get("priority") {
        Some(object @ Value::Object(_)) => {
            int_field(object, "number", &format!("{path}.priority"))?
        }
        _ => int_field(job, "priority", path)?,
    };
    Ok(JobInfo {
        id,
        state,
        agent_query_rules,
        priority,
        runnable_at: time_field(job, "runnable_at", path)?,
        label: owned(job, "label", path)?.or(owned(job, "name", path)?),
        step_key: owned(job, "step_key", path)?,
        command: owned(job, "command", path)?,
        exit_status: int_field(job, "exit_status", path)?,
        signal_reason: owned(job, "signal_reason", path)?,
    })
}

fn parse_build(build: &Value, id_key: &str) -> Result<BuildInfo, Rejection> {
    let number = int_field(build, "number", "build")?
        .map(|n| {
            u64::try_from(n).map_err(|_| Rejection::InvalidField {
                path: "build.number".into(),
                detail: format!("expected a positive number, got {n}"),
            })
        })
        .transpose()?;
    Ok(BuildInfo {
        id: owned(build, id_key, "build")?,
        number,
        state: owned(build, "state", "build")?,
        branch: owned(build, "branch", "build")?,
        commit: owned(build, "commit", "build")?,
    })
}

fn lenient_str(object: &Value, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parse_pipeline(pipeline: &Value, id_key: &str) -> PipelineInfo {
    PipelineInfo {
        id: lenient_str(pipeline, id_key),
        slug: lenient_str(pipeline, "slug"),
    }
}

fn parse_agent(agent: &Value, id_key: &str) -> AgentInfo {
    AgentInfo {
        id: lenient_str(agent, id_key),
        name: lenient_str(agent, "name"),
        connection_state: lenient_str(agent, "connection_state"),
    }
}

fn org_slug(parent: &Value) -> Option<String> {
    parent
        .get("organization")
        .and_then(|org| lenient_str(org, "slug"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const JOB_ID: &str = "0190f6a4-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn webhook_body() -> String {
        format!(
            r#"{{
              "event": "job.scheduled",
              "job": {{
                "id": "{JOB_ID}", "graphql_id": "Sm9iLS0t", "type": "script", "name": ":rust: test",
                "step_key": "test", "state": "scheduled", "agent_query_rules": ["queue=linux", "docker=true"],
                "priority": {{"number": 5}}, "command": "cargo test", "exit_status": null,
                "runnable_at": "2026-11-22T16:00:01.123Z"
              }},
              "build": {{"id": "b-1", "number": 42, "state": "scheduled", "branch": "main", "commit": "abc123"}},
              "pipeline": {{"id": "p-1", "slug": "updraft"}},
              "sender": {{"id": "u-1", "name": "Ada"}}
            }}"#
        )
    }

    fn eventbridge_body(detail_type: &str) -> String {
        format!(
            r#"{{
              "version": "0", "id": "eb-delivery-1", "detail-type": "{detail_type}",
              "source": "aws.partner/buildkite.com/acme/0123", "account": "123456789012",
              "time": "2026-11-22T16:00:02Z", "region": "us-east-1", "resources": [],
              "detail": {{
                "version": 1,
                "job": {{
                  "uuid": "{JOB_ID}", "graphql_id": "Sm9iLS0t", "type": "script", "label": ":rust: test",
                  "step_key": "test", "command": "cargo test", "agent_query_rules": ["queue=linux"],
                  "exit_status": null, "signal_reason": null, "passed": false, "soft_failed": false,
                  "state": "assigned", "broken_reason": null, "runnable_at": "2026-11-22 16:00:01 UTC",
                  "started_at": null, "finished_at": null, "unblocked_by": null, "retried_in_job_id": null
                }},
                "build": {{"uuid": "b-1", "graphql_id": "QnVp", "number": 42, "commit": "abc123",
                          "message": "go", "branch": "main", "state": "started", "source": "webhook",
                          "started_at": "2026-11-22 16:00:00 UTC", "meta_data": {{}}}},
                "pipeline": {{"uuid": "p-1", "graphql_id": "UGlw", "slug": "updraft", "repo": "git@x:y.git"}},
                "organization": {{"uuid": "o-1", "graphql_id": "T3Jn", "slug": "acme"}}
              }}
            }}"#
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(Secret::new("whsec-correct-horse"))
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 10).unwrap()
    }

    #[test]
    fn webhook_job_scheduled_parses_into_a_push_event() {
        let body = webhook_body();
        let event = parse_webhook(
            &headers(&[(EVENT_HEADER, "job.scheduled")]),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(event.kind, EventKind::JobScheduled);
        assert_eq!(event.source, EventSource::Webhook);
        let job = event.job.as_ref().unwrap();
        assert_eq!(job.id, JOB_ID);
        assert_eq!(job.state, Some(JobState::Scheduled));
        assert_eq!(
            job.agent_query_rules.to_strings(),
            vec!["queue=linux", "docker=true"]
        );
        assert_eq!(job.priority, Some(5));
        assert_eq!(job.label.as_deref(), Some(":rust: test"));
        assert_eq!(
            job.runnable_at.unwrap().timestamp_millis(),
            1_795_363_201_123
        );
        assert_eq!(event.build.as_ref().unwrap().number, Some(42));
        assert_eq!(
            event.pipeline.as_ref().unwrap().slug.as_deref(),
            Some("updraft")
        );
    }

    #[test]
    fn eventbridge_job_scheduled_parses_into_the_same_shape() {
        let event = parse_eventbridge(eventbridge_body("Job Scheduled").as_bytes()).unwrap();
        assert_eq!(event.kind, EventKind::JobScheduled);
        assert_eq!(event.source, EventSource::EventBridge);
        assert_eq!(event.delivery_id.as_deref(), Some("eb-delivery-1"));
        assert_eq!(event.organization_slug.as_deref(), Some("acme"));
        assert_eq!(event.job_id(), Some(JOB_ID));
        let job = event.job.unwrap();
        assert_eq!(job.agent_query_rules.queue(), "linux");
        assert_eq!(
            job.runnable_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 1).unwrap())
        );
        assert_eq!(job.state, Some(JobState::Assigned));
        assert_eq!(event.build.unwrap().id.as_deref(), Some("b-1"));
    }

    #[test]
    fn webhook_and_eventbridge_names_map_to_the_same_kinds() {
        assert_eq!(
            EventKind::from_webhook("build.running"),
            EventKind::from_detail_type("Build Started")
        );
        assert_eq!(
            EventKind::from_webhook("job.finished"),
            Some(EventKind::JobFinished)
        );
        assert_eq!(
            EventKind::from_detail_type("Job Finished"),
            Some(EventKind::JobFinished)
        );
        assert_eq!(EventKind::JobFinished.to_string(), "job.finished");
        assert_eq!(
            EventKind::AuditEventLogged.to_string(),
            "Audit Event Logged"
        );
        for (kind, webhook, eb) in KINDS {
            if let Some(name) = webhook {
                assert_eq!(EventKind::from_webhook(name), Some(kind));
            }
            if let Some(name) = eb {
                assert_eq!(EventKind::from_detail_type(name), Some(kind));
            }
        }
    }

    #[test]
    fn parse_any_tells_the_two_forms_apart() {
        let eb = parse_any(
            &HeaderMap::new(),
            eventbridge_body("Job Finished").as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (eb.kind, eb.source),
            (EventKind::JobFinished, EventSource::EventBridge)
        );
        let body = webhook_body();
        let wh = parse_any(
            &headers(&[(EVENT_HEADER, "job.scheduled")]),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(wh.source, EventSource::Webhook);
    }

    #[test]
    fn ping_and_agent_events_need_no_job() {
        let ping = parse_webhook(
            &headers(&[(EVENT_HEADER, "ping")]),
            br#"{"event":"ping","service":{"id":"s"},"organization":{"slug":"acme"},"sender":{"id":"u","name":"n"}}"#,
        )
        .unwrap();
        assert_eq!(ping.kind, EventKind::Ping);
        assert_eq!(ping.organization_slug.as_deref(), Some("acme"));
        assert!(ping.job.is_none());
        let agent = parse_eventbridge(
            br#"{"detail-type":"Agent Lost","detail":{"agent":{"uuid":"a-1","name":"bob","connection_state":"lost"}}}"#,
        )
        .unwrap();
        assert_eq!(agent.agent.unwrap().id.as_deref(), Some("a-1"));
    }

    #[test]
    fn malformed_payloads_are_rejected_with_the_field_path() {
        let h = headers(&[(EVENT_HEADER, "job.scheduled")]);
        assert_eq!(
            parse_webhook(&h, b"{\"event\":\"job.scheduled\"}").unwrap_err(),
            Rejection::MissingField { path: "job".into() }
        );
        let err =
            parse_webhook(&h, br#"{"job":{"id":"x","agent_query_rules":["linux"]}}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("job.agent_query_rules"),
            "{err}"
        );
        let err = parse_webhook(&h, br#"{"job":{"id":"x","state":"flying"}}"#).unwrap_err();
        assert!(
            err.to_string().contains("job.state") && err.to_string().contains("flying"),
            "{err}"
        );
        let err =
            parse_webhook(&h, br#"{"job":{"id":"x","runnable_at":"yesterday"}}"#).unwrap_err();
        assert!(err.to_string().contains("job.runnable_at"), "{err}");
        let err = parse_webhook(&h, br#"{"job":{"state":"scheduled"}}"#).unwrap_err();
        assert_eq!(
            err,
            Rejection::MissingField {
                path: "job.id".into()
            }
        );
        let err =
            parse_eventbridge(br#"{"detail-type":"Job Scheduled","detail":{"job":{"id":"x"}}}"#)
                .unwrap_err();
        assert_eq!(
            err,
            Rejection::MissingField {
                path: "detail.job.uuid".into()
            }
        );
        assert!(matches!(
            parse_webhook(&h, b"[1]").unwrap_err(),
            Rejection::NotJson { .. }
        ));
        assert!(matches!(
            parse_webhook(&h, b"not json").unwrap_err(),
            Rejection::NotJson { .. }
        ));
        assert_eq!(
            parse_webhook(&HeaderMap::new(), b"{}").unwrap_err(),
            Rejection::MissingEventHeader
        );
        assert_eq!(
            parse_webhook(&headers(&[(EVENT_HEADER, "job.exploded")]), b"{}").unwrap_err(),
            Rejection::UnknownEvent {
                name: "job.exploded".into()
            }
        );
        assert_eq!(
            parse_eventbridge(br#"{"detail-type":"Job Exploded","detail":{}}"#).unwrap_err(),
            Rejection::UnknownEvent {
                name: "Job Exploded".into()
            }
        );
        assert!(matches!(
            parse_webhook(
                &headers(&[(EVENT_HEADER, "job.started")]),
                webhook_body().as_bytes()
            )
            .unwrap_err(),
            Rejection::EventMismatch { .. }
        ));
    }

    #[test]
    fn exit_status_may_be_a_number_or_a_string() {
        let h = headers(&[(EVENT_HEADER, "job.finished")]);
        let numeric = parse_webhook(&h, br#"{"job":{"id":"x","exit_status":2}}"#).unwrap();
        assert_eq!(numeric.job.unwrap().exit_status, Some(2));
        let text = parse_webhook(&h, br#"{"job":{"id":"x","exit_status":"-1"}}"#).unwrap();
        assert_eq!(text.job.unwrap().exit_status, Some(-1));
        assert!(parse_webhook(&h, br#"{"job":{"id":"x","exit_status":"one"}}"#).is_err());
    }

    #[test]
    fn token_must_match_exactly() {
        let v = verifier();
        let body = webhook_body();
        assert!(v
            .verify(
                &headers(&[(TOKEN_HEADER, "whsec-correct-horse")]),
                body.as_bytes(),
                now()
            )
            .is_ok());
        assert_eq!(
            v.verify(
                &headers(&[(TOKEN_HEADER, "whsec-correct-hors")]),
                body.as_bytes(),
                now()
            ),
            Err(Rejection::TokenMismatch)
        );
        assert_eq!(
            v.verify(&headers(&[(TOKEN_HEADER, "")]), body.as_bytes(), now()),
            Err(Rejection::TokenMismatch)
        );
        assert_eq!(
            v.verify(&HeaderMap::new(), body.as_bytes(), now()),
            Err(Rejection::MissingCredentials)
        );
    }

    #[test]
    fn signature_over_timestamp_and_body_is_checked() {
        let v = verifier();
        let body = webhook_body();
        let ts = now().timestamp() - 30;
        let good = v.sign(ts, body.as_bytes());
        assert!(v
            .verify(
                &headers(&[(SIGNATURE_HEADER, &good)]),
                body.as_bytes(),
                now()
            )
            .is_ok());
        // Any change to the body or the timestamp breaks it.
        let tampered = body.replace("cargo test", "rm -rf /");
        assert_eq!(
            v.verify(
                &headers(&[(SIGNATURE_HEADER, &good)]),
                tampered.as_bytes(),
                now()
            ),
            Err(Rejection::SignatureMismatch)
        );
        let shifted = good.replace(&ts.to_string(), &(ts + 1).to_string());
        assert_eq!(
            v.verify(
                &headers(&[(SIGNATURE_HEADER, &shifted)]),
                body.as_bytes(),
                now()
            ),
            Err(Rejection::SignatureMismatch)
        );
        let other_key = WebhookVerifier::new(Secret::new("another")).sign(ts, body.as_bytes());
        assert_eq!(
            v.verify(
                &headers(&[(SIGNATURE_HEADER, &other_key)]),
                body.as_bytes(),
                now()
            ),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn signature_matches_an_independently_computed_hmac() {
        // HMAC-SHA256(key="key", "1700000000.{}") computed with `openssl dgst -sha256 -hmac key`.
        let v = WebhookVerifier::new(Secret::new("key"));
        let header = v.sign(1_700_000_000, b"{}");
        assert_eq!(
            header,
            "timestamp=1700000000,signature=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn signatures_outside_the_replay_window_are_refused() {
        let v = verifier().with_replay_window(Duration::from_secs(300));
        let body = b"{}";
        let stale = v.sign(now().timestamp() - 301, body);
        assert_eq!(
            v.verify(&headers(&[(SIGNATURE_HEADER, &stale)]), body, now()),
            Err(Rejection::StaleSignature {
                age_secs: 301,
                window_secs: 300
            })
        );
        let future = v.sign(now().timestamp() + 400, body);
        assert!(matches!(
            v.verify(&headers(&[(SIGNATURE_HEADER, &future)]), body, now()),
            Err(Rejection::FutureSignature { .. })
        ));
        let edge = v.sign(now().timestamp() - 300, body);
        assert!(v
            .verify(&headers(&[(SIGNATURE_HEADER, &edge)]), body, now())
            .is_ok());
    }

    #[test]
    fn malformed_signature_headers_say_what_is_wrong() {
        let v = verifier();
        for (header, expected) in [
            ("signature=abcd", "no timestamp"),
            ("timestamp=1700000000", "no signature"),
            ("timestamp=soon,signature=ab", "whole number"),
            ("timestamp=1795363200,signature=zz", "not hex"),
            ("timestamp=1795363200,garbage", "no '='"),
            ("timestamp=1795363200,signature=ab,extra=1", "unknown part"),
        ] {
            let err = v
                .verify(&headers(&[(SIGNATURE_HEADER, header)]), b"{}", now())
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{header}: {err}");
        }
    }

    #[test]
    fn both_credentials_present_must_both_pass() {
        let v = verifier();
        let body = b"{}";
        let signature = v.sign(now().timestamp(), body);
        let both_good = headers(&[
            (TOKEN_HEADER, "whsec-correct-horse"),
            (SIGNATURE_HEADER, &signature),
        ]);
        assert!(v.verify(&both_good, body, now()).is_ok());
        let bad_token = headers(&[(TOKEN_HEADER, "nope"), (SIGNATURE_HEADER, &signature)]);
        assert_eq!(
            v.verify(&bad_token, body, now()),
            Err(Rejection::TokenMismatch)
        );
    }

    #[test]
    fn rejections_and_debug_never_show_the_token() {
        let v = verifier();
        assert!(!format!("{v:?}").contains("correct-horse"));
        let err = v
            .verify(&headers(&[(TOKEN_HEADER, "guess")]), b"{}", now())
            .unwrap_err();
        assert!(!err.to_string().contains("correct-horse"));
    }

    #[test]
    fn verify_and_parse_checks_credentials_first() {
        let body = webhook_body();
        let h = headers(&[(EVENT_HEADER, "job.scheduled"), (TOKEN_HEADER, "wrong")]);
        assert_eq!(
            verify_and_parse_webhook(&verifier(), &h, body.as_bytes(), now()),
            Err(Rejection::TokenMismatch)
        );
        let h = headers(&[
            (EVENT_HEADER, "job.scheduled"),
            (TOKEN_HEADER, "whsec-correct-horse"),
        ]);
        assert_eq!(
            verify_and_parse_webhook(&verifier(), &h, body.as_bytes(), now())
                .unwrap()
                .job_id(),
            Some(JOB_ID)
        );
    }
}
