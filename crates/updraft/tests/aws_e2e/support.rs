//! What the AWS end-to-end tests share: moto and the CodeBuild/ECS stand-in (the test bed,
//! in this process), the emulator, a config pointing `updraft run` at all of them, the real
//! binary as a child process (killed and restarted at will), and checks on the emulator's
//! record of each job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use updraft_aws_fakes::{sdk_config, AwsTestBed, CodeBuildSettings, EcsSettings, Service};
use updraft_emulator::{EmulatorConfig, EmulatorHandle, JobState};
use uuid::Uuid;

pub use crate::scheduler_process::SchedulerProcess;

pub const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
/// Upper bound for a whole run to settle; tests end as soon as it does.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// The dummy credentials moto and the stand-in accept.
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// The AWS end-to-end tests share two cores with many build processes: one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pipeline step: its command, its environment and its parallelism.
pub type Step<'a> = (&'a str, &'a [(&'a str, &'a str)], u32);

pub struct AwsWorld {
    pub bed: AwsTestBed,
    pub emulator: EmulatorHandle,
    pub state: tempfile::TempDir,
}

pub fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

impl AwsWorld {
    pub async fn start() -> AwsWorld {
        AwsWorld::start_with(CodeBuildSettings::default(), EcsSettings::default()).await
    }

    pub async fn start_with(codebuild: CodeBuildSettings, ecs: EcsSettings) -> AwsWorld {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let bed = AwsTestBed::start_with(codebuild, ecs)
            .await
            .expect("moto and the stand-in start");
        let emulator = updraft_emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        AwsWorld {
            bed,
            emulator,
            state: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn codebuild(&self) -> aws_sdk_codebuild::Client {
        aws_sdk_codebuild::Client::new(&self.bed.sdk_config_for(Service::CodeBuild))
    }

    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::new(&self.bed.sdk_config_for(Service::Ecs))
    }

    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&sdk_config(self.bed.moto_endpoint()))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.state.path().join(name)
    }

    /// A config for `updraft run` with `fleets` appended (TOML `[[fleet]]` tables).
    pub fn config(&self, fleets: &str, extra_aws: &str) -> PathBuf {
        let text = format!(
            "[buildkite]\nendpoint = {endpoint}\nagent_token = {token}\nstack_key = \"aws-e2e\"\npoll_interval_ms = 1000\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {ledger}\n\n[reconcile]\ninterval_ms = 500\n\n\
             [aws]\nendpoint_url = {moto}\nendpoints = {{ codebuild = {standin}, ecs = {standin} }}\nstate_dir = {state}\n\
             status_interval = \"200ms\"\nlog_poll_interval = \"100ms\"\nlog_settle = \"300ms\"\n{extra_aws}\n\n{fleets}",
            endpoint = quote(&self.emulator.agent_endpoint()),
            token = quote(self.emulator.agent_token().expose()),
            ledger = quote(&self.path("ledger.sqlite").display().to_string()),
            moto = quote(self.bed.moto_endpoint()),
            standin = quote(self.bed.standin_endpoint()),
            state = quote(&self.path("aws").display().to_string()),
        );
        let path = self.path("updraft.toml");
        std::fs::write(&path, text).expect("config file");
        path
    }

    /// The fleet template running the real agent for one job.
    pub fn agent_template(&self) -> String {
        format!(
            "[fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n\
             env = {{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}\n",
            quote(UPDRAFT),
            quote(&self.path("builds").display().to_string()),
        )
    }

    /// A NO_SOURCE project (every launch overrides its buildspec).
    pub async fn create_project(&self, name: &str) {
        use aws_sdk_codebuild::types::{
            ArtifactsType, ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment,
            ProjectSource, SourceType,
        };
        self.codebuild()
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

    /// A pipeline with one step per `(command, env, parallelism)` on `queue`; its job ids.
    pub fn build(&self, slug: &str, queue: &str, steps: &[Step<'_>]) -> Vec<Uuid> {
        let mut yaml = String::from("steps:\n");
        for (command, env, parallelism) in steps {
            yaml.push_str(&format!(
                "  - command: {}\n    parallelism: {parallelism}\n    agents: {{queue: {queue}}}\n",
                quote(command)
            ));
            if !env.is_empty() {
                yaml.push_str("    env:\n");
                for (key, value) in env.iter() {
                    yaml.push_str(&format!("      {key}: {}\n", quote(value)));
                }
            }
        }
        self.emulator
            .create_pipeline(slug, &yaml)
            .expect("pipeline");
        self.emulator.create_build(slug).expect("build").job_ids
    }

    pub fn timeline(&self, job: Uuid) -> serde_json::Value {
        self.emulator.job_timeline(job).expect("the job exists")
    }

    /// Wait until every job is in a final state; panics with their states after PATIENCE.
    pub async fn wait_until_final(&self, jobs: &[Uuid], log: &Path) {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let states: Vec<Option<JobState>> =
                jobs.iter().map(|j| self.emulator.job_state(*j)).collect();
            if states.iter().all(|s| s.is_some_and(JobState::is_terminal)) {
                return;
            }
            if Instant::now() > give_up {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for state in &states {
                    *counts.entry(format!("{state:?}")).or_default() += 1;
                }
                let tail: String = std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("jobs did not all finish within {PATIENCE:?}: {counts:?}; scheduler log (last lines, newest first):\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each job was acquired exactly once.
    pub fn assert_each_acquired_once(&self, jobs: &[Uuid]) {
        for job in jobs {
            let timeline = self.timeline(*job);
            assert_eq!(timeline["acquires"], 1, "job {job}: {timeline:#}");
        }
    }
}

/// `updraft run` with the AWS test credentials in its environment.
pub async fn start_scheduler(config: &Path, log: &Path) -> SchedulerProcess {
    SchedulerProcess::start(config, log, &AWS_ENV).await
}

/// The ECS cluster and log group of the ECS tests.
pub const ECS_CLUSTER: &str = "agents";
pub const ECS_LOG_GROUP: &str = "/ecs/updraft-jobs";

impl AwsWorld {
    /// A cluster and a Fargate task definition `agent` whose container `agent` logs with
    /// awslogs (prefix `job`).
    pub async fn create_ecs_definition(&self) {
        use aws_sdk_ecs::types::{
            Compatibility, ContainerDefinition, LogConfiguration, LogDriver, NetworkMode,
        };
        let ecs = self.ecs();
        ecs.create_cluster()
            .cluster_name(ECS_CLUSTER)
            .send()
            .await
            .expect("CreateCluster");
        self.logs()
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

    /// A Fargate fleet of the `agent` definition.
    pub fn ecs_fleet(&self, name: &str, queue: &str, mode: &str, extra: &str) -> String {
        format!(
            "[[fleet]]\nname = \"{name}\"\nqueue = \"{queue}\"\nbackend = \"ecs\"\n{extra}\n{}\n\
             [fleet.ecs]\ncluster = \"{ECS_CLUSTER}\"\ntask_definition = \"agent\"\nmode = \"{mode}\"\nlaunch_type = \"FARGATE\"\n\
             subnets = [\"subnet-0abc\"]\nsecurity_groups = [\"sg-0abc\"]\ncancel_grace = \"1s\"\n",
            self.agent_template()
        )
    }
}
