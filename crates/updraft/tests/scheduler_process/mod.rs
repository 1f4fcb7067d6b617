//! `updraft run --config FILE` as a child process, for the end-to-end tests that kill and
//! restart the real binary: its stderr appended to a log file, its address read from the
//! line it prints once it serves.

// Each test binary includes this module and not all of them read every part.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
const READY_PREFIX: &str = "updraft: scheduler running; status page http://";

pub struct SchedulerProcess {
    child: tokio::process::Child,
    /// Where it serves `/status`, `/metrics` and the push routes.
    pub addr: std::net::SocketAddr,
}

impl SchedulerProcess {
    /// Start it with `env` added; returns once it says where it listens.
    pub async fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> SchedulerProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("scheduler log");
        let mut child = tokio::process::Command::new(UPDRAFT)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("UPDRAFT_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn updraft run");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                    return rest
                        .trim_end_matches("/status")
                        .parse::<std::net::SocketAddr>()
                        .ok();
                }
            }
            None
        })
        .await;
        let Ok(Some(addr)) = ready else {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("`updraft run` did not report its address; its log:\n{log}");
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SchedulerProcess { child, addr }
    }

    /// Send `signal` and wait for the process to end; anything but SIGKILL must end it
    /// cleanly.
    pub async fn kill(mut self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("scheduler pid") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .expect("signal the scheduler");
        let status = self.child.wait().await.expect("wait for the scheduler");
        assert!(
            signal == nix::sys::signal::Signal::SIGKILL || status.success(),
            "`updraft run` ended with {status}"
        );
    }
}
