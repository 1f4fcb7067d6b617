//! `kube-fake`: runs the fake Kubernetes API server and kubelet from the command line, writes
//! a kubeconfig for it, and stops (killing every process it started) on SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use updraft_kube_fake::{BadImageRule, KubeFake, KubeFakeOptions, NodeOptions};

/// A fake Kubernetes API server (Jobs, Pods, Secrets, PodTemplates, Events, Leases) with a
/// kubelet that runs containers as local processes. Test bed only.
#[derive(Debug, Parser)]
#[command(name = "kube-fake", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the kubeconfig (context `kube-fake`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// A namespace to create besides `default` (repeatable).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The node's name.
    #[arg(long, default_value = "kube-fake-node")]
    node_name: String,
    /// The node's allocatable CPU (a Kubernetes quantity).
    #[arg(long, default_value = "64")]
    node_cpu: String,
    /// The node's allocatable memory (a Kubernetes quantity).
    #[arg(long, default_value = "256Gi")]
    node_memory: String,
    /// An image reference substring that fails to pull (repeatable; added to
    /// `does-not-exist` and registry hosts ending in `.invalid`).
    #[arg(long = "bad-image")]
    bad_images: Vec<String>,
    /// `NAME=PROGRAM[,ARG…]`: run PROGRAM ARG… in place of a container program called NAME
    /// (matched exactly or by base name), e.g. `buildkite-agent=/path/to/updraft,agent`.
    #[arg(long = "alias", value_parser = parse_alias)]
    aliases: Vec<(String, Vec<String>)>,
    /// Schedule pods but run no containers.
    #[arg(long)]
    no_kubelet: bool,
    /// The most pods whose containers run at once.
    #[arg(long)]
    max_running_pods: Option<usize>,
    /// Changes the watch history keeps (older resourceVersions get 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Seconds a bad image stays ErrImagePull, and the first pull back-off.
    #[arg(long, default_value_t = 10.0)]
    image_pull_backoff: f64,
    /// Seconds before a Job replaces its first failed pod (doubling after).
    #[arg(long, default_value_t = 10.0)]
    job_backoff: f64,
    /// Where pod directories go (a temporary directory, removed on exit, by default).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn parse_alias(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, command) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=PROGRAM[,ARG…]"))?;
    let command: Vec<String> = command.split(',').map(str::to_string).collect();
    if name.is_empty() || command[0].is_empty() {
        return Err(format!("{text:?} is not NAME=PROGRAM[,ARG…]"));
    }
    Ok((name.to_string(), command))
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut bad_images = BadImageRule::default();
    bad_images.substrings.extend(args.bad_images);
    let options = KubeFakeOptions {
        listen: args.listen,
        namespaces: args.namespaces,
        node: NodeOptions {
            name: args.node_name,
            cpu: args.node_cpu,
            memory: args.node_memory,
            ..NodeOptions::default()
        },
        bad_images,
        aliases: args.aliases.into_iter().collect::<BTreeMap<_, _>>(),
        run_containers: !args.no_kubelet,
        max_running_pods: args.max_running_pods,
        watch_history: args.watch_history,
        image_pull_backoff: seconds(args.image_pull_backoff, "image-pull-backoff")?,
        job_backoff: seconds(args.job_backoff, "job-backoff")?,
        work_dir: args.work_dir,
        ..KubeFakeOptions::default()
    };
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    // Listen for signals before announcing the address, so a caller that stops us as soon
    // as it reads the line gets a clean exit.
    let (mut interrupt, mut terminate) = {
        let _entered = signals.enter();
        (
            signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        )
    };
    let fake = KubeFake::start(options).context("starting kube-fake")?;
    fake.write_kubeconfig(&args.kubeconfig)?;
    println!("kube fake listening on {}", fake.url());
    signals.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    tracing::info!("stopping kube fake");
    fake.shutdown();
    Ok(())
}
