//! The settings this crate reads, with serde and their JSON Schema (through
//! `updraft_config`): the shared `[aws]` table (region, endpoints, where per-launch secrets and
//! the backends' state live, push through SQS) and each fleet's `[fleet.codebuild]` or
//! `[fleet.ecs]` table. Rules spanning several keys are in `Settings::validate`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use updraft_config::{Duration, Errors, Path, Settings};

/// AWS, shared by the CodeBuild and ECS backends and push through SQS. Credentials and the
/// region come from the usual AWS sources (environment, profile, the task's or instance's
/// role) unless set here.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The region, e.g. `"eu-west-1"`; by default the AWS SDK's (`AWS_REGION`, the profile,
    /// instance metadata).
    pub region: Option<String>,
    /// One endpoint for every AWS service (e.g. a local emulator); by default AWS's own.
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub endpoint_url: Option<String>,
    /// Endpoints per service, by the SDK's service name (`codebuild`, `ecs`, `logs`, `ssm`,
    /// `secretsmanager`, `s3`, `sqs`), for VPC endpoints or emulators; these win over
    /// `endpoint_url`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Attempts per AWS call (throttling, 5xx and network errors are retried with backoff).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// Where the AWS backends keep their state (which launch is which build or task, and
    /// each relay's progress): a directory readable only by Updraft.
    #[serde(default = "default_state_dir")]
    #[schemars(length(min = 1))]
    pub state_dir: String,
    /// SSM Parameter Store path under which each launch's job acquisition token is kept as a
    /// SecureString while the launch lives (`<prefix>/<launch name>`).
    #[serde(default = "default_parameter_prefix")]
    #[schemars(pattern(r"^/[A-Za-z0-9_./-]+[^/]$"), extend("x-expected" = "a parameter path like \"/updraft/launches\""))]
    pub parameter_prefix: String,
    /// The KMS key for those SecureStrings; by default the account's `alias/aws/ssm`.
    pub parameter_kms_key: Option<String>,
    /// How often the state of running builds and tasks is read (one batched call per
    /// backend each time).
    #[serde(default = "default_status_interval")]
    pub status_interval: Duration,
    /// How often a relay reads a build's or task's log when it has caught up. CloudWatch
    /// Logs allows few GetLogEvents calls per second per account, shared by every relay.
    #[serde(default = "default_log_poll_interval")]
    pub log_poll_interval: Duration,
    /// After a build or task has ended, how long its log may still be growing (CloudWatch
    /// Logs ingestion delay) before the relay finishes the job.
    #[serde(default = "default_log_settle")]
    pub log_settle: Duration,
    /// Push through SQS: an EventBridge rule sends Buildkite's "Job Scheduled" events to
    /// this queue and Updraft long-polls it, so it needs no inbound endpoint.
    pub sqs_push: Option<SqsPushSettings>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_state_dir() -> String {
    "updraft-aws".into()
}
fn default_parameter_prefix() -> String {
    "/updraft/launches".into()
}
fn default_status_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_log_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_log_settle() -> Duration {
    Duration::from_secs(2)
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            endpoint_url: None,
            endpoints: BTreeMap::new(),
            max_attempts: default_max_attempts(),
            state_dir: default_state_dir(),
            parameter_prefix: default_parameter_prefix(),
            parameter_kms_key: None,
            status_interval: default_status_interval(),
            log_poll_interval: default_log_poll_interval(),
            log_settle: default_log_settle(),
            sqs_push: None,
        }
    }
}

/// The services an endpoint may be given for in `[aws] endpoints`.
pub const SERVICES: [&str; 7] = [
    "codebuild",
    "ecs",
    "logs",
    "ssm",
    "secretsmanager",
    "s3",
    "sqs",
];

impl Settings for AwsSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if let Some(sqs) = &self.sqs_push {
            sqs.validate(&at.key("sqs_push"), errors);
        }
        for (service, url) in &self.endpoints {
            let here = at.key("endpoints").key(service);
            if !SERVICES.contains(&service.as_str()) {
                errors.push(
                    &here,
                    format!("unknown service; expected one of {}", SERVICES.join(", ")),
                );
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(
                    &here,
                    format!("expected an http:// or https:// URL, got {url:?}"),
                );
            }
        }
    }
}

/// The queue an EventBridge rule fills with Buildkite "Job Scheduled"
/// events. A message is deleted only once its job is recorded; until then it stays invisible
/// (its visibility extended while it is handled) and comes back if Updraft dies.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsPushSettings {
    /// The queue's URL, e.g. `"https://sqs.eu-west-1.amazonaws.com/123456789012/updraft-jobs"`.
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub queue_url: String,
    /// Long-poll wait per receive (SQS allows at most 20 s).
    #[serde(default = "default_wait")]
    pub wait: Duration,
    /// How long a received message stays invisible to other receivers; extended while its
    /// job is being recorded.
    #[serde(default = "default_visibility")]
    pub visibility_timeout: Duration,
    /// Messages per receive (1–10).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 10))]
    pub batch: u32,
}

