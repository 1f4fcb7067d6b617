//! The local backend with real processes: launches run in their own work directory and
//! process group with the spec's environment, are idempotent on their name (also across a
//! restart), respect the per-fleet cap, stop (SIGTERM, then SIGKILL after the grace), end at
//! their deadline, are found again by a new backend instance, and leave nothing behind when
//! deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use updraft_backends::local::{LocalBackend, LocalOptions, LAUNCH_MARKER_VAR};
use updraft_backends::{
    Backend, BackendError, JobContext, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec,
};
use updraft_model::Secret;
use uuid::Uuid;

/// Upper bound for anything asynchronous to happen; tests poll and finish as soon as it does.
const PATIENCE: Duration = Duration::from_secs(15);

fn spec(fleet: &str, script: &str) -> LaunchSpec {
    let job_id = Uuid::new_v4();
    LaunchSpec {
        name: LaunchName::for_job(job_id),
        job_id,
        fleet: fleet.to_string(),
        job: JobContext::default(),
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        command: vec!["sh".to_string(), "-c".to_string(), script.to_string()],
        deadline: Duration::from_secs(600),
    }
}

fn options(state: &Path) -> LocalOptions {
    let mut options = LocalOptions::new(state);
    options.stop_grace = Duration::from_millis(500);
    options
}

async fn phase_of(backend: &LocalBackend, name: &LaunchName) -> Option<LaunchPhase> {
    let statuses = backend.list().await.expect("list");
    statuses
        .into_iter()
        .find(|s| &s.name == name)
        .map(|s| s.phase)
}

