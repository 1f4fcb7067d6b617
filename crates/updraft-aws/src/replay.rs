//! A platform that runs nothing: every relayed job's "build" is an existing CloudWatch Logs
//! stream (named after the job's uuid, in one group), already over with exit status 0. Relay
//! mode on it measures exactly the relay — reading CloudWatch Logs and uploading chunks into
//! Buildkite, with the state file written around every chunk — which is what
//! `updraft bench relay` needs; it also replays a log into a job for trials.

use crate::errors::AwsError;
use crate::platform::{LineStyle, LogLocation, Observed, Platform, RelayedJob, Started};
use crate::settings::RunMode;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use updraft_agent::CommandOutcome;
use updraft_backends::{LaunchName, LaunchPhase, LaunchSpec};

pub const KIND: &str = "replay";

/// Streams of `group`, relayed for the fleets named.
pub struct Replay {
    group: String,
    fleets: Vec<String>,
}

impl Replay {
    pub fn new(group: &str, fleets: Vec<String>) -> Replay {
        Replay {
            group: group.to_string(),
            fleets,
        }
    }
}

#[async_trait]
impl Platform for Replay {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn mode(&self, fleet: &str) -> Option<RunMode> {
        self.fleets
            .iter()
            .any(|f| f == fleet)
            .then_some(RunMode::Relay)
    }

    fn line_style(&self) -> LineStyle {
        LineStyle::CodeBuild
    }

    fn token_lifetime(&self) -> Duration {
        Duration::from_secs(24 * 3600)
    }

    fn cancel_grace(&self, _fleet: &str) -> Duration {
        Duration::from_secs(1)
    }

    fn check(&self, _fleet: &str, _env: &BTreeMap<String, String>) -> Result<(), String> {
        Ok(())
    }

    fn agent_request(
        &self,
        _spec: &LaunchSpec,
        _secrets: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        Err("the replay platform only relays".into())
    }

    fn relay_request(&self, _fleet: &str, job: &RelayedJob) -> Result<String, String> {
        Ok(job.labels.job.clone())
    }

    async fn start(
        &self,
        _name: &LaunchName,
        _fleet: &str,
        request: &str,
        _token: &str,
    ) -> Result<Started, AwsError> {
        Ok(Started {
            id: request.to_string(),
            extra: None,
        })
    }

    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, Observed>, AwsError> {
        Ok(ids
            .iter()
            .map(|stream| {
                let observed = Observed {
                    phase: LaunchPhase::Succeeded,
                    detail: None,
                    outcome: Some(CommandOutcome::Exited(0)),
                    epilogue: None,
                    logs: Some(LogLocation {
                        group: self.group.clone(),
                        stream: stream.clone(),
                    }),
                };
                (stream.clone(), observed)
            })
            .collect())
    }

    async fn stop(&self, _fleet: &str, _id: &str, _reason: &str) -> Result<(), AwsError> {
        Ok(())
    }

    async fn find(&self, _fleet: &str, _name: &LaunchName) -> Result<Option<String>, AwsError> {
        Ok(None)
    }

    async fn clean_up(&self, _extra: &str) -> Result<(), AwsError> {
        Ok(())
    }
}

/// Most bytes in one PutLogEvents call (1 MiB, counting 26 bytes per event) and events.
const BATCH_BYTES: usize = 1_000_000;
const BATCH_EVENTS: usize = 10_000;

/// Write `content` into a new stream `group`/`stream` the way CodeBuild does: one event per
/// line, each keeping its newline (the group is created if missing).
pub async fn write_stream(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    content: &[u8],
) -> Result<(), AwsError> {
    use crate::errors::classify;
    use aws_sdk_cloudwatchlogs::types::InputLogEvent;
    if let Err(error) = logs.create_log_group().log_group_name(group).send().await {
        let error = classify("CreateLogGroup", &error);
        if error.code.as_deref() != Some("ResourceAlreadyExistsException") {
            return Err(error);
        }
    }
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
        .map_err(|error| classify("CreateLogStream", &error))?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut batch = Vec::new();
    let mut size = 0;
    let lines = content.split_inclusive(|b| *b == b'\n');
    for line in lines {
        let message = String::from_utf8_lossy(line).into_owned();
        if size + message.len() + 26 > BATCH_BYTES || batch.len() == BATCH_EVENTS {
            put(logs, group, stream, std::mem::take(&mut batch)).await?;
            size = 0;
        }
        size += message.len() + 26;
        batch.push(
            InputLogEvent::builder()
                .timestamp(now)
                .message(message)
                .build()
                .expect("timestamp and message are set"),
        );
    }
    if !batch.is_empty() {
        put(logs, group, stream, batch).await?;
    }
    Ok(())
}

async fn put(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    events: Vec<aws_sdk_cloudwatchlogs::types::InputLogEvent>,
) -> Result<(), AwsError> {
    logs.put_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .set_log_events(Some(events))
        .send()
        .await
        .map(drop)
        .map_err(|error| crate::errors::classify("PutLogEvents", &error))
}

impl crate::AwsBackend<Replay> {
    /// A relay-only backend replaying the streams of `group` into the jobs of `fleets`.
    pub async fn replay(
        clients: &crate::AwsClients,
        settings: &crate::settings::AwsSettings,
        group: &str,
        fleets: Vec<String>,
        options: crate::BackendOptions,
        metrics: crate::metrics::AwsMetrics,
    ) -> Result<crate::AwsBackend<Replay>, updraft_backends::BackendError> {
        crate::AwsBackend::open(
            Replay::new(group, fleets),
            clients,
            settings,
            options,
            metrics,
        )
        .await
    }
}
