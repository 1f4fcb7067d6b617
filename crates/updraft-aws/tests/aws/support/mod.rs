//! What the AWS backend tests share: moto and the CodeBuild/ECS stand-in (the test bed), the
//! emulator, clients and settings pointed at them, a CodeBuild project, and launch specs made
//! the way the scheduler makes them (a reserved job, a fresh job acquisition token, the job's
//! details).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use updraft_aws::settings::{AwsSettings, CodeBuildFleetSettings};
use updraft_aws::{AwsClients, BackendOptions};
use updraft_aws_fakes::{sdk_config, AwsTestBed, CodeBuildSettings, EcsSettings};
use updraft_backends::{Backend, JobContext, LaunchName, LaunchPhase, LaunchSpec};
use updraft_buildkite::agent_api::AgentRetries;
use updraft_buildkite::stacks::{RegisterStack, StacksClient};
use updraft_buildkite::ClientOptions;
use updraft_emulator::{EmulatorConfig, EmulatorHandle};
use uuid::Uuid;

/// Upper bound for anything asynchronous; tests finish as soon as it happens.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct World {
    pub bed: AwsTestBed,
    pub emulator: EmulatorHandle,
    /// Holds the backends' state directories for as long as the world lives.
    _state: tempfile::TempDir,
    pub settings: AwsSettings,
    pub clients: AwsClients,
}

