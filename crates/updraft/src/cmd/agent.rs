//! `updraft agent start`: a Buildkite agent with the flags and environment variables of
//! `buildkite-agent start` where they overlap, so a launch template can run either agent.
//! Exit codes: 0 when done, 27 when `--acquire-job` is refused (already acquired,
//! finished or cancelled), 28 when the job never became runnable, 1 for anything else, or
//! the job's own exit status with `--reflect-exit-status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use updraft_agent::{run_agent, AgentConfig, Shutdown};
use updraft_model::Secret;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(clap::Subcommand)]
enum AgentCommand {
    /// Register, then run one acquired job or serve jobs until told to stop.
    Start(StartArgs),
}

#[derive(clap::Args)]
struct StartArgs {
    /// The agent registration token, or a job acquisition token.
    #[arg(long, env = "BUILDKITE_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// The agent API endpoint.
    #[arg(
        long,
        env = "BUILDKITE_AGENT_ENDPOINT",
        default_value = "https://agent.buildkite.com/v3"
    )]
    endpoint: String,
    /// The agent's name; %hostname, %spawn and %random are replaced.
    #[arg(long, env = "BUILDKITE_AGENT_NAME", default_value = "%hostname-%spawn")]
    name: String,
    /// Tags as key=value, comma-separated or repeated.
    #[arg(long, env = "BUILDKITE_AGENT_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// Shorthand for the tag queue=<QUEUE>.
    #[arg(long, env = "BUILDKITE_AGENT_QUEUE")]
    queue: Option<String>,
    /// Higher priority agents are offered jobs first.
    #[arg(long, env = "BUILDKITE_AGENT_PRIORITY")]
    priority: Option<String>,
    /// Acquire and run this one job (by uuid), then exit.
    #[arg(long, env = "BUILDKITE_AGENT_ACQUIRE_JOB")]
    acquire_job: Option<String>,
    /// Disconnect after running one job.
    #[arg(long, env = "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB")]
    disconnect_after_job: bool,
    /// Disconnect after this many seconds without a job (0: never).
    #[arg(
        long,
        env = "BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT",
        default_value_t = 0
    )]
    disconnect_after_idle_timeout: u64,
    /// Jobs run in a fresh directory under this path.
    #[arg(long, env = "BUILDKITE_BUILD_PATH")]
    build_path: Option<PathBuf>,
    /// Directory of agent hooks: environment, pre-checkout, checkout, post-checkout,
    /// pre-command, command, post-command and pre-exit (sourced, in that order).
    #[arg(long, env = "BUILDKITE_HOOKS_PATH")]
    hooks_path: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled; the pre-exit hook then
    /// runs in what is left of them.
    #[arg(long, env = "BUILDKITE_CANCEL_GRACE_PERIOD", default_value_t = 10)]
    cancel_grace_period: u64,
    /// The shell and flags the command is run with.
    #[arg(long, env = "BUILDKITE_SHELL", default_value = "/bin/bash -e -c")]
    shell: String,
    /// Exit with the exit status of the job run (with --acquire-job or --disconnect-after-job).
    #[arg(long, env = "BUILDKITE_AGENT_REFLECT_EXIT_STATUS")]
    reflect_exit_status: bool,
    /// How jobs are found: this agent always polls, so `auto` and `poll-only` behave the same
    /// and `stream-only` is refused (accepted for launch templates written for buildkite-agent).
    #[arg(long, env = "BUILDKITE_AGENT_PING_MODE", default_value = "auto")]
    ping_mode: String,
    /// Keep each job's directory after the job instead of removing it.
    #[arg(long)]
    keep_build_dirs: bool,
    #[command(flatten)]
    secrets: SecretsArgs,
}

/// The Elastic CI Stack's S3 secrets (its secrets plugin's variables): each job gets the
/// bucket's `env`, SSH key, git credentials and `secret-files/*` for its pipeline.
#[derive(clap::Args)]
struct SecretsArgs {
    /// The S3 bucket holding the secrets.
    #[arg(long = "secrets-bucket", env = "BUILDKITE_PLUGIN_S3_SECRETS_BUCKET")]
    bucket: Option<String>,
    /// The key prefix of the pipeline's secrets (default: the pipeline slug).
    #[arg(
        long = "secrets-prefix",
        env = "BUILDKITE_PLUGIN_S3_SECRETS_BUCKET_PREFIX"
    )]
    prefix: Option<String>,
    /// The bucket's region (default: the AWS SDK's).
    #[arg(long = "secrets-region", env = "BUILDKITE_PLUGIN_S3_SECRETS_REGION")]
    region: Option<String>,
    /// Accept objects that are not encrypted with KMS.
    #[arg(
        long = "secrets-allow-unencrypted",
        env = "BUILDKITE_PLUGIN_S3_SECRETS_ALLOW_UNENCRYPTED"
    )]
    allow_unencrypted: bool,
}

