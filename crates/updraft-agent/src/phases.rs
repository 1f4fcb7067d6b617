//! The phases of one local job, in buildkite-agent's order: `environment` hook;
//! `pre-checkout`, checkout (the `checkout` hook or git), `post-checkout`; `pre-command`,
//! the command (the `command` hook or `BUILDKITE_COMMAND` through the shell),
//! `post-command`; and always last the `pre-exit` hook. A failing phase skips the rest but
//! not `pre-exit`; a stop (cancel, timeout, agent stop) ends the running step and goes
//! straight to `pre-exit`, which gets what is left of the grace period.

use crate::checkout::checkout;
use crate::driver::{CommandOutcome, StopReason, StopSwitch};
use crate::hooks::Hooks;
use crate::process::{run_step, OutputWriter, StepLimit};
use crate::runner::RunnerConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::process::Command;
use tokio::time::Instant;
use updraft_buildkite::agent_api::Job;

/// Plugins the platform that launched this agent has applied itself (the Kubernetes backend
/// applies agent-stack-k8s's `kubernetes` plugin to the pod): comma-separated names as in
/// `BUILDKITE_PLUGINS`. They are neither run nor refused.
pub const APPLIED_PLUGINS_VAR: &str = "UPDRAFT_APPLIED_PLUGINS";
/// The command the platform gives the job in place of the step's own (an agent-stack-k8s
/// `podSpec` container's command).
pub const JOB_COMMAND_VAR: &str = "UPDRAFT_JOB_COMMAND";

/// Run every phase of `job` with `env` in `job_dir`, writing to `output`.
pub async fn run_phases(
    job: &Job,
    mut env: BTreeMap<String, String>,
    job_dir: PathBuf,
    config: &RunnerConfig,
    output: OutputWriter,
    stop: &StopSwitch,
) -> CommandOutcome {
    let applied: Vec<String> = env
        .get(APPLIED_PLUGINS_VAR)
        .map(|list| list.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let plugins: Vec<String> = job
        .plugin_names()
        .into_iter()
        .filter(|name| !applied.contains(name))
        .collect();
    if !plugins.is_empty() {
        return CommandOutcome::Refused(format!(
            "updraft agent does not run plugins, and this step uses {}; run it on a buildkite-agent or remove the plugin",
            plugins.join(", ")
        ));
    }
    let env_file = job_dir.with_extension("hook-env");
    let hooks = Hooks {
        dir: config.hooks_path.as_deref(),
        shell: &config.shell[0],
        env_file: &env_file,
    };
    let platform_command = env
        .get(JOB_COMMAND_VAR)
        .filter(|c| !c.trim().is_empty())
        .cloned();
    if let Some(command) = &platform_command {
        env.insert("BUILDKITE_COMMAND".into(), command.clone());
    }
    let command = platform_command.or_else(|| job.command());
    if command.is_none() && hooks.find("command").is_none() {
        return CommandOutcome::FailedToStart(format!(
            "job {} has no command (BUILDKITE_COMMAND is empty)",
            job.id
        ));
    }
    if let Err(error) = prepare_dir(&job_dir).await {
        return CommandOutcome::FailedToStart(format!(
            "could not create the job directory {}: {error}",
            job_dir.display()
        ));
    }
    let mut job_run = JobRun {
        config,
        hooks,
        env,
        job_dir,
        output,
        stop,
        announced: false,
    };
    let outcome = job_run.main_phases(command.as_deref()).await;
    job_run.pre_exit(outcome).await
}

struct JobRun<'a> {
    config: &'a RunnerConfig,
    hooks: Hooks<'a>,
    env: BTreeMap<String, String>,
    job_dir: PathBuf,
    output: OutputWriter,
    stop: &'a StopSwitch,
    /// Whether anything has been written to the log before the command, so it gets a header.
    announced: bool,
}

/// Whether the job goes on after a step that ended with `outcome`.
fn passed(outcome: &CommandOutcome, stop: &StopSwitch) -> bool {
    *outcome == CommandOutcome::Exited(0) && stop.reason().is_none()
}

/// The job's outcome after a later step: the first failure wins.
fn first_failure(earlier: CommandOutcome, later: CommandOutcome) -> CommandOutcome {
    if earlier == CommandOutcome::Exited(0) {
        later
    } else {
        earlier
    }
}

