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
//!
//! When the output can be read again from a recorded position (a CloudWatch Logs stream),
//! [`RelayExecutor::run_resumable`] relays it so that a process killed at any instant and
//! started again continues the same job with no byte lost or sent twice; see [`resumable`].

mod resumable;

pub use resumable::{ChunkMark, LogPosition, ResumableOutput, Resume};

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
        RelayExecutor::with_options(
            client,
            DriveOptions::for_job(job, job_status_interval),
            grace,
        )
    }

    /// For a job whose Job JSON is no longer at hand (a relay resumed after a restart): the
    /// options it was first run with.
    pub fn with_options(client: JobClient, options: DriveOptions, grace: Duration) -> Self {
        RelayExecutor {
            client,
            options,
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
        let bounded = bounded_by_grace(command, self.stop.clone(), self.grace);
        drive(&self.client, &self.options, output, bounded, &self.stop).await
    }

    /// As [`RelayExecutor::run`], for output that can be read again from where its last
    /// uploaded chunk ended: `resume` says how far an earlier relay of this job got (the job
    /// is not started twice, chunks go on from its sequence and offset, and the chunk it was
    /// uploading is sent again byte for byte), and `output` records progress before and
    /// after every upload. Chunks go one at a time, in order.
    pub async fn run_resumable<O, F>(
        self,
        output: O,
        resume: Resume,
        command: F,
    ) -> Result<JobReport, DriveError>
    where
        O: ResumableOutput,
        F: Future<Output = CommandOutcome>,
    {
        let bounded = bounded_by_grace(command, self.stop.clone(), self.grace);
        resumable::drive(
            &self.client,
            &self.options,
            output,
            resume,
            bounded,
            &self.stop,
        )
        .await
    }
}

/// `command`, or `SIGKILL` once a stop was requested and `grace` has passed without it ending.
async fn bounded_by_grace<F: Future<Output = CommandOutcome>>(
    command: F,
    stop: StopSwitch,
    grace: Duration,
) -> CommandOutcome {
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
}
