//! `updraft bench emulator`: request rate of an in-process emulator on loopback for the two
//! hottest calls, agent `GET /v3/ping` and Stacks `GET scheduled-jobs`, with N concurrent
//! keep-alive clients (rate limits off, so the emulator itself is measured).

use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use updraft_emulator::EmulatorConfig;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// Seconds to run each of the two phases.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Scheduled jobs waiting in the queue while scheduled-jobs is measured.
    #[arg(long, default_value_t = 50)]
    scheduled_jobs: usize,
}

struct Phase {
    requests: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Hammer `url` with `concurrency` clients for `duration`; count successes and latencies.
async fn measure(
    url: String,
    authorization: String,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .http1_only()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, authorization, stop, errors) = (
            client.clone(),
            url.clone(),
            authorization.clone(),
            stop.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match client
                    .get(&url)
                    .header("authorization", &authorization)
                    .send()
                    .await
                {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Phase {
        requests: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.duration > 0.0 && args.concurrency > 0,
        "--duration and --concurrency must be positive"
    );
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let emulator = updraft_emulator::start(EmulatorConfig::default()).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let http = reqwest::Client::new();
    let agent_token = format!("Token {}", emulator.agent_token().expose());

    let steps: String = (0..args.scheduled_jobs.max(1))
        .map(|i| format!("  - command: echo {i}\n"))
        .collect();
    emulator.create_pipeline("bench", &format!("steps:\n{steps}"))?;
    emulator.create_build("bench")?;
    let stack = http
        .post(format!("{}/stacks/register", emulator.agent_endpoint()))
        .header("authorization", &agent_token)
        .json(&json!({"key": "bench", "type": "custom", "queue_key": "_default"}))
        .send()
        .await?;
    anyhow::ensure!(
        stack.status().is_success(),
        "registering the bench stack: {}",
        stack.status()
    );
    let register: serde_json::Value = http
        .post(format!("{}/register", emulator.agent_endpoint()))
        .header("authorization", &agent_token)
        .json(&json!({"name": "bench", "meta_data": ["queue=bench-idle"]}))
        .send()
        .await?
        .json()
        .await?;
    let session = register["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("register answered without access_token: {register}"))?;

    let ping = measure(
        format!("{}/ping", emulator.agent_endpoint()),
        format!("Token {session}"),
        args.concurrency,
        duration,
    )
    .await?;
    let scheduled = measure(
        format!(
            "{}/stacks/bench/scheduled-jobs?limit=100",
            emulator.agent_endpoint()
        ),
        agent_token,
        args.concurrency,
        duration,
    )
    .await?;
    emulator.shutdown().await;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let figures = json!({
        "bench": "emulator",
        "cores": cores,
        "concurrency": args.concurrency,
        "duration_seconds": args.duration,
        "startup_ms": startup_ms,
        "ping": {"requests": ping.requests, "errors": ping.errors, "requests_per_second": ping.rate(), "p50_ms": ping.p50_ms, "p99_ms": ping.p99_ms},
        "scheduled_jobs": {"requests": scheduled.requests, "errors": scheduled.errors, "requests_per_second": scheduled.rate(), "p50_ms": scheduled.p50_ms, "p99_ms": scheduled.p99_ms, "jobs_per_response": args.scheduled_jobs.clamp(1, 100)},
    });
    let human = format!(
        "emulator on loopback ({cores} cores, {} clients, load generator in the same process):\n  ping            {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}\n  scheduled-jobs  {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}\n  start-up        {:.1} ms",
        args.concurrency, ping.rate(), ping.p50_ms, ping.p99_ms, ping.errors, scheduled.rate(), scheduled.p50_ms, scheduled.p99_ms, scheduled.errors, startup_ms
    );
    args.common.report("emulator", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}
