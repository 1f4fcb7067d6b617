//! The ECS stand-in through the real `aws-sdk-ecs` client.

use std::time::Duration;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition, ContainerOverride,
    KeyValuePair, LaunchType, LogConfiguration, LogDriver, NetworkConfiguration, NetworkMode,
    Secret, TaskOverride,
};
use aws_sdk_ssm::types::ParameterType;
use updraft_aws_fakes::{AwsTestBed, StartFault, StopRequest};

use crate::helpers::{ecs, logs, read_log, ssm, wait_for_task};

const CLUSTER: &str = "agents";
const LOG_GROUP: &str = "/ecs/updraft-agents";

/// A cluster, a log group and a Fargate task definition `agent` whose container runs
/// `command`, logs with awslogs (prefix `bk`) and gets `TOKEN` from SSM.
async fn fargate_agent(bed: &AwsTestBed, command: &[&str]) -> aws_sdk_ecs::Client {
    let client = ecs(bed);
    client
        .create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    logs(bed)
        .create_log_group()
        .log_group_name(LOG_GROUP)
        .send()
        .await
        .unwrap();
    ssm(bed)
        .put_parameter()
        .name("/updraft/ecs-token")
        .value("ecs-secret")
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let log_configuration = LogConfiguration::builder()
        .log_driver(LogDriver::Awslogs)
        .options("awslogs-group", LOG_GROUP)
        .options("awslogs-region", "us-east-1")
        .options("awslogs-stream-prefix", "bk")
        .build()
        .unwrap();
    let container = ContainerDefinition::builder()
        .name("agent")
        .image("buildkite/agent:3")
        .set_command(Some(command.iter().map(|s| s.to_string()).collect()))
        .environment(
            KeyValuePair::builder()
                .name("FROM_DEFINITION")
                .value("yes")
                .build(),
        )
        .secrets(
            Secret::builder()
                .name("TOKEN")
                .value_from("arn:aws:ssm:us-east-1:123456789012:parameter/updraft/ecs-token")
                .build()
                .unwrap(),
        )
        .log_configuration(log_configuration)
        .build();
    client
        .register_task_definition()
        .family("agent")
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .execution_role_arn("arn:aws:iam::123456789012:role/ecsTaskExecution")
        .container_definitions(container)
        .send()
        .await
        .unwrap();
    client
}

fn network() -> NetworkConfiguration {
    NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets("subnet-0abc")
                .security_groups("sg-0abc")
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .unwrap(),
        )
        .build()
}

#[tokio::test]
async fn a_task_that_exits_0_stops_with_essential_container_exited_and_its_output_in_awslogs() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = fargate_agent(&bed, &["sh", "-c", "echo from definition"]).await;
    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name("agent")
                .set_command(Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo \"job $JOB_ID token $TOKEN $FROM_DEFINITION\"; echo; echo done".into(),
                ]))
                .environment(KeyValuePair::builder().name("JOB_ID").value("j-1").build())
                .build(),
        )
        .build();
    let ran = client
        .run_task()
        .cluster(CLUSTER)
        .task_definition("agent")
        .launch_type(LaunchType::Fargate)
        .network_configuration(network())
        .overrides(overrides)
        .started_by("updraft")
        .send()
        .await
        .unwrap();
    let arn = ran.tasks()[0].task_arn().unwrap().to_owned();
    assert_eq!(ran.tasks()[0].last_status(), Some("PROVISIONING"));
    let task = wait_for_task(&client, CLUSTER, &arn, Duration::from_secs(20)).await;

    assert_eq!(
        task.stop_code().map(|c| c.as_str()),
        Some("EssentialContainerExited")
    );
    assert_eq!(task.desired_status(), Some("STOPPED"));
    assert_eq!(task.containers()[0].exit_code(), Some(0));
    assert!(task.started_at().is_some() && task.stopped_at().is_some());
    assert_eq!(task.cpu(), Some("256"));

    let task_id = arn.rsplit('/').next().unwrap();
    let (messages, _) = read_log(&logs(&bed), LOG_GROUP, &format!("bk/agent/{task_id}")).await;
    assert_eq!(messages, ["job j-1 token ecs-secret yes", "done"]);

    let stopped = client
        .list_tasks()
        .cluster(CLUSTER)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.task_arns(), std::slice::from_ref(&arn));
    let running = client.list_tasks().cluster(CLUSTER).send().await.unwrap();
    assert!(
        running.task_arns().is_empty(),
        "ListTasks defaults to RUNNING"
    );
}

