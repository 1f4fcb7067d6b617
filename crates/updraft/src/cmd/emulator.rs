//! `updraft emulator`: serve the offline Buildkite-compatible control plane until SIGINT or
//! SIGTERM. Prints exactly one stdout line, `emulator listening on http://ADDR`, once it
//! serves; the effective settings go to stderr (tokens redacted unless `--print-tokens`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use updraft_emulator::{
    ApiFaults, EmulatorConfig, PushFaults, PushTargets, RateLimitConfig, WebhookAuth, WebhookTarget,
};
use updraft_model::Secret;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RateLimits {
    /// Buildkite's documented per-scope limits.
    Reference,
    /// No limits.
    Off,
}

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8380")]
    listen: SocketAddr,
    /// Organization slug.
    #[arg(long, default_value = "acme")]
    org: String,
    /// Cluster agent token for register, metrics and the Stacks API.
    #[arg(
        long,
        env = "UPDRAFT_EMULATOR_AGENT_TOKEN",
        default_value = "bkct_emulator_agent_token",
        hide_env_values = true
    )]
    agent_token: String,
    /// REST API token (sent as Bearer).
    #[arg(
        long,
        env = "UPDRAFT_EMULATOR_API_TOKEN",
        default_value = "bkua_emulator_api_token",
        hide_env_values = true
    )]
    api_token: String,
    /// POST webhooks (job.*, build.*) here.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Send this as X-Buildkite-Token on webhooks.
    #[arg(
        long,
        env = "UPDRAFT_EMULATOR_WEBHOOK_TOKEN",
        conflicts_with = "webhook_secret",
        requires = "webhook_url",
        hide_env_values = true
    )]
    webhook_token: Option<String>,
    /// Sign webhooks with X-Buildkite-Signature (HMAC-SHA256) using this secret.
    #[arg(
        long,
        env = "UPDRAFT_EMULATOR_WEBHOOK_SECRET",
        requires = "webhook_url",
        hide_env_values = true
    )]
    webhook_secret: Option<String>,
    /// POST EventBridge-shaped events ("Job Scheduled", …) here.
    #[arg(long)]
    eventbridge_url: Option<String>,
    /// Show tokens in the start-up settings instead of redacting them.
    #[arg(long)]
    print_tokens: bool,
    /// Per-scope rate limits (Stacks API per stack per second, REST per minute).
    #[arg(long, value_enum, default_value = "reference")]
    rate_limits: RateLimits,
    /// Ping interval handed to agents, seconds.
    #[arg(long, default_value_t = 1)]
    ping_interval: u64,
    /// Heartbeat interval handed to agents, seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat_interval: u64,
    /// An agent with no heartbeat or ping for this many seconds becomes `lost`
    /// (default: three times the longer of the ping and heartbeat intervals).
    #[arg(long, value_name = "S")]
    agent_lost_seconds: Option<f64>,
    /// Length of one `timeout_in_minutes` minute, seconds (shorten for tests).
    #[arg(long, default_value_t = 60.0)]
    minute_seconds: f64,
    /// A scheduled job nobody picks up within this many seconds expires.
    #[arg(long, default_value_t = 86400.0)]
    job_expiry_seconds: f64,
    /// Stacks API reservation length when the client gives none, seconds.
    #[arg(long, default_value_t = 300)]
    reservation_seconds: u64,
    /// Largest log chunk accepted (and handed to agents as chunks_max_size_bytes).
    #[arg(long, default_value_t = 1024 * 1024)]
    chunks_max_size_bytes: usize,
    /// Finished builds kept in memory; older ones are forgotten.
    #[arg(long, default_value_t = 10_000)]
    max_finished_builds: usize,
    /// Fraction (0–1) of /v3 requests answered 429 or 503 without effect.
    #[arg(long, default_value_t = 0.0)]
    api_fault_fraction: f64,
    /// Fraction of push deliveries dropped.
    #[arg(long, default_value_t = 0.0)]
    push_drop: f64,
    /// Fraction of push deliveries sent twice.
    #[arg(long, default_value_t = 0.0)]
    push_duplicate: f64,
    /// Fraction of push deliveries delayed by --push-delay-ms.
    #[arg(long, default_value_t = 0.0)]
    push_delay: f64,
    /// How long delayed push deliveries wait, milliseconds.
    #[arg(long, default_value_t = 500)]
    push_delay_ms: u64,
    /// Seed for API and push fault injection.
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// Start a workload at start-up from a JSON file (the body of POST /_emulator/workload,
    /// e.g. a trace of arrivals); give the pipelines it uses with --pipeline.
    #[arg(long, value_name = "PATH")]
    workload: Option<PathBuf>,
    /// Create a pipeline at start-up from a YAML file: SLUG=PATH (repeatable).
    #[arg(long = "pipeline", value_name = "SLUG=PATH")]
    pipelines: Vec<String>,
}

fn fraction(flag: &str, value: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&value),
        "--{flag} must be a fraction from 0 to 1, got {value}"
    );
    Ok(value)
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!("--{flag} must be a positive number of seconds, got {value}")
        })
}

