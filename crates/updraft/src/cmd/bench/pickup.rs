//! `updraft bench pickup` and `updraft bench burst`: how fast the scheduler turns a scheduled
//! job into a launch. The emulator runs in a child process and the backend is a
//! [`noop::NoopBackend`] (launch = record and return), so the figures are the scheduler's
//! own: pickup latency from "job scheduled" to "launch called", push vs pull, and a 10 000-job
//! burst (time to launch all, CPU time, peak RSS of this process).

pub(super) mod emulator_process;
mod noop;
pub(super) mod usage;

use crate::cmd::demo::setup::{toml_string, StateDir};
use anyhow::Context;
use emulator_process::EmulatorProcess;
use noop::NoopBackend;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use updraft_backends::{Backend, LaunchName};
use updraft_buildkite::rest::{CreateBuild, CreatePipeline, RestClient};
use updraft_buildkite::ClientOptions;
use updraft_model::Secret;
use updraft_scheduler::stats::quantile;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle, Source};

/// Jobs run before measuring, to warm connections and the ledger.
const WARM_UP_JOBS: usize = 5;
/// The scheduler's poll interval in the benchmark (the Stacks API's floor, the default).
const PULL_INTERVAL_MS: u64 = 1000;
/// The queue and fleet every benchmark job goes to.
pub(super) const QUEUE: &str = "bench";
/// Most jobs one step may fan out to (`parallelism`).
const MAX_PARALLELISM: u64 = 1000;
const PUSH_P99_TARGET_MS: u64 = 20;
const BURST_TARGET: Duration = Duration::from_secs(5);
const RSS_TARGET_BYTES: u64 = 64 * 1024 * 1024;

#[derive(clap::Args)]
pub struct PickupArgs {
    #[command(flatten)]
    pub common: super::Common,
    /// Jobs measured with push events on (one at a time, so none waits behind another).
    #[arg(long, default_value_t = 200)]
    pub push_samples: usize,
    /// Jobs measured with push off, found by polling (about half a poll interval each).
    #[arg(long, default_value_t = 20)]
    pub pull_samples: usize,
}

#[derive(clap::Args)]
pub struct BurstArgs {
    #[command(flatten)]
    pub common: super::Common,
    /// Jobs in the burst (one build, steps of up to 1000 parallel jobs).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub jobs: u64,
}

