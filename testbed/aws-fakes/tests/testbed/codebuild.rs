//! The CodeBuild stand-in through the real `aws-sdk-codebuild` client.

use std::time::{Duration, Instant};

use aws_sdk_codebuild::error::ProvideErrorMetadata;
use aws_sdk_codebuild::types::{
    BuildPhaseType, EnvironmentVariable, EnvironmentVariableType, StatusType,
};
use aws_sdk_ssm::types::ParameterType;
use sha2::{Digest, Sha256};
use updraft_aws_fakes::{AwsError, AwsTestBed, CodeBuildSettings, EcsSettings};

use crate::helpers::{codebuild, create_project, logs, read_log, ssm, wait_for_build};

const FAILING: &str = r#"
version: 0.2
env:
  exported-variables: [EXIT_STATUS]
phases:
  build:
    commands:
      - for i in 1 2 3 4 5; do echo "line $i"; done
      - sh -c 'exit 3'; EXIT_STATUS=$?; exit $EXIT_STATUS
  post_build:
    commands:
      - echo "post_build sees CODEBUILD_BUILD_SUCCEEDING=$CODEBUILD_BUILD_SUCCEEDING"
"#;

#[tokio::test]
async fn a_failing_command_fails_the_build_in_build_and_its_output_is_in_the_log() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = codebuild(&bed);
    create_project(&client, "failing", FAILING).await;

    let started = client
        .start_build()
        .project_name("failing")
        .send()
        .await
        .unwrap();
    let id = started.build_value().unwrap().id().unwrap().to_owned();
    let build = wait_for_build(&client, &id, Duration::from_secs(20)).await;

    assert_eq!(build.build_status(), Some(&StatusType::Failed));
    assert_eq!(build.current_phase(), Some("COMPLETED"));
    let failed: Vec<_> = build
        .phases()
        .iter()
        .filter(|p| p.phase_status() == Some(&StatusType::Failed))
        .collect();
    assert_eq!(failed.len(), 1, "only BUILD fails: {:?}", build.phases());
    assert_eq!(failed[0].phase_type(), Some(&BuildPhaseType::Build));
    let context = &failed[0].contexts()[0];
    assert_eq!(context.status_code(), Some("COMMAND_EXECUTION_ERROR"));
    assert_eq!(
        context.message(),
        Some("Error while executing command: sh -c 'exit 3'; EXIT_STATUS=$?; exit $EXIT_STATUS. Reason: exit status 3")
    );
    let post_build = build
        .phases()
        .iter()
        .find(|p| p.phase_type() == Some(&BuildPhaseType::PostBuild))
        .expect("POST_BUILD runs after a failed BUILD");
    assert_eq!(post_build.phase_status(), Some(&StatusType::Succeeded));
    let exported = build.exported_environment_variables();
    assert_eq!(exported.len(), 1);
    assert_eq!(
        (exported[0].name(), exported[0].value()),
        (Some("EXIT_STATUS"), Some("3"))
    );

    let logs_location = build.logs().expect("logs");
    assert_eq!(logs_location.group_name(), Some("/aws/codebuild/failing"));
    assert_eq!(logs_location.stream_name(), id.split(':').nth(1));
    let (messages, _) = read_log(
        &logs(&bed),
        logs_location.group_name().unwrap(),
        logs_location.stream_name().unwrap(),
    )
    .await;
    let output: String = messages
        .iter()
        .filter(|m| !m.starts_with("[Container] "))
        .cloned()
        .collect();
    assert_eq!(
        output,
        "line 1\nline 2\nline 3\nline 4\nline 5\npost_build sees CODEBUILD_BUILD_SUCCEEDING=0\n"
    );
    assert!(messages.iter().any(|m| m.contains(
        "Phase context status code: COMMAND_EXECUTION_ERROR Message: Error while executing command"
    )));
}

#[tokio::test]
async fn the_same_idempotency_token_gives_the_same_build_and_other_parameters_are_refused() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = codebuild(&bed);
    create_project(
        &client,
        "idem",
        "version: 0.2\nphases:\n  build:\n    commands: [\"true\"]\n",
    )
    .await;
    let start = || {
        client
            .start_build()
            .project_name("idem")
            .idempotency_token("job-1")
            .image_override("custom:1")
    };
    let first = start().send().await.unwrap().build_value.unwrap();
    let second = start().send().await.unwrap().build_value.unwrap();
    assert_eq!(first.id(), second.id());
    assert_eq!(second.environment().unwrap().image(), "custom:1");

    let mismatch = start()
        .privileged_mode_override(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        mismatch.code(),
        Some("IdempotentParameterMismatchException")
    );
    assert_eq!(bed.builds().len(), 1);
}