fn default_wait() -> Duration {
    Duration::from_secs(20)
}
fn default_visibility() -> Duration {
    Duration::from_secs(30)
}
fn default_batch() -> u32 {
    10
}

impl Settings for SqsPushSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if self.wait.get() > std::time::Duration::from_secs(20) {
            errors.push(&at.key("wait"), "SQS long polls wait at most 20s");
        }
        if self.visibility_timeout.get() > std::time::Duration::from_secs(12 * 3600) {
            errors.push(&at.key("visibility_timeout"), "SQS allows at most 12h");
        }
    }
}

/// How a fleet's launches run their job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// The build or task runs an agent (`updraft agent start` or `buildkite-agent start`)
    /// bound to its one job with a job acquisition token, kept in a per-launch SSM
    /// SecureString and never in plaintext in the request.
    #[default]
    Acquire,
    /// Updraft acquires the job itself; the build or task runs only the job's command and
    /// holds no Buildkite credential, and Updraft relays its CloudWatch Logs into the job
    /// log and finishes the job with the command's exit status.
    Relay,
}

/// A fleet whose launches are CodeBuild builds of one project.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBuildFleetSettings {
    /// The CodeBuild project (name or ARN) every build of the fleet is started from.
    #[schemars(length(min = 1))]
    pub project: String,
    /// How launches run their job.
    #[serde(default)]
    pub mode: RunMode,
    /// The image when a job does not ask for one (`CB_IMAGE_OVERRIDE`); by default the
    /// project's.
    pub image: Option<String>,
    /// The compute type when a job does not ask for one (`CB_COMPUTE_TYPE_OVERRIDE`); by
    /// default the project's.
    pub compute_type: Option<String>,
    /// Images a job may ask for with `CB_IMAGE_OVERRIDE`; empty refuses every image override.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Compute types a job may ask for with `CB_COMPUTE_TYPE_OVERRIDE` (e.g.
    /// `"BUILD_GENERAL1_LARGE"`); empty refuses every compute type override.
    #[serde(default)]
    pub allowed_compute_types: Vec<String>,
    /// Whether a job may ask for privileged mode (Docker in the build) with
    /// `CB_PRIVILEGED_MODE_OVERRIDE=true`.
    #[serde(default)]
    pub allow_privileged_mode: bool,
    /// Commands run in the buildspec's `install` phase before the job (e.g. fetching the
    /// agent binary when the image lacks it).
    #[serde(default)]
    pub install_commands: Vec<String>,
    /// The shell and flags a relayed command runs with; the command is the last argument.
    #[serde(default = "default_codebuild_shell")]
    pub shell: Vec<String>,
    /// After a relayed job is cancelled: how long the build may take to stop before the job
    /// is finished anyway.
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace: Duration,
}

fn default_codebuild_shell() -> Vec<String> {
    vec!["/bin/bash".into(), "-e".into(), "-c".into()]
}
fn default_ecs_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-e".into(), "-c".into()]
}
fn default_cancel_grace() -> Duration {
    Duration::from_secs(5)
}

impl Settings for CodeBuildFleetSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if self.shell.is_empty() {
            errors.push(
                &at.key("shell"),
                "expected at least the program, e.g. [\"/bin/bash\", \"-e\", \"-c\"]",
            );
        }
        for (key, value, allowed) in [
            ("image", &self.image, &self.allowed_images),
            (
                "compute_type",
                &self.compute_type,
                &self.allowed_compute_types,
            ),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                errors.push(&at.key(key), "expected a value, got \"\"");
            }
            if let Some(i) = allowed.iter().position(String::is_empty) {
                errors.push(
                    &at.key(&format!("allowed_{key}s")).index(i),
                    "expected a value, got \"\"",
                );
            }
        }
    }
}

/// The ECS launch type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum LaunchType {
    #[serde(rename = "FARGATE")]
    Fargate,
    #[serde(rename = "EC2")]
    Ec2,
}

/// One entry of a capacity provider strategy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityProviderItem {
    /// `FARGATE`, `FARGATE_SPOT`, or an EC2 capacity provider's name.
    #[schemars(length(min = 1))]
    pub capacity_provider: String,
    /// Relative share of tasks.
    #[serde(default = "default_weight")]
    #[schemars(range(max = 1000))]
    pub weight: u32,
    /// Tasks placed on this provider first.
    #[serde(default)]
    #[schemars(range(max = 100000))]
    pub base: u32,
}

fn default_weight() -> u32 {
    1
}

