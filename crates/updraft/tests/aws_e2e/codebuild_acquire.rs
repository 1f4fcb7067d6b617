//! `updraft run` with a CodeBuild fleet in acquire mode, end to end: the emulator schedules
//! 100 jobs, the scheduler starts a build per job on the CodeBuild stand-in, and each build
//! runs the real `updraft agent` with its job acquisition token from a PARAMETER_STORE
//! variable (resolved from moto's SSM). Every job is acquired once; the per-job overrides a
//! job asks for reach its StartBuild request; a value the fleet does not allow fails its job
//! with the reason in the build; no job acquisition token (or any other Buildkite token)
//! appears in plaintext in any request CodeBuild received.

use crate::support::{start_scheduler, AwsWorld, SERIAL};
use nix::sys::signal::Signal;
use std::time::Instant;
use updraft_emulator::JobState;

const OVERRIDES: [(&str, &str); 3] = [
    ("CB_COMPUTE_TYPE_OVERRIDE", "BUILD_GENERAL1_LARGE"),
    ("CB_PRIVILEGED_MODE_OVERRIDE", "true"),
    ("CB_IMAGE_OVERRIDE", "aws/codebuild/standard:7.0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_each_acquired_once_with_overrides_applied_and_refused() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    world.create_project("jobs").await;
    let fleets = format!(
        "[[fleet]]\nname = \"cb\"\nqueue = \"cb\"\nbackend = \"codebuild\"\nmax_in_flight = 25\n\
         {}\n[fleet.codebuild]\nproject = \"jobs\"\nallowed_compute_types = [\"BUILD_GENERAL1_SMALL\", \"BUILD_GENERAL1_LARGE\"]\n\
         allowed_images = [\"aws/codebuild/standard:7.0\"]\nallow_privileged_mode = true\n",
        world.agent_template()
    );
    let config = world.config(&fleets, "");
    let log = world.path("scheduler.log");
    let began = Instant::now();
    let scheduler = start_scheduler(&config, &log).await;

    let jobs = world.build(
        "acquire",
        "cb",
        &[
            ("echo \"hello from $BUILDKITE_JOB_ID\"", &[], 90),
            ("echo overridden", &OVERRIDES, 9),
            (
                "echo never",
                &[("CB_COMPUTE_TYPE_OVERRIDE", "BUILD_GENERAL1_2XLARGE")],
                1,
            ),
        ],
    );
    assert_eq!(jobs.len(), 100);
    world.wait_until_final(&jobs, &log).await;
    let took = began.elapsed();
    scheduler.kill(Signal::SIGTERM).await;

    let (ran, refused) = jobs.split_at(99);
    for job in ran {
        assert_eq!(
            world.emulator.job_state(*job),
            Some(JobState::Passed),
            "{:#}",
            world.timeline(*job)
        );
    }
    world.assert_each_acquired_once(ran);
    let refused = world.timeline(refused[0]);
    assert_eq!(refused["state"], "failed", "{refused:#}");
    assert_eq!(refused["acquires"], 0);
    let detail = refused["stack_finish_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("CB_COMPUTE_TYPE_OVERRIDE=\"BUILD_GENERAL1_2XLARGE\" is not allowed for fleet cb; allowed: BUILD_GENERAL1_SMALL, BUILD_GENERAL1_LARGE"),
        "the reason is shown in the build: {refused:#}"
    );

    let requests = world.bed.codebuild_requests();
    let starts: Vec<serde_json::Value> = requests
        .iter()
        .filter(|r| r.operation == "StartBuild")
        .map(|r| r.json())
        .collect();
    let tokens: std::collections::BTreeSet<&str> = starts
        .iter()
        .filter_map(|s| s["idempotencyToken"].as_str())
        .collect();
    assert_eq!(tokens.len(), 99, "one start per launch");
    assert_eq!(world.bed.builds().len(), 99, "one build per launch");
    for request in &requests {
        for prefix in [
            "bkjat_",
            "bkaa_",
            "bkaj_",
            world.emulator.agent_token().expose(),
        ] {
            assert!(
                !request.contains(prefix),
                "a Buildkite token ({prefix}…) in plaintext in a {} request",
                request.operation
            );
        }
    }
    let overridden: Vec<&serde_json::Value> = starts
        .iter()
        .filter(|s| s["computeTypeOverride"] == "BUILD_GENERAL1_LARGE")
        .collect();
    assert_eq!(overridden.len(), 9, "the overrides reached StartBuild");
    for start in overridden {
        assert_eq!(start["privilegedModeOverride"], true);
        assert_eq!(start["imageOverride"], "aws/codebuild/standard:7.0");
        let token = start["environmentVariablesOverride"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "BUILDKITE_AGENT_TOKEN")
            .cloned()
            .unwrap();
        assert_eq!(token["type"], "PARAMETER_STORE");
    }
    println!("100 CodeBuild jobs (25 at a time) in {took:?}");
}
