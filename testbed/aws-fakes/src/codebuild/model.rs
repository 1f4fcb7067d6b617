//! A build as the stand-in keeps it, and its rendering as CodeBuild's `Build` shape: phases
//! with status, times, duration and contexts, status, logs, environment, exported variables.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::protocol::epoch_seconds;
use crate::sdk::{ACCOUNT_ID, REGION};

pub const IN_PROGRESS: &str = "IN_PROGRESS";
pub const SUCCEEDED: &str = "SUCCEEDED";
pub const FAILED: &str = "FAILED";
pub const FAULT: &str = "FAULT";
pub const STOPPED: &str = "STOPPED";
pub const TIMED_OUT: &str = "TIMED_OUT";

/// CodeBuild's phase types, in the order a build goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseType {
    Submitted,
    Queued,
    Provisioning,
    DownloadSource,
    Install,
    PreBuild,
    Build,
    PostBuild,
    UploadArtifacts,
    Finalizing,
    Completed,
}

impl PhaseType {
    pub fn name(self) -> &'static str {
        match self {
            PhaseType::Submitted => "SUBMITTED",
            PhaseType::Queued => "QUEUED",
            PhaseType::Provisioning => "PROVISIONING",
            PhaseType::DownloadSource => "DOWNLOAD_SOURCE",
            PhaseType::Install => "INSTALL",
            PhaseType::PreBuild => "PRE_BUILD",
            PhaseType::Build => "BUILD",
            PhaseType::PostBuild => "POST_BUILD",
            PhaseType::UploadArtifacts => "UPLOAD_ARTIFACTS",
            PhaseType::Finalizing => "FINALIZING",
            PhaseType::Completed => "COMPLETED",
        }
    }
}

/// Why a phase ended the way it did, as `contexts[{statusCode, message}]` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseContext {
    pub status_code: String,
    pub message: String,
}

impl PhaseContext {
    pub fn new(status_code: &str, message: impl Into<String>) -> PhaseContext {
        PhaseContext {
            status_code: status_code.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub kind: PhaseType,
    /// `None` while the phase runs (and always for COMPLETED).
    pub status: Option<&'static str>,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub context: PhaseContext,
}

/// Where a build's output goes in CloudWatch Logs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTarget {
    pub group: String,
    pub stream: String,
}

#[derive(Debug, Clone)]
pub struct Build {
    pub id: String,
    pub number: i64,
    pub project: String,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub status: &'static str,
    pub phases: Vec<Phase>,
    pub complete: bool,
    /// The project's `source`, with the buildspec override applied.
    pub source: Value,
    pub source_version: Option<String>,
    /// `environment` with the overrides applied and variables merged (names and values as
    /// sent: PARAMETER_STORE/SECRETS_MANAGER values are references, not secrets).
    pub environment: Value,
    pub service_role: Value,
    pub encryption_key: String,
    /// `None` when the logs config disables CloudWatch Logs.
    pub logs: Option<LogTarget>,
    /// Whether the log stream exists yet (it is created during PROVISIONING).
    pub logs_open: bool,
    pub timeout_minutes: i64,
    pub queued_timeout_minutes: i64,
    pub exported: Option<Vec<(String, String)>>,
    pub stop_requested: bool,
}

impl Build {
    pub fn arn(&self) -> String {
        format!("arn:aws:codebuild:{REGION}:{ACCOUNT_ID}:build/{}", self.id)
    }

    pub fn current_phase(&self) -> PhaseType {
        self.phases
            .last()
            .map(|phase| phase.kind)
            .unwrap_or(PhaseType::Submitted)
    }

    /// Ends the running phase as SUCCEEDED (unless it already ended), then starts `next`.
    pub fn enter(&mut self, next: PhaseType) {
        self.end_phase(SUCCEEDED, PhaseContext::default());
        self.phases.push(Phase {
            kind: next,
            status: None,
            start: SystemTime::now(),
            end: None,
            context: PhaseContext::default(),
        });
    }

    /// Ends the running phase with `status` and `context`; a phase already ended keeps its own.
    pub fn end_phase(&mut self, status: &'static str, context: PhaseContext) {
        if let Some(phase) = self.phases.last_mut() {
            if phase.end.is_none() && phase.kind != PhaseType::Completed {
                phase.status = Some(status);
                phase.end = Some(SystemTime::now());
                phase.context = context;
            }
        }
    }

    /// Ends the build: COMPLETED is entered, the status is final and the build is complete.
    pub fn complete(&mut self, status: &'static str) {
        self.enter(PhaseType::Completed);
        self.status = status;
        self.end = Some(SystemTime::now());
        self.complete = true;
    }

    pub fn to_json(&self) -> Value {
        let mut build = json!({
            "id": self.id,
            "arn": self.arn(),
            "buildNumber": self.number,
            "startTime": epoch_seconds(self.start),
            "currentPhase": self.current_phase().name(),
            "buildStatus": self.status,
            "projectName": self.project,
            "phases": self.phases.iter().map(phase_json).collect::<Vec<_>>(),
            "source": self.source,
            "secondarySources": [],
            "secondarySourceVersions": [],
            "artifacts": { "location": "" },
            "environment": self.environment,
            "serviceRole": self.service_role,
            "timeoutInMinutes": self.timeout_minutes,
            "queuedTimeoutInMinutes": self.queued_timeout_minutes,
            "buildComplete": self.complete,
            "initiator": "root",
            "encryptionKey": self.encryption_key,
        });
        if let Some(end) = self.end {
            build["endTime"] = json!(epoch_seconds(end));
        }
        if let Some(version) = &self.source_version {
            build["sourceVersion"] = json!(version);
        }
        build["logs"] = self.logs_json();
        if let Some(exported) = &self.exported {
            build["exportedEnvironmentVariables"] = exported
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect();
        }
        build
    }

    fn logs_json(&self) -> Value {
        let s3_logs = json!({ "status": "DISABLED", "encryptionDisabled": false });
        let target = match (&self.logs, self.logs_open) {
            (Some(target), true) => target,
            (Some(_), false) => return json!({ "s3Logs": s3_logs }),
            (None, _) => {
                return json!({
                    "cloudWatchLogs": { "status": "DISABLED" },
                    "s3Logs": s3_logs,
                })
            }
        };
        json!({
            "groupName": target.group,
            "streamName": target.stream,
            "deepLink": format!(
                "https://console.aws.amazon.com/cloudwatch/home?region={REGION}#logEvent:group={};stream={}",
                target.group, target.stream
            ),
            "cloudWatchLogsArn": format!(
                "arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{}:log-stream:{}",
                target.group, target.stream
            ),
            "cloudWatchLogs": {
                "status": "ENABLED",
                "groupName": target.group,
                "streamName": target.stream,
            },
            "s3Logs": s3_logs,
        })
    }
}

fn phase_json(phase: &Phase) -> Value {
    let mut value = json!({
        "phaseType": phase.kind.name(),
        "startTime": epoch_seconds(phase.start),
    });
    if let Some(status) = phase.status {
        value["phaseStatus"] = json!(status);
    }
    if let Some(end) = phase.end {
        value["endTime"] = json!(epoch_seconds(end));
        let duration = end.duration_since(phase.start).unwrap_or_default();
        value["durationInSeconds"] = json!(duration.as_secs());
        value["contexts"] = json!([{
            "statusCode": phase.context.status_code,
            "message": phase.context.message,
        }]);
    }
    value
}
