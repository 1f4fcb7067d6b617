//! `updraft bench chaos`: the scheduler as a user would run it, under the harshest conditions
//! the emulator can make — `updraft run` SIGKILLed and restarted many times during the run,
//! agents SIGKILLed mid-job, a fraction of agent and Stacks API calls answered 429/503, and
//! push events dropped, repeated and delayed — with every launch a real `updraft agent`
//! process. A run passes when no job is lost, none is acquired twice, every job whose agent
//! was not killed passes, no `finish` ever reached a job an agent held, and no process is left
//! behind. `--runs N` repeats it on fresh state and stops at the first failure.

use crate::cmd::demo::setup::{toml_string, StateDir};
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use updraft_backends::local::LAUNCH_MARKER_VAR;
use updraft_backends::LaunchName;
use updraft_emulator::{
    ApiFaults, EmulatorConfig, EmulatorHandle, JobState, PushFaults, PushTargets, WebhookAuth,
    WebhookTarget,
};
use updraft_model::Secret;
use uuid::Uuid;

/// Fleets of the run: (name, queue, extra tag).
const FLEETS: [(&str, &str, Option<&str>); 3] = [
    ("linux-small", "linux", Some("size=small")),
    ("linux-large", "linux", Some("size=large")),
    ("mac", "mac", None),
];
/// What every job runs: long enough that kills land mid-job.
const COMMAND: &str = "sleep 0.5; echo ok";
/// How long Buildkite (the emulator) waits before calling a silent agent lost: four of the
/// agent's 5 s heartbeats, so one heartbeat lost to an injected fault does not count.
const AGENT_LOST_AFTER: Duration = Duration::from_secs(20);
const READY_PREFIX: &str = "updraft: scheduler running; status page http://";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// Runs, each on fresh state; the first failing one ends the benchmark.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Jobs per run.
    #[arg(long, default_value_t = 240)]
    pub jobs: u32,
    /// Times the scheduler is SIGKILLed (and restarted) during a run.
    #[arg(long, default_value_t = 20)]
    pub scheduler_kills: u32,
    /// Agents SIGKILLed while running their job.
    #[arg(long, default_value_t = 2)]
    pub agent_kills: u32,
    /// Fraction of agent and Stacks API calls answered 429 or 503.
    #[arg(long, default_value_t = 0.15)]
    pub api_faults: f64,
    /// Fractions of push events dropped, duplicated and delayed (by 1.5 s).
    #[arg(long, default_value_t = 0.30)]
    pub push_drops: f64,
    #[arg(long, default_value_t = 0.20)]
    pub push_duplicates: f64,
    #[arg(long, default_value_t = 0.20)]
    pub push_delays: f64,
    /// Give a run up after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub patience: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Scheduler and agents run from a copy of this binary, so a rebuild during a long soak
    // cannot swap it under them.
    let bin = StateDir::new(None, "updraft-chaos-bin")?;
    let exe = bin.path.join("updraft");
    std::fs::copy(
        std::env::current_exe().context("finding the updraft binary")?,
        &exe,
    )
    .context("copying the updraft binary")?;
    let mut runs = Vec::new();
    let mut passed_in_a_row = 0;
    for index in 0..args.runs {
        let report = one_run(&args, &exe, u64::from(index) + 1).await?;
        let ok = report.passed();
        eprintln!(
            "run {}: {} in {:.1} s ({} scheduler kills, {} agent kills)",
            index + 1,
            if ok { "passed" } else { "FAILED" },
            report.seconds,
            report.scheduler_kills,
            report.agents_killed.len()
        );
        runs.push(report.json());
        if !ok {
            break;
        }
        passed_in_a_row += 1;
    }
    let figures = json!({
        "bench": "chaos",
        "runs": runs.len(),
        "passed_in_a_row": passed_in_a_row,
        "jobs_per_run": args.jobs,
        "scheduler_kills_per_run": args.scheduler_kills,
        "agent_kills_per_run": args.agent_kills,
        "api_fault_fraction": args.api_faults,
        "push": {"drop": args.push_drops, "duplicate": args.push_duplicates, "delay": args.push_delays, "delay_s": 1.5},
        "results": runs,
    });
    let human = format!(
        "chaos: {passed_in_a_row} of {} runs passed in a row ({} jobs each; {} scheduler SIGKILLs, {} agent SIGKILLs, {:.0} % API faults, push {:.0} % dropped / {:.0} % duplicated / {:.0} % delayed 1.5 s)",
        args.runs,
        args.jobs,
        args.scheduler_kills,
        args.agent_kills,
        args.api_faults * 100.0,
        args.push_drops * 100.0,
        args.push_duplicates * 100.0,
        args.push_delays * 100.0
    );
    args.common.report("chaos", &human, &figures)?;
    Ok(if passed_in_a_row == args.runs {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one run found.
struct RunReport {
    seconds: f64,
    jobs: usize,
    passed: usize,
    scheduler_kills: u32,
    agents_killed: BTreeSet<Uuid>,
    lost: Vec<Uuid>,
    acquired_twice: Vec<Uuid>,
    healthy_failed: Vec<Uuid>,
    finishes_of_held_jobs: u64,
    processes_left: usize,
    counters: serde_json::Value,
}

impl RunReport {
    fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.acquired_twice.is_empty()
            && self.healthy_failed.is_empty()
            && self.finishes_of_held_jobs == 0
            && self.processes_left == 0
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "passed": self.passed(),
            "seconds": self.seconds,
            "jobs": self.jobs,
            "jobs_passed": self.passed,
            "scheduler_kills": self.scheduler_kills,
            "agents_killed": self.agents_killed.len(),
            "lost": self.lost,
            "acquired_twice": self.acquired_twice,
            "healthy_jobs_failed": self.healthy_failed,
            "finishes_of_held_jobs": self.finishes_of_held_jobs,
            "processes_left": self.processes_left,
            "emulator": self.counters,
        })
    }
}

