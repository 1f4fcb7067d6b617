//! Helpers for the agent's tests against the in-process emulator: start one, add a pipeline,
//! an agent config with fast retries and a temporary build path, and a job acquired by hand
//! for tests that drive the runner or relay executor directly.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use updraft_agent::AgentConfig;
use updraft_buildkite::agent_api::{register, AgentRetries, Job, JobClient, RegisterRequest};
use updraft_buildkite::ClientOptions;
use updraft_emulator::{EmulatorConfig, EmulatorHandle};
use uuid::Uuid;

pub async fn emulator() -> EmulatorHandle {
    updraft_emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts")
}

/// A pipeline with one command step per entry, no checkout.
pub fn pipeline(emulator: &EmulatorHandle, slug: &str, commands: &[&str]) {
    let mut yaml = String::from("env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n");
    for command in commands {
        yaml.push_str(&format!(
            "  - command: {}\n",
            serde_json::to_string(command).unwrap()
        ));
    }
    emulator
        .create_pipeline(slug, &yaml)
        .expect("pipeline is created");
}

/// Build `slug` once and return its (command) job ids.
pub fn build(emulator: &EmulatorHandle, slug: &str) -> Vec<Uuid> {
    emulator
        .create_build(slug)
        .expect("build is created")
        .job_ids
}

pub fn agent_config(emulator: &EmulatorHandle, build_path: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(
        &emulator.agent_endpoint(),
        emulator.agent_token(),
        build_path.to_path_buf(),
    );
    config.retries = AgentRetries::fast();
    config.cancel_grace_period = Duration::from_secs(2);
    config.output_drain_timeout = Duration::from_millis(500);
    config
}

pub fn one_shot(emulator: &EmulatorHandle, build_path: &Path, job: Uuid) -> AgentConfig {
    let mut config = agent_config(emulator, build_path);
    config.acquire_job = Some(job.to_string());
    config
}

/// Wait (up to `limit`) until `check` holds.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Register an agent, connect, acquire `job` and return its job client and Job JSON.
pub async fn acquire(emulator: &EmulatorHandle, job: Uuid) -> (JobClient, Job) {
    let request = RegisterRequest {
        name: "by-hand".into(),
        ignore_in_dispatches: true,
        meta_data: vec!["queue=default".into()],
        ..RegisterRequest::default()
    };
    let (_, session) = register(
        &emulator.agent_endpoint(),
        &emulator.agent_token(),
        &request,
        ClientOptions::default(),
        AgentRetries::fast(),
    )
    .await
    .unwrap();
    session.connect().await.unwrap();
    let acquired = session.acquire(&job.to_string()).await.unwrap();
    (session.job_client(&acquired).unwrap(), acquired)
}