#[tokio::test]
async fn a_parameter_store_variable_is_resolved_from_moto_and_never_sent_in_plaintext() {
    let bed = AwsTestBed::start().await.unwrap();
    let secret = "bkat_secret_value_42";
    ssm(&bed)
        .put_parameter()
        .name("/updraft/agent-token")
        .value(secret)
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let client = codebuild(&bed);
    let buildspec = "version: 0.2\nenv:\n  exported-variables: [SEEN]\nphases:\n  build:\n    commands:\n      - SEEN=$(printf %s \"$TOKEN\" | sha256sum | cut -c1-16)\n";
    create_project(&client, "secretive", buildspec).await;
    let started = client
        .start_build()
        .project_name("secretive")
        .environment_variables_override(
            EnvironmentVariable::builder()
                .name("TOKEN")
                .value("/updraft/agent-token")
                .r#type(EnvironmentVariableType::ParameterStore)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let id = started.build_value().unwrap().id().unwrap().to_owned();
    let build = wait_for_build(&client, &id, Duration::from_secs(20)).await;
    assert_eq!(build.build_status(), Some(&StatusType::Succeeded));

    let expected = hex::encode(Sha256::digest(secret.as_bytes()));
    let seen = build.exported_environment_variables()[0].value().unwrap();
    assert_eq!(seen, &expected[..16], "the command saw the decrypted value");
    let requests = bed.codebuild_requests();
    let start_build = requests
        .iter()
        .find(|r| r.operation == "StartBuild")
        .unwrap();
    assert_eq!(
        start_build.json()["environmentVariablesOverride"][0]["value"],
        "/updraft/agent-token"
    );
    assert!(
        requests.iter().all(|r| !r.contains(secret)),
        "no request carries the secret"
    );
    let shown = build.environment().unwrap().environment_variables();
    assert_eq!(shown[0].value(), "/updraft/agent-token");
}

#[tokio::test]
async fn stop_build_ends_the_build_stopped_within_two_seconds() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = codebuild(&bed);
    let buildspec =
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo started\n      - sleep 60\n";
    create_project(&client, "long", buildspec).await;
    let started = client
        .start_build()
        .project_name("long")
        .send()
        .await
        .unwrap();
    let id = started.build_value().unwrap().id().unwrap().to_owned();
    wait_until_in_phase(&client, &id, "BUILD").await;
    let location = bed.codebuild().build(&id).unwrap()["logs"].clone();
    let (group, stream) = (
        location["groupName"].as_str().unwrap(),
        location["streamName"].as_str().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_log(&logs(&bed), group, stream)
        .await
        .0
        .contains(&"started\n".to_owned())
    {
        assert!(
            Instant::now() < deadline,
            "the output of a running build reaches the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let asked = Instant::now();
    client.stop_build().id(&id).send().await.unwrap();
    let build = wait_for_build(&client, &id, Duration::from_secs(2)).await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert_eq!(build.build_status(), Some(&StatusType::Stopped));
    let stopped = build
        .phases()
        .iter()
        .find(|p| p.phase_status() == Some(&StatusType::Stopped))
        .expect("the phase it stopped in");
    assert_eq!(stopped.phase_type(), Some(&BuildPhaseType::Build));
    assert_eq!(bed.live_process_groups(), 0);
}

#[tokio::test]
async fn twenty_megabytes_of_output_arrive_complete_and_in_order() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = codebuild(&bed);
    // 20,000 lines of 998 bytes, then one 300,000-byte line, longer than a log event.
    let buildspec = r#"
version: 0.2
phases:
  build:
    commands:
      - awk 'BEGIN { for (i = 0; i < 20000; i++) { printf "%06d ", i; for (j = 0; j < 99; j++) printf "0123456789"; printf "\n" } }'
      - head -c 300000 /dev/zero | tr '\0' 'y'; echo
"#;
    create_project(&client, "big", buildspec).await;
    let started = client
        .start_build()
        .project_name("big")
        .send()
        .await
        .unwrap();
    let id = started.build_value().unwrap().id().unwrap().to_owned();
    let build = wait_for_build(&client, &id, Duration::from_secs(60)).await;
    assert_eq!(build.build_status(), Some(&StatusType::Succeeded));

    let mut expected = String::new();
    for i in 0..20000 {
        expected.push_str(&format!("{i:06} {}\n", "0123456789".repeat(99)));
    }
    expected.push_str(&"y".repeat(300_000));
    expected.push('\n');
    let location = build.logs().unwrap();
    let (messages, pages) = read_log(
        &logs(&bed),
        location.group_name().unwrap(),
        location.stream_name().unwrap(),
    )
    .await;
    assert!(messages.iter().all(|m| m.len() <= 256 * 1024 - 26));
    let output: String = messages
        .iter()
        .filter(|m| !m.starts_with("[Container] "))
        .cloned()
        .collect();
    assert_eq!(output.len(), expected.len());
    assert_eq!(
        hex::encode(Sha256::digest(output.as_bytes())),
        hex::encode(Sha256::digest(expected.as_bytes()))
    );
    assert!(pages > 2, "the stream was read in pages");
}

#[tokio::test]
async fn the_build_timeout_is_enforced_and_capacity_keeps_builds_queued() {
    let settings = CodeBuildSettings {
        minute: Duration::from_millis(200),
        capacity: Some(1),
        ..CodeBuildSettings::default()
    };
    let bed = AwsTestBed::start_with(settings, EcsSettings::default())
        .await
        .unwrap();
    // moto loads a service on its first call; do that before the one-second timeout runs.
    logs(&bed).describe_log_groups().send().await.unwrap();
    let client = codebuild(&bed);
    let buildspec = "version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 30\n";
    create_project(&client, "slow", buildspec).await;
    let start = || {
        client
            .start_build()
            .project_name("slow")
            .timeout_in_minutes_override(5)
    };
    let first = start()
        .send()
        .await
        .unwrap()
        .build_value
        .unwrap()
        .id
        .unwrap();
    let second = start()
        .send()
        .await
        .unwrap()
        .build_value
        .unwrap()
        .id
        .unwrap();
    wait_until_in_phase(&client, &first, "BUILD").await;
    let queued = bed.codebuild().build(&second).unwrap();
    assert_eq!(
        queued["currentPhase"], "QUEUED",
        "capacity 1 keeps the second build queued"
    );

    let timed_out = wait_for_build(&client, &first, Duration::from_secs(10)).await;
    assert_eq!(timed_out.build_status(), Some(&StatusType::TimedOut));
    let after = wait_for_build(&client, &second, Duration::from_secs(10)).await;
    assert_eq!(after.build_status(), Some(&StatusType::TimedOut));

    let too_short = start()
        .timeout_in_minutes_override(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(too_short.code(), Some("InvalidInputException"));
}

#[tokio::test]
async fn injected_faults_answer_as_codebuild_would() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = codebuild(&bed);
    bed.codebuild().gate().throttle_next(1);
    let throttled = client.list_projects().send().await.unwrap_err();
    assert_eq!(throttled.code(), Some("ThrottlingException"));
    bed.codebuild().gate().inject_error(
        "StartBuild",
        AwsError::client("AccountLimitExceededException", "limit"),
    );
    create_project(&client, "faulty", "version: 0.2\n").await;
    let refused = client
        .start_build()
        .project_name("faulty")
        .send()
        .await
        .unwrap_err();
    assert!(refused
        .as_service_error()
        .unwrap()
        .is_account_limit_exceeded_exception());
    let missing = client
        .start_build()
        .project_name("absent")
        .send()
        .await
        .unwrap_err();
    assert!(missing
        .as_service_error()
        .unwrap()
        .is_resource_not_found_exception());
    let unknown = client
        .batch_get_builds()
        .ids("absent:1")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.builds_not_found(), ["absent:1"]);
}

async fn wait_until_in_phase(client: &aws_sdk_codebuild::Client, id: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let builds = client.batch_get_builds().ids(id).send().await.unwrap();
        if builds.builds()[0].current_phase() == Some(phase) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} never reached {phase}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
