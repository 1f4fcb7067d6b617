//! End-to-end acceptance of the scheduler: the emulator, the scheduler and the local backend,
//! with every launch a real `updraft agent start --acquire-job` process. Each job must reach
//! its final state with exactly one acquire (the emulator counts them), whether the scheduler
//! learns of it by push, by pull, or by pull after a lost push; canceling a build must stop its
//! launches within 2 s; and a scheduler SIGKILLed five times mid-run must lose nothing, run
//! nothing twice and leave no process behind.
//!
//! The scenarios run one at a time (they share two cores with many agent processes).

mod scheduler_process;

use scheduler_process::SchedulerProcess;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updraft_backends::local::{LocalBackend, LocalOptions, LAUNCH_MARKER_VAR};
use updraft_backends::{Backend, LaunchName};
use updraft_buildkite::rest::RestClient;
use updraft_buildkite::ClientOptions;
use updraft_emulator::{
    BuildRef, EmulatorConfig, EmulatorHandle, JobState, PushFaults, PushTargets, WebhookAuth,
    WebhookTarget,
};
use updraft_model::Secret;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
/// (fleet, queue, extra tag) — three fleets over two queues.
const FLEETS: [(&str, &str, Option<&str>); 3] = [
    ("linux-small", "linux", Some("size=small")),
    ("linux-large", "linux", Some("size=large")),
    ("mac", "mac", None),
];
/// Upper bound for a whole run to settle; scenarios end as soon as it does.
const PATIENCE: Duration = Duration::from_secs(60);

/// Held by each scenario for its whole run. An async mutex: it is held across awaits, and a
/// failing scenario releases it as it unwinds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An emulator and a state directory; schedulers come and go.
struct World {
    emulator: EmulatorHandle,
    state: tempfile::TempDir,
    webhook_token: Secret,
    pipelines: Mutex<u32>,
}

impl World {
    async fn new() -> World {
        let emulator = updraft_emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        World {
            emulator,
            state: tempfile::tempdir().expect("temp dir"),
            webhook_token: Secret::new("e2e-webhook-token"),
            pipelines: Mutex::new(0),
        }
    }

    fn local_dir(&self) -> PathBuf {
        self.state.path().join("local")
    }

