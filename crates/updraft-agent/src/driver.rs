//! The part of running a job that does not care where the command runs: mark the job
//! started, stream its output into log chunks, watch the job's state for cancellation (at
//! least once a second), and finish the job with the command's exit status or signal. The
//! local runner and the relay executor both drive their command through here.

use crate::log_streamer::{LogStats, LogStreamer};
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;
use updraft_buildkite::agent_api::{FinishRequest, Job, JobClient};
use updraft_buildkite::ApiError;
use updraft_model::JobState;

/// Why the command is being stopped before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job was cancelled on Buildkite (or its job token was refused).
    Cancel,
    /// The job went past its timeout on Buildkite (`timing_out`/`timed_out`); hooks that run
    /// afterwards see `BUILDKITE_JOB_TIMED_OUT=true`.
    TimedOut,
    /// The agent itself is shutting down.
    AgentStop,
}

impl StopReason {
    /// The `signal_reason` sent at finish.
    pub fn signal_reason(self) -> &'static str {
        match self {
            StopReason::Cancel | StopReason::TimedOut => "cancel",
            StopReason::AgentStop => "agent_stop",
        }
    }
}

/// A shared "stop the command" switch: the driver (or the agent) pulls it, the command side
/// watches it. Only the first reason counts, and the instant it was pulled is kept so the
/// grace period can be shared between the command and the `pre-exit` hook.
#[derive(Debug, Clone)]
pub struct StopSwitch {
    sender: watch::Sender<Option<(StopReason, Instant)>>,
}

impl Default for StopSwitch {
    fn default() -> Self {
        StopSwitch {
            sender: watch::channel(None).0,
        }
    }
}

impl StopSwitch {
    pub fn request(&self, reason: StopReason) {
        self.sender.send_if_modified(|current| {
            if current.is_none() {
                *current = Some((reason, Instant::now()));
                true
            } else {
                false
            }
        });
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.sender.borrow().map(|(reason, _)| reason)
    }

    /// When the stop was requested, if it was.
    pub fn requested_at(&self) -> Option<Instant> {
        self.sender.borrow().map(|(_, at)| at)
    }

    /// Resolves once a stop is requested.
    pub async fn requested(&self) -> StopReason {
        let mut receiver = self.sender.subscribe();
        let reason = match receiver.wait_for(Option::is_some).await {
            Ok(requested) => requested.map(|(reason, _)| reason),
            // The sender lives in `self`, so the channel cannot close while we wait.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Exited(i32),
    /// Killed by a signal, named like `SIGTERM`.
    Signaled(String),
    /// It never ran; the text says why and is written to the job log.
    FailedToStart(String),
    /// The agent refused to run it (e.g. a plugin was asked for); the text goes to the log.
    Refused(String),
}

/// Chunks are never larger than this, whatever the server allows, to bound memory.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// Largest uncompressed chunk (already capped by the server's `chunks_max_size_bytes`).
    pub chunk_max: usize,
    /// Partial chunks are sent at least this often.
    pub flush_interval: Duration,
    /// How often the job's state is read to notice cancellation.
    pub status_poll_interval: Duration,
    pub upload_workers: usize,
    /// After the command ends, how long to keep reading output (from processes it left
    /// behind, or bytes still in flight) before finishing.
    pub output_drain_timeout: Duration,
    /// Sent at finish with `--disconnect-after-job`.
    pub ignore_agent_in_dispatches: bool,
    /// Output beyond this many bytes is read but not uploaded (the job's `log_max_size_bytes`).
    pub log_max_bytes: u64,
}

/// `log_max_size_bytes` when the server sends 0 (reference §2.1).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1024 * 1024 * 1024;

impl DriveOptions {
    /// From the Job JSON and the registration's `job_status_interval`: chunks of at most
    /// `chunks_max_size_bytes` (and `MAX_CHUNK_BYTES`), flushed every
    /// `chunks_interval_seconds` (0 means 1 s), state polled at least once a second, output
    /// capped at `log_max_size_bytes` (0 means 1 GiB).
    pub fn for_job(job: &Job, job_status_interval: Duration) -> Self {
        let server_max = usize::try_from(job.chunks_max_size_bytes).unwrap_or(usize::MAX);
        let chunk_max = if server_max == 0 {
            MAX_CHUNK_BYTES
        } else {
            server_max.min(MAX_CHUNK_BYTES)
        };
        let flush_secs = if job.chunks_interval_seconds == 0 {
            1
        } else {
            job.chunks_interval_seconds
        };
        let status = if job_status_interval.is_zero() {
            Duration::from_secs(1)
        } else {
            job_status_interval
        };
        DriveOptions {
            chunk_max,
            flush_interval: Duration::from_secs(flush_secs),
            status_poll_interval: status.min(Duration::from_secs(1)),
            upload_workers: 3,
            output_drain_timeout: Duration::from_secs(2),
            ignore_agent_in_dispatches: false,
            log_max_bytes: if job.log_max_size_bytes == 0 {
                DEFAULT_LOG_MAX_BYTES
            } else {
                job.log_max_size_bytes
            },
        }
    }
}

/// What the driver reported to Buildkite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub job_id: String,
    pub exit_status: String,
    pub signal: Option<String>,
    pub signal_reason: Option<String>,
    pub log: LogStats,
}

