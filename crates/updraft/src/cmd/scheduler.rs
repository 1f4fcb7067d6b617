//! `updraft run`, `updraft check` and `updraft plan`: the scheduler's commands. `run` wires
//! the configured fleets to the local backend and runs until SIGINT/SIGTERM or a fatal
//! error; `check` lists every problem in a config file with its field path; `plan` shows
//! which fleet would take each job scheduled now.

use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use updraft_backends::local::{LocalBackend, LocalOptions};
use updraft_backends::Backend;
use updraft_scheduler::{Config, ConfigErrors, Scheduler};

/// The backends this binary can launch on, by the name fleets use.
const BACKENDS: [&str; 1] = ["local"];

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scheduler config file (TOML); `UPDRAFT_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The scheduler config file (TOML) to validate.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The scheduler config file (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

/// Parse and validate, including the backend names this binary knows.
fn load(path: &Path) -> anyhow::Result<Result<Config, ConfigErrors>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    Ok(Config::parse_checked(&text, std::env::vars(), &BACKENDS))
}

fn report_errors(path: &Path, errors: &ConfigErrors) -> ExitCode {
    eprint!("{}: {errors}", path.display());
    ExitCode::FAILURE
}

async fn local_backend(config: &Config) -> anyhow::Result<LocalBackend> {
    let mut options = LocalOptions::new(&config.local.state_dir);
    options.max_running_per_fleet = config
        .fleets
        .iter()
        .map(|fleet| (fleet.name.clone(), fleet.max_in_flight as usize))
        .collect();
    options.stop_grace = config.local.stop_grace;
    LocalBackend::open(options).await.with_context(|| {
        format!(
            "opening the local backend in {}",
            config.local.state_dir.display()
        )
    })
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
    let config = match load(&args.config)? {
        Ok(config) => config,
        Err(errors) => return Ok(report_errors(&args.config, &errors)),
    };
    let local = local_backend(&config).await?;
    let backends: BTreeMap<String, Arc<dyn Backend>> =
        [("local".to_string(), Arc::new(local) as Arc<dyn Backend>)]
            .into_iter()
            .collect();
    let scheduler = Scheduler::start(config, backends).await?;
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
    }
    scheduler.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = match load(&args.config)? {
        Ok(config) => config,
        Err(errors) => return Ok(report_errors(&args.config, &errors)),
    };
    println!("{}: OK", args.config.display());
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
    let config = match load(&args.config)? {
        Ok(config) => config,
        Err(errors) => return Ok(report_errors(&args.config, &errors)),
    };
    let plan = updraft_scheduler::plan(&config).await?;
    print!("{plan}");
    Ok(ExitCode::SUCCESS)
}
