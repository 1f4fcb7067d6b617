//! `updraft run`, `updraft check` and `updraft plan`: the scheduler's commands. `run` wires
//! the configured fleets to their backends and runs until SIGINT/SIGTERM or a fatal
//! error; `check` lists every problem in a config file with its field path; `plan` shows
//! which fleet would take each job scheduled now.

use crate::backends::{self, Loaded};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use updraft_scheduler::{ConfigErrors, Scheduler};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scheduler config file (TOML); `UPDRAFT_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The scheduler config file (TOML) to validate.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "reference"
    )]
    config: Option<PathBuf>,
    /// Print the reference of every configuration key (Markdown) instead.
    #[arg(long, conflicts_with = "config")]
    reference: bool,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The scheduler config file (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

/// Read and check the whole file: the scheduler's sections and every backend's tables.
async fn load(path: &Path) -> anyhow::Result<Result<Loaded, ConfigErrors>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    Ok(backends::load(&text, std::env::vars()).await)
}

fn report_errors(path: &Path, errors: &ConfigErrors) -> ExitCode {
    eprint!("{}: {errors}", path.display());
    ExitCode::FAILURE
}

async fn terminate_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("listening for SIGINT").map(|_| "SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = match load(&args.config).await? {
        Ok(loaded) => loaded,
        Err(errors) => return Ok(report_errors(&args.config, &errors)),
    };
    let opened = backends::open(&loaded).await?;
    let scheduler =
        Scheduler::start_with_pools(loaded.config, opened.backends, opened.pools, opened.leader)
            .await?;
    for registry in opened.metrics {
        scheduler.serve_metrics(registry);
    }
    println!(
        "updraft: scheduler running; status page http://{}/status",
        scheduler.http_addr()
    );
    tokio::select! {
        signal = terminate_signal() => {
            tracing::info!("{} received; stopping (launches keep running and are found again on restart)", signal?);
        }
        reason = scheduler.stopped() => {
            tracing::error!("scheduler stopped: {reason}");
        }
        result = backends::push_source(&loaded.aws, &scheduler) => {
            tracing::error!("stopping: {:#}", result.err().unwrap_or_else(|| anyhow::anyhow!("the push source ended")));
        }
    }
    scheduler.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = args.config else {
        print!("{}", backends::reference());
        return Ok(ExitCode::SUCCESS);
    };
    let config = match load(&path).await? {
        Ok(loaded) => loaded.config,
        Err(errors) => return Ok(report_errors(&path, &errors)),
    };
    println!("{}: OK", path.display());
    println!(
        "  buildkite {} · stacks {}-<queue> · poll every {:?}",
        config.buildkite.endpoint, config.buildkite.stack_key, config.buildkite.poll_interval
    );
    for fleet in &config.fleets {
        println!(
            "  fleet {}: serves {} on {} · max_in_flight {} · launches/min {} · deadlines pending {:?}, running {:?}",
            fleet.name,
            fleet.tags.to_strings().join(","),
            fleet.backend,
            fleet.max_in_flight,
            fleet.launches_per_minute.map_or("unlimited".to_string(), |r| r.to_string()),
            fleet.pending_deadline,
            fleet.running_deadline,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let config = match load(&args.config).await? {
        Ok(loaded) => loaded.config,
        Err(errors) => return Ok(report_errors(&args.config, &errors)),
    };
    let plan = updraft_scheduler::plan(&config).await?;
    print!("{plan}");
    Ok(ExitCode::SUCCESS)
}