impl JobReport {
    /// The exit status as a number (`-1` for a signal or a refusal).
    pub fn exit_code(&self) -> i32 {
        self.exit_status.parse().unwrap_or(-1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The server would not let the job start; per the reference, it is not finished.
    #[error("job {job_id} could not be started: {source}")]
    Start { job_id: String, source: ApiError },
    #[error("job {job_id} ran but could not be finished: {source}")]
    Finish {
        job_id: String,
        source: ApiError,
        report: Box<JobReport>,
    },
    /// A resumable relay could not record or replay its progress; it stopped rather than
    /// risk uploading a byte twice (the job is left to the scheduler's reconciler).
    #[error("job {job_id}: relaying its log stopped: {detail}")]
    Progress { job_id: String, detail: String },
}

/// Start the job, run `command` while streaming `output`, then finish the job.
/// `command` is not polled until the job has started. It must watch `stop` and end its
/// process(es) when a stop is requested; the driver itself pulls `stop` when the job is
/// cancelled on the server.
pub async fn drive<R, F>(
    client: &JobClient,
    options: &DriveOptions,
    output: R,
    command: F,
    stop: &StopSwitch,
) -> Result<JobReport, DriveError>
where
    R: AsyncRead + Unpin + Send,
    F: Future<Output = CommandOutcome>,
{
    let job_id = client.job_id().to_string();
    client.start().await.map_err(|source| DriveError::Start {
        job_id: job_id.clone(),
        source,
    })?;
    let streamer = LogStreamer::new(
        client.clone(),
        options.chunk_max,
        options.upload_workers,
        options.log_max_bytes,
    );
    let (drain_deadline, drain_receiver) = watch::channel(None::<Instant>);
    let pump = pump_output(output, streamer, options.flush_interval, drain_receiver);
    let watcher = watch_for_cancellation(client, options.status_poll_interval, stop);
    tokio::pin!(pump, command, watcher);

    let mut log_stats = None;
    let outcome = loop {
        tokio::select! {
            outcome = &mut command => break outcome,
            streamer = &mut pump, if log_stats.is_none() => log_stats = Some(streamer),
            () = &mut watcher => {}
        }
    };
    let mut streamer = match log_stats {
        Some(streamer) => streamer,
        None => {
            drain_deadline.send_replace(Some(Instant::now() + options.output_drain_timeout));
            pump.await
        }
    };
    if let CommandOutcome::FailedToStart(why) | CommandOutcome::Refused(why) = &outcome {
        tracing::error!(job_id, "{why}");
        streamer.write_notice(&format!("{why}\n")).await;
    }
    let log = streamer.finish().await;
    let stop_reason = stop.reason();
    let (exit_status, signal, signal_reason) = finish_fields(&outcome, stop_reason);
    if log.chunks_failed > 0 {
        tracing::warn!(
            job_id,
            failed = log.chunks_failed,
            "some log chunks could not be uploaded"
        );
    }
    let finish = FinishRequest {
        exit_status: exit_status.clone(),
        signal: signal.clone(),
        signal_reason: signal_reason.clone(),
        finished_at: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        chunks_failed_count: log.chunks_failed,
        ignore_agent_in_dispatches: options.ignore_agent_in_dispatches.then_some(true),
    };
    let report = JobReport {
        job_id: job_id.clone(),
        exit_status,
        signal,
        signal_reason,
        log,
    };
    match client.finish(&finish).await {
        Ok(()) => Ok(report),
        Err(source) => Err(DriveError::Finish {
            job_id,
            source,
            report: Box::new(report),
        }),
    }
}

/// exit status, signal and signal_reason for finish (reference §1.6.10–1.6.11).
pub(crate) fn finish_fields(
    outcome: &CommandOutcome,
    stop: Option<StopReason>,
) -> (String, Option<String>, Option<String>) {
    let stop_reason = stop.map(|reason| reason.signal_reason().to_string());
    match outcome {
        // A stopped command that still exited 0 did not pass.
        CommandOutcome::Exited(0) if stop.is_some() => ("1".into(), None, stop_reason),
        CommandOutcome::Exited(code) => (code.to_string(), None, stop_reason),
        CommandOutcome::Signaled(signal) => ("-1".into(), Some(signal.clone()), stop_reason),
        CommandOutcome::FailedToStart(_) => ("-1".into(), None, Some("process_run_error".into())),
        CommandOutcome::Refused(_) => ("-1".into(), None, Some("agent_refused".into())),
    }
}

/// Read output into the streamer until EOF, sending partial chunks every `flush_interval`;
/// once a drain deadline is set, stop at that instant even without EOF.
async fn pump_output<R: AsyncRead + Unpin>(
    mut output: R,
    mut streamer: LogStreamer,
    flush_interval: Duration,
    mut drain: watch::Receiver<Option<Instant>>,
) -> LogStreamer {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut next_flush = Instant::now() + flush_interval;
    let mut drain_open = true;
    loop {
        let deadline = *drain.borrow();
        let read = tokio::select! {
            read = output.read(&mut buffer) => read,
            () = tokio::time::sleep_until(next_flush) => {
                streamer.flush().await;
                next_flush = Instant::now() + flush_interval;
                continue;
            }
            () = sleep_until_opt(deadline) => {
                tracing::warn!("output was still open after the command ended; finishing without waiting for the rest");
                return streamer;
            }
            changed = drain.changed(), if drain_open => {
                // A closed channel means no deadline will ever come: read to EOF.
                drain_open = changed.is_ok();
                continue;
            }
        };
        match read {
            Ok(0) => return streamer,
            Ok(n) => streamer.write(&buffer[..n]).await,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, "reading the command's output failed; the log ends here");
                return streamer;
            }
        }
    }
}

pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Poll the job's state; pull the stop switch when it is cancelled or timing out, or when
/// the job token is refused (401). Never returns.
pub(crate) async fn watch_for_cancellation(
    client: &JobClient,
    interval: Duration,
    stop: &StopSwitch,
) {
    loop {
        tokio::time::sleep(interval).await;
        if stop.reason().is_some() {
            return std::future::pending().await;
        }
        match client.state().await {
            Ok(Some(state)) if matches!(state, JobState::TimingOut | JobState::TimedOut) => {
                tracing::info!(job_id = client.job_id(), %state, "job timed out on Buildkite; stopping the command");
                stop.request(StopReason::TimedOut);
            }
            Ok(Some(state)) if state.is_stopping() => {
                tracing::info!(job_id = client.job_id(), %state, "job cancelled on Buildkite; stopping the command");
                stop.request(StopReason::Cancel);
            }
            Ok(_) => {}
            Err(error) if error.status() == Some(StatusCode::UNAUTHORIZED) => {
                tracing::warn!(
                    job_id = client.job_id(),
                    "the job token was refused; stopping the command"
                );
                stop.request(StopReason::Cancel);
            }
            Err(error) => tracing::debug!(%error, "reading the job state failed; trying again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_fields_follow_the_reference() {
        let fields = |o: CommandOutcome, s| finish_fields(&o, s);
        assert_eq!(
            fields(CommandOutcome::Exited(0), None),
            ("0".into(), None, None)
        );
        assert_eq!(
            fields(CommandOutcome::Exited(3), None),
            ("3".into(), None, None)
        );
        assert_eq!(
            fields(CommandOutcome::Exited(0), Some(StopReason::Cancel)),
            ("1".into(), None, Some("cancel".into()))
        );
        assert_eq!(
            fields(
                CommandOutcome::Signaled("SIGTERM".into()),
                Some(StopReason::Cancel)
            ),
            ("-1".into(), Some("SIGTERM".into()), Some("cancel".into()))
        );
        assert_eq!(
            fields(
                CommandOutcome::Signaled("SIGKILL".into()),
                Some(StopReason::AgentStop)
            )
            .2
            .as_deref(),
            Some("agent_stop")
        );
        assert_eq!(
            fields(
                CommandOutcome::Signaled("SIGTERM".into()),
                Some(StopReason::TimedOut)
            )
            .2
            .as_deref(),
            Some("cancel")
        );
        assert_eq!(
            fields(CommandOutcome::Refused("x".into()), None)
                .2
                .as_deref(),
            Some("agent_refused")
        );
        assert_eq!(
            fields(CommandOutcome::FailedToStart("x".into()), None)
                .2
                .as_deref(),
            Some("process_run_error")
        );
    }

    #[tokio::test]
    async fn stop_switch_keeps_the_first_reason() {
        let stop = StopSwitch::default();
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.requested().await })
        };
        stop.request(StopReason::Cancel);
        stop.request(StopReason::AgentStop);
        assert_eq!(waiter.await.unwrap(), StopReason::Cancel);
        assert_eq!(stop.reason(), Some(StopReason::Cancel));
        let first = stop.requested_at().expect("the stop time is kept");
        stop.request(StopReason::TimedOut);
        assert_eq!(stop.requested_at(), Some(first));
    }

    #[test]
    fn a_zero_log_limit_means_one_gibibyte() {
        let job: Job = serde_json::from_str(r#"{"id":"j","log_max_size_bytes":0}"#).unwrap();
        assert_eq!(
            DriveOptions::for_job(&job, Duration::ZERO).log_max_bytes,
            DEFAULT_LOG_MAX_BYTES
        );
        let job: Job = serde_json::from_str(r#"{"id":"j","log_max_size_bytes":4096}"#).unwrap();
        assert_eq!(
            DriveOptions::for_job(&job, Duration::ZERO).log_max_bytes,
            4096
        );
    }
}