impl<'a> JobRun<'a> {
    fn limit(&self) -> StepLimit<'a> {
        StepLimit::Stoppable {
            stop: self.stop,
            grace: self.config.cancel_grace_period,
        }
    }

    /// Source hook `name` in `dir`; `None` when there is no such hook.
    async fn hook(&mut self, name: &str, dir: &Path) -> Option<CommandOutcome> {
        let limit = self.limit();
        let outcome = self
            .hooks
            .run(name, &mut self.env, dir, &mut self.output, limit)
            .await;
        self.announced |= outcome.is_some();
        outcome
    }

    /// Everything before `pre-exit`; returns at the first failure or stop.
    async fn main_phases(&mut self, command: Option<&str>) -> CommandOutcome {
        let build_path = self.config.build_path.clone();
        let job_dir = self.job_dir.clone();
        for (name, dir) in [("environment", &build_path), ("pre-checkout", &build_path)] {
            match self.hook(name, dir).await {
                Some(outcome) if !passed(&outcome, self.stop) => return outcome,
                _ => {}
            }
        }
        let checked_out = self.checkout().await;
        if !passed(&checked_out, self.stop) {
            return checked_out;
        }
        for name in ["post-checkout", "pre-command"] {
            match self.hook(name, &job_dir).await {
                Some(outcome) if !passed(&outcome, self.stop) => return outcome,
                _ => {}
            }
        }
        let outcome = match self.hook("command", &job_dir).await {
            Some(outcome) => outcome,
            None => self.command(command.unwrap_or_default()).await,
        };
        if self.stop.reason().is_some() {
            return outcome;
        }
        self.env
            .insert("BUILDKITE_COMMAND_EXIT_STATUS".into(), exit_text(&outcome));
        match self.hook("post-command", &job_dir).await {
            Some(hook_outcome) => first_failure(outcome, hook_outcome),
            None => outcome,
        }
    }

    /// The `checkout` hook when there is one, otherwise git when a repository is set; neither
    /// with `BUILDKITE_SKIP_CHECKOUT`.
    async fn checkout(&mut self) -> CommandOutcome {
        if is_true(&self.env, "BUILDKITE_SKIP_CHECKOUT") {
            return CommandOutcome::Exited(0);
        }
        let job_dir = self.job_dir.clone();
        if let Some(outcome) = self.hook("checkout", &job_dir).await {
            return outcome;
        }
        let repo = self.env.get("BUILDKITE_REPO").cloned().unwrap_or_default();
        if repo.trim().is_empty() {
            return CommandOutcome::Exited(0);
        }
        self.output.line("~~~ Preparing working directory");
        self.announced = true;
        let grace = self.config.cancel_grace_period;
        checkout(
            &repo,
            &self.env,
            &job_dir,
            &mut self.output,
            self.stop,
            grace,
        )
        .await
    }

    /// `BUILDKITE_COMMAND` through the configured shell, in the job directory.
    async fn command(&mut self, command: &str) -> CommandOutcome {
        if self.announced {
            self.output.line("~~~ Running commands");
            self.output.line(&format!("$ {command}"));
        }
        let shell = &self.config.shell;
        let mut step = Command::new(&shell[0]);
        step.args(&shell[1..])
            .arg(command)
            .current_dir(&self.job_dir)
            .env_clear()
            .envs(&self.env);
        run_step(step, &self.output, self.limit()).await
    }

    /// The `pre-exit` hook, whatever happened before. After a stop it may only use what is
    /// left of the grace period, and sees `BUILDKITE_JOB_TIMED_OUT=true` after a timeout.
    async fn pre_exit(mut self, outcome: CommandOutcome) -> CommandOutcome {
        let Some(hook) = self.hooks.find("pre-exit") else {
            return outcome;
        };
        let limit = match (self.stop.reason(), self.stop.requested_at()) {
            (Some(reason), Some(requested_at)) => {
                let deadline = requested_at + self.config.cancel_grace_period;
                if Instant::now() >= deadline {
                    tracing::info!(hook = %hook.display(), "not running the pre-exit hook: the grace period is used up");
                    self.output.line(
                        "~~~ Not running the pre-exit hook: the cancel grace period is used up",
                    );
                    return outcome;
                }
                if reason == StopReason::TimedOut {
                    self.env
                        .insert("BUILDKITE_JOB_TIMED_OUT".into(), "true".into());
                }
                StepLimit::Until(deadline)
            }
            _ => self.limit(),
        };
        let job_dir = self.job_dir.clone();
        match self
            .hooks
            .run("pre-exit", &mut self.env, &job_dir, &mut self.output, limit)
            .await
        {
            Some(hook_outcome) => first_failure(outcome, hook_outcome),
            None => outcome,
        }
    }
}

fn exit_text(outcome: &CommandOutcome) -> String {
    match outcome {
        CommandOutcome::Exited(code) => code.to_string(),
        _ => "-1".into(),
    }
}

fn is_true(env: &BTreeMap<String, String>, key: &str) -> bool {
    env.get(key).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

/// A fresh, empty directory.
async fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    tokio::fs::create_dir_all(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_decides_the_outcome() {
        let passed = CommandOutcome::Exited(0);
        assert_eq!(
            first_failure(passed.clone(), CommandOutcome::Exited(5)),
            CommandOutcome::Exited(5)
        );
        assert_eq!(
            first_failure(CommandOutcome::Exited(2), CommandOutcome::Exited(5)),
            CommandOutcome::Exited(2)
        );
        assert_eq!(first_failure(passed.clone(), passed.clone()), passed);
    }

    #[test]
    fn exit_status_text_for_hooks() {
        assert_eq!(exit_text(&CommandOutcome::Exited(3)), "3");
        assert_eq!(exit_text(&CommandOutcome::Signaled("SIGTERM".into())), "-1");
    }
}
