//! The scheduler end to end against the in-process emulator, with `AgentBackend` launches
//! that really register with their job acquisition token, acquire, run and finish jobs over
//! HTTP. Each test asserts on the emulator's own records (states, acquire counts,
//! notifications) and on the backend's launch book.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::{acquires, config_text, emulator, wait_until, AgentBackend};
use updraft_backends::{Backend, LaunchName};
use updraft_buildkite::stacks::{RegisterStack, StacksClient};
use updraft_emulator::{
    ApiFaults, EmulatorHandle, PushFaults, PushTargets, RateLimitConfig, WebhookAuth, WebhookTarget,
};
use updraft_model::{JobState, Secret};
use updraft_scheduler::ledger::{Ledger, NewReservation};
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

const THREE_FLEETS: &str = r#"
[[fleet]]
name = "linux"
queue = "linux"
max_in_flight = 8

[[fleet]]
name = "linux-docker"
queue = "linux"
tags = ["docker=true"]
max_in_flight = 4

[[fleet]]
name = "mac"
queue = "mac"
max_in_flight = 3
"#;

/// `count` command steps spread over queue linux (some needing docker) and queue mac.
fn pipeline_yaml(count: usize) -> String {
    let mut yaml = String::from("steps:\n");
    for i in 0..count {
        let agents = match i % 3 {
            0 => "{queue: linux}",
            1 => "{queue: linux, docker: \"true\"}",
            _ => "{queue: mac}",
        };
        yaml.push_str(&format!(
            "  - command: \"echo {i}\"\n    key: \"s{i}\"\n    agents: {agents}\n"
        ));
    }
    yaml
}

fn backends(backend: &AgentBackend) -> BTreeMap<String, Arc<dyn Backend>> {
    [(
        "local".to_string(),
        Arc::new(backend.clone()) as Arc<dyn Backend>,
    )]
    .into_iter()
    .collect()
}

async fn start(
    emulator: &EmulatorHandle,
    dir: &std::path::Path,
    backend: &AgentBackend,
    extra: &str,
) -> SchedulerHandle {
    let config =
        Config::parse(&config_text(emulator, dir, THREE_FLEETS, extra)).expect("config parses");
    Scheduler::start(config, backends(backend))
        .await
        .expect("scheduler starts")
}

fn command_jobs(emulator: &EmulatorHandle, jobs: &[Uuid]) -> Vec<Uuid> {
    jobs.iter()
        .copied()
        .filter(|j| {
            emulator
                .job_timeline(*j)
                .is_some_and(|t| t["type"] == "script")
        })
        .collect()
}

fn all_in(emulator: &EmulatorHandle, jobs: &[Uuid], state: JobState) -> bool {
    jobs.iter().all(|j| emulator.job_state(*j) == Some(state))
}

/// A pipeline of `steps` command steps (see `pipeline_yaml`) and `builds` builds of it; the
/// command jobs they made.
fn create_builds(emulator: &EmulatorHandle, slug: &str, steps: usize, builds: usize) -> Vec<Uuid> {
    emulator
        .create_pipeline(slug, &pipeline_yaml(steps))
        .unwrap();
    let mut jobs = Vec::new();
    for _ in 0..builds {
        jobs.extend(emulator.create_build(slug).unwrap().job_ids);
    }
    command_jobs(emulator, &jobs)
}

/// Wait until every job passed, then check each was launched and acquired exactly once.
async fn expect_each_passed_once(emulator: &EmulatorHandle, backend: &AgentBackend, jobs: &[Uuid]) {
    wait_until(LIMIT, "every job passed", || {
        all_in(emulator, jobs, JobState::Passed)
    })
    .await;
    assert_one_launch_and_acquire_each(emulator, backend, jobs);
}