#[tokio::test]
async fn run_task_with_the_same_client_token_starts_one_task() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = fargate_agent(&bed, &["sleep", "30"]).await;
    let run = || {
        client
            .run_task()
            .cluster(CLUSTER)
            .task_definition("agent")
            .launch_type(LaunchType::Fargate)
            .network_configuration(network())
            .client_token("job-0001")
    };
    let first = run().send().await.unwrap();
    let second = run().send().await.unwrap();
    assert_eq!(first.tasks()[0].task_arn(), second.tasks()[0].task_arn());
    assert_eq!(bed.tasks().len(), 1);

    let conflict = run().started_by("other").send().await.unwrap_err();
    let conflict = conflict.into_service_error();
    assert!(conflict.is_conflict_exception(), "{conflict:?}");
    let aws_sdk_ecs::operation::run_task::RunTaskError::ConflictException(conflict) = conflict
    else {
        unreachable!()
    };
    assert_eq!(
        conflict.resource_ids(),
        [first.tasks()[0].task_arn().unwrap().to_owned()]
    );

    let no_network = client
        .run_task()
        .cluster(CLUSTER)
        .task_definition("agent")
        .launch_type(LaunchType::Fargate)
        .send()
        .await
        .unwrap_err();
    assert_eq!(no_network.code(), Some("InvalidParameterException"));
}

#[tokio::test]
async fn describe_tasks_reports_unknown_tasks_missing_and_stop_task_stops_with_the_reason() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = fargate_agent(&bed, &["sleep", "30"]).await;
    let ran = client
        .run_task()
        .cluster(CLUSTER)
        .task_definition("agent")
        .launch_type(LaunchType::Fargate)
        .network_configuration(network())
        .send()
        .await
        .unwrap();
    let arn = ran.tasks()[0].task_arn().unwrap().to_owned();
    let unknown = "arn:aws:ecs:us-east-1:123456789012:task/agents/0123456789abcdef0123456789abcdef";
    let described = client
        .describe_tasks()
        .cluster(CLUSTER)
        .tasks(&arn)
        .tasks(unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(described.tasks().len(), 1);
    assert_eq!(described.failures()[0].arn(), Some(unknown));
    assert_eq!(described.failures()[0].reason(), Some("MISSING"));

    wait_until_running(&client, &arn).await;
    client
        .stop_task()
        .cluster(CLUSTER)
        .task(&arn)
        .reason("Buildkite job canceled")
        .send()
        .await
        .unwrap();
    let task = wait_for_task(&client, CLUSTER, &arn, Duration::from_secs(5)).await;
    assert_eq!(task.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert_eq!(task.stopped_reason(), Some("Buildkite job canceled"));
    assert_eq!(task.containers()[0].exit_code(), Some(143), "SIGTERM");
}

#[tokio::test]
async fn injected_faults_fail_starts_refuse_placement_and_interrupt_spot_tasks() {
    let bed = AwsTestBed::start().await.unwrap();
    let client = fargate_agent(&bed, &["sleep", "30"]).await;
    let run = || {
        client
            .run_task()
            .cluster(CLUSTER)
            .task_definition("agent")
            .launch_type(LaunchType::Fargate)
            .network_configuration(network())
    };
    let pull_error = "CannotPullContainerError: pull image manifest has been retried 5 time(s)";
    bed.ecs()
        .inject_start_fault(StartFault::FailToStart(pull_error.into()));
    let failing = run().send().await.unwrap().tasks()[0]
        .task_arn()
        .unwrap()
        .to_owned();
    let task = wait_for_task(&client, CLUSTER, &failing, Duration::from_secs(5)).await;
    assert_eq!(
        task.stop_code().map(|c| c.as_str()),
        Some("TaskFailedToStart")
    );
    assert_eq!(task.stopped_reason(), Some(pull_error));
    assert_eq!(task.containers()[0].reason(), Some(pull_error));

    bed.ecs()
        .inject_start_fault(StartFault::NoPlacement("RESOURCE:MEMORY".into()));
    let refused = run().send().await.unwrap();
    assert!(refused.tasks().is_empty());
    assert_eq!(refused.failures()[0].reason(), Some("RESOURCE:MEMORY"));

    let spot = run().send().await.unwrap().tasks()[0]
        .task_arn()
        .unwrap()
        .to_owned();
    wait_until_running(&client, &spot).await;
    let interruption = StopRequest {
        code: "SpotInterruption".into(),
        reason: "Your Spot Task was interrupted.".into(),
    };
    assert!(bed.ecs().interrupt(&spot, interruption));
    let task = wait_for_task(&client, CLUSTER, &spot, Duration::from_secs(5)).await;
    assert_eq!(
        task.stop_code().map(|c| c.as_str()),
        Some("SpotInterruption")
    );
    assert_eq!(
        task.stopped_reason(),
        Some("Your Spot Task was interrupted.")
    );
}

async fn wait_until_running(client: &aws_sdk_ecs::Client, arn: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let described = client
            .describe_tasks()
            .cluster(CLUSTER)
            .tasks(arn)
            .send()
            .await
            .unwrap();
        if described.tasks()[0].last_status() == Some("RUNNING") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "task {arn} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
