//! `updraft bench kubernetes`: how fast the scheduler turns Buildkite jobs into Kubernetes
//! Jobs, and what that costs. The emulator and the API server (`kube-fake`, with no kubelet, so
//! every Job stays in flight; or a real cluster through `--kubeconfig`) run as child
//! processes, the scheduler and the Kubernetes backend in this one, so its peak RSS is theirs.
//!
//! Figures: push pickup of single jobs, from "job scheduled" to "Job and Secret created"
//! (p50, p99); a burst of jobs pushed at once until every Job exists (time, Jobs per second,
//! API requests per job); and this process's peak RSS with the whole burst in flight and in
//! the watch cache. The client's rate limit is lifted unless `--api-qps` is given.

use super::pickup::emulator_process::EmulatorProcess;
use super::pickup::usage;
use super::pickup::{burst_pipeline, round, single_job_pipeline, QUEUE};
use crate::cmd::demo::setup::{toml_string, StateDir};
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use updraft_backends::Backend;
use updraft_buildkite::rest::{CreatePipeline, RestClient};
use updraft_buildkite::ClientOptions;
use updraft_config::{Errors, Path as ConfigPath};
use updraft_kubernetes::{read_config, FleetTable, KubernetesBackend};
use updraft_model::Secret;
use updraft_scheduler::stats::quantile;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};

