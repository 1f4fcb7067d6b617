//! `updraft demo`: the whole of Updraft in one command with no network — an emulated
//! Buildkite, the scheduler and the local backend in this process, and every launch a real
//! `updraft agent start --acquire-job …` child process. It runs a few builds of a sample
//! pipeline (parallel jobs, a `wait`, two queues, a large log, a failing job), cancels one
//! build while it runs, shows progress, and ends with a summary and the status page's URL.

mod display;
pub(crate) mod setup;

use anyhow::Context;
use display::Display;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use updraft_buildkite::rest::{Build, CreateBuild, CreatePipeline, RestClient};
use updraft_buildkite::ClientOptions;
use updraft_model::JobState;

/// The sample pipeline every demo build runs (`examples/demo-pipeline.yml`).
pub const SAMPLE_PIPELINE: &str = include_str!("../../../../examples/demo-pipeline.yml");

const PIPELINE_NAME: &str = "updraft-demo";
/// How often build states are read while the demo runs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct Args {
    /// Builds of the sample pipeline to run; the last one is canceled while it runs (when
    /// there are two or more).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    builds: u64,
    /// Keep the emulator and scheduler serving after the sample is done (until Ctrl-C), to
    /// look at the status page and metrics.
    #[arg(long)]
    keep_running: bool,
    /// Where the ledger and the launches' work directories go; default a temporary
    /// directory removed at the end.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Give up (exit 1, naming the jobs still open) if the sample is not done by then.
    #[arg(long, default_value = "180", value_parser = parse_seconds)]
    timeout_secs: Duration,
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match raw.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "expected a positive number of seconds, got {raw:?}"
        )),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let stack = setup::Stack::start(args.state_dir.clone()).await?;
    let rest = RestClient::new(
        &stack.emulator.url(),
        &stack.emulator.api_token(),
        &stack.emulator.org(),
        ClientOptions::default(),
    )?;
    let pipeline = rest
        .create_pipeline(&CreatePipeline {
            name: PIPELINE_NAME.to_string(),
            repository: "https://github.com/updraft/demo.git".to_string(),
            configuration: SAMPLE_PIPELINE.to_string(),
            ..Default::default()
        })
        .await
        .context("creating the sample pipeline in the emulator")?;
    let mut numbers = Vec::new();
    for i in 1..=args.builds {
        let build = CreateBuild {
            commit: "HEAD".to_string(),
            branch: "main".to_string(),
            message: Some(format!("demo build {i} of {}", args.builds)),
            ..Default::default()
        };
        numbers.push(
            rest.create_build(&pipeline.slug, &build)
                .await
                .context("creating a demo build")?
                .number,
        );
    }
    let to_cancel = numbers.last().copied().filter(|_| numbers.len() > 1);

    let mut display = Display::new(&stack.status_url());
    let watched = watch(
        &rest,
        &pipeline.slug,
        &numbers,
        to_cancel,
        &mut display,
        args.timeout_secs,
    )
    .await;
    display.finish();
    let builds = match watched {
        Ok(builds) => builds,
        Err(unfinished) => {
            eprintln!(
                "updraft demo: the sample did not finish within {:?}; still open:",
                args.timeout_secs
            );
            for line in unfinished {
                eprintln!("  {line}");
            }
            eprintln!("status page: {}", stack.status_url());
            stack.stop().await;
            return Ok(ExitCode::FAILURE);
        }
    };

    let large_log = largest_log(&rest, &pipeline.slug, &builds).await;
    print_summary(&builds, &stack, started.elapsed(), large_log);
    if let Some(dir) = &args.state_dir {
        println!("  ledger and launch state kept in {}", dir.display());
    }
    if args.keep_running {
        println!(
            "serving until Ctrl-C: emulator {} · status {}",
            stack.emulator.url(),
            stack.status_url()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Follow the builds until all have finished, canceling `to_cancel` once it has a running
/// job. On timeout, returns a line per job still open.
async fn watch(
    rest: &RestClient,
    pipeline: &str,
    numbers: &[u64],
    mut to_cancel: Option<u64>,
    display: &mut Display,
    timeout: Duration,
) -> Result<Vec<Build>, Vec<String>> {
    let give_up = Instant::now() + timeout;
    let mut builds: BTreeMap<u64, Build> = BTreeMap::new();
    loop {
        for number in numbers {
            match rest.get_build(pipeline, *number).await {
                Ok(build) => {
                    display.observe(&build);
                    builds.insert(*number, build);
                }
                Err(error) => display.note(&format!(
                    "reading build #{number} failed ({error}); retrying"
                )),
            }
        }
        if let Some(number) = to_cancel {
            let running = builds
                .get(&number)
                .is_some_and(|b| b.jobs.iter().any(|j| j.state() == Some(JobState::Running)));
            if running {
                match rest.cancel_build(pipeline, number).await {
                    Ok(_) => {
                        display.note(&format!("canceling build #{number} while its jobs run"));
                        to_cancel = None;
                    }
                    Err(error) => display.note(&format!(
                        "canceling build #{number} failed ({error}); retrying"
                    )),
                }
            }
        }
        if builds.len() == numbers.len() && builds.values().all(Build::is_finished) {
            return Ok(builds.into_values().collect());
        }
        if Instant::now() > give_up {
            return Err(builds
                .values()
                .flat_map(|b| {
                    b.jobs
                        .iter()
                        .filter(|j| {
                            j.job_type == "script" && !j.state().is_some_and(JobState::is_terminal)
                        })
                        .map(move |j| {
                            format!(
                                "build #{} {:?}: {}",
                                b.number,
                                display::job_label(j),
                                j.state.as_deref().unwrap_or("?")
                            )
                        })
                })
                .collect());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The size and label of the biggest job log, fetched back from the emulator (the log went
/// through the agent in chunks).
async fn largest_log(
    rest: &RestClient,
    pipeline: &str,
    builds: &[Build],
) -> Option<(usize, String)> {
    let mut largest: Option<(usize, String)> = None;
    for build in builds {
        for job in build
            .jobs
            .iter()
            .filter(|j| j.state() == Some(JobState::Passed))
        {
            let Ok(log) = rest.job_log(pipeline, build.number, &job.id).await else {
                continue;
            };
            if largest.as_ref().is_none_or(|(size, _)| log.len() > *size) {
                largest = Some((
                    log.len(),
                    format!("build #{} {}", build.number, display::job_label(job)),
                ));
            }
        }
    }
    largest
}

fn print_summary(
    builds: &[Build],
    stack: &setup::Stack,
    wall: Duration,
    large_log: Option<(usize, String)>,
) {
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for job in builds
        .iter()
        .flat_map(|b| &b.jobs)
        .filter(|j| j.job_type == "script")
    {
        *by_state
            .entry(job.state.clone().unwrap_or_else(|| "unknown".to_string()))
            .or_default() += 1;
    }
    let count = |state: &str| by_state.get(state).copied().unwrap_or(0);
    // Jobs behind a `wait` in a canceled build never run (`waiting_failed`, `broken`, …).
    let others: Vec<String> = by_state
        .iter()
        .filter(|(state, _)| !matches!(state.as_str(), "passed" | "failed" | "canceled"))
        .map(|(state, n)| format!("not run {n} ({state})"))
        .collect();
    let jobs: usize = by_state.values().sum();
    println!();
    println!(
        "updraft demo: {} builds, {jobs} jobs in {:.1}s",
        builds.len(),
        wall.as_secs_f64()
    );
    for build in builds {
        println!("  build #{:<3} {}", build.number, build.state);
    }
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(" · {}", others.join(" · "))
    };
    println!(
        "  jobs: passed {} · failed {} · canceled {}{others}",
        count("passed"),
        count("failed"),
        count("canceled")
    );
    let stats = stack.scheduler.stats();
    let ms = |q: f64| {
        stats
            .pickup_quantile(None, q)
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| "n/a".into())
    };
    let by_source = |source| stats.pickups.iter().filter(|p| p.source == source).count();
    println!(
        "  pickup latency (scheduled → launched): p50 {} · p99 {} over {} launches (push {}, pull {}, reconcile {})",
        ms(0.5),
        ms(0.99),
        stats.pickups.len(),
        by_source(updraft_scheduler::Source::Push),
        by_source(updraft_scheduler::Source::Pull),
        by_source(updraft_scheduler::Source::Reconcile),
    );
    if let Some((size, job)) = large_log {
        println!(
            "  largest log: {:.1} MB streamed by {job}",
            size as f64 / 1_000_000.0
        );
    }
    println!(
        "  status page: {} (served until exit; --keep-running keeps it up)",
        stack.status_url()
    );
}