/// rustls may be built with two crypto providers in one test binary (kube's ring, the AWS
/// SDK's aws-lc-rs); one must be chosen before the first TLS client is built.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl World {
    pub async fn start() -> World {
        World::start_with(
            CodeBuildSettings {
                container_log_lines: true,
                ..CodeBuildSettings::default()
            },
            EcsSettings::default(),
        )
        .await
    }

    pub async fn start_with(codebuild: CodeBuildSettings, ecs: EcsSettings) -> World {
        install_crypto();
        let bed = AwsTestBed::start_with(codebuild, ecs)
            .await
            .expect("moto and the stand-in start");
        let emulator = updraft_emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let state = tempfile::tempdir().expect("temp dir");
        let settings = AwsSettings {
            state_dir: state.path().join("aws").display().to_string(),
            endpoints: [
                ("codebuild".to_string(), bed.standin_endpoint().to_string()),
                ("ecs".to_string(), bed.standin_endpoint().to_string()),
            ]
            .into(),
            ..AwsSettings::default()
        };
        let clients = AwsClients::new(sdk_config(bed.moto_endpoint()), &settings);
        World {
            bed,
            emulator,
            _state: state,
            settings,
            clients,
        }
    }

    /// Backend timings for tests: states every 200 ms, logs every 100 ms.
    pub fn options(&self) -> BackendOptions {
        let mut options = BackendOptions::from_settings(&self.settings);
        options.status_interval = Duration::from_millis(200);
        options.log_poll_interval = Duration::from_millis(100);
        options.log_settle = Duration::from_millis(300);
        options.job_status_interval = Duration::from_millis(250);
        options.agent_retries = AgentRetries::fast();
        options.client_options = ClientOptions::default();
        options
    }

    /// A NO_SOURCE project (its own buildspec is never used: every launch overrides it).
    pub async fn create_project(&self, name: &str) {
        use aws_sdk_codebuild::types::{
            ArtifactsType, ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment,
            ProjectSource, SourceType,
        };
        self.clients
            .codebuild()
            .create_project()
            .name(name)
            .source(
                ProjectSource::builder()
                    .r#type(SourceType::NoSource)
                    .buildspec("version: 0.2\nphases:\n  build:\n    commands: [\"false\"]\n")
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

    /// A pipeline of `parallelism` jobs on queue `queue` running `command`; their ids.
    pub fn build(
        &self,
        slug: &str,
        queue: &str,
        command: &str,
        env: &[(&str, &str)],
        parallelism: u32,
    ) -> Vec<Uuid> {
        let env: String = env
            .iter()
            .map(|(k, v)| format!("      {k}: {}\n", serde_json::Value::String(v.to_string())))
            .collect();
        let env = if env.is_empty() {
            String::new()
        } else {
            format!("    env:\n{env}")
        };
        let yaml = format!(
            "steps:\n  - command: {}\n    parallelism: {parallelism}\n    agents: {{queue: {queue}}}\n{env}",
            serde_json::Value::String(command.to_string())
        );
        self.emulator
            .create_pipeline(slug, &yaml)
            .expect("pipeline");
        self.emulator.create_build(slug).expect("build").job_ids
    }

    /// Reserve `jobs` and make a spec for each, as the scheduler does: the job's details, a
    /// fresh job acquisition token, the agent's environment.
    pub async fn specs(
        &self,
        queue: &str,
        fleet: &str,
        jobs: &[Uuid],
        command: Vec<String>,
    ) -> Vec<LaunchSpec> {
        let stacks = StacksClient::new(
            &self.emulator.agent_endpoint(),
            &self.emulator.agent_token(),
            &format!("tests-{queue}"),
            ClientOptions::default(),
        )
        .unwrap();
        stacks
            .register(&RegisterStack {
                key: format!("tests-{queue}"),
                stack_type: "custom".into(),
                queue_key: queue.into(),
                metadata: BTreeMap::new(),
            })
            .await
            .expect("register stack");
        let reserved = stacks.batch_reserve(jobs, None).await.expect("reserve");
        assert_eq!(reserved.reserved.len(), jobs.len(), "{reserved:?}");
        let issued = stacks
            .issue_job_acquisition_tokens(jobs, Duration::from_secs(600))
            .await
            .expect("tokens");
        let mut specs = Vec::new();
        for token in issued.job_acquisition_tokens {
            let details = stacks.job(token.job_uuid).await.expect("job details");
            let name = LaunchName::for_job(token.job_uuid);
            let env: BTreeMap<String, String> = [
                ("BUILDKITE_AGENT_ENDPOINT", self.emulator.agent_endpoint()),
                ("BUILDKITE_AGENT_ACQUIRE_JOB", token.job_uuid.to_string()),
                ("BUILDKITE_AGENT_NAME", name.to_string()),
                ("BUILDKITE_AGENT_TAGS", format!("queue={queue}")),
                ("UPDRAFT_FLEET", fleet.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            specs.push(LaunchSpec {
                name,
                job_id: token.job_uuid,
                fleet: fleet.into(),
                job: JobContext {
                    queue: queue.into(),
                    agent_query_rules: vec![format!("queue={queue}")],
                    env: details.env,
                    command: details.command,
                    ..JobContext::default()
                },
                env,
                secrets: [(
                    "BUILDKITE_AGENT_TOKEN".to_string(),
                    token.job_acquisition_token,
                )]
                .into(),
                command: command.clone(),
                deadline: Duration::from_secs(600),
            });
        }
        specs
    }
}

pub fn codebuild_fleet(project: &str, mode: &str) -> CodeBuildFleetSettings {
    serde_json::from_value(serde_json::json!({
        "project": project,
        "mode": mode,
        "allowed_images": ["aws/codebuild/standard:7.0"],
        "allowed_compute_types": ["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_LARGE"],
        "allow_privileged_mode": true,
        "cancel_grace": "1s",
    }))
    .unwrap()
}

pub async fn phase_of(backend: &dyn Backend, name: &LaunchName) -> Option<LaunchPhase> {
    backend
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|s| &s.name == name)
        .map(|s| s.phase)
}

/// Poll until `check` holds; panics with `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll until the launch has finished.
pub async fn finished(backend: &dyn Backend, name: &LaunchName) -> LaunchPhase {
    let give_up = Instant::now() + PATIENCE;
    loop {
        let phase = phase_of(backend, name).await;
        match phase {
            Some(phase) if phase.is_finished() => return phase,
            _ if Instant::now() > give_up => {
                panic!("launch {name} did not finish; last phase {phase:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The ECS cluster, log group and task definition the ECS tests share.
pub const ECS_CLUSTER: &str = "agents";
pub const ECS_LOG_GROUP: &str = "/ecs/updraft-jobs";

impl World {
    /// A cluster and a Fargate task definition `agent` whose container `agent` logs with
    /// awslogs (prefix `job`).
    pub async fn create_ecs_definition(&self) {
        use aws_sdk_ecs::types::{
            Compatibility, ContainerDefinition, LogConfiguration, LogDriver, NetworkMode,
        };
        let ecs = self.clients.ecs();
        ecs.create_cluster()
            .cluster_name(ECS_CLUSTER)
            .send()
            .await
            .expect("CreateCluster");
        self.clients
            .logs()
            .create_log_group()
            .log_group_name(ECS_LOG_GROUP)
            .send()
            .await
            .expect("CreateLogGroup");
        let logging = LogConfiguration::builder()
            .log_driver(LogDriver::Awslogs)
            .options("awslogs-group", ECS_LOG_GROUP)
            .options("awslogs-region", "us-east-1")
            .options("awslogs-stream-prefix", "job")
            .build()
            .unwrap();
        let container = ContainerDefinition::builder()
            .name("agent")
            .image("ghcr.io/acme/updraft:1")
            .command("true")
            .memory(512)
            .log_configuration(logging)
            .build();
        ecs.register_task_definition()
            .family("agent")
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .execution_role_arn("arn:aws:iam::123456789012:role/ecsTaskExecution")
            .container_definitions(container)
            .send()
            .await
            .expect("RegisterTaskDefinition");
    }
}

pub fn ecs_fleet(mode: &str) -> updraft_aws::settings::EcsFleetSettings {
    serde_json::from_value(serde_json::json!({
        "cluster": ECS_CLUSTER,
        "task_definition": "agent",
        "mode": mode,
        "launch_type": "FARGATE",
        "subnets": ["subnet-0abc"],
        "security_groups": ["sg-0abc"],
        "cancel_grace": "1s",
    }))
    .unwrap()
}
