//! The Rust API other crates use: `start`, the handle's addresses and tokens, pipelines and
//! builds created in-process, job state / timeline / log, cancel, workloads, shutdown.

use updraft_emulator::workload::WorkloadRequest;
use updraft_emulator::{EmulatorConfig, JobState};

#[tokio::test]
async fn handle_creates_builds_and_reads_jobs() {
    let emulator = updraft_emulator::start(EmulatorConfig::default())
        .await
        .unwrap();
    assert!(emulator.url().starts_with("http://127.0.0.1:"));
    assert_eq!(emulator.agent_endpoint(), format!("{}/v3", emulator.url()));
    assert_eq!(emulator.rest_endpoint(), format!("{}/v2", emulator.url()));
    assert_eq!(emulator.org(), "acme");
    assert!(emulator.agent_token().expose().starts_with("bkct_"));
    assert!(emulator.api_token().expose().starts_with("bkua_"));
    assert!(!format!("{:?}", emulator.agent_token()).contains(emulator.agent_token().expose()));

    emulator
        .create_pipeline("p", "steps:\n  - command: a\n  - wait\n  - command: b\n")
        .unwrap();
    assert!(
        emulator.create_pipeline("p", "steps: [wait]").is_err(),
        "slugs are unique"
    );
    let error = emulator
        .create_pipeline("bad", "steps:\n  - comand: a\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("steps[0]"), "{error}");
    let build = emulator.create_build("p").unwrap();
    assert_eq!(build.number, 1);
    assert_eq!(build.job_ids.len(), 3);
    assert_eq!(
        emulator.job_state(build.job_ids[0]),
        Some(JobState::Scheduled)
    );
    assert_eq!(
        emulator.job_state(build.job_ids[2]),
        Some(JobState::Waiting)
    );
    assert_eq!(
        emulator.cancel_job(build.job_ids[0]).unwrap(),
        JobState::Canceled
    );
    assert_eq!(
        emulator.job_state(build.job_ids[2]),
        Some(JobState::WaitingFailed)
    );
    assert_eq!(emulator.job_log(build.job_ids[0]), Some(Vec::new()));
    let timeline = emulator.job_timeline(build.job_ids[0]).unwrap();
    assert_eq!(timeline["history"].as_array().unwrap().len(), 3);
    assert!(emulator.create_build("missing").is_err());

    let started = emulator
        .start_workload(WorkloadRequest {
            pipeline: Some("p".into()),
            offsets_ms: Some(vec![0, 0, 30]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(started.created.len(), 2);
    assert_eq!(started.pending, 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn serves_once_started_and_stops_on_shutdown() {
    let emulator = updraft_emulator::start(EmulatorConfig::default())
        .await
        .unwrap();
    let url = emulator.url();
    let client = reqwest::Client::new();
    assert!(client.get(&url).send().await.unwrap().status().is_success());
    emulator.shutdown().await;
    assert!(
        client.get(&url).send().await.is_err(),
        "nothing serves after shutdown"
    );
}