impl Args {
    fn config(&self) -> anyhow::Result<EmulatorConfig> {
        anyhow::ensure!(
            self.ping_interval > 0 && self.heartbeat_interval > 0,
            "--ping-interval and --heartbeat-interval must be at least 1 second"
        );
        let auth = match (&self.webhook_token, &self.webhook_secret) {
            (_, Some(secret)) => WebhookAuth::Signature(Secret::new(secret.clone())),
            (Some(token), None) => WebhookAuth::Token(Secret::new(token.clone())),
            (None, None) => WebhookAuth::Token(Secret::default()),
        };
        Ok(EmulatorConfig {
            listen: self.listen,
            org: self.org.clone(),
            agent_token: Secret::new(self.agent_token.clone()),
            api_token: Secret::new(self.api_token.clone()),
            ping_interval_seconds: self.ping_interval,
            heartbeat_interval_seconds: self.heartbeat_interval,
            job_status_interval_seconds: 1,
            minute: seconds("minute-seconds", self.minute_seconds)?,
            scheduled_job_expiry: seconds("job-expiry-seconds", self.job_expiry_seconds)?,
            default_reservation: Duration::from_secs(self.reservation_seconds.clamp(1, 3600)),
            chunks_max_size_bytes: self.chunks_max_size_bytes.max(1),
            max_finished_builds: self.max_finished_builds.max(1),
            rate_limits: match self.rate_limits {
                RateLimits::Reference => RateLimitConfig::reference(),
                RateLimits::Off => RateLimitConfig::unlimited(),
            },
            push: PushTargets {
                webhook: self
                    .webhook_url
                    .clone()
                    .map(|url| WebhookTarget { url, auth }),
                eventbridge_url: self.eventbridge_url.clone(),
            },
            push_faults: PushFaults {
                drop_fraction: fraction("push-drop", self.push_drop)?,
                duplicate_fraction: fraction("push-duplicate", self.push_duplicate)?,
                delay_fraction: fraction("push-delay", self.push_delay)?,
                delay: Duration::from_millis(self.push_delay_ms),
                seed: self.fault_seed,
            },
            api_faults: ApiFaults {
                fraction: fraction("api-fault-fraction", self.api_fault_fraction)?,
                seed: self.fault_seed,
            },
        })
    }

    /// The settings as printed at start-up.
    fn describe(&self) -> BTreeMap<&'static str, String> {
        let secret = |value: &str| {
            if self.print_tokens {
                value.to_string()
            } else {
                Secret::new(value).redacted()
            }
        };
        let optional =
            |value: &Option<String>| value.clone().unwrap_or_else(|| "(none)".to_string());
        BTreeMap::from([
            ("listen", self.listen.to_string()),
            ("org", self.org.clone()),
            ("agent-token", secret(&self.agent_token)),
            ("api-token", secret(&self.api_token)),
            ("webhook-url", optional(&self.webhook_url)),
            (
                "webhook-token",
                self.webhook_token
                    .as_deref()
                    .map_or("(none)".to_string(), secret),
            ),
            (
                "webhook-secret",
                self.webhook_secret
                    .as_deref()
                    .map_or("(none)".to_string(), secret),
            ),
            ("eventbridge-url", optional(&self.eventbridge_url)),
            (
                "rate-limits",
                format!("{:?}", self.rate_limits).to_lowercase(),
            ),
            ("ping-interval", format!("{}s", self.ping_interval)),
            (
                "heartbeat-interval",
                format!("{}s", self.heartbeat_interval),
            ),
            (
                "agent-lost-seconds",
                self.agent_lost_seconds
                    .map_or("3 × the longer interval".to_string(), |s| s.to_string()),
            ),
            ("minute-seconds", self.minute_seconds.to_string()),
            ("job-expiry-seconds", self.job_expiry_seconds.to_string()),
            ("reservation-seconds", self.reservation_seconds.to_string()),
            (
                "chunks-max-size-bytes",
                self.chunks_max_size_bytes.to_string(),
            ),
            ("max-finished-builds", self.max_finished_builds.to_string()),
            ("api-fault-fraction", self.api_fault_fraction.to_string()),
            (
                "push-drop/duplicate/delay",
                format!(
                    "{}/{}/{} ({} ms)",
                    self.push_drop, self.push_duplicate, self.push_delay, self.push_delay_ms
                ),
            ),
            ("fault-seed", self.fault_seed.to_string()),
        ])
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("SIGINT") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let mut pipelines = Vec::new();
    for spec in &args.pipelines {
        let (slug, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--pipeline {spec:?}: expected SLUG=PATH"))?;
        let yaml = std::fs::read_to_string(PathBuf::from(path))
            .map_err(|e| anyhow::anyhow!("--pipeline {spec:?}: reading {path}: {e}"))?;
        pipelines.push((slug.to_string(), yaml));
    }
    let lost_after = args
        .agent_lost_seconds
        .map(|value| seconds("agent-lost-seconds", value))
        .transpose()?;
    let emulator = updraft_emulator::start(config).await?;
    if let Some(after) = lost_after {
        emulator.set_agent_lost_after(after);
    }
    for (slug, yaml) in &pipelines {
        emulator
            .create_pipeline(slug, yaml)
            .map_err(|e| anyhow::anyhow!("--pipeline {slug}: {e}"))?;
    }
    if let Some(path) = &args.workload {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--workload {}: {e}", path.display()))?;
        let request = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--workload {}: {e}", path.display()))?;
        let started = emulator
            .start_workload(request)
            .map_err(|e| anyhow::anyhow!("--workload {}: {e}", path.display()))?;
        tracing::info!(
            created = started.created.len(),
            pending = started.pending,
            "workload started"
        );
    }
    for (name, value) in args.describe() {
        eprintln!("emulator setting {name:<26} {value}");
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "emulator listening on {}", emulator.url())?;
    stdout.flush()?;
    drop(stdout);
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "stopping the emulator");
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
