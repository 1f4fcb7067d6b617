//! The settings this crate reads, with serde and their JSON Schema (through
//! `updraft_config`): `[ec2]`, shared by every EC2 pool (region, endpoints, names, where the
//! agent token is kept, the notice queue), and each pool fleet's `[fleet.ec2]` (image,
//! instance type, network, spot, cost tags).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use updraft_config::{Duration, Errors, Path, Settings};

/// EC2 pools. Credentials and the region come from the usual AWS sources (environment,
/// profile, the scheduler's own role) unless set here.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ec2Settings {
    /// The region, e.g. `"eu-west-1"`; by default the AWS SDK's.
    pub region: Option<String>,
    /// One endpoint for every AWS service (e.g. a local emulator); by default AWS's own.
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub endpoint_url: Option<String>,
    /// Endpoints per service (`autoscaling`, `ec2`, `ssm`, `sqs`), for VPC endpoints or
    /// emulators; these win over `endpoint_url`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Attempts per AWS call (throttling, 5xx and network errors are retried with backoff).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// The launch templates and Auto Scaling groups are named
    /// `<prefix>-<fleet>-spot` and `<prefix>-<fleet>-on-demand`, and tagged `updraft:pool = <prefix>`.
    #[serde(default = "default_prefix")]
    #[schemars(pattern(r"^[A-Za-z0-9-]+$"), extend("x-expected" = "letters, digits and '-'"))]
    pub prefix: String,
    /// SSM Parameter Store path under which each pool fleet's agent registration token is
    /// kept as a SecureString (`<path>/<fleet>/agent-token`). Instances read it at boot (their
    /// role needs `ssm:GetParameter` on it); it is never in user data.
    #[serde(default = "default_parameter_prefix")]
    #[schemars(pattern(r"^/[A-Za-z0-9_./-]+[^/]$"), extend("x-expected" = "a parameter path like \"/updraft/pools\""))]
    pub parameter_prefix: String,
    /// The KMS key for that SecureString; by default the account's `alias/aws/ssm`.
    pub parameter_kms_key: Option<String>,
    /// An SQS queue an EventBridge rule fills with "EC2 Spot Instance Interruption Warning"
    /// and "EC2 Instance Rebalance Recommendation" events: the pool drains the instance named
    /// at once (its agents finish their jobs and stop) and launches a replacement.
    #[schemars(pattern(r"^https?://"), extend("x-expected" = "an http:// or https:// URL"))]
    pub notice_queue_url: Option<String>,
    /// Long-poll wait per receive on the notice queue (SQS allows at most 20 s).
    #[serde(default = "default_notice_wait")]
    pub notice_wait: Duration,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_prefix() -> String {
    "updraft".into()
}
fn default_parameter_prefix() -> String {
    "/updraft/pools".into()
}
fn default_notice_wait() -> Duration {
    Duration::from_secs(20)
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Ec2Settings {
            region: None,
            endpoint_url: None,
            endpoints: BTreeMap::new(),
            max_attempts: default_max_attempts(),
            prefix: default_prefix(),
            parameter_prefix: default_parameter_prefix(),
            parameter_kms_key: None,
            notice_queue_url: None,
            notice_wait: default_notice_wait(),
        }
    }
}

/// The services an endpoint may be given for in `[ec2] endpoints`.
pub const SERVICES: [&str; 4] = ["autoscaling", "ec2", "ssm", "sqs"];

impl Settings for Ec2Settings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
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
        if self.notice_wait.get() > std::time::Duration::from_secs(20) {
            errors.push(
                &at.key("notice_wait"),
                format!(
                    "expected at most 20s (SQS's longest poll), got {}",
                    self.notice_wait
                ),
            );
        }
    }
}

/// `[fleet.ec2]`: what a pool fleet's instances are.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ec2FleetSettings {
    /// The AMI: bash, curl and the AWS CLI (Amazon Linux has them), and the agent the
    /// fleet's template runs (`buildkite-agent` or `updraft`).
    #[schemars(length(min = 1))]
    pub image_id: String,
    /// The instance type, e.g. `"m7g.large"`.
    #[schemars(length(min = 1))]
    pub instance_type: String,
    /// The subnets instances are launched into (the group spreads them over their zones).
    #[schemars(length(min = 1))]
    pub subnets: Vec<String>,
    /// Security groups of the instances.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The instance profile (name or ARN): it needs `ssm:GetParameter` on the agent token and
    /// `ec2:CreateTags` on the instance itself (the boot script tags it when its agents have
    /// exited).
    pub instance_profile: Option<String>,
    /// An EC2 key pair for SSH.
    pub key_name: Option<String>,
    /// Buy spot instances first; when a spot request goes unfilled for
    /// `spot_launch_timeout` (or the group reports a failed launch), buy on-demand instead
    /// for `spot_retry_after`.
    #[serde(default)]
    pub spot: bool,
    /// How long spot capacity may fail to arrive before the pool falls back to on-demand.
    #[serde(default = "default_spot_launch_timeout")]
    pub spot_launch_timeout: Duration,
    /// How long the pool buys on-demand after spot failed, before trying spot again.
    #[serde(default = "default_spot_retry_after")]
    pub spot_retry_after: Duration,
    /// Where the boot script keeps each instance's agent logs (`<dir>/<instance id>/`).
    #[serde(default = "default_agent_dir")]
    #[schemars(length(min = 1))]
    pub agent_dir: String,
    /// How often the boot script looks for the drain tag (via instance metadata).
    #[serde(default = "default_drain_poll")]
    pub drain_poll: Duration,
    /// More tags on every instance and volume, for cost allocation (`{ team = "ci" }`);
    /// `updraft:pool`, `updraft:fleet` and `updraft:capacity` are always set.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_spot_launch_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_spot_retry_after() -> Duration {
    Duration::from_secs(600)
}
fn default_agent_dir() -> String {
    "/var/lib/updraft-agent".into()
}
fn default_drain_poll() -> Duration {
    Duration::from_secs(2)
}

impl Settings for Ec2FleetSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        for key in self.tags.keys() {
            if key.starts_with("aws:") || key.starts_with("updraft:") {
                errors.push(
                    &at.key("tags").key(key),
                    "the aws: and updraft: prefixes are reserved",
                );
            }
        }
    }
}