fn assert_one_launch_and_acquire_each(
    emulator: &EmulatorHandle,
    backend: &AgentBackend,
    jobs: &[Uuid],
) {
    let started = backend.launches_started();
    for job in jobs {
        assert_eq!(
            acquires(emulator, *job),
            1,
            "job {job} acquired more than once: {:#}",
            emulator.job_timeline(*job).unwrap_or_default()
        );
        assert_eq!(
            started.get(&LaunchName::for_job(*job)),
            Some(&1),
            "job {job} launches"
        );
    }
    assert_eq!(
        started.len(),
        jobs.len(),
        "launches for jobs that were not asked for"
    );
    assert!(
        backend.errors().is_empty(),
        "agent errors: {:?}",
        backend.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_across_fleets_and_queues_are_each_acquired_once() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(200)));
    let jobs = create_builds(&emulator, "many", 30, 3);
    assert_eq!(jobs.len(), 90);
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    wait_until(LIMIT, "every slot freed", || {
        scheduler.stats().in_flight == 0
    })
    .await;
    let stats = scheduler.stats();
    assert_eq!(stats.launched, 90);
    assert_eq!(stats.closed, 90);
    assert!(stats
        .pickups
        .iter()
        .all(|p| p.source == updraft_scheduler::Source::Pull));
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_many_pages_is_launched_once_each() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::ZERO));
    let yaml = "steps:\n  - command: \"true\"\n    agents: {queue: linux}\n    parallelism: 200\n  - command: \"true\"\n    agents: {queue: mac}\n    parallelism: 100\n";
    emulator.create_pipeline("burst", yaml).unwrap();
    let jobs = command_jobs(&emulator, &emulator.create_build("burst").unwrap().job_ids);
    assert_eq!(jobs.len(), 300);
    let fleets = "[[fleet]]\nname = \"linux\"\nqueue = \"linux\"\nmax_in_flight = 400\n\n[[fleet]]\nname = \"mac\"\nqueue = \"mac\"\nmax_in_flight = 100\n";
    let text = config_text(&emulator, dir.path(), fleets, "").replace(
        "poll_interval_ms = 1000",
        "poll_interval_ms = 1000\npage_limit = 40",
    );
    let scheduler = Scheduler::start(Config::parse(&text).unwrap(), backends(&backend))
        .await
        .unwrap();
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkites_rate_limits_slow_the_scheduler_down_without_losing_a_job() {
    let emulator = emulator().await;
    emulator.set_rate_limits(RateLimitConfig::reference());
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(50)));
    let scheduler = start(&emulator, dir.path(), &backend, PUSH).await;
    push_to(&emulator, &scheduler, "hook-secret");
    let jobs = create_builds(&emulator, "limited", 30, 2);
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_throttled_requests_are_retried_without_running_a_job_twice() {
    let emulator = emulator().await;
    emulator.set_api_faults(ApiFaults {
        fraction: 0.1,
        seed: 7,
    });
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(50)));
    let scheduler = start(&emulator, dir.path(), &backend, PUSH).await;
    push_to(&emulator, &scheduler, "hook-secret");
    let jobs = create_builds(&emulator, "faulty", 30, 1);
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    scheduler.shutdown().await.unwrap();
}

/// Signed webhooks from the emulator to the scheduler's push receiver.
fn signed_webhooks(scheduler: &SchedulerHandle, token: &str) -> PushTargets {
    PushTargets {
        webhook: Some(WebhookTarget {
            url: format!("http://{}/webhooks/buildkite", scheduler.push_addr()),
            auth: WebhookAuth::Signature(Secret::new(token)),
        }),
        eventbridge_url: None,
    }
}

fn push_to(emulator: &EmulatorHandle, scheduler: &SchedulerHandle, token: &str) {
    emulator.set_push_targets(signed_webhooks(scheduler, token));
}

const PUSH: &str = "[push]\nwebhook_token = \"hook-secret\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_together_never_launch_a_job_twice() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(100)));
    let scheduler = start(&emulator, dir.path(), &backend, PUSH).await;
    push_to(&emulator, &scheduler, "hook-secret");
    emulator.set_push_faults(PushFaults {
        duplicate_fraction: 0.5,
        ..PushFaults::default()
    });
    let jobs = create_builds(&emulator, "both", 12, 3);
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    scheduler.shutdown().await.unwrap();
}

