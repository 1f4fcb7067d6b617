//! The ECS backend against the ECS stand-in and moto: an agent launch runs a per-launch
//! revision whose job container gets its job acquisition token from SSM (never in a
//! request), one task per launch however often it is asked, a task that stops with a reason
//! says so (refused when it can never start), relay mode from the task's awslogs stream, and
//! delete leaves nothing behind.

use crate::support::{ecs_fleet, finished, phase_of, World};
use std::collections::BTreeMap;
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::EcsBackend;
use updraft_aws_fakes::{StartFault, StopRequest};
use updraft_backends::{Backend, LaunchOutcome, LaunchPhase};
use updraft_emulator::JobState;

async fn open(world: &World, mode: &str) -> EcsBackend {
    let fleets: BTreeMap<_, _> = [("ecs".to_string(), ecs_fleet(mode))].into();
    EcsBackend::ecs(
        &world.clients,
        &world.settings,
        fleets,
        world.options(),
        AwsMetrics::default(),
    )
    .await
    .expect("open the ECS backend")
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[tokio::test]
async fn each_launch_is_one_task_with_its_token_only_in_a_per_launch_definition() {
    let world = World::start().await;
    world.create_ecs_definition().await;
    let jobs = world.build("ecs-acquire", "ecs-queue", "make", &[], 3);
    let specs = world
        .specs("ecs-queue", "ecs", &jobs, sh(r#"test -n "$BUILDKITE_AGENT_TOKEN" && echo "token for $BUILDKITE_AGENT_ACQUIRE_JOB""#))
        .await;
    let backend = open(&world, "acquire").await;
    for spec in &specs {
        assert_eq!(
            backend.launch(spec).await.expect("launch"),
            LaunchOutcome::Started
        );
        assert_eq!(
            backend.launch(spec).await.expect("again"),
            LaunchOutcome::AlreadyExists
        );
    }
    for spec in &specs {
        assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);
    }
    assert_eq!(world.bed.tasks().len(), 3, "one task per launch");
    let runs: Vec<_> = world
        .bed
        .ecs_requests()
        .into_iter()
        .filter(|r| r.operation == "RunTask")
        .collect();
    assert_eq!(runs.len(), 3);
    for request in world.bed.ecs_requests() {
        for spec in &specs {
            assert!(
                !request.contains(spec.secrets["BUILDKITE_AGENT_TOKEN"].expose()),
                "a token in {}",
                request.operation
            );
        }
    }
    for (run, task) in runs.iter().zip(world.bed.tasks()) {
        let body = run.json();
        let started_by = body["startedBy"].as_str().unwrap();
        assert!(started_by.starts_with("updraft-"));
        assert!(body["clientToken"]
            .as_str()
            .unwrap()
            .starts_with(started_by));
        assert_eq!(
            body["taskDefinition"]
                .as_str()
                .unwrap()
                .split('/')
                .next_back()
                .unwrap()
                .split(':')
                .next(),
            Some(started_by)
        );
        assert_eq!(
            task["containers"][0]["exitCode"], 0,
            "the container found its token: {task:#}"
        );
    }
    for spec in &specs {
        backend.delete(&spec.name).await.expect("delete");
        assert_eq!(phase_of(&backend, &spec.name).await, None);
        let definition = world
            .clients
            .ecs()
            .describe_task_definition()
            .task_definition(format!("{}:1", spec.name))
            .send()
            .await
            .expect("DescribeTaskDefinition");
        assert_eq!(
            definition
                .task_definition()
                .unwrap()
                .status()
                .unwrap()
                .as_str(),
            "INACTIVE"
        );
    }
}

#[tokio::test]
async fn a_task_that_stops_with_a_reason_says_so_and_one_that_cannot_start_is_refused() {
    let world = World::start().await;
    world.create_ecs_definition().await;
    let jobs = world.build("ecs-stops", "ecs-queue", "make", &[], 2);
    let specs = world.specs("ecs-queue", "ecs", &jobs, sh("sleep 60")).await;
    let backend = open(&world, "acquire").await;
    world.bed.ecs().inject_start_fault(StartFault::FailToStart(
        "CannotPullContainerError: pull image manifest has been retried 5 time(s)".into(),
    ));
    backend.launch(&specs[0]).await.expect("launch");
    match finished(&backend, &specs[0].name).await {
        LaunchPhase::Refused { reason } => assert!(
            reason.contains("TaskFailedToStart") && reason.contains("CannotPullContainerError"),
            "{reason}"
        ),
        other => panic!("expected a refused launch, got {other:?}"),
    }
    backend.launch(&specs[1]).await.expect("launch");
    crate::support::eventually("the task to run", || async {
        phase_of(&backend, &specs[1].name).await == Some(LaunchPhase::Running)
    })
    .await;
    let task = world.bed.tasks()[1]["taskArn"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(world.bed.ecs().interrupt(
        &task,
        StopRequest {
            code: "SpotInterruption".into(),
            reason: "Your Spot Task was interrupted.".into(),
        }
    ));
    match finished(&backend, &specs[1].name).await {
        LaunchPhase::Failed { reason } => assert!(
            reason.contains("stopped (SpotInterruption): Your Spot Task was interrupted."),
            "{reason}"
        ),
        other => panic!("expected a failed launch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relayed_task_log_reaches_the_job_and_its_exit_code_ends_it() {
    let world = World::start().await;
    world.create_ecs_definition().await;
    let jobs = world.build(
        "ecs-relay",
        "ecs-queue",
        "for i in $(seq 1 5000); do echo \"line $i\"; done; exit 5",
        &[],
        1,
    );
    let spec = world
        .specs("ecs-queue", "ecs", &jobs, vec!["unused".into()])
        .await
        .remove(0);
    let backend = open(&world, "relay").await;
    backend.launch(&spec).await.expect("launch");
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);
    let expected: String = (1..=5000).map(|i| format!("line {i}\n")).collect();
    assert!(
        world.emulator.job_log(jobs[0]).unwrap() == expected.as_bytes(),
        "the job log differs"
    );
    assert_eq!(world.emulator.job_state(jobs[0]), Some(JobState::Failed));
    assert_eq!(
        world.emulator.job_timeline(jobs[0]).unwrap()["exit_status"],
        5
    );
    let task = &world.bed.tasks()[0];
    let environment = task["overrides"]["containerOverrides"][0]["environment"].to_string();
    assert!(
        !environment.contains("bkaa_")
            && !environment.contains("bkaj_")
            && !environment.contains("bkjat_")
    );
}
