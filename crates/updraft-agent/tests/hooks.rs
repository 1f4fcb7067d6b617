//! Agent-level hooks against the in-process emulator: buildkite-agent's order, variables
//! exported by one hook reaching the later phases, `checkout` and `command` hooks replacing
//! the defaults, a failing `pre-*` hook skipping the rest but not `pre-exit`, and `pre-exit`
//! after a cancel or a timeout within the grace period.

mod common;

use common::{build, emulator, eventually, one_shot, pipeline};
use std::path::Path;
use std::time::Duration;
use updraft_agent::{run_agent, AgentRun, Shutdown};
use updraft_emulator::{EmulatorConfig, EmulatorHandle, JobState};
use uuid::Uuid;

/// Write each `(name, script)` into a fresh hooks directory.
fn hooks_dir(hooks: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, script) in hooks {
        std::fs::write(dir.path().join(name), script).unwrap();
    }
    dir
}

/// Run `job` one-shot with `hooks`; return the run and the job's log.
async fn run_with_hooks(emulator: &EmulatorHandle, job: Uuid, hooks: &Path) -> (AgentRun, String) {
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(emulator, builds.path(), job);
    config.hooks_path = Some(hooks.to_path_buf());
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    (run, log)
}

/// A hook that prints what the chain of earlier hooks exported, then adds itself to it.
fn chain_hook(name: &str) -> String {
    format!("echo \"{name} sees ${{CHAIN:-nothing}}\"\nexport CHAIN=\"${{CHAIN:-}}{name},\"\n")
}

#[tokio::test]
async fn every_hook_runs_in_order_and_exported_variables_carry_forward() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "all-hooks",
        &["echo \"command sees $CHAIN\"; exit 3"],
    );
    let job = build(&emulator, "all-hooks")[0];
    let names = ["pre-checkout", "checkout", "post-checkout", "pre-command"];
    let mut scripts: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.to_string(), chain_hook(n)))
        .collect();
    // The pipeline skips checkout; the environment hook turns it back on for the checkout hook.
    scripts.push((
        "environment".into(),
        format!(
            "{}export BUILDKITE_SKIP_CHECKOUT=false\n",
            chain_hook("environment")
        ),
    ));
    scripts.push((
        "post-command".into(),
        "echo \"post-command sees $CHAIN status=$BUILDKITE_COMMAND_EXIT_STATUS\"\n".into(),
    ));
    scripts.push((
        "pre-exit".into(),
        "echo \"pre-exit sees $CHAIN status=$BUILDKITE_COMMAND_EXIT_STATUS\"\n".into(),
    ));
    let borrowed: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let hooks = hooks_dir(&borrowed);
    let (run, log) = run_with_hooks(&emulator, job, hooks.path()).await;
    assert_eq!(run.jobs[0].exit_status, "3", "{log}");
    let expected = [
        "~~~ Running the environment hook\nenvironment sees nothing\n",
        "~~~ Running the pre-checkout hook\npre-checkout sees environment,\n",
        "~~~ Running the checkout hook\ncheckout sees environment,pre-checkout,\n",
        "~~~ Running the post-checkout hook\npost-checkout sees environment,pre-checkout,checkout,\n",
        "~~~ Running the pre-command hook\npre-command sees environment,pre-checkout,checkout,post-checkout,\n",
        "command sees environment,pre-checkout,checkout,post-checkout,pre-command,\n",
        "post-command sees environment,pre-checkout,checkout,post-checkout,pre-command, status=3\n",
        "pre-exit sees environment,pre-checkout,checkout,post-checkout,pre-command, status=3\n",
    ];
    let mut from = 0;
    for part in expected {
        let at = log[from..]
            .find(part)
            .unwrap_or_else(|| panic!("{part:?} missing or out of order in:\n{log}"));
        from += at + part.len();
    }
    assert!(
        !log.contains("Preparing working directory"),
        "the checkout hook replaces git: {log}"
    );
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
}

#[tokio::test]
async fn a_command_hook_runs_instead_of_the_command() {
    let emulator = emulator().await;
    pipeline(&emulator, "command-hook", &["echo the step command ran"]);
    let job = build(&emulator, "command-hook")[0];
    let hooks = hooks_dir(&[
        (
            "command",
            "echo \"instead of: $BUILDKITE_COMMAND\"\nexit 6\n",
        ),
        (
            "post-command",
            "echo \"post-command status=$BUILDKITE_COMMAND_EXIT_STATUS\"\n",
        ),
    ]);
    let (run, log) = run_with_hooks(&emulator, job, hooks.path()).await;
    assert_eq!(run.jobs[0].exit_status, "6", "{log}");
    assert!(
        log.contains("instead of: echo the step command ran\n"),
        "{log}"
    );
    assert!(
        !log.lines().any(|line| line == "the step command ran"),
        "{log}"
    );
    assert!(log.contains("post-command status=6\n"), "{log}");
}

