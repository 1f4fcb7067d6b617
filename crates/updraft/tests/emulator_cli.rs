//! `updraft emulator` as a process, the contract other tools depend on (issue 2): exactly
//! one stdout line `emulator listening on http://ADDR` once it serves, settings on stderr
//! with tokens redacted unless `--print-tokens`, exit 0 on SIGTERM and SIGINT, and a bad
//! flag value is one error line naming the flag with a non-zero exit.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

const AGENT_TOKEN: &str = "bkct_cli_test_agent_secret_4711";
const API_TOKEN: &str = "bkua_cli_test_api_secret_0815";
/// Guards against a hung child; not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn emulator_command(listen: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
    command
        .args([
            "emulator",
            "--listen",
            listen,
            "--org",
            "cli-org",
            "--agent-token",
            AGENT_TOKEN,
            "--api-token",
            API_TOKEN,
        ])
        .args(extra)
        .env_remove("UPDRAFT_EMULATOR_AGENT_TOKEN")
        .env_remove("UPDRAFT_EMULATOR_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running emulator process: its address, the rest of its stdout, and its stderr as it is
/// collected in the background (so a full pipe never blocks it).
struct Running {
    child: Child,
    url: String,
    stdout: BufReader<ChildStdout>,
    stderr: JoinHandle<String>,
}

async fn start(extra: &[&str]) -> Running {
    let mut child = emulator_command("127.0.0.1:0", extra)
        .spawn()
        .expect("spawn updraft emulator");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    tokio::time::timeout(HANG_GUARD, stdout.read_line(&mut line))
        .await
        .expect("the emulator printed its line")
        .expect("reading stdout");
    let url = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("emulator listening on "))
        .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "the real port is printed: {url}");
    Running {
        child,
        url,
        stdout,
        stderr,
    }
}

impl Running {
    /// Send `signal`; return the exit status, what else was on stdout, and all of stderr.
    async fn stop_with(mut self, signal: Signal) -> (ExitStatus, String, String) {
        let pid = self.child.id().expect("child still running") as i32;
        kill(Pid::from_raw(pid), signal).expect("signal the emulator");
        let status = tokio::time::timeout(HANG_GUARD, self.child.wait())
            .await
            .expect("the emulator exited after the signal")
            .expect("wait for the emulator");
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .await
            .expect("read the rest of stdout");
        let stderr = self.stderr.await.expect("stderr reader");
        (status, rest, stderr)
    }
}

async fn assert_serves(url: &str) {
    let response = reqwest::get(format!("{url}/"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}/ right after the line: {e}"));
    assert!(
        response.status().is_success(),
        "GET / answered {}",
        response.status()
    );
}

#[tokio::test]
async fn serves_after_its_one_line_redacts_tokens_and_exits_0_on_sigterm() {
    let running = start(&[]).await;
    assert_serves(&running.url).await;
    let (status, rest_of_stdout, stderr) = running.stop_with(Signal::SIGTERM).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(rest_of_stdout, "", "stdout holds only the listening line");
    assert!(
        stderr.contains("cli-org"),
        "settings are printed:\n{stderr}"
    );
    assert!(stderr.contains("agent-token"), "{stderr}");
    assert!(stderr.contains("api-token"), "{stderr}");
    for token in [AGENT_TOKEN, API_TOKEN] {
        assert!(!stderr.contains(token), "token {token} leaked:\n{stderr}");
    }
}

#[tokio::test]
async fn print_tokens_shows_them_and_sigint_exits_0() {
    let running = start(&["--print-tokens"]).await;
    assert_serves(&running.url).await;
    let (status, rest_of_stdout, stderr) = running.stop_with(Signal::SIGINT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(rest_of_stdout, "");
    for token in [AGENT_TOKEN, API_TOKEN] {
        assert!(
            stderr.contains(token),
            "--print-tokens shows {token}:\n{stderr}"
        );
    }
}

/// Run to the end with a bad flag; return the exit status, stdout and stderr.
async fn run_bad(listen: &str, extra: &[&str]) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(HANG_GUARD, emulator_command(listen, extra).output())
        .await
        .expect("a bad flag ends the process")
        .expect("run updraft emulator");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The lines that report an error (clap may add its `For more information` hint).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("updraft:"))
        .collect()
}

#[tokio::test]
async fn an_unparsable_listen_address_is_one_error_naming_the_flag() {
    let (status, stdout, stderr) = run_bad("nope", &[]).await;
    assert!(!status.success(), "exit {status}");
    assert_eq!(stdout, "", "nothing is served, nothing is announced");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    assert!(errors[0].contains("--listen"), "{stderr}");
    assert!(errors[0].contains("nope"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn an_out_of_range_value_is_one_error_naming_the_flag() {
    let (status, stdout, stderr) = run_bad("127.0.0.1:0", &["--push-drop", "2"]).await;
    assert!(!status.success(), "exit {status}");
    assert_eq!(stdout, "");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    assert!(errors[0].contains("--push-drop"), "{stderr}");
    for token in [AGENT_TOKEN, API_TOKEN] {
        assert!(!stderr.contains(token), "token {token} leaked:\n{stderr}");
    }
}
