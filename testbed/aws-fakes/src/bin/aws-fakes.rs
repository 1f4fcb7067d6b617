//! `aws-fakes`: starts moto and the CodeBuild/ECS execution stand-in so the AWS backends can
//! be run by hand against them. Prints one line with both endpoints, then the environment to
//! export, and runs until SIGINT or SIGTERM, when it stops moto and every build and task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use updraft_aws_fakes::sdk::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use updraft_aws_fakes::{CodeBuildSettings, EcsSettings, Moto, StandIn};

#[derive(Debug, Parser)]
#[command(
    about = "moto plus the CodeBuild/ECS execution stand-in, for running the AWS backends by hand"
)]
struct Args {
    /// Python interpreter with moto[server]==5.2.5 (default: $UPDRAFT_PYTHON, else the
    /// workspace's .venv).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Address the stand-in listens on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How many CodeBuild builds may run at once; the rest stay QUEUED.
    #[arg(long)]
    capacity: Option<usize>,
    /// Milliseconds every build waits in QUEUED.
    #[arg(long, default_value_t = 0)]
    queue_delay_ms: u64,
    /// Seconds one minute of a CodeBuild timeout lasts.
    #[arg(long, default_value_t = 60)]
    minute_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let python = args.python.unwrap_or_else(Moto::python_path);
    let mut moto = Moto::start_with(&python).await?;
    let codebuild = CodeBuildSettings {
        capacity: args.capacity,
        queue_delay: Duration::from_millis(args.queue_delay_ms),
        minute: Duration::from_secs(args.minute_seconds),
        ..CodeBuildSettings::default()
    };
    let mut standin = StandIn::start(
        args.listen,
        moto.endpoint(),
        codebuild,
        EcsSettings::default(),
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;

    println!(
        "aws fakes listening: moto {} stand-in {}",
        moto.endpoint(),
        standin.endpoint()
    );
    println!("export AWS_ENDPOINT_URL={}", moto.endpoint());
    println!("export AWS_ENDPOINT_URL_CODEBUILD={}", standin.endpoint());
    println!("export AWS_ENDPOINT_URL_ECS={}", standin.endpoint());
    println!("export AWS_ACCESS_KEY_ID={ACCESS_KEY_ID}");
    println!("export AWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY}");
    println!("export AWS_REGION={REGION}");

    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    standin.shut_down();
    moto.shutdown();
    Ok(())
}
