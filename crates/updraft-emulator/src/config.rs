//! Everything an emulator is started with: identity, tokens, timing, limits, push targets and
//! fault injection. `EmulatorConfig::default()` suits tests (fast intervals, no rate limits);
//! the CLI fills it from flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use updraft_model::Secret;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Organization slug.
    pub org: String,
    /// Cluster agent token (`bkct_…`): register, metrics, Stacks API.
    pub agent_token: Secret,
    /// REST API token (`bkua_…`), sent as `Authorization: Bearer`.
    pub api_token: Secret,
    /// Intervals handed to agents at register (seconds, all > 0).
    pub ping_interval_seconds: u64,
    pub heartbeat_interval_seconds: u64,
    pub job_status_interval_seconds: u64,
    /// How long a `timeout_in_minutes` minute lasts; shorten it to test timeouts fast.
    pub minute: Duration,
    /// A scheduled job nobody picks up within this time becomes `expired`.
    pub scheduled_job_expiry: Duration,
    /// Default Stacks API reservation when `reservation_expiry_seconds` is absent.
    pub default_reservation: Duration,
    /// `chunks_max_size_bytes` handed to agents; larger chunks are refused with 413.
    pub chunks_max_size_bytes: usize,
    /// Finished builds kept (with their jobs and logs); the oldest are forgotten beyond this.
    pub max_finished_builds: usize,
    pub rate_limits: RateLimitConfig,
    pub push: PushTargets,
    pub push_faults: PushFaults,
    pub api_faults: ApiFaults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            org: "acme".to_string(),
            agent_token: Secret::new("bkct_emulator_agent_token"),
            api_token: Secret::new("bkua_emulator_api_token"),
            ping_interval_seconds: 1,
            heartbeat_interval_seconds: 5,
            job_status_interval_seconds: 1,
            minute: Duration::from_secs(60),
            scheduled_job_expiry: Duration::from_secs(24 * 3600),
            default_reservation: Duration::from_secs(300),
            chunks_max_size_bytes: 1024 * 1024,
            max_finished_builds: 10_000,
            rate_limits: RateLimitConfig::unlimited(),
            push: PushTargets::default(),
            push_faults: PushFaults::default(),
            api_faults: ApiFaults::default(),
        }
    }
}

/// Requests allowed per scope. Stacks API scopes count per stack in a one-second sliding
/// window; `rest` counts per organization and `rest_user` per token in a one-minute window.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Scope name → requests per window. A scope missing here is not limited.
    pub limits: BTreeMap<String, u32>,
}

impl RateLimitConfig {
    /// No limits at all (the test default).
    pub fn unlimited() -> Self {
        RateLimitConfig {
            limits: BTreeMap::new(),
        }
    }

    /// Buildkite's documented limits (reference §1.7 and §3.3).
    pub fn reference() -> Self {
        let limits = [
            ("list-scheduled-jobs", 10),
            ("batch-reserve", 10),
            ("show-job", 1000),
            ("batch-load-job-states", 20),
            ("finish-job", 100),
            ("stack-notification", 200),
            ("default", 10),
            ("rest", 200),
            ("rest_user", 50),
        ];
        RateLimitConfig {
            limits: limits
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    pub fn limit(&self, scope: &str) -> Option<u32> {
        self.limits.get(scope).copied()
    }
}

/// Where push events go. Changeable at runtime (handle or `/_emulator/push`).
#[derive(Debug, Clone, Default)]
pub struct PushTargets {
    pub webhook: Option<WebhookTarget>,
    /// EventBridge-shaped events are POSTed here as JSON.
    pub eventbridge_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub auth: WebhookAuth,
}

/// How a webhook proves where it came from (reference §6.2).
#[derive(Debug, Clone)]
pub enum WebhookAuth {
    /// `X-Buildkite-Token: <token>`.
    Token(Secret),
    /// `X-Buildkite-Signature: timestamp=<unix>,signature=<hex HMAC-SHA256 of "timestamp.body">`.
    Signature(Secret),
}

/// Misbehaviour of push delivery, decided per event by a seeded generator.
#[derive(Debug, Clone, PartialEq)]
pub struct PushFaults {
    pub drop_fraction: f64,
    pub duplicate_fraction: f64,
    pub delay_fraction: f64,
    pub delay: Duration,
    pub seed: u64,
}

impl Default for PushFaults {
    fn default() -> Self {
        PushFaults {
            drop_fraction: 0.0,
            duplicate_fraction: 0.0,
            delay_fraction: 0.0,
            delay: Duration::from_millis(500),
            seed: 1,
        }
    }
}

/// A seeded fraction of `/v3` requests is answered with 429 or 503 before it reaches a
/// handler, so a faulted request never changes state.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFaults {
    pub fraction: f64,
    pub seed: u64,
}

impl Default for ApiFaults {
    fn default() -> Self {
        ApiFaults {
            fraction: 0.0,
            seed: 1,
        }
    }
}