pub async fn pickup(args: PickupArgs) -> anyhow::Result<ExitCode> {
    let bench = Bench::start("pickup", &single_job_pipeline()).await?;
    let mut launched = bench.backend.launched();
    // Warm up connections and the ledger; these jobs are not counted.
    for _ in 0..WARM_UP_JOBS {
        bench.run_one_build(&mut launched).await?;
    }

    for _ in 0..args.push_samples {
        bench.run_one_build(&mut launched).await?;
    }
    bench.emulator.push_to(None).await?;
    for _ in 0..args.pull_samples {
        // Each job follows the launch of the one before, which comes right after a poll; a
        // pause drawn uniformly from one poll interval lands it at a random point of the cycle.
        tokio::time::sleep(Duration::from_millis(rand::random_range(
            0..PULL_INTERVAL_MS,
        )))
        .await;
        bench.run_one_build(&mut launched).await?;
    }
    let warm_up: HashSet<_> = bench
        .backend
        .launch_order()
        .iter()
        .take(WARM_UP_JOBS)
        .map(LaunchName::job_id)
        .collect();
    let total = WARM_UP_JOBS + args.push_samples + args.pull_samples;
    // The scheduler records a pickup just after the launch returns; wait for the last one.
    let recorded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let pickups = bench.scheduler.stats().pickups;
            if pickups.len() >= total {
                return pickups;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .context("the scheduler did not record every pickup")?;
    let pickups: Vec<_> = recorded
        .into_iter()
        .filter(|p| !warm_up.contains(&p.job))
        .collect();
    bench.stop().await;

    let figures_for = |source: Source| {
        let mut latencies: Vec<Duration> = pickups
            .iter()
            .filter(|p| p.source == source)
            .map(|p| p.latency())
            .collect();
        let samples = latencies.len();
        let mut ms = |q: f64| quantile(&mut latencies, q).map(|d| d.as_millis() as u64);
        json!({"samples": samples, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0)})
    };
    let push = figures_for(Source::Push);
    let pull = figures_for(Source::Pull);
    let figures =
        json!({"push": push, "pull": pull, "target": {"push_p99_ms": PUSH_P99_TARGET_MS}});
    let line = |name: &str, f: &serde_json::Value| {
        format!(
            "  {name}: p50 {} ms · p99 {} ms · max {} ms over {} jobs",
            f["p50_ms"], f["p99_ms"], f["max_ms"], f["samples"]
        )
    };
    let human = format!(
        "pickup latency, job scheduled → launch called (no-op backend, emulator in a child process)\n{}\n{}\n  target: push p99 ≤ {PUSH_P99_TARGET_MS} ms",
        line("push", &push),
        line("pull", &pull),
    );
    args.common.report("pickup", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn burst(args: BurstArgs) -> anyhow::Result<ExitCode> {
    let bench = Bench::start("burst", &burst_pipeline(args.jobs)).await?;
    let mut launched = bench.backend.launched();
    let target = args.jobs as usize;
    let rss_before = usage::peak_rss_bytes()?;
    let cpu_before = usage::cpu_time()?;
    let started = Instant::now();
    bench.create_build().await?;
    let mut first_launch = None;
    let all_launched = tokio::time::timeout(Duration::from_secs(300), async {
        while *launched.borrow_and_update() < target {
            if first_launch.is_none() && *launched.borrow() > 0 {
                first_launch = Some(started.elapsed());
            }
            launched.changed().await?;
        }
        anyhow::Ok(started.elapsed())
    })
    .await;
    let cpu = usage::cpu_time()? - cpu_before;
    let peak_rss = usage::peak_rss_bytes()?;
    let stats = bench.scheduler.stats();
    bench.stop().await;
    let elapsed = match all_launched {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "only {} of {target} jobs were launched within 300 s",
            *launched.borrow()
        ),
    };

    let figures = json!({
        "jobs": target,
        "launch_all_s": round(elapsed.as_secs_f64()),
        "first_launch_ms": first_launch.map(|d| d.as_millis() as u64),
        "launches_per_s": round(target as f64 / elapsed.as_secs_f64()),
        "cpu_s": round(cpu.as_secs_f64()),
        "peak_rss_mb": round(peak_rss as f64 / (1024.0 * 1024.0)),
        "peak_rss_before_burst_mb": round(rss_before as f64 / (1024.0 * 1024.0)),
        "pickup_p50_ms": stats.pickup_quantile(None, 0.5).map(|d| d.as_millis() as u64),
        "pickup_p99_ms": stats.pickup_quantile(None, 0.99).map(|d| d.as_millis() as u64),
        "target": {"launch_all_s": BURST_TARGET.as_secs(), "peak_rss_mb": RSS_TARGET_BYTES / (1024 * 1024)},
    });
    let human = format!(
        "burst of {target} jobs with a no-op launch (emulator in a child process)\n  \
         all launched in {:.2} s (target ≤ {} s), {:.0} launches/s\n  \
         CPU {:.2} s · peak RSS {:.1} MB (target ≤ {} MB; {:.1} MB before the burst)",
        elapsed.as_secs_f64(),
        BURST_TARGET.as_secs(),
        target as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        peak_rss as f64 / (1024.0 * 1024.0),
        RSS_TARGET_BYTES / (1024 * 1024),
        rss_before as f64 / (1024.0 * 1024.0),
    );
    args.common.report("burst", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub(super) fn single_job_pipeline() -> String {
    format!("steps:\n  - label: bench\n    command: \"true\"\n    agents:\n      queue: {QUEUE}\n")
}

/// One build of `jobs` jobs: as many steps of up to 1000 parallel jobs as it takes.
pub(super) fn burst_pipeline(jobs: u64) -> String {
    let mut yaml = String::from("steps:\n");
    let mut left = jobs;
    let mut step = 0;
    while left > 0 {
        let parallelism = left.min(MAX_PARALLELISM);
        step += 1;
        yaml.push_str(&format!(
            "  - label: burst {step}\n    command: \"true\"\n    parallelism: {parallelism}\n    agents:\n      queue: {QUEUE}\n"
        ));
        left -= parallelism;
    }
    yaml
}

/// The emulator (child process), the scheduler (this process) with a no-op backend, and a
/// pipeline to build.
struct Bench {
    emulator: EmulatorProcess,
    scheduler: SchedulerHandle,
    backend: Arc<NoopBackend>,
    rest: RestClient,
    pipeline: String,
    _state: StateDir,
}

impl Bench {
    async fn start(name: &str, pipeline_yaml: &str) -> anyhow::Result<Bench> {
        let state = StateDir::new(None, &format!("updraft-bench-{name}"))?;
        let emulator = EmulatorProcess::start().await?;
        let rest = RestClient::new(
            &emulator.url,
            &emulator.api_token,
            &emulator.org,
            ClientOptions::default(),
        )?;
        let pipeline = rest
            .create_pipeline(&CreatePipeline {
                name: format!("bench-{name}"),
                repository: "https://github.com/updraft/bench.git".to_string(),
                configuration: pipeline_yaml.to_string(),
                ..Default::default()
            })
            .await
            .context("creating the benchmark pipeline")?
            .slug;
        let webhook_token = Secret::new(format!("bench_{:032x}", rand::random::<u128>()));
        let config = format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"updraft-bench\"\npoll_interval_ms = {PULL_INTERVAL_MS}\n\n\
             [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
             [[fleet]]\nname = \"{QUEUE}\"\nqueue = \"{QUEUE}\"\nbackend = \"noop\"\nmax_in_flight = 1000000\n\
             pending_deadline = \"1h\"\n\n[fleet.template]\ncommand = [\"true\"]\n",
            toml_string(&emulator.agent_endpoint()),
            toml_string(emulator.agent_token.expose()),
            toml_string(webhook_token.expose()),
            toml_string(&state.path.join("ledger.sqlite").to_string_lossy()),
        );
        let config = Config::parse_checked(&config, std::iter::empty(), &["noop"])
            .map_err(|errors| anyhow::anyhow!("the benchmark's scheduler config: {errors}"))?;
        let backend = Arc::new(NoopBackend::new());
        let backends: BTreeMap<String, Arc<dyn Backend>> =
            [("noop".to_string(), backend.clone() as Arc<dyn Backend>)].into();
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
            pipeline,
            _state: state,
        })
    }

    async fn create_build(&self) -> anyhow::Result<()> {
        create_build(&self.rest, &self.emulator.org, &self.pipeline).await
    }

    /// Create one single-job build and wait until its launch was called.
    async fn run_one_build(&self, launched: &mut watch::Receiver<usize>) -> anyhow::Result<()> {
        let before = *launched.borrow_and_update();
        self.create_build().await?;
        tokio::time::timeout(Duration::from_secs(30), launched.wait_for(|n| *n > before))
            .await
            .context("a job was not launched within 30 s")??;
        Ok(())
    }

    async fn stop(self) {
        if let Err(error) = self.scheduler.shutdown().await {
            eprintln!("the scheduler stopped with an error: {error:#}");
        }
        self.emulator.stop().await;
    }
}

/// Create a build on `pipeline` without reading the answer: the answer is the whole build
/// (10 000 jobs for a burst), and parsing it would count against this process's memory,
/// which should be the scheduler's.
pub(super) async fn create_build(
    rest: &RestClient,
    org: &str,
    pipeline: &str,
) -> anyhow::Result<()> {
    let build = CreateBuild {
        commit: "HEAD".to_string(),
        branch: "main".to_string(),
        ..Default::default()
    };
    let path = format!("v2/organizations/{org}/pipelines/{pipeline}/builds");
    let request = rest
        .api()
        .request(reqwest::Method::POST, &path)
        .json(&build);
    let response = rest
        .api()
        .send_once(request)
        .await
        .context("creating a benchmark build")?;
    anyhow::ensure!(
        response.status().is_success(),
        "creating a benchmark build: {}",
        response.status()
    );
    Ok(())
}
