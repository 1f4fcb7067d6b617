//! The relay executor fed output from elsewhere, and agents running through injected API
//! faults (20 % of `/v3` requests answered 429 or 503).

mod common;

use common::{acquire, build, emulator, eventually, one_shot, pipeline};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use updraft_agent::{run_agent, CommandOutcome, RelayExecutor, Shutdown, StopReason};
use updraft_emulator::{ApiFaults, JobState};

#[tokio::test]
async fn relayed_output_and_exit_status_reach_the_job() {
    let emulator = emulator().await;
    pipeline(&emulator, "relay", &["run elsewhere"]);
    let job = build(&emulator, "relay")[0];
    let (client, acquired) = acquire(&emulator, job).await;
    let executor = RelayExecutor::new(
        client,
        &acquired,
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut sandbox, output) = tokio::io::duplex(8 * 1024);
    let expected: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let written = expected.clone();
    let command = async move {
        sandbox.write_all(&written).await.unwrap();
        drop(sandbox);
        CommandOutcome::Exited(7)
    };
    let report = executor.run(output, command).await.unwrap();
    assert_eq!(report.exit_status, "7");
    assert_eq!(emulator.job_log(job).unwrap(), expected);
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
}

#[tokio::test]
async fn a_relayed_command_is_told_to_stop_when_the_job_is_cancelled() {
    let emulator = emulator().await;
    pipeline(&emulator, "relay-cancel", &["run elsewhere"]);
    let job = build(&emulator, "relay-cancel")[0];
    let (client, acquired) = acquire(&emulator, job).await;
    let executor = RelayExecutor::new(
        client,
        &acquired,
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    let stop = executor.stop_switch();
    let (sandbox, output) = tokio::io::duplex(1024);
    let command = async move {
        let reason = stop.requested().await;
        assert_eq!(reason, StopReason::Cancel);
        drop(sandbox);
        CommandOutcome::Signaled("SIGTERM".into())
    };
    let run = tokio::spawn(executor.run(output, command));
    assert!(
        eventually(Duration::from_secs(5), || emulator.job_state(job)
            == Some(JobState::Running))
        .await
    );
    emulator.cancel_job(job).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.signal_reason.as_deref(), Some("cancel"));
    assert_eq!(emulator.job_state(job), Some(JobState::Canceled));
}

#[tokio::test]
async fn a_relayed_command_that_ignores_the_stop_is_finished_after_the_grace_period() {
    let emulator = emulator().await;
    pipeline(&emulator, "relay-stuck", &["run elsewhere"]);
    let job = build(&emulator, "relay-stuck")[0];
    let (client, acquired) = acquire(&emulator, job).await;
    let executor = RelayExecutor::new(
        client,
        &acquired,
        Duration::from_secs(1),
        Duration::from_millis(200),
    );
    let (_sandbox, output) = tokio::io::duplex(1024);
    let run = tokio::spawn(executor.run(output, std::future::pending::<CommandOutcome>()));
    assert!(
        eventually(Duration::from_secs(5), || emulator.job_state(job)
            == Some(JobState::Running))
        .await
    );
    emulator.cancel_job(job).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.signal.as_deref(), Some("SIGKILL"));
    assert_eq!(emulator.job_state(job), Some(JobState::Canceled));
}

#[tokio::test]
async fn jobs_finish_with_exact_logs_when_a_fifth_of_requests_fail() {
    let emulator = emulator().await;
    let script = "for i in $(seq 1 20000); do echo \"line $i of the log\"; done";
    pipeline(&emulator, "faulty", &[script, script, script, script]);
    let jobs = build(&emulator, "faulty");
    emulator.set_api_faults(ApiFaults {
        fraction: 0.2,
        seed: 42,
    });
    let builds = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for job in &jobs {
        let mut config = one_shot(&emulator, builds.path(), *job);
        config.retries.job_call.deadline = Duration::from_secs(120);
        agents.push(tokio::spawn(run_agent(config, Shutdown::default())));
    }
    let expected: Vec<u8> = (1..=20000)
        .flat_map(|i| format!("line {i} of the log\n").into_bytes())
        .collect();
    let mut chunks_sent = Vec::new();
    for agent in agents {
        let run = agent.await.unwrap().unwrap();
        assert_eq!(run.jobs[0].log.chunks_failed, 0);
        chunks_sent.push(run.jobs[0].log.chunks);
    }
    emulator.set_api_faults(ApiFaults {
        fraction: 0.0,
        seed: 1,
    });
    for (job, sent) in jobs.into_iter().zip(chunks_sent) {
        assert_eq!(emulator.job_state(job), Some(JobState::Passed));
        assert_eq!(emulator.job_log(job).unwrap(), expected, "log of {job}");
        let timeline = emulator.job_timeline(job).unwrap();
        assert_eq!(timeline["chunks_failed_count"], 0);
        // Every chunk was stored exactly once: faulted uploads were retried, none doubled.
        assert_eq!(timeline["log_chunks_received"], sent, "chunks of {job}");
    }
}
