//! The CodeBuild backend in acquire mode against the CodeBuild stand-in and moto: one build
//! per launch however often it is asked (also by a new backend, and when a start's answer was
//! lost), the job acquisition token reaching the build only through a per-launch
//! PARAMETER_STORE variable, per-job overrides checked and applied, stop and deadlines, and
//! nothing left behind by delete.

use crate::support::{codebuild_fleet, finished, phase_of, World};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::CodeBuildBackend;
use updraft_backends::{Backend, BackendError, LaunchOutcome, LaunchPhase, LaunchSpec};

/// Prints what a launched agent would see, without the token itself.
const SHOW_ENVIRONMENT: &str = r#"echo "token-sha=$(printf %s "$BUILDKITE_AGENT_TOKEN" | sha256sum | cut -c1-16)"; echo "job=$BUILDKITE_AGENT_ACQUIRE_JOB""#;

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

async fn open(world: &World, mode: &str) -> CodeBuildBackend {
    let fleets: BTreeMap<_, _> = [("cb".to_string(), codebuild_fleet("ci", mode))].into();
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

fn token_of(spec: &LaunchSpec) -> String {
    spec.secrets["BUILDKITE_AGENT_TOKEN"].expose().to_string()
}

/// The whole CloudWatch Logs stream of a build.
async fn build_log(world: &World, build_id: &str) -> String {
    let (_, stream) = build_id.split_once(':').unwrap();
    let mut token: Option<String> = None;
    let mut text = String::new();
    loop {
        let page = world
            .clients
            .logs()
            .get_log_events()
            .log_group_name("/aws/codebuild/ci")
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("GetLogEvents");
        for event in page.events() {
            text.push_str(event.message().unwrap_or_default());
        }
        let next = page.next_forward_token().map(str::to_string);
        if next == token {
            return text;
        }
        token = next;
    }
}

#[tokio::test]
async fn each_launch_is_one_build_with_its_token_only_in_parameter_store() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build(
        "acquire",
        "cb-queue",
        "make",
        &[
            ("CB_COMPUTE_TYPE_OVERRIDE", "BUILD_GENERAL1_LARGE"),
            ("CB_PRIVILEGED_MODE_OVERRIDE", "true"),
        ],
        3,
    );
    let specs = world
        .specs("cb-queue", "cb", &jobs, sh(SHOW_ENVIRONMENT))
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
    let reopened = open(&world, "acquire").await;
    for spec in &specs {
        assert_eq!(
            reopened.launch(spec).await.expect("after reopening"),
            LaunchOutcome::AlreadyExists
        );
    }
    for spec in &specs {
        assert_eq!(
            finished(&reopened, &spec.name).await,
            LaunchPhase::Succeeded
        );
    }

    let starts: Vec<_> = world
        .bed
        .codebuild_requests()
        .into_iter()
        .filter(|r| r.operation == "StartBuild")
        .collect();
    assert_eq!(starts.len(), 3, "one StartBuild per launch");
    assert_eq!(world.bed.builds().len(), 3);
    for request in &world.bed.codebuild_requests() {
        for spec in &specs {
            assert!(
                !request.contains(&token_of(spec)),
                "a job acquisition token in a {} request",
                request.operation
            );
        }
    }
    for start in &starts {
        let body = start.json();
        assert!(body["idempotencyToken"]
            .as_str()
            .is_some_and(|t| t.starts_with("updraft-")));
        assert_eq!(body["computeTypeOverride"], "BUILD_GENERAL1_LARGE");
        assert_eq!(body["privilegedModeOverride"], true);
        let variables = body["environmentVariablesOverride"].as_array().unwrap();
        let token = variables
            .iter()
            .find(|v| v["name"] == "BUILDKITE_AGENT_TOKEN")
            .unwrap();
        assert_eq!(token["type"], "PARAMETER_STORE");
        assert!(token["value"]
            .as_str()
            .unwrap()
            .starts_with("/updraft/launches/updraft-"));
    }
    for (spec, build) in specs.iter().zip(world.bed.builds()) {
        let id = build["id"].as_str().unwrap();
        let log = build_log(&world, id).await;
        let job = log
            .lines()
            .find_map(|l| l.strip_prefix("job="))
            .unwrap()
            .to_string();
        let spec = specs
            .iter()
            .find(|s| s.job_id.to_string() == job)
            .unwrap_or(spec);
        let sha = hex::encode(Sha256::digest(token_of(spec).as_bytes()));
        assert!(
            log.contains(&format!("token-sha={}", &sha[..16])),
            "the build read its token: {log}"
        );
    }

    for spec in &specs {
        reopened.delete(&spec.name).await.expect("delete");
        reopened.delete(&spec.name).await.expect("delete again");
        assert_eq!(phase_of(&reopened, &spec.name).await, None);
    }
    let left = world
        .clients
        .ssm()
        .get_parameters_by_path()
        .path("/updraft/launches")
        .recursive(true)
        .send()
        .await
        .expect("GetParametersByPath");
    assert!(
        left.parameters().is_empty(),
        "parameters left: {:?}",
        left.parameters()
    );
}

