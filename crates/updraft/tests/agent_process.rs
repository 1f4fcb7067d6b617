//! `updraft agent start` as a process: a job cancelled through the REST API is stopped and
//! `canceled` within 2 s; wrong token, unknown job and an already acquired job each give a
//! one-line error and the documented exit code; `--reflect-exit-status` passes the job's
//! status through.

mod agent_common;

use agent_common::{agent_process, assert_no_token, emulator, pipeline, rest};
use std::time::{Duration, Instant};
use updraft_emulator::JobState;

fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_build_through_rest_stops_the_command_within_two_seconds() {
    let emulator = emulator().await;
    let rest = rest(&emulator);
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("pid");
    let script = format!(
        "echo $$ > {}; echo running; sleep 60; echo not reached",
        pid_file.display()
    );
    pipeline(&emulator, "cancel-me", &[script]);
    let build = emulator.create_build("cancel-me").unwrap();
    let job = build.job_ids[0];
    let builds = tempfile::tempdir().unwrap();
    let child = agent_process(&emulator, builds.path(), job)
        .spawn()
        .unwrap();
    let waiting = tokio::spawn(child.wait_with_output());

    let started = Instant::now();
    while emulator.job_log(job).is_none_or(|log| log != b"running\n") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the job never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let command_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(command_pid));

    let cancelled_at = Instant::now();
    rest.cancel_build("cancel-me", build.number).await.unwrap();
    loop {
        let job_now = rest.get_job(&job.to_string()).await.unwrap();
        if job_now.state.as_deref() == Some("canceled") {
            assert_eq!(job_now.signal_reason.as_deref(), Some("cancel"));
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "job still {:?} after 2 s",
            job_now.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_alive(command_pid), "the command is still running");
    let output = waiting.await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(emulator.job_log(job).unwrap(), b"running\n");
}

/// Run the agent to the end; return its exit code and everything it printed.
async fn run_to_end(mut command: tokio::process::Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

fn assert_one_line_error(stderr: &str, expected: &str) {
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("updraft agent: ") && last.contains(expected),
        "last line {last:?} of:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_give_one_line_errors_and_the_documented_exit_codes() {
    let emulator = emulator().await;
    pipeline(&emulator, "codes", &["exit 3".to_string()]);
    let job = emulator.create_build("codes").unwrap().job_ids[0];
    let builds = tempfile::tempdir().unwrap();
    let mut printed = String::new();

    let mut wrong_token = agent_process(&emulator, builds.path(), job);
    wrong_token.env("BUILDKITE_AGENT_TOKEN", "bkct_this_is_not_the_token");
    let (code, stdout, stderr) = run_to_end(wrong_token).await;
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "token was refused");
    assert!(!stderr.contains("this_is_not_the_token"), "{stderr}");
    printed.push_str(&(stdout + &stderr));

    let (code, stdout, stderr) =
        run_to_end(agent_process(&emulator, builds.path(), uuid_like())).await;
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "was not found");
    printed.push_str(&(stdout + &stderr));

    let mut reflect = agent_process(&emulator, builds.path(), job);
    reflect.arg("--reflect-exit-status");
    let (code, stdout, stderr) = run_to_end(reflect).await;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
    printed.push_str(&(stdout + &stderr));

    let (code, stdout, stderr) = run_to_end(agent_process(&emulator, builds.path(), job)).await;
    assert_eq!(code, 27, "{stderr}");
    assert_one_line_error(&stderr, "cannot be acquired");
    printed.push_str(&(stdout + &stderr));

    assert_no_token(&printed, &emulator);
}

/// A well-formed job id the emulator has never seen.
fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_explained_in_one_line() {
    let emulator = emulator().await;
    let builds = tempfile::tempdir().unwrap();
    let mut command = agent_process(&emulator, builds.path(), uuid_like());
    command.args(["--tags", "linux", "--ping-mode", "poll-only"]);
    let (code, _, stderr) = run_to_end(command).await;
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "--tags: \"linux\" is not key=value");

    let mut command = agent_process(&emulator, builds.path(), uuid_like());
    command.args(["--ping-mode", "stream-only"]);
    let (code, _, stderr) = run_to_end(command).await;
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "--ping-mode stream-only is not supported");
}

/// `updraft agent start` in pool mode (no --acquire-job), configured by flags.
fn pool_process(
    emulator: &updraft_emulator::EmulatorHandle,
    build_path: &std::path::Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_updraft"));
    command
        .args([
            "agent",
            "start",
            "--tags",
            "queue=default,os=linux",
            "--build-path",
        ])
        .arg(build_path)
        .args([
            "--token",
            emulator.agent_token().expose(),
            "--endpoint",
            &emulator.agent_endpoint(),
        ])
        .env_remove("BUILDKITE_AGENT_ACQUIRE_JOB")
        .env("UPDRAFT_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_agent_process_serves_jobs_until_idle() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "pool",
        &["echo first".to_string(), "echo second".to_string()],
    );
    let jobs = emulator.create_build("pool").unwrap().job_ids;
    let builds = tempfile::tempdir().unwrap();
    let mut command = pool_process(&emulator, builds.path());
    command.args(["--disconnect-after-idle-timeout", "2"]);
    let (code, stdout, stderr) = run_to_end(command).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(emulator.job_log(jobs[0]).unwrap(), b"first\n");
    assert_eq!(emulator.job_log(jobs[1]).unwrap(), b"second\n");
    assert!(jobs
        .iter()
        .all(|j| emulator.job_state(*j) == Some(JobState::Passed)));
    assert_no_token(&(stdout + &stderr), &emulator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_a_second_one_stops_it() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "signals",
        &[
            "echo begun; sleep 3; echo ended".to_string(),
            "echo begun; sleep 30".to_string(),
        ],
    );
    let jobs = emulator.create_build("signals").unwrap().job_ids;
    let builds = tempfile::tempdir().unwrap();

    for (job, signals, expected_state) in [
        (jobs[0], 1, JobState::Passed),
        (jobs[1], 2, JobState::Failed),
    ] {
        let child = agent_process(&emulator, builds.path(), job)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id().unwrap() as i32);
        let waiting = tokio::spawn(child.wait_with_output());
        let started = Instant::now();
        while emulator.job_log(job).is_none_or(|log| log.is_empty()) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the job never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 0..signals {
            if let Err(e) = kill(pid, Signal::SIGTERM) {
                let output = waiting.await.unwrap().unwrap();
                panic!(
                    "signal {n} for {job}: {e}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let output = waiting.await.unwrap().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(emulator.job_state(job), Some(expected_state));
    }
    assert_eq!(emulator.job_log(jobs[0]).unwrap(), b"begun\nended\n");
    assert_eq!(
        emulator.job_timeline(jobs[1]).unwrap()["signal_reason"],
        "agent_stop"
    );
}