/// Poll until the launch has finished; panics with the last phase after [`PATIENCE`].
async fn finished(backend: &LocalBackend, name: &LaunchName) -> LaunchPhase {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let phase = phase_of(backend, name).await;
        match phase {
            Some(phase) if phase.is_finished() => return phase,
            _ if tokio::time::Instant::now() > give_up => {
                panic!("launch {name} did not finish; last phase {phase:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn running(backend: &LocalBackend, name: &LaunchName) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while phase_of(backend, name).await != Some(LaunchPhase::Running) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "launch {name} never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn failure_reason(phase: LaunchPhase) -> String {
    match phase {
        LaunchPhase::Failed { reason } => reason,
        other => panic!("expected a failed launch, got {other:?}"),
    }
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

async fn gone(pid: i32) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "process {pid} is still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pid(path: &Path) -> i32 {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|raw| raw.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{} never held a pid",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_launch_runs_its_command_in_its_own_directory_group_and_environment() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let mut spec = spec(
        "linux",
        r#"echo "pwd=$PWD"; echo "greeting=$GREETING"; echo "token-length=${#TOKEN}"
           echo "marker=$UPDRAFT_LAUNCH"; echo "pgrp=$(cut -d' ' -f5 /proc/$$/stat)"; env"#,
    );
    spec.env.insert("GREETING".into(), "hello".into());
    spec.secrets
        .insert("TOKEN".into(), Secret::new("bkaj_s3cret"));

    assert_eq!(
        backend.launch(&spec).await.expect("launch"),
        LaunchOutcome::Started
    );
    assert_eq!(finished(&backend, &spec.name).await, LaunchPhase::Succeeded);

    let output = std::fs::read_to_string(backend.output_path(&spec.name)).expect("output.log");
    let work = backend.launch_dir(&spec.name).join("work");
    assert!(
        output.contains(&format!("pwd={}", work.display())),
        "{output}"
    );
    assert!(output.contains("greeting=hello\n"), "{output}");
    assert!(output.contains("token-length=11\n"), "{output}");
    assert!(
        output.contains(&format!("marker={}\n", spec.name)),
        "{output}"
    );
    let own_group = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    let own_group = own_group
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .nth(2)
        .expect("pgrp")
        .to_string();
    let launch_group = output
        .lines()
        .find_map(|l| l.strip_prefix("pgrp="))
        .expect("pgrp line");
    assert_ne!(
        launch_group, own_group,
        "the launch must have its own process group"
    );
    assert!(
        !output.lines().any(|l| l.starts_with("CARGO")),
        "the scheduler's environment leaked: {output}"
    );
    assert_eq!(LAUNCH_MARKER_VAR, "UPDRAFT_LAUNCH");

    for entry in std::fs::read_dir(backend.launch_dir(&spec.name))
        .expect("launch dir")
        .flatten()
    {
        if entry.file_name() != "output.log" && entry.path().is_file() {
            let raw = std::fs::read_to_string(entry.path()).expect("record file");
            assert!(
                !raw.contains("s3cret"),
                "{} holds the secret",
                entry.path().display()
            );
        }
    }
}

#[tokio::test]
async fn launching_the_same_name_twice_is_one_launch_also_after_a_restart() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let spec = spec("linux", "echo once >> ../../../runs");
    assert_eq!(
        backend.launch(&spec).await.expect("launch"),
        LaunchOutcome::Started
    );
    assert_eq!(
        backend.launch(&spec).await.expect("again"),
        LaunchOutcome::AlreadyExists
    );
    finished(&backend, &spec.name).await;

    let reopened = LocalBackend::open(options(state.path()))
        .await
        .expect("reopen");
    assert_eq!(
        reopened.launch(&spec).await.expect("after restart"),
        LaunchOutcome::AlreadyExists
    );
    assert_eq!(
        phase_of(&reopened, &spec.name).await,
        Some(LaunchPhase::Succeeded)
    );
    let runs = std::fs::read_to_string(state.path().join("runs")).expect("runs file");
    assert_eq!(runs, "once\n");
}

#[tokio::test]
async fn a_failing_command_reports_its_status_and_a_missing_program_says_so() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let failing = spec("linux", "exit 3");
    backend.launch(&failing).await.expect("launch");
    assert_eq!(
        failure_reason(finished(&backend, &failing.name).await),
        "exited with status 3"
    );

    let mut missing = spec("linux", "");
    missing.command = vec!["/nonexistent/updraft-agent".to_string()];
    backend.launch(&missing).await.expect("launch");
    let reason = failure_reason(finished(&backend, &missing.name).await);
    assert!(
        reason.contains("127") && reason.contains("command not found"),
        "{reason}"
    );

    let mut empty = spec("linux", "");
    empty.command.clear();
    let error = backend
        .launch(&empty)
        .await
        .expect_err("an empty command is invalid");
    assert!(
        matches!(error, BackendError::Invalid { .. }) && !error.is_retryable(),
        "{error}"
    );
    assert!(error.to_string().contains("command is empty"), "{error}");
}

#[tokio::test]
async fn the_per_fleet_cap_holds_launches_back_until_one_ends() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut options = options(state.path());
    options.max_running_per_fleet.insert("small".into(), 1);
    let backend = LocalBackend::open(options).await.expect("open");

    let first = spec("small", "sleep 30");
    backend.launch(&first).await.expect("first launch");
    let second = spec("small", "true");
    let error = backend.launch(&second).await.expect_err("the cap is 1");
    assert!(
        matches!(error, BackendError::AtCapacity { .. }) && error.is_retryable(),
        "{error}"
    );
    assert!(error.to_string().contains("fleet small has 1/1"), "{error}");
    let other_fleet = spec("large", "true");
    assert_eq!(
        backend.launch(&other_fleet).await.expect("other fleet"),
        LaunchOutcome::Started
    );
    assert_eq!(backend.running("small"), 1);

    backend.stop(&first.name).await.expect("stop");
    finished(&backend, &first.name).await;
    assert_eq!(
        backend.launch(&second).await.expect("room again"),
        LaunchOutcome::Started
    );
    assert_eq!(
        finished(&backend, &second.name).await,
        LaunchPhase::Succeeded
    );
}

#[tokio::test]
async fn stop_terminates_the_whole_group_and_escalates_to_sigkill() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let child_pid_file = state.path().join("grandchild.pid");
    let polite = spec(
        "linux",
        &format!("sleep 30 & echo $! > {}; wait", child_pid_file.display()),
    );
    backend.launch(&polite).await.expect("launch");
    let grandchild = read_pid(&child_pid_file).await;
    backend.stop(&polite.name).await.expect("stop");
    let reason = failure_reason(finished(&backend, &polite.name).await);
    assert!(
        reason.starts_with("stopped (stop requested)") && reason.contains("SIGTERM"),
        "{reason}"
    );
    gone(grandchild).await;

    let ready = state.path().join("stubborn.pid");
    let stubborn = spec(
        "linux",
        &format!(
            "trap '' TERM; echo $$ > {}; while true; do sleep 0.05; done",
            ready.display()
        ),
    );
    backend.launch(&stubborn).await.expect("launch");
    read_pid(&ready).await;
    backend.stop(&stubborn.name).await.expect("stop");
    let reason = failure_reason(finished(&backend, &stubborn.name).await);
    assert!(reason.contains("SIGKILL"), "{reason}");

    backend
        .stop(&LaunchName::for_job(Uuid::new_v4()))
        .await
        .expect("stopping an unknown launch is a no-op");
}