const NAMESPACE: &str = "bench";
const WARM_UP_JOBS: usize = 5;
const PICKUP_P99_TARGET: Duration = Duration::from_millis(20);
const BURST_TARGET: Duration = Duration::from_secs(20);
const RSS_TARGET_BYTES: u64 = 64 * 1024 * 1024;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// Single jobs measured one after another with push events on.
    #[arg(long, default_value_t = 200)]
    pub push_samples: usize,
    /// Jobs in the burst (one build, steps of up to 1000 parallel jobs).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub jobs: u64,
    /// The client's rate limit, requests per second (client-go's QPS; agent-stack-k8s uses
    /// 10); 0 lifts it.
    #[arg(long, default_value_t = 0)]
    pub api_qps: u32,
    /// The client's burst above the rate (agent-stack-k8s uses 20).
    #[arg(long, default_value_t = 100)]
    pub api_burst: u32,
    /// A real cluster's kubeconfig (the namespace `bench` must exist), instead of starting
    /// `kube-fake`.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The `kube-fake` binary; default: next to this one (`cargo build --release -p
    /// updraft-kube-fake`).
    #[arg(long, value_name = "FILE")]
    pub kube_fake: Option<PathBuf>,
    /// Let the scheduler find the burst by polling instead of 10 000 webhooks arriving at once,
    /// to see memory without that many open connections.
    #[arg(long)]
    pub burst_by_pull: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = StateDir::new(None, "updraft-bench-kubernetes")?;
    let (_fake, kubeconfig) = match &args.kubeconfig {
        Some(file) => (None, file.clone()),
        None => {
            let fake = FakeProcess::start(args.kube_fake.as_deref(), &state.path).await?;
            let kubeconfig = fake.kubeconfig.clone();
            (Some(fake), kubeconfig)
        }
    };
    let bench = Bench::start(&args, &state.path, &kubeconfig).await?;

    for _ in 0..WARM_UP_JOBS {
        bench.run_one_build().await?;
    }
    let warm_up = bench.scheduler.stats().pickups.len();
    for _ in 0..args.push_samples {
        bench.run_one_build().await?;
    }
    let mut pickups: Vec<Duration> = bench.scheduler.stats().pickups[warm_up..]
        .iter()
        .map(|p| p.latency())
        .collect();
    let mut ms = |q: f64| quantile(&mut pickups, q).map(|d| d.as_secs_f64() * 1000.0);
    let (p50, p99, max) = (ms(0.5), ms(0.99), ms(1.0));

    if args.burst_by_pull {
        bench.emulator.push_to(None).await?;
    }
    let rss_before = usage::peak_rss_bytes()?;
    bench.create_build(&bench.burst_pipeline).await?;
    let launched_before = bench.scheduler.stats().launched;
    let requests_before = bench.backend.metrics().requests_sent.get();
    let started = Instant::now();
    let target = args.jobs;
    let all_created = tokio::time::timeout(Duration::from_secs(600), async {
        while bench.scheduler.stats().launched - launched_before < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let elapsed = started.elapsed();
    let requests = bench.backend.metrics().requests_sent.get() - requests_before;
    if all_created.is_err() {
        anyhow::bail!(
            "only {} of {target} Jobs were created within 600 s",
            bench.scheduler.stats().launched - launched_before
        );
    }
    // Every Job in flight and in the watch cache, with its pod, before memory is read.
    let expected = target as usize + WARM_UP_JOBS + args.push_samples;
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let listed = bench
                .backend
                .list()
                .await
                .map(|l| l.len())
                .unwrap_or_default();
            let pods = bench.backend.metrics().cached_pods.get() as usize;
            if listed >= expected && pods >= expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .context("the watch cache did not catch up with every Job and pod")?;
    let peak_rss = usage::peak_rss_bytes()?;
    let (anon, file) = usage::rss_parts_bytes()?;
    let cache_bytes = bench.backend.cache_footprint();
    bench.stop().await;

    let mb = |bytes: u64| round(bytes as f64 / (1024.0 * 1024.0));
    let figures = json!({
        "api_server": if args.kubeconfig.is_some() { "kubeconfig" } else { "kube-fake" },
        "api_qps": args.api_qps,
        "burst_delivered_by": if args.burst_by_pull { "pull" } else { "push" },
        "pickup": {"samples": args.push_samples, "p50_ms": p50.map(round), "p99_ms": p99.map(round), "max_ms": max.map(round)},
        "burst": {
            "jobs": target,
            "all_created_s": round(elapsed.as_secs_f64()),
            "jobs_per_s": round(target as f64 / elapsed.as_secs_f64()),
            "api_requests_per_job": round(requests as f64 / target as f64),
        },
        "peak_rss_mb": mb(peak_rss),
        "peak_rss_before_burst_mb": mb(rss_before),
        "rss_at_the_end_mb": {"anonymous": mb(anon), "files": mb(file)},
        "cache_mb": mb(cache_bytes as u64),
        "target": {
            "pickup_p99_ms": PICKUP_P99_TARGET.as_millis() as u64,
            "all_created_s": BURST_TARGET.as_secs(),
            "peak_rss_mb": RSS_TARGET_BYTES / (1024 * 1024),
        },
    });
    let number = |v: &Value| v.as_f64().map_or("?".to_string(), |f| format!("{f:.1}"));
    let human = format!(
        "Kubernetes backend ({}; client rate limit {})\n  \
         push pickup, job scheduled → Job and Secret created: p50 {} ms · p99 {} ms · max {} ms over {} jobs (target p99 ≤ {} ms)\n  \
         {target} jobs at once (by {}): all Jobs created in {:.2} s (target ≤ {} s), {:.0} Jobs/s, {:.2} API requests per job\n  \
         peak RSS with {expected} Jobs in flight: {:.1} MB (target ≤ {} MB; {:.1} MB before the burst; watch cache {:.2} MB)\n  \
         RSS at the end: {:.1} MB anonymous (heap, stacks), {:.1} MB of mapped files (the binary's code)",
        figures["api_server"].as_str().unwrap_or_default(),
        if args.api_qps == 0 { "lifted".to_string() } else { format!("{} QPS / {} burst", args.api_qps, args.api_burst) },
        number(&figures["pickup"]["p50_ms"]),
        number(&figures["pickup"]["p99_ms"]),
        number(&figures["pickup"]["max_ms"]),
        args.push_samples,
        PICKUP_P99_TARGET.as_millis(),
        figures["burst_delivered_by"].as_str().unwrap_or_default(),
        elapsed.as_secs_f64(),
        BURST_TARGET.as_secs(),
        target as f64 / elapsed.as_secs_f64(),
        requests as f64 / target as f64,
        mb(peak_rss),
        RSS_TARGET_BYTES / (1024 * 1024),
        mb(rss_before),
        mb(cache_bytes as u64),
        mb(anon),
        mb(file),
    );
    args.common.report("kubernetes", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}

/// `kube-fake` in a child process, with no kubelet: pods are scheduled and never run.
struct FakeProcess {
    _child: tokio::process::Child,
    kubeconfig: PathBuf,
}

impl FakeProcess {
    async fn start(given: Option<&Path>, state: &Path) -> anyhow::Result<FakeProcess> {
        let binary = match given {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe()?
                .parent()
                .context("the updraft binary's directory")?
                .join("kube-fake"),
        };
        anyhow::ensure!(
            binary.exists(),
            "{} does not exist: build it with `cargo build --release -p updraft-kube-fake`, name it with --kube-fake, or bench a real cluster with --kubeconfig",
            binary.display()
        );
        let kubeconfig = state.join("kubeconfig");
        let mut child = tokio::process::Command::new(&binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--namespace",
                NAMESPACE,
                "--no-kubelet",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("kube-fake's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("kube fake listening on ") {
                    return Ok(());
                }
            }
            anyhow::bail!("kube-fake exited before it listened")
        })
        .await
        .context("kube-fake did not start within 30 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(FakeProcess {
            _child: child,
            kubeconfig,
        })
    }
}