/// The S3 secrets hook, when a bucket is given.
#[cfg(feature = "aws")]
async fn secrets_provider(
    args: &SecretsArgs,
) -> Result<Option<std::sync::Arc<dyn updraft_agent::EnvironmentProvider>>, String> {
    let Some(bucket) = args.bucket.as_deref().filter(|b| !b.trim().is_empty()) else {
        return Ok(None);
    };
    let settings = updraft_aws::settings::AwsSettings {
        region: args.region.clone(),
        ..Default::default()
    };
    let clients = updraft_aws::AwsClients::load(&settings).await;
    Ok(Some(std::sync::Arc::new(
        updraft_aws::s3_secrets::S3Secrets::new(
            clients.s3(),
            bucket,
            args.prefix.clone(),
            args.allow_unencrypted,
        ),
    )))
}

#[cfg(not(feature = "aws"))]
async fn secrets_provider(
    args: &SecretsArgs,
) -> Result<Option<std::sync::Arc<dyn updraft_agent::EnvironmentProvider>>, String> {
    match args.bucket.as_deref().filter(|b| !b.trim().is_empty()) {
        Some(_) => Err("--secrets-bucket: S3 secrets are not in this build (build updraft with the aws feature)".into()),
        None => Ok(None),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        AgentCommand::Start(start) => Ok(start_agent(start).await),
    }
}

fn config_from(args: &StartArgs) -> Result<AgentConfig, String> {
    let mut tags: Vec<String> = args
        .tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(bad) = tags.iter().find(|t| !t.contains('=')) {
        return Err(format!(
            "--tags: {bad:?} is not key=value (e.g. \"queue=linux\")"
        ));
    }
    if let Some(queue) = &args.queue {
        if tags.iter().any(|t| t.starts_with("queue=")) {
            return Err("--queue and a queue= tag cannot both be given".into());
        }
        tags.push(format!("queue={queue}"));
    }
    match args.ping_mode.as_str() {
        "auto" | "poll-only" => {}
        "stream-only" => return Err(
            "--ping-mode stream-only is not supported: this agent polls (use auto or poll-only)"
                .into(),
        ),
        other => {
            return Err(format!(
                "--ping-mode: {other:?} is not one of auto, poll-only, stream-only"
            ))
        }
    }
    let shell: Vec<String> = args.shell.split_whitespace().map(str::to_string).collect();
    if shell.is_empty() {
        return Err("--shell must name a program, e.g. \"/bin/bash -e -c\"".into());
    }
    let build_path = args
        .build_path
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("updraft-agent-builds"));
    let mut config = AgentConfig::new(&args.endpoint, Secret::new(args.token.clone()), build_path);
    config.name = args.name.clone();
    config.tags = tags;
    config.priority = args.priority.clone();
    config.acquire_job = args.acquire_job.clone().filter(|j| !j.trim().is_empty());
    config.disconnect_after_job = args.disconnect_after_job;
    config.disconnect_after_idle_timeout = (args.disconnect_after_idle_timeout > 0)
        .then(|| Duration::from_secs(args.disconnect_after_idle_timeout));
    config.hooks_path = args.hooks_path.clone();
    config.shell = shell;
    config.cancel_grace_period = Duration::from_secs(args.cancel_grace_period);
    config.remove_build_dirs = !args.keep_build_dirs;
    Ok(config)
}

async fn start_agent(args: StartArgs) -> ExitCode {
    let mut config = match config_from(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("updraft agent: {message}");
            return ExitCode::from(1);
        }
    };
    config.environment = match secrets_provider(&args.secrets).await {
        Ok(provider) => provider,
        Err(message) => {
            eprintln!("updraft agent: {message}");
            return ExitCode::from(1);
        }
    };
    let shutdown = Shutdown::default();
    let signals = tokio::spawn(forward_signals(shutdown.clone()));
    let result = run_agent(config, shutdown).await;
    signals.abort();
    match result {
        Ok(run) if args.reflect_exit_status => {
            let code = run.last_exit_code().unwrap_or(0);
            ExitCode::from((code & 0xff) as u8)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("updraft agent: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// First SIGTERM/SIGINT: finish the running job, then disconnect. Second: stop the job now.
async fn forward_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("could not listen for signals; stop the agent with SIGKILL");
        return;
    };
    let mut received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        received += 1;
        if received == 1 {
            tracing::info!("stopping after the current job (signal again to cancel it)");
            shutdown.graceful.cancel();
        } else {
            tracing::info!("cancelling the current job");
            shutdown.immediate.cancel();
        }
    }
}
