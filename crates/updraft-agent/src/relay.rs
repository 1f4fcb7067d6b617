//! The relay executor: the job runner for a command that runs somewhere else (a sandbox
//! with no Buildkite credential). The caller acquires the job, then hands this executor the
//! command's output stream and a future of its exit; the executor starts the job, chunks
//! and uploads the log with retries, watches for cancellation and finishes the job. On
//! cancellation the caller's command sees `stop_switch().requested()` and should stop the
//! sandbox; if it has not ended after the grace period the job is finished as `SIGKILL`.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use updraft_agent::{CommandOutcome, RelayExecutor};
//! # async fn relay(session: updraft_buildkite::agent_api::AgentSession, job_id: &str) -> anyhow::Result<()> {
//! let job = session.acquire(job_id).await?;
//! let executor = RelayExecutor::new(session.job_client(&job)?, &job, Duration::from_secs(1), Duration::from_secs(10));
//! let stop = executor.stop_switch();
//! let (mut sandbox_output, log) = tokio::io::duplex(64 * 1024);
//! let command = async move {
//!     // Launch the sandbox here, copy its output into `sandbox_output`, and on
//!     // `stop.requested()` stop it; return how it ended.
//!     tokio::select! {
//!         _ = tokio::io::AsyncWriteExt::write_all(&mut sandbox_output, b"built\n") => CommandOutcome::Exited(0),
//!         _ = stop.requested() => CommandOutcome::Signaled("SIGTERM".into()),
//!     }
//! };
//! let report = executor.run(log, command).await?;
//! println!("finished with {}", report.exit_status);
//! # Ok(()) }
//! ```

use crate::driver::{drive, CommandOutcome, DriveError, DriveOptions, JobReport, StopSwitch};
use std::future::Future;
use std::time::Duration;
use tokio::io::AsyncRead;
use updraft_buildkite::agent_api::{Job, JobClient};

pub struct RelayExecutor {
    client: JobClient,
    options: DriveOptions,
    stop: StopSwitch,
    grace: Duration,
}

impl RelayExecutor {
    /// `client` is the job-token client of an accepted or acquired `job`.
    pub fn new(
        client: JobClient,
        job: &Job,
        job_status_interval: Duration,
        grace: Duration,
    ) -> Self {
        RelayExecutor {
            client,
            options: DriveOptions::for_job(job, job_status_interval),
            stop: StopSwitch::default(),
            grace,
        }
    }

    /// Adjust chunking, upload concurrency or polling before running.
    pub fn options_mut(&mut self) -> &mut DriveOptions {
        &mut self.options
    }

    /// The switch the remote side watches; pulled when the job is cancelled. The caller may
    /// pull it too (e.g. with `StopReason::AgentStop` when shutting down).
    pub fn stop_switch(&self) -> StopSwitch {
        self.stop.clone()
    }

    /// Start the job, relay `output` into its log while `command` runs, and finish it with
    /// `command`'s outcome. `command` is not polled before the job has started.
    pub async fn run<R, F>(self, output: R, command: F) -> Result<JobReport, DriveError>
    where
        R: AsyncRead + Unpin + Send,
        F: Future<Output = CommandOutcome>,
    {
        let stop = self.stop.clone();
        let grace = self.grace;
        let bounded = async move {
            tokio::pin!(command);
            tokio::select! {
                outcome = &mut command => outcome,
                reason = async {
                    let reason = stop.requested().await;
                    tokio::time::sleep(grace).await;
                    reason
                } => {
                    tracing::warn!(?reason, grace_secs = grace.as_secs_f64(), "the relayed command did not end after the grace period");
                    CommandOutcome::Signaled("SIGKILL".into())
                }
            }
        };
        drive(&self.client, &self.options, output, bounded, &self.stop).await
    }
}
