//! Relay mode on CodeBuild against the stand-in, moto's CloudWatch Logs and the emulator:
//! the backend acquires the job itself, the build runs only the command with no Buildkite
//! credential, its log arrives byte for byte in the job log, the job ends with the command's
//! exit status, a relay killed mid-stream is resumed by a new backend with no byte lost or
//! repeated, and a cancel stops the build and ends the job.

use crate::support::{codebuild_fleet, eventually, finished, World};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::CodeBuildBackend;
use updraft_backends::{Backend, BackendError, LaunchPhase};
use updraft_emulator::JobState;

async fn open(world: &World) -> CodeBuildBackend {
    let fleets: BTreeMap<_, _> = [("cb".to_string(), codebuild_fleet("ci", "relay"))].into();
    CodeBuildBackend::codebuild(
        &world.clients,
        &world.settings,
        fleets,
        world.options(),
        AwsMetrics::default(),
    )
    .await
    .expect("open the CodeBuild backend")
}

/// A shell command printing `lines` numbered lines of about `width` bytes, `pause` seconds
/// apart every `every` lines, ending without a newline, then exiting with `status`.
fn printer(lines: u32, width: usize, every: u32, pause: &str, status: i32) -> (String, Vec<u8>) {
    let pad = "x".repeat(width);
    let command = format!(
        "i=0; while [ $i -lt {lines} ]; do echo \"line $i {pad}\"; i=$((i+1)); if [ $((i % {every})) -eq 0 ]; then sleep {pause}; fi; done; printf 'the end'; exit {status}"
    );
    let mut expected = Vec::new();
    for i in 0..lines {
        expected.extend_from_slice(format!("line {i} {pad}\n").as_bytes());
    }
    expected.extend_from_slice(b"the end");
    (command, expected)
}

fn timeline(world: &World, job: uuid::Uuid) -> serde_json::Value {
    world.emulator.job_timeline(job).expect("the job exists")
}

#[tokio::test]
async fn the_log_arrives_byte_identical_and_the_job_ends_with_the_commands_exit_status() {
    let world = World::start().await;
    world.create_project("ci").await;
    let (command, expected) = printer(20_000, 100, 5_000, "0", 3);
    let jobs = world.build(
        "relay",
        "cb-queue",
        &command,
        &[("PIPELINE_SETTING", "kept")],
        1,
    );
    let spec = world
        .specs("cb-queue", "cb", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let token = spec.secrets["BUILDKITE_AGENT_TOKEN"].expose().to_string();
    let backend = open(&world).await;
    backend.launch(&spec).await.expect("launch");
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);

    assert_eq!(world.emulator.job_state(jobs[0]), Some(JobState::Failed));
    let log = world.emulator.job_log(jobs[0]).unwrap();
    assert_eq!(log.len(), expected.len());
    assert!(
        log == expected,
        "the job log differs from the command's output"
    );
    let timeline = timeline(&world, jobs[0]);
    assert_eq!(timeline["exit_status"], 3, "{timeline:#}");
    assert_eq!(timeline["acquires"], 1);

    let builds = world.bed.builds();
    assert_eq!(builds.len(), 1);
    let variables = builds[0]["environment"]["environmentVariables"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        names.contains(&"PIPELINE_SETTING") && names.contains(&"UPDRAFT_COMMAND"),
        "{names:?}"
    );
    for variable in &variables {
        let value = variable["value"].as_str().unwrap_or_default();
        assert!(
            !value.contains(&token)
                && !value.contains("bkaa_")
                && !value.contains("bkaj_")
                && !value.contains("bkjat_"),
            "a Buildkite credential in the build's {}",
            variable["name"]
        );
        assert_ne!(variable["name"], "BUILDKITE_AGENT_ACCESS_TOKEN");
    }
    for request in world.bed.codebuild_requests() {
        assert!(
            !request.contains("bkaa_") && !request.contains("bkaj_") && !request.contains(&token)
        );
    }
}