    /// The fleet config as TOML (strings as JSON literals, which TOML reads the same).
    fn config_text(&self, http_listen: &str) -> String {
        let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut text = format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"e2e\"\n\n\
             [push]\nwebhook_token = {}\n\n[http]\nlisten = {}\n\n[ledger]\npath = {}\n\n\
             [reconcile]\ninterval_ms = 500\n\n[local]\nstate_dir = {}\nstop_grace = \"2s\"\n",
            quote(&self.emulator.agent_endpoint()),
            quote(self.emulator.agent_token().expose()),
            quote(self.webhook_token.expose()),
            quote(http_listen),
            quote(&self.state.path().join("ledger.sqlite").to_string_lossy()),
            quote(&self.local_dir().to_string_lossy()),
        );
        for (name, queue, tag) in FLEETS {
            let tags = tag
                .map(|t| format!("tags = [{}]\n", quote(t)))
                .unwrap_or_default();
            text.push_str(&format!(
                "\n[[fleet]]\nname = \"{name}\"\nqueue = \"{queue}\"\n{tags}max_in_flight = 8\n\n\
                 [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n\
                 env = {{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}\n",
                quote(UPDRAFT),
                quote(&self.state.path().join("builds").to_string_lossy()),
            ));
        }
        text
    }

    async fn local_backend(&self) -> LocalBackend {
        let mut options = LocalOptions::new(self.local_dir());
        options.stop_grace = Duration::from_secs(2);
        LocalBackend::open(options).await.expect("local backend")
    }

    async fn start_scheduler(&self, local: &LocalBackend) -> SchedulerHandle {
        let config = Config::parse(&self.config_text("127.0.0.1:0")).expect("valid config");
        let backends: BTreeMap<String, Arc<dyn Backend>> = [(
            "local".to_string(),
            Arc::new(local.clone()) as Arc<dyn Backend>,
        )]
        .into();
        Scheduler::start(config, backends)
            .await
            .expect("scheduler starts")
    }

    fn push_to(&self, push_addr: std::net::SocketAddr) {
        self.emulator.set_push_targets(PushTargets {
            webhook: Some(WebhookTarget {
                url: format!("http://{push_addr}/webhooks/buildkite"),
                auth: WebhookAuth::Token(self.webhook_token.clone()),
            }),
            eventbridge_url: None,
        });
    }

    /// A new pipeline (its slug is returned) and one build of it with `per_fleet` jobs for
    /// each fleet, all running `command`.
    fn build(&self, per_fleet: u32, command: &str) -> (String, BuildRef) {
        let slug = {
            let mut count = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
            *count += 1;
            format!("e2e-{count}")
        };
        let mut yaml = String::from("steps:\n");
        for (name, queue, tag) in FLEETS {
            let extra = tag
                .and_then(|t| t.split_once('='))
                .map(|(k, v)| format!(", {k}: {v}"))
                .unwrap_or_default();
            yaml.push_str(&format!(
                "  - label: {name}\n    command: {}\n    parallelism: {per_fleet}\n    agents: {{queue: {queue}{extra}}}\n",
                serde_json::Value::String(command.to_string())
            ));
        }
        self.emulator
            .create_pipeline(&slug, &yaml)
            .expect("pipeline");
        let build = self.emulator.create_build(&slug).expect("build");
        assert_eq!(build.job_ids.len(), 3 * per_fleet as usize);
        (slug, build)
    }

    async fn wait_until_final(&self, build: &BuildRef) {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let states: Vec<Option<JobState>> = build
                .job_ids
                .iter()
                .map(|j| self.emulator.job_state(*j))
                .collect();
            if states.iter().all(|s| s.is_some_and(JobState::is_terminal)) {
                return;
            }
            if Instant::now() > give_up {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for state in &states {
                    *counts.entry(format!("{state:?}")).or_default() += 1;
                }
                let stuck: Vec<String> = build
                    .job_ids
                    .iter()
                    .filter(|j| {
                        !self
                            .emulator
                            .job_state(**j)
                            .is_some_and(JobState::is_terminal)
                    })
                    .map(|j| self.diagnose(LaunchName::for_job(*j)))
                    .collect();
                panic!(
                    "jobs did not all finish within {PATIENCE:?}: {counts:?}\n{}",
                    stuck.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What is known of a job that did not finish: its timeline, its launch directory and
    /// what the scheduler (when run as a process) logged about it.
    fn diagnose(&self, name: LaunchName) -> String {
        let job = name.job_id();
        let launch = self.local_dir().join("launches").join(name.as_str());
        let files: Vec<String> = std::fs::read_dir(&launch)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_file())
                    .map(|e| {
                        format!(
                            "--- {}\n{}",
                            e.file_name().to_string_lossy(),
                            std::fs::read_to_string(e.path()).unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_else(|error| vec![format!("no launch directory: {error}")]);
        let log =
            std::fs::read_to_string(self.state.path().join("scheduler.log")).unwrap_or_default();
        let kept =
            std::env::temp_dir().join(format!("updraft-e2e-scheduler-{}.log", std::process::id()));
        if !log.is_empty() && std::fs::write(&kept, &log).is_ok() {
            eprintln!("the scheduler's whole log is kept in {}", kept.display());
        }
        let mentions: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&job.to_string()))
            .collect();
        format!(
            "job {job}: {:#}\nlaunch dir {}:\n{}\nscheduler log lines:\n{}",
            self.emulator.job_timeline(job).unwrap_or_default(),
            launch.display(),
            files.join("\n"),
            mentions.join("\n")
        )
    }

    /// Every job passed, was acquired exactly once, and ran on the fleet its rules name.
    fn assert_each_ran_once_on_its_fleet(&self, build: &BuildRef, per_fleet: u32) {
        for (index, job) in build.job_ids.iter().enumerate() {
            let timeline = self.emulator.job_timeline(*job).expect("job timeline");
            let log = String::from_utf8_lossy(&self.emulator.job_log(*job).unwrap_or_default())
                .to_string();
            if self.emulator.job_state(*job) != Some(JobState::Passed) {
                panic!(
                    "job {job} did not pass; log: {log}\n{}",
                    self.diagnose(LaunchName::for_job(*job))
                );
            }
            assert_eq!(
                timeline["acquires"].as_u64(),
                Some(1),
                "job {job} acquired other than once: {timeline:#}"
            );
            let fleet = FLEETS[index / per_fleet as usize].0;
            assert!(
                log.contains(&format!("fleet={fleet}")),
                "job {job} should have run on fleet {fleet}; log: {log}"
            );
        }
    }
}

/// Live processes (zombies excluded) carrying the marker of one of `launches`.
fn marked_processes(launches: &BTreeSet<String>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let marked = environ.split(|b| *b == 0).any(|var| {
                std::str::from_utf8(var)
                    .ok()
                    .and_then(|v| v.strip_prefix(LAUNCH_MARKER_VAR)?.strip_prefix('='))
                    .is_some_and(|name| launches.contains(name))
            });
            marked && !is_zombie(*pid)
        })
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Wait for the launches of `build` to have left no live process.
async fn assert_no_processes_left(build: &BuildRef) {
    let names: BTreeSet<String> = build
        .job_ids
        .iter()
        .map(|j| LaunchName::for_job(*j).to_string())
        .collect();
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let left = marked_processes(&names);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "processes of finished launches still alive: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pickups_by_source(scheduler: &SchedulerHandle) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for pickup in scheduler.stats().pickups {
        *counts.entry(pickup.source.as_str()).or_default() += 1;
    }
    counts
}