#[tokio::test]
async fn a_failing_pre_command_hook_fails_the_job_and_skips_to_pre_exit() {
    let emulator = emulator().await;
    pipeline(&emulator, "bad-pre-command", &["echo command ran"]);
    let job = build(&emulator, "bad-pre-command")[0];
    let hooks = hooks_dir(&[
        ("pre-command", "echo refusing\nexit 5\n"),
        ("post-command", "echo post-command ran\n"),
        (
            "pre-exit",
            "echo \"pre-exit ran, command status=${BUILDKITE_COMMAND_EXIT_STATUS:-none}\"\n",
        ),
    ]);
    let (run, log) = run_with_hooks(&emulator, job, hooks.path()).await;
    assert_eq!(run.jobs[0].exit_status, "5", "{log}");
    assert!(log.contains("refusing\n"), "{log}");
    assert!(
        !log.contains("command ran") && !log.contains("post-command ran"),
        "{log}"
    );
    assert!(
        log.ends_with("pre-exit ran, command status=none\n"),
        "{log}"
    );
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
}

#[tokio::test]
async fn a_failing_post_command_hook_fails_a_passing_job() {
    let emulator = emulator().await;
    pipeline(&emulator, "bad-post-command", &["echo command passed"]);
    let job = build(&emulator, "bad-post-command")[0];
    let hooks = hooks_dir(&[("post-command", "exit 9\n")]);
    let (run, log) = run_with_hooks(&emulator, job, hooks.path()).await;
    assert_eq!(run.jobs[0].exit_status, "9", "{log}");
    assert!(log.contains("command passed\n"), "{log}");
}

#[tokio::test]
async fn pre_exit_runs_after_a_cancel_within_the_grace_period() {
    let emulator = emulator().await;
    pipeline(&emulator, "cancel-pre-exit", &["echo started; sleep 30"]);
    let job = build(&emulator, "cancel-pre-exit")[0];
    let hooks = hooks_dir(&[
        ("post-command", "echo post-command ran\n"),
        (
            "pre-exit",
            "echo \"pre-exit after cancel, timed out: ${BUILDKITE_JOB_TIMED_OUT:-no}\"\n",
        ),
    ]);
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.hooks_path = Some(hooks.path().to_path_buf());
    config.cancel_grace_period = Duration::from_secs(10);
    let agent = tokio::spawn(run_agent(config, Shutdown::default()));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| l == b"started\n"))
        .await
    );
    emulator.cancel_job(job).unwrap();
    let run = agent.await.unwrap().unwrap();
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(
        run.jobs[0].signal_reason.as_deref(),
        Some("cancel"),
        "{log}"
    );
    assert_eq!(run.jobs[0].signal.as_deref(), Some("SIGTERM"), "{log}");
    assert!(
        log.ends_with("~~~ Running the pre-exit hook\npre-exit after cancel, timed out: no\n"),
        "{log}"
    );
    assert!(!log.contains("post-command ran"), "{log}");
    assert_eq!(emulator.job_state(job), Some(JobState::Canceled));
}

#[tokio::test]
async fn pre_exit_is_skipped_when_the_command_used_up_the_grace_period() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "no-grace-left",
        &["trap '' TERM; echo ready; sleep 30"],
    );
    let job = build(&emulator, "no-grace-left")[0];
    let hooks = hooks_dir(&[("pre-exit", "echo pre-exit ran\n")]);
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.hooks_path = Some(hooks.path().to_path_buf());
    config.cancel_grace_period = Duration::from_millis(300);
    let agent = tokio::spawn(run_agent(config, Shutdown::default()));
    assert!(
        eventually(Duration::from_secs(10), || emulator
            .job_log(job)
            .is_some_and(|l| l == b"ready\n"))
        .await
    );
    emulator.cancel_job(job).unwrap();
    let run = agent.await.unwrap().unwrap();
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(run.jobs[0].signal.as_deref(), Some("SIGKILL"), "{log}");
    assert!(!log.contains("pre-exit ran"), "{log}");
    assert!(
        log.contains("Not running the pre-exit hook: the cancel grace period is used up"),
        "{log}"
    );
}

#[tokio::test]
async fn a_timed_out_job_shows_buildkite_job_timed_out_to_pre_exit() {
    let emulator = updraft_emulator::start(EmulatorConfig {
        minute: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let yaml = "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: \"echo started; sleep 30\"\n    timeout_in_minutes: 1\n";
    emulator.create_pipeline("times-out", yaml).unwrap();
    let job = build(&emulator, "times-out")[0];
    let hooks = hooks_dir(&[(
        "pre-exit",
        "echo \"timed out: ${BUILDKITE_JOB_TIMED_OUT:-no}\"\n",
    )]);
    let (run, log) = run_with_hooks(&emulator, job, hooks.path()).await;
    assert_eq!(
        run.jobs[0].signal_reason.as_deref(),
        Some("cancel"),
        "{log}"
    );
    assert!(log.ends_with("timed out: true\n"), "{log}");
    assert_eq!(emulator.job_state(job), Some(JobState::TimedOut));
}