/// A fleet whose launches are ECS tasks of one task definition.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EcsFleetSettings {
    /// The cluster (name or ARN).
    #[schemars(length(min = 1))]
    pub cluster: String,
    /// The task definition (`family`, `family:revision` or ARN).
    #[schemars(length(min = 1))]
    pub task_definition: String,
    /// The container that runs the job; by default the definition's first essential one.
    pub container: Option<String>,
    /// How launches run their job.
    #[serde(default)]
    pub mode: RunMode,
    /// `FARGATE` or `EC2`; leave it and `capacity_provider_strategy` unset to use the
    /// cluster's default strategy.
    pub launch_type: Option<LaunchType>,
    /// Capacity providers to place tasks on (e.g. `FARGATE_SPOT` with `FARGATE` as base).
    #[serde(default)]
    pub capacity_provider_strategy: Vec<CapacityProviderItem>,
    /// Subnets for `awsvpc` tasks (required for Fargate).
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Security groups for `awsvpc` tasks (at most 5).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Give `awsvpc` tasks a public IP (Fargate in a public subnet without a NAT).
    #[serde(default)]
    pub assign_public_ip: bool,
    /// CPU units for the job's container (1024 = one vCPU); by default the definition's.
    #[schemars(range(min = 1))]
    pub cpu: Option<u32>,
    /// Memory (MiB) for the job's container; by default the definition's.
    #[schemars(range(min = 1))]
    pub memory: Option<u32>,
    /// The shell and flags a relayed command runs with; the command is the last argument.
    #[serde(default = "default_ecs_shell")]
    pub shell: Vec<String>,
    /// After a relayed job is cancelled: how long the task may take to stop before the job
    /// is finished anyway.
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace: Duration,
}

impl Settings for EcsFleetSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        if self.launch_type.is_some() && !self.capacity_provider_strategy.is_empty() {
            errors.push(
                &at.key("capacity_provider_strategy"),
                "set either launch_type or capacity_provider_strategy, not both (ECS refuses both)",
            );
        }
        let fargate = self.launch_type == Some(LaunchType::Fargate)
            || self
                .capacity_provider_strategy
                .iter()
                .any(|item| item.capacity_provider.starts_with("FARGATE"));
        if fargate && self.subnets.is_empty() {
            errors.push(&at.key("subnets"), "Fargate tasks need at least one subnet");
        }
        if self.subnets.len() > 16 {
            errors.push(
                &at.key("subnets"),
                format!("at most 16, got {}", self.subnets.len()),
            );
        }
        if self.security_groups.len() > 5 {
            errors.push(
                &at.key("security_groups"),
                format!("at most 5, got {}", self.security_groups.len()),
            );
        }
        if self.capacity_provider_strategy.len() > 20 {
            errors.push(
                &at.key("capacity_provider_strategy"),
                "at most 20 providers",
            );
        }
        if self.shell.is_empty() {
            errors.push(
                &at.key("shell"),
                "expected at least the program, e.g. [\"/bin/sh\", \"-e\", \"-c\"]",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use updraft_config::read;

    fn read_value<T: Settings>(value: serde_json::Value) -> (Option<T>, Vec<String>) {
        let mut errors = Errors::new();
        let at = Path::root().key("fleet").index(0).key("ecs");
        let settings = read::<T>(&value, &at, &mut errors);
        (
            settings,
            errors.into_vec().iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_codebuild_fleet_reads_with_defaults() {
        let (fleet, errors) =
            read_value::<CodeBuildFleetSettings>(serde_json::json!({"project": "ci"}));
        assert!(errors.is_empty(), "{errors:?}");
        let fleet = fleet.unwrap();
        assert_eq!(fleet.mode, RunMode::Acquire);
        assert!(fleet.allowed_images.is_empty() && !fleet.allow_privileged_mode);
        assert_eq!(fleet.shell, ["/bin/bash", "-e", "-c"]);
    }

    #[test]
    fn ecs_rules_that_span_keys_are_named_with_their_paths() {
        let (_, errors) = read_value::<EcsFleetSettings>(serde_json::json!({
            "cluster": "ci", "task_definition": "agent", "launch_type": "FARGATE",
            "capacity_provider_strategy": [{"capacity_provider": "FARGATE_SPOT"}],
            "mode": "pool",
        }));
        for expected in [
            "fleet[0].ecs.capacity_provider_strategy: set either launch_type or capacity_provider_strategy, not both (ECS refuses both)",
            "fleet[0].ecs.subnets: Fargate tasks need at least one subnet",
        ] {
            assert!(errors.iter().any(|e| e == expected), "{expected} not in {errors:#?}");
        }
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("fleet[0].ecs.mode: expected \"acquire\" or \"relay\"")),
            "{errors:#?}"
        );
    }

    #[test]
    fn aws_endpoints_name_known_services() {
        let mut errors = Errors::new();
        let aws = read::<AwsSettings>(
            &serde_json::json!({"endpoints": {"codebuild": "http://127.0.0.1:1", "lambda": "ftp://x"}}),
            &Path::root().key("aws"),
            &mut errors,
        );
        assert!(aws.is_some());
        let errors: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("aws.endpoints.lambda: unknown service")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("aws.endpoints.lambda: expected an http")),
            "{errors:?}"
        );
    }
}