#[tokio::test]
async fn an_override_not_allowed_is_refused_with_the_variable_the_value_and_what_is_allowed() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build(
        "refused",
        "cb-queue",
        "make",
        &[("CB_COMPUTE_TYPE_OVERRIDE", "BUILD_GENERAL1_2XLARGE")],
        1,
    );
    let spec = world
        .specs("cb-queue", "cb", &jobs, sh("true"))
        .await
        .remove(0);
    let backend = open(&world, "acquire").await;
    let error = backend.launch(&spec).await.expect_err("refused");
    assert!(matches!(error, BackendError::Invalid { .. }), "{error}");
    assert!(
        error.to_string().contains(
            "CB_COMPUTE_TYPE_OVERRIDE=\"BUILD_GENERAL1_2XLARGE\" is not allowed for fleet cb; allowed: BUILD_GENERAL1_SMALL, BUILD_GENERAL1_LARGE"
        ),
        "{error}"
    );
    assert!(world
        .bed
        .codebuild_requests()
        .iter()
        .all(|r| r.operation != "StartBuild"));
    assert_eq!(phase_of(&backend, &spec.name).await, None);
}

#[tokio::test]
async fn a_start_retried_or_whose_answer_was_lost_is_still_one_build() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build("lost", "cb-queue", "make", &[], 2);
    let specs = world.specs("cb-queue", "cb", &jobs, sh("true")).await;
    let backend = open(&world, "acquire").await;

    world.bed.codebuild().gate().throttle_next(1);
    let error = backend.launch(&specs[0]).await.expect_err("throttled");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(
        backend.launch(&specs[0]).await.expect("retried"),
        LaunchOutcome::AlreadyExists
    );

    assert_eq!(
        backend.launch(&specs[1]).await.expect("launch"),
        LaunchOutcome::Started
    );
    // As if the process had died between StartBuild's answer and recording it.
    let connection = rusqlite::Connection::open(backend.state_path()).unwrap();
    connection
        .execute(
            "UPDATE launches SET platform_id = NULL WHERE name = ?1",
            [specs[1].name.as_str()],
        )
        .unwrap();
    drop(connection);
    let reopened = open(&world, "acquire").await;
    for spec in &specs {
        assert_eq!(
            finished(&reopened, &spec.name).await,
            LaunchPhase::Succeeded
        );
    }
    assert_eq!(world.bed.builds().len(), 2, "{:#?}", world.bed.builds());
}

#[tokio::test]
async fn stop_and_the_deadline_stop_the_build_and_say_so() {
    let world = World::start().await;
    world.create_project("ci").await;
    let jobs = world.build("stops", "cb-queue", "make", &[], 2);
    let mut specs = world
        .specs("cb-queue", "cb", &jobs, sh("echo started; sleep 60"))
        .await;
    specs[1].deadline = Duration::from_secs(2);
    let backend = open(&world, "acquire").await;
    for spec in &specs {
        backend.launch(spec).await.expect("launch");
    }
    crate::support::eventually("the build to run", || async {
        phase_of(&backend, &specs[0].name).await == Some(LaunchPhase::Running)
    })
    .await;
    backend.stop(&specs[0].name).await.expect("stop");
    for spec in &specs {
        match finished(&backend, &spec.name).await {
            LaunchPhase::Failed { reason } => {
                assert!(reason.contains("STOPPED in phase BUILD"), "{reason}")
            }
            other => panic!("expected a stopped build, got {other:?}"),
        }
    }
    let stops = world
        .bed
        .codebuild_requests()
        .iter()
        .filter(|r| r.operation == "StopBuild")
        .count();
    assert!(stops >= 2, "{stops} StopBuild calls");
}
