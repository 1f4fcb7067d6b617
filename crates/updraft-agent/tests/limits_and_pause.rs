//! The job's `log_max_size_bytes` (output cut with one notice, the command never blocked),
//! and a one-shot agent that is paused while its job runs staying until it is resumed (or
//! stopped).

mod common;

use common::{acquire, build, emulator, eventually, one_shot, pipeline};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::task::JoinHandle;
use updraft_agent::runner::{run_local_job, RunnerConfig};
use updraft_agent::{run_agent, AgentError, AgentRun, Shutdown, StopSwitch};
use updraft_buildkite::rest::RestClient;
use updraft_buildkite::ClientOptions;
use updraft_emulator::{EmulatorHandle, JobState};
use uuid::Uuid;

#[tokio::test]
async fn output_past_log_max_size_bytes_is_cut_with_one_notice_and_the_command_finishes() {
    let emulator = emulator().await;
    // About 1.3 MB: far more than a pipe holds, so the command only ends if it is drained.
    let script = "seq 1 200000; echo finished >&2";
    pipeline(&emulator, "too-big", &[script]);
    let job_id = build(&emulator, "too-big")[0];
    let (client, mut job) = acquire(&emulator, job_id).await;
    job.log_max_size_bytes = 1000;
    let builds = tempfile::tempdir().unwrap();
    let config = RunnerConfig::new(builds.path().to_path_buf(), &emulator.agent_endpoint());
    let access_token = job.token.clone().unwrap();
    let report = run_local_job(
        &client,
        &job,
        &access_token,
        Duration::from_secs(1),
        &config,
        &StopSwitch::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.exit_status, "0");
    let full = Command::new("bash")
        .arg("-c")
        .arg("seq 1 200000")
        .output()
        .unwrap()
        .stdout;
    let mut expected = full[..1000].to_vec();
    if expected.last() != Some(&b'\n') {
        expected.push(b'\n');
    }
    expected.extend_from_slice(
        b"updraft agent: the output was truncated at 1000 bytes (the job's log_max_size_bytes); the rest was not uploaded\n",
    );
    let log = emulator.job_log(job_id).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(
        report.log.bytes_dropped,
        full.len() as u64 + b"finished\n".len() as u64 - 1000
    );
    assert_eq!(emulator.job_state(job_id), Some(JobState::Passed));
}

/// A one-shot agent whose job passed while the agent was paused; returns the running agent,
/// a REST client, the agent's id and the job.
async fn paused_after_its_job(
    emulator: &EmulatorHandle,
    builds: &Path,
    shutdown: Shutdown,
) -> (
    JoinHandle<Result<AgentRun, AgentError>>,
    RestClient,
    String,
    Uuid,
) {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("go");
    let script = format!(
        "echo started; while [ ! -e '{}' ]; do sleep 0.05; done; echo done",
        flag.display()
    );
    pipeline(emulator, "paused-one-shot", &[&script]);
    let job = build(emulator, "paused-one-shot")[0];
    let rest = RestClient::new(
        &emulator.url(),
        &emulator.api_token(),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap();
    let agent = tokio::spawn(run_agent(one_shot(emulator, builds, job), shutdown));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| l == b"started\n"))
        .await
    );
    let agents = rest.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    rest.pause_agent(&agents[0].id, Some("investigating"), None)
        .await
        .unwrap();
    std::fs::write(&flag, "").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || emulator.job_state(job)
            == Some(JobState::Passed))
        .await
    );
    // Several ping intervals (1 s plus up to 1 s of jitter in the emulator) go by.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.is_finished(),
        "a paused one-shot agent must wait to be resumed"
    );
    let agent_id = agents[0].id.clone();
    (agent, rest, agent_id, job)
}

#[tokio::test]
async fn a_one_shot_agent_paused_during_its_job_stays_until_resumed() {
    let emulator = emulator().await;
    let builds = tempfile::tempdir().unwrap();
    let (agent, rest, agent_id, job) =
        paused_after_its_job(&emulator, builds.path(), Shutdown::default()).await;
    rest.resume_agent(&agent_id).await.unwrap();
    let run = agent.await.unwrap().unwrap();
    assert_eq!(run.jobs.len(), 1);
    assert_eq!(emulator.job_log(job).unwrap(), b"started\ndone\n");
}

#[tokio::test]
async fn a_paused_one_shot_agent_still_stops_when_asked_to() {
    let emulator = emulator().await;
    let builds = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::default();
    let (agent, _, _, job) = paused_after_its_job(&emulator, builds.path(), shutdown.clone()).await;
    shutdown.graceful.cancel();
    let run = agent.await.unwrap().unwrap();
    assert_eq!(run.jobs[0].exit_status, "0");
    assert_eq!(emulator.job_state(job), Some(JobState::Passed));
}