#[tokio::test]
async fn a_relay_killed_mid_stream_is_resumed_with_no_byte_lost_or_repeated() {
    let world = World::start().await;
    world.create_project("ci").await;
    let (command, expected) = printer(60_000, 60, 2_000, "0.1", 0);
    let jobs = world.build("resume", "cb-queue", &command, &[], 1);
    let spec = world
        .specs("cb-queue", "cb", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let mut backend = open(&world).await;
    backend.launch(&spec).await.expect("launch");
    for kill in 1..=3u64 {
        eventually("more of the log to arrive", || async {
            world.emulator.job_log(jobs[0]).unwrap_or_default().len() as u64
                > kill * expected.len() as u64 / 5
        })
        .await;
        backend.abandon_relays();
        backend = open(&world).await;
    }
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);
    assert_eq!(world.emulator.job_state(jobs[0]), Some(JobState::Passed));
    let log = world.emulator.job_log(jobs[0]).unwrap();
    assert_eq!(log.len(), expected.len());
    assert!(
        log == expected,
        "the job log differs from the command's output"
    );
    let timeline = timeline(&world, jobs[0]);
    assert_eq!(timeline["acquires"], 1);
    assert_eq!(world.bed.builds().len(), 1, "one build across the restarts");
}

#[tokio::test]
async fn cancel_stops_the_build_and_the_job_reads_canceled_within_two_seconds() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build("cancel", "cb-queue", "echo working; sleep 60", &[], 1);
    let spec = world
        .specs("cb-queue", "cb", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let backend = open(&world).await;
    backend.launch(&spec).await.expect("launch");
    eventually("the job to run and print", || async {
        world
            .emulator
            .job_log(jobs[0])
            .is_some_and(|log| log.starts_with(b"working\n"))
    })
    .await;
    let canceled_at = Instant::now();
    world.emulator.cancel_job(jobs[0]).unwrap();
    eventually("the job to read canceled", || async {
        world.emulator.job_state(jobs[0]) == Some(JobState::Canceled)
    })
    .await;
    let took = canceled_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the job read canceled after {took:?}"
    );
    eventually("the build to stop", || async {
        world.bed.builds()[0]["buildStatus"] == "STOPPED"
    })
    .await;
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);
}

#[tokio::test]
async fn a_job_asking_for_an_override_not_allowed_is_refused_before_it_is_acquired() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build(
        "refused",
        "cb-queue",
        "make",
        &[("CB_IMAGE_OVERRIDE", "evil/miner:latest")],
        1,
    );
    let spec = world
        .specs("cb-queue", "cb", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let backend = open(&world).await;
    let error = backend.launch(&spec).await.expect_err("refused");
    assert!(matches!(error, BackendError::Invalid { .. }), "{error}");
    assert!(
        error.to_string().contains("CB_IMAGE_OVERRIDE=\"evil/miner:latest\" is not allowed for fleet cb; allowed: aws/codebuild/standard:7.0"),
        "{error}"
    );
    assert_eq!(timeline(&world, jobs[0])["acquires"], 0);
}

#[tokio::test]
async fn a_step_with_plugins_is_refused_in_its_log_since_relay_runs_only_the_command() {
    let world = World::start().await;
    world.create_project("ci").await;
    world
        .emulator
        .create_pipeline(
            "plugins",
            "steps:\n  - command: make\n    plugins:\n      - docker#v5.12.0:\n          image: alpine\n    agents: {queue: cb-queue}\n",
        )
        .unwrap();
    let jobs = world.emulator.create_build("plugins").unwrap().job_ids;
    let spec = world
        .specs("cb-queue", "cb", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let backend = open(&world).await;
    backend.launch(&spec).await.expect("launch");
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);
    assert_eq!(world.emulator.job_state(jobs[0]), Some(JobState::Failed));
    let log = String::from_utf8(world.emulator.job_log(jobs[0]).unwrap()).unwrap();
    assert!(
        log.starts_with("updraft: relay mode runs only the command, and this step uses plugins (docker#v5.12.0)"),
        "{log}"
    );
    assert_eq!(timeline(&world, jobs[0])["signal_reason"], "agent_refused");
    assert!(world.bed.builds().is_empty(), "no build for a refused job");
}
