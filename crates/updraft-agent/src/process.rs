//! Local processes for a job: one OS pipe that every step's stdout and stderr share (so the
//! log keeps the order the bytes were produced in), each step in its own process group, and
//! the stop sequence — SIGTERM to the group, SIGKILL after the grace period (or SIGKILL at a
//! deadline, for a `pre-exit` hook running on what is left of the grace period).

use crate::driver::{CommandOutcome, StopSwitch};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{PipeWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::time::Instant;

/// The job's output pipe: the read end for the driver, the write end shared by every step
/// and by the agent's own messages. EOF comes when the last write end closes.
pub fn output_pipe() -> std::io::Result<(pipe::Receiver, OutputWriter)> {
    let (reader, writer) = std::io::pipe()?;
    let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    Ok((receiver, OutputWriter { writer }))
}

pub struct OutputWriter {
    writer: PipeWriter,
}

impl OutputWriter {
    /// A line from the agent itself into the job log.
    pub fn line(&mut self, text: &str) {
        let result = self
            .writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"));
        if let Err(error) = result {
            tracing::warn!(%error, "could not write to the job log pipe");
        }
    }

    fn stdio(&self) -> std::io::Result<(Stdio, Stdio)> {
        Ok((
            Stdio::from(self.writer.try_clone()?),
            Stdio::from(self.writer.try_clone()?),
        ))
    }
}

/// How a step may be ended before it exits on its own.
#[derive(Debug, Clone, Copy)]
pub enum StepLimit<'a> {
    /// SIGTERM to the group when `stop` is pulled, SIGKILL `grace` later.
    Stoppable {
        stop: &'a StopSwitch,
        grace: Duration,
    },
    /// SIGKILL to the group at this instant: for the `pre-exit` hook of a stopped job, which
    /// may only use what is left of the grace period.
    Until(Instant),
}

/// Run `command` to completion with its output in the job log, in a new process group,
/// ended early as `limit` says. Whatever is left of the group afterwards is killed, so
/// nothing the step started outlives it.
pub async fn run_step(
    mut command: Command,
    output: &OutputWriter,
    limit: StepLimit<'_>,
) -> CommandOutcome {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let (stdout, stderr) = match output.stdio() {
        Ok(pair) => pair,
        Err(error) => {
            return CommandOutcome::FailedToStart(format!(
                "could not attach {program} to the job log: {error}"
            ))
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return CommandOutcome::FailedToStart(format!("could not start {program}: {error}"))
        }
    };
    // Our copies of the write end went into the child; drop the Command so they close here.
    drop(command);
    let Some(pid) = child.id() else {
        return CommandOutcome::FailedToStart(format!(
            "{program} exited before it could be watched"
        ));
    };
    let group = Pid::from_raw(pid as i32);
    let status = match limit {
        StepLimit::Stoppable { stop, grace } => tokio::select! {
            status = child.wait() => status,
            _ = stop.requested() => {
                signal_group(group, Signal::SIGTERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::info!(%program, grace_secs = grace.as_secs_f64(), "still running after the grace period; sending SIGKILL");
                        signal_group(group, Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
        },
        StepLimit::Until(deadline) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::info!(%program, "the grace period ran out; sending SIGKILL");
                signal_group(group, Signal::SIGKILL);
                child.wait().await
            }
        },
    };
    signal_group(group, Signal::SIGKILL);
    match status {
        Ok(status) => outcome_of(status),
        Err(error) => {
            CommandOutcome::FailedToStart(format!("waiting for {program} failed: {error}"))
        }
    }
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => tracing::warn!(%error, ?signal, "could not signal the job's process group"),
    }
}

pub fn outcome_of(status: ExitStatus) -> CommandOutcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => CommandOutcome::Exited(code),
        (None, Some(signal)) => CommandOutcome::Signaled(
            Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("SIG{signal}")),
        ),
        (None, None) => CommandOutcome::Exited(-1),
    }
}