async fn one_run(args: &Args, exe: &std::path::Path, seed: u64) -> anyhow::Result<RunReport> {
    let state = StateDir::new(None, "updraft-chaos")?;
    let emulator = updraft_emulator::start(EmulatorConfig::default()).await?;
    emulator.set_agent_lost_after(AGENT_LOST_AFTER);
    let webhook_token = Secret::new(format!("chaos_{:032x}", rand::random::<u128>()));
    let config = state.path.join("updraft.toml");
    std::fs::write(
        &config,
        config_text(&emulator, &state.path, exe, &webhook_token),
    )?;
    let log = state.path.join("scheduler.log");
    let started = Instant::now();
    let mut scheduler = SchedulerProcess::start(exe, &config, &log).await?;
    point_push(&emulator, &scheduler, &webhook_token);
    emulator.set_api_faults(ApiFaults {
        fraction: args.api_faults,
        seed,
    });
    emulator.set_push_faults(PushFaults {
        drop_fraction: args.push_drops,
        duplicate_fraction: args.push_duplicates,
        delay_fraction: args.push_delays,
        delay: Duration::from_millis(1500),
        seed,
    });
    let jobs = create_jobs(&emulator, args.jobs)?;
    let total = jobs.len();
    // The kills land as the run passes given numbers of finished jobs, so each is mid-run
    // however fast the machine is.
    let mut moments: Vec<(usize, Kill)> = (0..args.scheduler_kills)
        .map(|_| (rand::random_range(1..total * 95 / 100), Kill::Scheduler))
        .chain(
            (0..args.agent_kills)
                .map(|_| (rand::random_range(total / 10..total * 8 / 10), Kill::Agent)),
        )
        .collect();
    moments.sort_by_key(|(at, _)| *at);
    let mut agents_killed = BTreeSet::new();
    let mut scheduler_kills = 0;
    let give_up = started + args.patience;
    for (moment, kill) in moments {
        while finished(&emulator, &jobs) < moment {
            if Instant::now() > give_up {
                anyhow::bail!(
                    "the run stalled before {moment} of {total} jobs finished; the scheduler's log is {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match kill {
            Kill::Scheduler => {
                scheduler.kill().await;
                scheduler_kills += 1;
                scheduler = SchedulerProcess::start(exe, &config, &log).await?;
                point_push(&emulator, &scheduler, &webhook_token);
            }
            Kill::Agent => {
                // A moment with no agent running its job yet: try again shortly.
                for _ in 0..50 {
                    if let Some(job) = kill_a_running_agent(&emulator, &jobs) {
                        agents_killed.insert(job);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    while finished(&emulator, &jobs) < total && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let lost: Vec<Uuid> = jobs
        .iter()
        .copied()
        .filter(|j| !emulator.job_state(*j).is_some_and(JobState::is_terminal))
        .collect();
    let acquired_twice: Vec<Uuid> = jobs
        .iter()
        .copied()
        .filter(|j| acquires(&emulator, *j) > 1)
        .collect();
    let healthy_failed: Vec<Uuid> = jobs
        .iter()
        .copied()
        .filter(|j| !agents_killed.contains(j) && emulator.job_state(*j) != Some(JobState::Passed))
        .collect();
    let passed = jobs
        .iter()
        .filter(|j| emulator.job_state(**j) == Some(JobState::Passed))
        .count();
    scheduler.stop().await;
    let processes_left = processes_left_after(&jobs, Duration::from_secs(30)).await;
    if !lost.is_empty() || !healthy_failed.is_empty() {
        eprintln!(
            "the scheduler's log is kept in {}",
            keep_log(&log).display()
        );
    }
    Ok(RunReport {
        seconds,
        jobs: total,
        passed,
        scheduler_kills,
        agents_killed,
        lost,
        acquired_twice,
        healthy_failed,
        finishes_of_held_jobs: emulator.stack_finishes_of_held_jobs(),
        processes_left,
        counters: emulator_counters(&emulator),
    })
}

enum Kill {
    Scheduler,
    Agent,
}

fn config_text(
    emulator: &EmulatorHandle,
    state: &std::path::Path,
    agent: &std::path::Path,
    webhook_token: &Secret,
) -> String {
    let quote = toml_string;
    let mut text = format!(
        "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"chaos\"\n\n\
         [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
         [reconcile]\ninterval_ms = 500\n\n[local]\nstate_dir = {}\nstop_grace = \"2s\"\n",
        quote(&emulator.agent_endpoint()),
        quote(emulator.agent_token().expose()),
        quote(webhook_token.expose()),
        quote(&state.join("ledger.sqlite").to_string_lossy()),
        quote(&state.join("local").to_string_lossy()),
    );
    for (name, queue, tag) in FLEETS {
        let tags = tag
            .map(|t| format!("tags = [{}]\n", quote(t)))
            .unwrap_or_default();
        text.push_str(&format!(
            "\n[[fleet]]\nname = \"{name}\"\nqueue = \"{queue}\"\n{tags}max_in_flight = 12\n\n\
             [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n\
             env = {{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}\n",
            quote(&agent.to_string_lossy()),
            quote(&state.join("builds").to_string_lossy()),
        ));
    }
    text
}

/// Builds whose jobs are spread over the three fleets, `jobs` in all.
fn create_jobs(emulator: &EmulatorHandle, jobs: u32) -> anyhow::Result<Vec<Uuid>> {
    let per_build = 60;
    let mut ids = Vec::new();
    let mut build = 0;
    while (ids.len() as u32) < jobs {
        build += 1;
        let here = per_build.min(jobs - ids.len() as u32);
        let slug = format!("chaos-{build}");
        let mut yaml = String::from("steps:\n");
        for (i, (name, queue, tag)) in FLEETS.iter().enumerate() {
            let count = here / 3 + u32::from((i as u32) < here % 3);
            if count == 0 {
                continue;
            }
            let extra = tag
                .and_then(|t| t.split_once('='))
                .map(|(k, v)| format!(", {k}: {v}"))
                .unwrap_or_default();
            yaml.push_str(&format!(
                "  - label: {name}\n    command: {}\n    parallelism: {count}\n    agents: {{queue: {queue}{extra}}}\n",
                toml_string(COMMAND)
            ));
        }
        emulator.create_pipeline(&slug, &yaml)?;
        ids.extend(emulator.create_build(&slug)?.job_ids);
    }
    Ok(ids)
}

fn finished(emulator: &EmulatorHandle, jobs: &[Uuid]) -> usize {
    jobs.iter()
        .filter(|j| emulator.job_state(**j).is_some_and(JobState::is_terminal))
        .count()
}

fn acquires(emulator: &EmulatorHandle, job: Uuid) -> u64 {
    emulator
        .job_timeline(job)
        .and_then(|t| t["acquires"].as_u64())
        .unwrap_or(0)
}

fn emulator_counters(emulator: &EmulatorHandle) -> serde_json::Value {
    let counters = emulator.counters();
    json!({
        "api_faults_injected": counters["api_faults_injected"],
        "push": counters["push"],
    })
}

fn point_push(emulator: &EmulatorHandle, scheduler: &SchedulerProcess, token: &Secret) {
    emulator.set_push_targets(PushTargets {
        webhook: Some(WebhookTarget {
            url: format!("http://{}/webhooks/buildkite", scheduler.addr),
            auth: WebhookAuth::Token(token.clone()),
        }),
        eventbridge_url: None,
    });
}

/// SIGKILL the `updraft agent` process of one running job (its launch's wrapper then records
/// the kill); the job's id, if one was running.
fn kill_a_running_agent(emulator: &EmulatorHandle, jobs: &[Uuid]) -> Option<Uuid> {
    let running: Vec<Uuid> = jobs
        .iter()
        .copied()
        .filter(|j| emulator.job_state(*j) == Some(JobState::Running))
        .collect();
    for job in running {
        let name = LaunchName::for_job(job).to_string();
        for pid in marked(&BTreeSet::from([name])) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            // The agent itself, not the launch's `sh` wrapper that runs it.
            let is_agent = args.len() > 2
                && !args[0].ends_with(b"sh")
                && args[1] == b"agent"
                && args[2] == b"start";
            if is_agent {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Some(job);
            }
        }
    }
    None
}

/// Live (not zombie) processes whose environment names one of `launches`.
fn marked(launches: &BTreeSet<String>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let is_marked = environ.split(|b| *b == 0).any(|var| {
                std::str::from_utf8(var)
                    .ok()
                    .and_then(|v| v.strip_prefix(LAUNCH_MARKER_VAR)?.strip_prefix('='))
                    .is_some_and(|name| launches.contains(name))
            });
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            is_marked && !zombie
        })
        .collect()
}

/// How many launch processes are still alive once `patience` has passed.
async fn processes_left_after(jobs: &[Uuid], patience: Duration) -> usize {
    let names: BTreeSet<String> = jobs
        .iter()
        .map(|j| LaunchName::for_job(*j).to_string())
        .collect();
    let give_up = Instant::now() + patience;
    loop {
        let left = marked(&names).len();
        if left == 0 || Instant::now() > give_up {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keep_log(log: &std::path::Path) -> std::path::PathBuf {
    let kept = std::env::temp_dir().join(format!("updraft-chaos-{}.log", std::process::id()));
    let _ = std::fs::copy(log, &kept);
    kept
}

/// `updraft run --config FILE` as a child process, its stderr appended to a log.
struct SchedulerProcess {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl SchedulerProcess {
    async fn start(
        exe: &std::path::Path,
        config: &std::path::Path,
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("opening the scheduler's log")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("UPDRAFT_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting `updraft run`")?;
        let stdout = child.stdout.take().context("the scheduler's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                    return Ok::<_, anyhow::Error>(rest.trim_end_matches("/status").parse().ok());
                }
            }
            Ok(None)
        })
        .await
        .context("`updraft run` did not start within 60 s")??
        .with_context(|| {
            format!(
                "`updraft run` did not report its address; see {}",
                log.display()
            )
        })?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(SchedulerProcess { child, addr })
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, as an operator would stop it at the end.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