/// Start with pull effectively off (its only poll runs at start-up, before any job exists),
/// point the emulator's push at the scheduler, and check every job comes in by push.
async fn push_alone_launches_every_job(
    extra: &str,
    targets: impl Fn(&SchedulerHandle) -> PushTargets,
) {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(100)));
    let text = config_text(&emulator, dir.path(), THREE_FLEETS, extra);
    let env = vec![(
        "UPDRAFT_BUILDKITE_POLL_INTERVAL_MS".to_string(),
        "3600000".to_string(),
    )];
    let config = Config::parse_with_env(&text, env).unwrap();
    let scheduler = Scheduler::start(config, backends(&backend)).await.unwrap();
    emulator.set_push_targets(targets(&scheduler));
    let jobs = create_builds(&emulator, "push", 9, 1);
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    let stats = scheduler.stats();
    assert_eq!(stats.pickups.len(), jobs.len());
    assert!(stats
        .pickups
        .iter()
        .all(|p| p.source == updraft_scheduler::Source::Push));
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_alone_launch_every_job() {
    push_alone_launches_every_job(PUSH, |scheduler| signed_webhooks(scheduler, "hook-secret"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_events_alone_launch_every_job() {
    push_alone_launches_every_job("[push]\nallow_unsigned_eventbridge = true\n", |scheduler| {
        PushTargets {
            webhook: None,
            eventbridge_url: Some(format!(
                "http://{}/events/eventbridge",
                scheduler.push_addr()
            )),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_push_is_dropped_pull_still_runs_everything() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(100)));
    let scheduler = start(&emulator, dir.path(), &backend, PUSH).await;
    push_to(&emulator, &scheduler, "hook-secret");
    emulator.set_push_faults(PushFaults {
        drop_fraction: 1.0,
        ..PushFaults::default()
    });
    let jobs = create_builds(&emulator, "dropped", 9, 1);
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    assert!(scheduler
        .stats()
        .pickups
        .iter()
        .all(|p| p.source == updraft_scheduler::Source::Pull));
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_job_stops_its_launch() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(None).ignoring_cancellation();
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    emulator
        .create_pipeline(
            "cancel",
            "steps:\n  - command: \"sleep 600\"\n    agents: {queue: mac}\n",
        )
        .unwrap();
    let job = command_jobs(&emulator, &emulator.create_build("cancel").unwrap().job_ids)[0];
    wait_until(LIMIT, "the job running", || {
        emulator.job_state(job) == Some(JobState::Running)
    })
    .await;
    emulator.cancel_job(job).unwrap();
    wait_until(LIMIT, "a stop for the launch", || {
        backend.stops().contains(&LaunchName::for_job(job))
    })
    .await;
    wait_until(LIMIT, "the job canceled", || {
        emulator.job_state(job) == Some(JobState::Canceled)
    })
    .await;
    wait_until(LIMIT, "the launch deleted", || backend.live() == 0).await;
    assert_eq!(acquires(&emulator, job), 1);
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_ledger_converges_without_a_second_launch() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(1500)));
    let jobs = create_builds(&emulator, "restart", 24, 1);
    let first = start(&emulator, dir.path(), &backend, "").await;
    wait_until(LIMIT, "some launches", || first.stats().launched >= 5).await;
    first.shutdown().await.unwrap();
    let second = start(&emulator, dir.path(), &backend, "").await;
    expect_each_passed_once(&emulator, &backend, &jobs).await;
    wait_until(LIMIT, "finished launches deleted", || backend.live() == 0).await;
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_reserved_before_a_crash_are_launched_on_start_up() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(100)));
    emulator
        .create_pipeline(
            "crash",
            "steps:\n  - command: \"true\"\n    agents: {queue: mac}\n    parallelism: 2\n",
        )
        .unwrap();
    let jobs = command_jobs(&emulator, &emulator.create_build("crash").unwrap().job_ids);
    let [reserved, not_yet] = [jobs[0], jobs[1]];
    // A previous process wrote both jobs to the ledger, then died: one reserve call landed,
    // the other never did.
    let stacks = StacksClient::new(
        &emulator.agent_endpoint(),
        &emulator.agent_token(),
        "test-mac",
        Default::default(),
    )
    .unwrap();
    stacks
        .register(&RegisterStack {
            key: "test-mac".into(),
            stack_type: "custom".into(),
            queue_key: "mac".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(
        stacks
            .batch_reserve(&[reserved], None)
            .await
            .unwrap()
            .reserved,
        vec![reserved]
    );
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
    let row = |id| NewReservation {
        id,
        fleet: "mac".into(),
        queue: "mac".into(),
        priority: 0,
        scheduled_at_ms: 0,
        source: "pull",
        expires_at_ms: 0,
        context: Default::default(),
    };
    ledger
        .record_reserved(&[row(reserved), row(not_yet)])
        .unwrap();
    drop(ledger);
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    wait_until(LIMIT, "both jobs passed", || {
        all_in(&emulator, &jobs, JobState::Passed)
    })
    .await;
    assert_one_launch_and_acquire_each(&emulator, &backend, &jobs);
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_fleet_serves_is_told_why_and_shown_on_the_status_page() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(Some(Duration::from_millis(100)));
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    emulator
        .create_pipeline(
            "arm",
            "steps:\n  - command: \"uname -m\"\n    agents: {queue: linux, arch: arm64}\n",
        )
        .unwrap();
    let job = command_jobs(&emulator, &emulator.create_build("arm").unwrap().job_ids)[0];
    let reason = "no fleet on queue=linux has arch=arm64";
    wait_until(LIMIT, "the notification", || {
        emulator
            .job_timeline(job)
            .is_some_and(|t| t["notifications"].to_string().contains(reason))
    })
    .await;
    let page = reqwest::get(format!("http://{}/status", scheduler.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(reason), "{page}");
    assert!(!page.contains(emulator.agent_token().expose()));
    let metrics = reqwest::get(format!("http://{}/metrics", scheduler.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("updraft_jobs_seen_total"), "{metrics}");
    assert!(
        metrics.contains("updraft_reconcile_passes_total"),
        "{metrics}"
    );
    assert_eq!(emulator.job_state(job), Some(JobState::Scheduled));
    assert!(backend.launches_started().is_empty());
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_jobs_back_and_says_so() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(None);
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    let yaml = "steps:\n".to_string()
        + &"  - command: \"sleep 600\"\n    agents: {queue: mac}\n".repeat(5);
    emulator.create_pipeline("held", &yaml).unwrap();
    let jobs = command_jobs(&emulator, &emulator.create_build("held").unwrap().job_ids);
    wait_until(LIMIT, "three running", || {
        jobs.iter()
            .filter(|j| emulator.job_state(**j) == Some(JobState::Running))
            .count()
            == 3
    })
    .await;
    let reason = "fleet mac at max_in_flight 3/3";
    wait_until(LIMIT, "the held jobs told why", || {
        jobs.iter()
            .filter(|j| {
                emulator
                    .job_timeline(**j)
                    .is_some_and(|t| t["notifications"].to_string().contains(reason))
            })
            .count()
            == 2
    })
    .await;
    assert_eq!(backend.launches_started().len(), 3);
    for job in &jobs {
        let _ = emulator.cancel_job(*job);
    }
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_agent_token_stops_start_up_with_a_clear_error() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&emulator, dir.path(), THREE_FLEETS, "")
        .replace(emulator.agent_token().expose(), "bkct_wrong");
    let config = Config::parse(&text).unwrap();
    let error = Scheduler::start(config, backends(&AgentBackend::new(None)))
        .await
        .err()
        .expect("start fails");
    let message = format!("{error:#}");
    assert!(
        message.contains("401") && message.contains("agent_token"),
        "{message}"
    );
    assert!(!message.contains("bkct_wrong"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_requests_with_a_bad_signature_are_refused() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = start(&emulator, dir.path(), &AgentBackend::new(None), PUSH).await;
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/webhooks/buildkite",
            scheduler.push_addr()
        ))
        .header("X-Buildkite-Event", "job.scheduled")
        .header("X-Buildkite-Token", "not-the-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // A push delivery's connection is not kept idle (a burst would hold thousands open).
    assert_eq!(
        response.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert!(response.text().await.unwrap().contains("does not match"));
    scheduler.shutdown().await.unwrap();
}

#[tokio::test]
async fn plan_names_the_fleet_for_each_scheduled_job_and_the_queues_no_fleet_serves() {
    let emulator = emulator().await;
    emulator
        .create_pipeline(
            "plan",
            "steps:\n  - command: a\n    agents: {queue: linux}\n  - command: b\n    agents: {queue: linux, docker: \"true\"}\n  - command: c\n    agents: {queue: linux, arch: arm64}\n  - command: d\n    agents: {queue: gpu}\n",
        )
        .unwrap();
    let build = emulator.create_build("plan").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&config_text(&emulator, dir.path(), THREE_FLEETS, "")).unwrap();

    let plan = updraft_scheduler::plan(&config).await.unwrap();

    let decision = |job: Uuid| {
        plan.jobs
            .iter()
            .find(|planned| planned.id == job)
            .map(|planned| planned.decision.clone())
    };
    assert_eq!(decision(build.job_ids[0]), Some(Ok("linux".to_string())));
    assert_eq!(
        decision(build.job_ids[1]),
        Some(Ok("linux-docker".to_string()))
    );
    assert_eq!(
        decision(build.job_ids[2]),
        Some(Err("no fleet on queue=linux has arch=arm64".to_string()))
    );
    assert_eq!(
        decision(build.job_ids[3]),
        None,
        "gpu jobs are not listed to our stacks"
    );
    assert_eq!(plan.unserved_queues, vec![("gpu".to_string(), 1)]);
    let printed = plan.to_string();
    assert!(
        printed.contains("queue gpu: 1 scheduled job(s) ✗ no fleet serves queue=gpu"),
        "{printed}"
    );
    for job in &build.job_ids {
        assert_eq!(
            emulator.job_state(*job),
            Some(JobState::Scheduled),
            "plan must not reserve or launch"
        );
    }
}

/// A backend that refuses every launch as invalid, counting the attempts.
#[derive(Clone, Default)]
struct RefusingBackend {
    launches: Arc<std::sync::atomic::AtomicU32>,
}

#[async_trait::async_trait]
impl Backend for RefusingBackend {
    fn kind(&self) -> &'static str {
        "refusing"
    }

    async fn launch(
        &self,
        spec: &updraft_backends::LaunchSpec,
    ) -> Result<updraft_backends::LaunchOutcome, updraft_backends::BackendError> {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(updraft_backends::BackendError::Invalid {
            backend: "refusing",
            name: spec.name.to_string(),
            detail: "image evil:latest is not in the fleet's allowed images".into(),
        })
    }

    async fn stop(&self, _: &LaunchName) -> Result<(), updraft_backends::BackendError> {
        Ok(())
    }

    async fn list(
        &self,
    ) -> Result<Vec<updraft_backends::LaunchStatus>, updraft_backends::BackendError> {
        Ok(Vec::new())
    }

    async fn delete(&self, _: &LaunchName) -> Result<(), updraft_backends::BackendError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_the_backend_refuses_fails_its_job_once_with_the_reason_and_is_never_retried() {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = RefusingBackend::default();
    let text = config_text(&emulator, dir.path(), THREE_FLEETS, "");
    let config = Config::parse(&text).unwrap();
    let backends: BTreeMap<String, Arc<dyn Backend>> = [(
        "local".to_string(),
        Arc::new(backend.clone()) as Arc<dyn Backend>,
    )]
    .into();
    let scheduler = Scheduler::start(config, backends).await.unwrap();
    emulator
        .create_pipeline(
            "bad",
            "steps:\n  - command: \"true\"\n    agents: {queue: mac}\n",
        )
        .unwrap();
    let job = command_jobs(&emulator, &emulator.create_build("bad").unwrap().job_ids)[0];
    wait_until(LIMIT, "the job failed", || {
        emulator.job_state(job) == Some(JobState::Failed)
    })
    .await;
    let timeline = emulator.job_timeline(job).unwrap();
    assert_eq!(
        timeline["stack_finish_detail"], "image evil:latest is not in the fleet's allowed images",
        "{timeline:#}"
    );
    // Several reconcile passes later, still one launch attempt.
    for _ in 0..5 {
        scheduler.reconcile_now();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        backend.launches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(acquires(&emulator, job), 0);
    let metrics = reqwest::get(format!("http://{}/metrics", scheduler.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "updraft_backend_failures_total{backend=\"refusing\",call=\"launch\",kind=\"invalid\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("updraft_jobs_failed_by_scheduler_total 1"),
        "{metrics}"
    );
    scheduler.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_that_dies_mid_job_is_explained_and_left_to_buildkite_to_fail() {
    let emulator = emulator().await;
    emulator.set_agent_lost_after(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let backend = AgentBackend::new(None);
    let scheduler = start(&emulator, dir.path(), &backend, "").await;
    emulator
        .create_pipeline(
            "long",
            "steps:\n  - command: \"sleep 600\"\n    agents: {queue: mac}\n",
        )
        .unwrap();
    let job = command_jobs(&emulator, &emulator.create_build("long").unwrap().job_ids)[0];
    wait_until(LIMIT, "the job running", || {
        emulator.job_state(job) == Some(JobState::Running)
    })
    .await;
    backend.crash(job);
    let waiting = "Buildkite will fail the job once it marks the agent lost";
    wait_until(LIMIT, "the notification about the lost agent", || {
        emulator
            .job_timeline(job)
            .is_some_and(|t| t["notifications"].to_string().contains(waiting))
    })
    .await;
    let status = reqwest::get(format!("http://{}/status", scheduler.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.contains("Jobs waiting on a lost agent (1)"),
        "{status}"
    );
    assert!(status.contains(&job.to_string()), "{status}");
    let metrics = reqwest::get(format!("http://{}/metrics", scheduler.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("updraft_agents_lost_total 1"), "{metrics}");
    assert!(
        metrics.contains("updraft_jobs_waiting_on_lost_agent 1"),
        "{metrics}"
    );
    // Buildkite, not the scheduler, ends the job.
    wait_until(LIMIT, "Buildkite failing the job", || {
        emulator.job_state(job).is_some_and(|s| s.is_terminal())
    })
    .await;
    let timeline = emulator.job_timeline(job).unwrap();
    assert!(timeline["stack_finish_detail"].is_null(), "{timeline:#}");
    assert_eq!(acquires(&emulator, job), 1);
    scheduler.shutdown().await.unwrap();
}