struct Bench {
    emulator: EmulatorProcess,
    scheduler: SchedulerHandle,
    backend: Arc<KubernetesBackend>,
    rest: RestClient,
    single_pipeline: String,
    burst_pipeline: String,
}

impl Bench {
    async fn start(args: &Args, state: &Path, kubeconfig: &Path) -> anyhow::Result<Bench> {
        let emulator = EmulatorProcess::start().await?;
        let rest = RestClient::new(
            &emulator.url,
            &emulator.api_token,
            &emulator.org,
            ClientOptions::default(),
        )?;
        let single_pipeline = pipeline(&rest, "single", &single_job_pipeline()).await?;
        let burst_pipeline = pipeline(&rest, "burst", &burst_pipeline(args.jobs)).await?;
        let webhook_token = Secret::new(format!("bench_{:032x}", rand::random::<u128>()));
        let config = format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"updraft-bench-k8s\"\n\n\
             [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
             [[fleet]]\nname = \"{QUEUE}\"\nqueue = \"{QUEUE}\"\nbackend = \"kubernetes\"\nmax_in_flight = 1000000\n\
             pending_deadline = \"1h\"\n\n[fleet.template]\ncommand = [\"buildkite-agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n",
            toml_string(&emulator.agent_endpoint()),
            toml_string(emulator.agent_token.expose()),
            toml_string(webhook_token.expose()),
            toml_string(&state.join("ledger.sqlite").to_string_lossy()),
        );
        let config = Config::parse_checked(&config, std::iter::empty(), &["kubernetes"])
            .map_err(|errors| anyhow::anyhow!("the benchmark's scheduler config: {errors}"))?;
        let section = json!({
            "kubeconfig": kubeconfig.to_string_lossy(),
            "namespace": NAMESPACE,
            "api_qps": args.api_qps,
            "api_burst": args.api_burst,
        });
        let fleets = [FleetTable {
            at: ConfigPath::root().key("fleet").index(0),
            name: QUEUE.into(),
            table: json!({"image": "buildkite/agent:3"}),
            tags: Vec::new(),
        }];
        let mut errors = Errors::new();
        let kubernetes = read_config(&section, &fleets, "updraft-bench-k8s", &mut errors);
        let kubernetes = errors
            .into_result(kubernetes)
            .map_err(|errors| anyhow::anyhow!("the benchmark's kubernetes config: {errors}"))?
            .context("the benchmark's kubernetes config")?;
        let mut registry = updraft_kubernetes::Registry::default();
        let backend = Arc::new(
            KubernetesBackend::open(
                kubernetes,
                [(QUEUE.to_string(), Duration::from_secs(3600))].into(),
                &mut registry,
            )
            .await
            .context("opening the kubernetes backend")?,
        );
        let backends: BTreeMap<String, Arc<dyn Backend>> = [(
            "kubernetes".to_string(),
            backend.clone() as Arc<dyn Backend>,
        )]
        .into();
        let scheduler = Scheduler::start(config, backends)
            .await
            .context("starting the scheduler")?;
        let push_url = format!("http://{}/webhooks/buildkite", scheduler.push_addr());
        emulator.push_to(Some((&push_url, &webhook_token))).await?;
        Ok(Bench {
            emulator,
            scheduler,
            backend,
            rest,
            single_pipeline,
            burst_pipeline,
        })
    }

    async fn create_build(&self, pipeline: &str) -> anyhow::Result<()> {
        super::pickup::create_build(&self.rest, &self.emulator.org, pipeline).await
    }

    /// One single-job build, waited for until its Job is created.
    async fn run_one_build(&self) -> anyhow::Result<()> {
        let before = self.scheduler.stats().pickups.len();
        self.create_build(&self.single_pipeline).await?;
        tokio::time::timeout(Duration::from_secs(30), async {
            while self.scheduler.stats().pickups.len() <= before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .context("a job's Job was not created within 30 s")
    }

    async fn stop(self) {
        if let Err(error) = self.scheduler.shutdown().await {
            eprintln!("the scheduler stopped with an error: {error:#}");
        }
        self.emulator.stop().await;
    }
}

async fn pipeline(rest: &RestClient, name: &str, steps: &str) -> anyhow::Result<String> {
    let created = rest
        .create_pipeline(&CreatePipeline {
            name: format!("bench-kubernetes-{name}"),
            repository: "https://github.com/updraft/bench.git".to_string(),
            configuration: steps.to_string(),
            ..Default::default()
        })
        .await
        .context("creating a benchmark pipeline")?;
    Ok(created.slug)
}
