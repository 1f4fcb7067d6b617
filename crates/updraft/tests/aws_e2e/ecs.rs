//! `updraft run` with an ECS Fargate fleet in acquire mode, end to end: 100 jobs, each a task
//! on the ECS stand-in running the real `updraft agent` with its job acquisition token
//! injected from SSM through a per-launch task definition revision; every job acquired once.
//! A task that stops with a reason before its agent could run fails its job with that reason
//! shown in the build.

use crate::support::{start_scheduler, AwsWorld, SERIAL};
use nix::sys::signal::Signal;
use std::time::Instant;
use updraft_aws_fakes::StartFault;
use updraft_emulator::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_fargate_jobs_run_once_each_and_a_task_stopped_with_a_reason_says_why() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    world.create_ecs_definition().await;
    let fleets = format!(
        "{}\n{}",
        world.ecs_fleet("fargate", "ecs", "acquire", "max_in_flight = 25"),
        world.ecs_fleet("unlucky", "ecs-unlucky", "acquire", "relaunch_budget = 0"),
    );
    let config = world.config(&fleets, "");
    let log = world.path("scheduler.log");

    let reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s): ghcr.io/acme/updraft:1 not found";
    world
        .bed
        .ecs()
        .inject_start_fault(StartFault::FailToStart(reason.into()));
    let unlucky = world.build("unlucky", "ecs-unlucky", &[("echo never", &[], 1)]);
    let began = Instant::now();
    let scheduler = start_scheduler(&config, &log).await;
    world.wait_until_final(&unlucky, &log).await;

    let jobs = world.build(
        "fargate",
        "ecs",
        &[("echo \"hello from $BUILDKITE_JOB_ID\"", &[], 100)],
    );
    world.wait_until_final(&jobs, &log).await;
    let took = began.elapsed();
    scheduler.kill(Signal::SIGTERM).await;

    for job in &jobs {
        assert_eq!(
            world.emulator.job_state(*job),
            Some(JobState::Passed),
            "{:#}",
            world.timeline(*job)
        );
    }
    world.assert_each_acquired_once(&jobs);
    let runs: Vec<serde_json::Value> = world
        .bed
        .ecs_requests()
        .iter()
        .filter(|r| r.operation == "RunTask")
        .map(|r| r.json())
        .collect();
    let tokens: std::collections::BTreeSet<&str> = runs
        .iter()
        .filter_map(|r| r["clientToken"].as_str())
        .collect();
    assert_eq!(tokens.len(), 101, "one RunTask per launch");
    assert_eq!(world.bed.tasks().len(), 101, "one task per launch");
    for request in world.bed.ecs_requests() {
        for token in [
            "bkjat_",
            "bkaa_",
            "bkaj_",
            world.emulator.agent_token().expose(),
        ] {
            assert!(
                !request.contains(token),
                "a Buildkite token ({token}…) in a {} request",
                request.operation
            );
        }
    }

    let failed = world.timeline(unlucky[0]);
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let detail = failed["stack_finish_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("stopped (TaskFailedToStart)") && detail.contains(reason),
        "the reason is shown in the build: {failed:#}"
    );
    println!("100 Fargate jobs (25 at a time) in {took:?}");
}
