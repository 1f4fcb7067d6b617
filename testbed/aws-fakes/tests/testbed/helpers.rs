//! Helpers the test bed's own tests share: clients, a NO_SOURCE project, waiting for a build
//! or task to end, reading a whole log stream from the head.

use std::time::{Duration, Instant};

use aws_sdk_codebuild::types::{
    ArtifactsType, ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment,
    ProjectSource, SourceType,
};
use updraft_aws_fakes::{AwsTestBed, Service};

pub fn codebuild(bed: &AwsTestBed) -> aws_sdk_codebuild::Client {
    aws_sdk_codebuild::Client::new(&bed.sdk_config_for(Service::CodeBuild))
}

pub fn ecs(bed: &AwsTestBed) -> aws_sdk_ecs::Client {
    aws_sdk_ecs::Client::new(&bed.sdk_config_for(Service::Ecs))
}

pub fn logs(bed: &AwsTestBed) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&bed.sdk_config_for(Service::CloudWatchLogs))
}

pub fn ssm(bed: &AwsTestBed) -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&bed.sdk_config_for(Service::Ssm))
}

/// Creates a NO_SOURCE project whose buildspec is `buildspec`.
pub async fn create_project(client: &aws_sdk_codebuild::Client, name: &str, buildspec: &str) {
    client
        .create_project()
        .name(name)
        .source(
            ProjectSource::builder()
                .r#type(SourceType::NoSource)
                .buildspec(buildspec)
                .build()
                .unwrap(),
        )
        .artifacts(
            ProjectArtifacts::builder()
                .r#type(ArtifactsType::NoArtifacts)
                .build()
                .unwrap(),
        )
        .environment(
            ProjectEnvironment::builder()
                .r#type(EnvironmentType::LinuxContainer)
                .image("aws/codebuild/amazonlinux-x86_64-standard:5.0")
                .compute_type(ComputeType::BuildGeneral1Small)
                .build()
                .unwrap(),
        )
        .service_role("arn:aws:iam::123456789012:role/codebuild")
        .send()
        .await
        .expect("CreateProject");
}

/// Polls BatchGetBuilds until the build is complete.
pub async fn wait_for_build(
    client: &aws_sdk_codebuild::Client,
    id: &str,
    within: Duration,
) -> aws_sdk_codebuild::types::Build {
    let deadline = Instant::now() + within;
    loop {
        let builds = client.batch_get_builds().ids(id).send().await.unwrap();
        let build = builds.builds().first().cloned().expect("the build exists");
        if build.build_complete() {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} still running: {build:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls DescribeTasks until the task is STOPPED.
pub async fn wait_for_task(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    arn: &str,
    within: Duration,
) -> aws_sdk_ecs::types::Task {
    let deadline = Instant::now() + within;
    loop {
        let described = client
            .describe_tasks()
            .cluster(cluster)
            .tasks(arn)
            .send()
            .await
            .unwrap();
        let task = described.tasks().first().cloned().expect("the task exists");
        if task.last_status() == Some("STOPPED") {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {arn} still running: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event message of a stream, read from the head page by page with
/// `nextForwardToken` until the token comes back unchanged.
pub async fn read_log(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> (Vec<String>, usize) {
    let (mut messages, mut pages) = (Vec::new(), 0);
    let mut token: Option<String> = None;
    loop {
        let page = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("GetLogEvents");
        pages += 1;
        messages.extend(
            page.events()
                .iter()
                .filter_map(|e| e.message().map(str::to_owned)),
        );
        let next = page.next_forward_token().map(str::to_owned);
        if next.is_none() || next == token {
            return (messages, pages);
        }
        token = next;
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet, which runs nothing).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