const PRINT_FLEET: &str = "echo \"fleet=$UPDRAFT_FLEET\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_jobs_over_three_fleets_and_two_queues_each_run_once_with_push_and_pull() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let local = world.local_backend().await;
    let scheduler = world.start_scheduler(&local).await;
    world.push_to(scheduler.push_addr());

    let (_, build) = world.build(100, PRINT_FLEET);
    world.wait_until_final(&build).await;
    world.assert_each_ran_once_on_its_fleet(&build, 100);
    let stats = scheduler.stats();
    assert_eq!(
        stats.launched, 300,
        "one launch per job, no relaunch: {stats:?}"
    );
    assert!(
        pickups_by_source(&scheduler)
            .get("push")
            .is_some_and(|n| *n > 0),
        "push was on: {:?}",
        pickups_by_source(&scheduler)
    );
    assert_no_processes_left(&build).await;
    scheduler.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_push_off_pull_alone_runs_everything() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let local = world.local_backend().await;
    let scheduler = world.start_scheduler(&local).await;

    let (_, build) = world.build(10, PRINT_FLEET);
    world.wait_until_final(&build).await;
    world.assert_each_ran_once_on_its_fleet(&build, 10);
    let sources = pickups_by_source(&scheduler);
    assert_eq!(
        sources.get("push"),
        None,
        "no push target was set: {sources:?}"
    );
    assert_eq!(sources.values().sum::<usize>(), 30, "{sources:?}");
    assert_no_processes_left(&build).await;
    scheduler.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_thirty_percent_of_push_events_are_dropped_pull_still_runs_everything_once() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let local = world.local_backend().await;
    let scheduler = world.start_scheduler(&local).await;
    world.push_to(scheduler.push_addr());
    world.emulator.set_push_faults(PushFaults {
        drop_fraction: 0.3,
        seed: 7,
        ..PushFaults::default()
    });

    let (_, build) = world.build(20, PRINT_FLEET);
    world.wait_until_final(&build).await;
    world.assert_each_ran_once_on_its_fleet(&build, 20);
    let sources = pickups_by_source(&scheduler);
    assert!(
        sources.get("pull").is_some_and(|n| *n > 0),
        "dropped events must be found by pull: {sources:?}"
    );
    assert!(
        sources.get("push").is_some_and(|n| *n > 0),
        "most events still arrive: {sources:?}"
    );
    assert_eq!(scheduler.stats().launched, 60);
    assert_no_processes_left(&build).await;
    scheduler.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_build_stops_its_running_launches_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let local = world.local_backend().await;
    let scheduler = world.start_scheduler(&local).await;
    world.push_to(scheduler.push_addr());

    let pids = world.state.path().join("pids");
    std::fs::create_dir_all(&pids).expect("pids dir");
    let command = format!(
        "echo $$ > {}/$BUILDKITE_JOB_ID; exec sleep 120",
        pids.display()
    );
    let (slug, build) = world.build(1, &command);
    let give_up = Instant::now() + PATIENCE;
    let sleepers: Vec<i32> = loop {
        let running = build
            .job_ids
            .iter()
            .all(|j| world.emulator.job_state(*j) == Some(JobState::Running));
        let pids: Vec<i32> = build
            .job_ids
            .iter()
            .filter_map(|j| {
                std::fs::read_to_string(pids.join(j.to_string()))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        if running && pids.len() == build.job_ids.len() {
            break pids;
        }
        assert!(Instant::now() < give_up, "the jobs never all ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let rest = RestClient::new(
        &world.emulator.url(),
        &world.emulator.api_token(),
        &world.emulator.org(),
        ClientOptions::default(),
    )
    .expect("rest client");
    let canceled_at = Instant::now();
    rest.cancel_build(&slug, build.number)
        .await
        .expect("cancel the build");
    let names: BTreeSet<String> = build
        .job_ids
        .iter()
        .map(|j| LaunchName::for_job(*j).to_string())
        .collect();
    loop {
        let sleepers_left: Vec<&i32> = sleepers.iter().filter(|pid| !is_zombie(**pid)).collect();
        let launches_running = local
            .list()
            .await
            .expect("list")
            .into_iter()
            .filter(|l| names.contains(l.name.as_str()) && !l.phase.is_finished())
            .count();
        if sleepers_left.is_empty() && launches_running == 0 {
            break;
        }
        assert!(
            canceled_at.elapsed() <= Duration::from_secs(2),
            "2 s after the cancel, job processes {sleepers_left:?} and {launches_running} launches still run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for job in &build.job_ids {
        let state = world.emulator.job_state(*job);
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut state = state;
        while !state.is_some_and(JobState::is_terminal) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
            state = world.emulator.job_state(*job);
        }
        assert_eq!(state, Some(JobState::Canceled), "job {job}");
    }
    assert_no_processes_left(&build).await;
    scheduler.shutdown().await.expect("clean shutdown");
}

#[test]
fn the_sample_fleet_config_checks_out() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fleets.toml");
    let output = std::process::Command::new(UPDRAFT)
        .args(["check", "--config", sample])
        .env("BUILDKITE_AGENT_TOKEN", "bkct_sample")
        .env("UPDRAFT_WEBHOOK_TOKEN", "sample-webhook-token")
        .output()
        .expect("run updraft check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("fleet linux:") && stdout.contains("fleet arm-docker:"),
        "{stdout}"
    );
}

/// `updraft run` with the emulator's push events pointed at it.
async fn spawn_scheduler(
    world: &World,
    config: &std::path::Path,
    log: &std::path::Path,
) -> SchedulerProcess {
    let scheduler = SchedulerProcess::start(config, log, &[]).await;
    world.push_to(scheduler.addr);
    scheduler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_sigkilled_five_times_during_a_300_job_run_loses_nothing_and_runs_nothing_twice(
) {
    use nix::sys::signal::Signal;
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let config = world.state.path().join("updraft.toml");
    std::fs::write(&config, world.config_text("127.0.0.1:0")).expect("config file");
    let log = world.state.path().join("scheduler.log");
    let mut scheduler = spawn_scheduler(&world, &config, &log).await;

    let (_, build) = world.build(100, PRINT_FLEET);
    // Five random moments of the run, as numbers of jobs finished; the kill happens as the
    // run passes each, so every one lands mid-run whatever the machine's speed.
    let mut moments: Vec<usize> = (0..5).map(|_| rand::random_range(1..250)).collect();
    moments.sort();
    let give_up = Instant::now() + PATIENCE;
    for moment in moments {
        while build
            .job_ids
            .iter()
            .filter(|j| {
                world
                    .emulator
                    .job_state(**j)
                    .is_some_and(JobState::is_terminal)
            })
            .count()
            < moment
        {
            assert!(
                Instant::now() < give_up,
                "the run stalled before {moment} jobs finished; log: {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        scheduler.kill(Signal::SIGKILL).await;
        scheduler = spawn_scheduler(&world, &config, &log).await;
    }

    world.wait_until_final(&build).await;
    world.assert_each_ran_once_on_its_fleet(&build, 100);
    scheduler.kill(Signal::SIGTERM).await;
    assert_no_processes_left(&build).await;
}