#[tokio::test]
async fn a_launch_past_its_deadline_is_stopped() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let mut slow = spec("linux", "sleep 30");
    slow.deadline = Duration::from_millis(300);
    backend.launch(&slow).await.expect("launch");
    let reason = failure_reason(finished(&backend, &slow.name).await);
    assert!(
        reason.contains("deadline of 300ms passed") && reason.contains("SIGTERM"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_new_backend_finds_running_launches_and_their_exit_status() {
    let state = tempfile::tempdir().expect("temp dir");
    let release = state.path().join("release");
    let launch = spec(
        "linux",
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done; exit 5",
            release.display()
        ),
    );
    let blocked = spec("linux", "sleep 30");
    {
        let first = LocalBackend::open(options(state.path()))
            .await
            .expect("open");
        first.launch(&launch).await.expect("launch");
        first.launch(&blocked).await.expect("launch");
        running(&first, &launch.name).await;
        running(&first, &blocked.name).await;
    }

    let second = LocalBackend::open(options(state.path()))
        .await
        .expect("reopen");
    assert_eq!(
        phase_of(&second, &launch.name).await,
        Some(LaunchPhase::Running)
    );
    assert_eq!(second.running("linux"), 2);
    let listed = second.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s.fleet == "linux"));

    std::fs::write(&release, "").expect("release the launch");
    assert_eq!(
        failure_reason(finished(&second, &launch.name).await),
        "exited with status 5"
    );

    second
        .stop(&blocked.name)
        .await
        .expect("stop an adopted launch");
    let reason = failure_reason(finished(&second, &blocked.name).await);
    assert!(reason.contains("SIGTERM"), "{reason}");
}

#[tokio::test]
async fn delete_kills_what_still_runs_including_escaped_processes_and_removes_the_directory() {
    let state = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let escaped_pid_file = state.path().join("escaped.pid");
    let launch = spec(
        "linux",
        &format!(
            "setsid sleep 60 & echo $! > {}; sleep 60",
            escaped_pid_file.display()
        ),
    );
    backend.launch(&launch).await.expect("launch");
    let escaped = read_pid(&escaped_pid_file).await;
    running(&backend, &launch.name).await;

    backend.delete(&launch.name).await.expect("delete");
    assert!(!backend.launch_dir(&launch.name).exists());
    assert_eq!(phase_of(&backend, &launch.name).await, None);
    gone(escaped).await;
    backend
        .delete(&launch.name)
        .await
        .expect("deleting again is not an error");
    assert_eq!(
        backend
            .launch(&launch)
            .await
            .expect("relaunch after delete"),
        LaunchOutcome::Started
    );
    backend.delete(&launch.name).await.expect("clean up");
}

#[tokio::test]
async fn a_launch_interrupted_before_its_process_started_is_reported_and_can_be_replaced() {
    let state = tempfile::tempdir().expect("temp dir");
    let launch = spec("linux", "true");
    std::fs::create_dir_all(state.path().join("launches").join(launch.name.as_str()))
        .expect("half-made launch");
    std::fs::write(state.path().join("launches").join("not-a-launch"), "").expect("foreign file");

    let backend = LocalBackend::open(options(state.path()))
        .await
        .expect("open");
    let reason = failure_reason(phase_of(&backend, &launch.name).await.expect("listed"));
    assert!(
        reason.contains("interrupted before its process started"),
        "{reason}"
    );
    assert_eq!(
        backend.launch(&launch).await.expect("launch"),
        LaunchOutcome::AlreadyExists
    );
    backend.delete(&launch.name).await.expect("delete");
    assert_eq!(
        backend.launch(&launch).await.expect("launch"),
        LaunchOutcome::Started
    );
    assert_eq!(
        finished(&backend, &launch.name).await,
        LaunchPhase::Succeeded
    );

    // A directory that appears after start-up (another process on the same state dir) takes
    // the name too, and is listed.
    let late = spec("linux", "true");
    std::fs::create_dir_all(state.path().join("launches").join(late.name.as_str()))
        .expect("late dir");
    assert_eq!(
        backend.launch(&late).await.expect("launch"),
        LaunchOutcome::AlreadyExists
    );
    let reason = failure_reason(phase_of(&backend, &late.name).await.expect("listed"));
    assert!(
        reason.contains("interrupted before its process started"),
        "{reason}"
    );
}
