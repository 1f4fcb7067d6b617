//! Cancellation (SIGTERM to the process group, SIGKILL after the grace period, finish with
//! the signal and `signal_reason`), agent shutdown, and pool mode (ping, accept one job at a
//! time, idle timeout, disconnect-after-job).

mod common;

use common::{agent_config, build, emulator, eventually, one_shot, pipeline};
use std::time::{Duration, Instant};
use updraft_agent::{run_agent, Shutdown};
use updraft_emulator::JobState;

#[tokio::test]
async fn a_cancelled_job_is_stopped_and_finished_as_canceled() {
    let emulator = emulator().await;
    pipeline(&emulator, "slow", &["echo started; sleep 30; echo never"]);
    let job = build(&emulator, "slow")[0];
    let builds = tempfile::tempdir().unwrap();
    let agent = tokio::spawn(run_agent(
        one_shot(&emulator, builds.path(), job),
        Shutdown::default(),
    ));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| l == b"started\n"))
        .await
    );
    let cancelled_at = Instant::now();
    emulator.cancel_job(job).unwrap();
    let run = agent.await.unwrap().unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cancelled_at.elapsed()
    );
    let report = &run.jobs[0];
    assert_eq!(report.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(report.signal_reason.as_deref(), Some("cancel"));
    assert_eq!(emulator.job_state(job), Some(JobState::Canceled));
    assert_eq!(emulator.job_log(job).unwrap(), b"started\n");
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "stubborn",
        &["trap '' TERM; echo ready; sleep 30"],
    );
    let job = build(&emulator, "stubborn")[0];
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.cancel_grace_period = Duration::from_millis(300);
    let agent = tokio::spawn(run_agent(config, Shutdown::default()));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| l == b"ready\n"))
        .await
    );
    emulator.cancel_job(job).unwrap();
    let run = agent.await.unwrap().unwrap();
    assert_eq!(run.jobs[0].signal.as_deref(), Some("SIGKILL"));
    assert_eq!(emulator.job_state(job), Some(JobState::Canceled));
}

#[tokio::test]
async fn an_immediate_shutdown_stops_the_job_with_agent_stop() {
    let emulator = emulator().await;
    pipeline(&emulator, "interrupted", &["echo going; sleep 30"]);
    let job = build(&emulator, "interrupted")[0];
    let builds = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::default();
    let agent = tokio::spawn(run_agent(
        one_shot(&emulator, builds.path(), job),
        shutdown.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| !l.is_empty()))
        .await
    );
    shutdown.immediate.cancel();
    let run = agent.await.unwrap().unwrap();
    assert_eq!(run.jobs[0].signal_reason.as_deref(), Some("agent_stop"));
    assert_eq!(run.jobs[0].exit_status, "-1");
}

#[tokio::test]
async fn a_pool_agent_runs_jobs_one_at_a_time_until_idle() {
    let emulator = emulator().await;
    pipeline(&emulator, "pool", &["echo one", "echo two", "echo three"]);
    let jobs = build(&emulator, "pool");
    let builds = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emulator, builds.path());
    config.disconnect_after_idle_timeout = Some(Duration::from_secs(2));
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(run.jobs.len(), 3);
    for (job, text) in jobs.iter().zip(["one\n", "two\n", "three\n"]) {
        assert_eq!(emulator.job_state(*job), Some(JobState::Passed));
        assert_eq!(emulator.job_log(*job).unwrap(), text.as_bytes());
    }
}

#[tokio::test]
async fn a_pool_agent_only_takes_jobs_matching_its_tags_and_stops_after_one_job() {
    let emulator = emulator().await;
    let yaml = "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: \"echo linux\"\n    agents:\n      queue: linux\n  - command: \"echo mac\"\n    agents:\n      queue: mac\n";
    emulator.create_pipeline("queues", yaml).unwrap();
    let jobs = build(&emulator, "queues");
    let builds = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emulator, builds.path());
    config.tags = vec!["queue=mac".into()];
    config.disconnect_after_job = true;
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(run.jobs.len(), 1);
    assert_eq!(emulator.job_log(jobs[1]).unwrap(), b"mac\n");
    assert_eq!(emulator.job_state(jobs[0]), Some(JobState::Scheduled));
}

#[tokio::test]
async fn a_paused_pool_agent_takes_no_jobs_and_does_not_idle_out_until_resumed() {
    let emulator = emulator().await;
    pipeline(&emulator, "paused", &["echo after resume"]);
    let rest = updraft_buildkite::rest::RestClient::new(
        &emulator.url(),
        &emulator.api_token(),
        &emulator.org(),
        updraft_buildkite::ClientOptions::default(),
    )
    .unwrap();
    let builds = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emulator, builds.path());
    config.disconnect_after_idle_timeout = Some(Duration::from_secs(2));
    let agent = tokio::spawn(run_agent(config, Shutdown::default()));
    let mut agent_id = None;
    while agent_id.is_none() {
        agent_id = rest
            .list_agents()
            .await
            .unwrap()
            .first()
            .map(|a| a.id.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agent_id = agent_id.unwrap();
    rest.pause_agent(&agent_id, Some("maintenance"), None)
        .await
        .unwrap();
    let job = build(&emulator, "paused")[0];
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.is_finished(),
        "a paused agent must not stop on the idle timeout"
    );
    assert_eq!(emulator.job_state(job), Some(JobState::Scheduled));
    rest.resume_agent(&agent_id).await.unwrap();
    let run = agent.await.unwrap().unwrap();
    assert_eq!(run.jobs.len(), 1);
    assert_eq!(emulator.job_log(job).unwrap(), b"after resume\n");
}
