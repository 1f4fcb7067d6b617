//! What differs between CodeBuild and ECS behind one backend: how a launch's request is
//! built (for an agent in acquire mode, for a bare command in relay mode), how it is started
//! idempotently, how its state and log location are read, how it is stopped and found again.
//! Everything else (state, secrets, relays, listing, deadlines) is shared in `backend`.

use crate::errors::AwsError;
use crate::settings::RunMode;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use updraft_agent::CommandOutcome;
use updraft_backends::{LaunchName, LaunchPhase, LaunchSpec};

/// Where a build's or task's output is in CloudWatch Logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLocation {
    pub group: String,
    pub stream: String,
}

/// How a platform's log events make up the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// CodeBuild: each event keeps its line's newline, and CodeBuild's own `[Container] …`
    /// lines are left out.
    CodeBuild,
    /// ECS `awslogs`: one event per line without its newline (empty lines are lost).
    AwsLogs,
}

/// A build or task as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `Pending`, `Running`, or how it ended.
    pub phase: LaunchPhase,
    /// Why it is not running yet, in words for the build.
    pub detail: Option<String>,
    /// Once it has ended: the relayed command's outcome.
    pub outcome: Option<CommandOutcome>,
    /// Once it has ended without the command's own exit status: why, for the end of the log.
    pub epilogue: Option<String>,
    pub logs: Option<LogLocation>,
}

/// Labels a launch carries (ECS tags; CodeBuild, which has no build tags, gets them as plain
/// variables), so a person can tell from the console which job a build or task ran.
#[derive(Debug, Clone, Default)]
pub struct LaunchLabels {
    pub launch: String,
    pub fleet: String,
    pub job: String,
    pub pipeline: Option<String>,
    pub build: Option<String>,
}

impl LaunchLabels {
    pub fn of(spec: &LaunchSpec) -> LaunchLabels {
        LaunchLabels {
            launch: spec.name.to_string(),
            fleet: spec.fleet.clone(),
            job: spec.job_id.to_string(),
            pipeline: spec
                .job
                .pipeline_slug
                .clone()
                .or_else(|| spec.job.env.get("BUILDKITE_PIPELINE_SLUG").cloned()),
            build: spec
                .job
                .build_number
                .map(|n| n.to_string())
                .or_else(|| spec.job.env.get("BUILDKITE_BUILD_NUMBER").cloned()),
        }
    }

    /// As `(key, value)` pairs, under `updraft:` and `buildkite:` prefixes.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("updraft:launch".to_string(), self.launch.clone()),
            ("updraft:fleet".to_string(), self.fleet.clone()),
            ("buildkite:job".to_string(), self.job.clone()),
        ];
        if let Some(pipeline) = &self.pipeline {
            pairs.push(("buildkite:pipeline".into(), pipeline.clone()));
        }
        if let Some(build) = &self.build {
            pairs.push(("buildkite:build".into(), build.clone()));
        }
        pairs
    }
}

/// A relayed job's command and environment, as the platform request needs them.
#[derive(Debug, Clone)]
pub struct RelayedJob {
    pub command: String,
    /// The job's environment without any Buildkite credential.
    pub env: BTreeMap<String, String>,
    pub labels: LaunchLabels,
}

/// What a start created: the build id or task ARN, and anything to clean up with it.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub extra: Option<String>,
}

#[async_trait]
pub trait Platform: Send + Sync + 'static {
    /// The backend's name (`codebuild`, `ecs`).
    fn kind(&self) -> &'static str;

    /// The fleet's mode; `None` for a fleet this backend has no settings for.
    fn mode(&self, fleet: &str) -> Option<RunMode>;

    /// How this platform's log events make up the output.
    fn line_style(&self) -> LineStyle;

    /// How long the platform remembers a start's idempotency token.
    fn token_lifetime(&self) -> Duration;

    /// After a relayed job is cancelled, how long its build or task may take to stop.
    fn cancel_grace(&self, fleet: &str) -> Duration;

    /// Refuse a job whose per-job settings the fleet does not allow (e.g. an override
    /// outside the allowed values): the reason names the variable, the value and what is
    /// allowed.
    fn check(&self, fleet: &str, env: &BTreeMap<String, String>) -> Result<(), String>;

    /// The request (JSON, no secret in it) for an agent launch; `secrets` maps each secret
    /// variable to the SSM parameter holding it.
    fn agent_request(
        &self,
        spec: &LaunchSpec,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, String>;

    /// The request for a relayed job's command.
    fn relay_request(&self, fleet: &str, job: &RelayedJob) -> Result<String, String>;

    /// Start `request` under `token` (a repeat with the same token starts nothing new).
    async fn start(
        &self,
        name: &LaunchName,
        fleet: &str,
        request: &str,
        token: &str,
    ) -> Result<Started, AwsError>;

    /// The state of each of `ids` (those the platform no longer knows are left out).
    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, Observed>, AwsError>;

    /// Ask a build or task to stop.
    async fn stop(&self, fleet: &str, id: &str, reason: &str) -> Result<(), AwsError>;

    /// The build or task a launch became, when the answer to its start was lost.
    async fn find(&self, fleet: &str, name: &LaunchName) -> Result<Option<String>, AwsError>;

    /// Remove what a launch made besides the build or task itself (`Started::extra`).
    async fn clean_up(&self, extra: &str) -> Result<(), AwsError>;
}
