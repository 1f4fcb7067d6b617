//! A launch's directory under `<state>/launches/<launch name>/`, the part of the local backend
//! that outlives the scheduler process: what was launched (`launch.json`, written before the
//! process starts), which process runs it (`process.json`), why it was asked to stop
//! (`stop.json`), how it ended (`exit-status`, written by the wrapper shell), its output
//! (`output.log`) and its work directory (`work/`). No environment or secret is ever written.

use super::process::ProcessIdentity;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const LAUNCH_FILE: &str = "launch.json";
pub const PROCESS_FILE: &str = "process.json";
pub const STOP_FILE: &str = "stop.json";
pub const EXIT_STATUS_FILE: &str = "exit-status";
pub const OUTPUT_FILE: &str = "output.log";
pub const WORK_DIR: &str = "work";

/// What was launched, recorded before the process starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub job_id: Uuid,
    pub fleet: String,
    pub command: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
}

/// Why a stop was asked for and when, so the forced kill after the grace still happens if
/// the scheduler restarts in between.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopRecord {
    pub requested_at: DateTime<Utc>,
    pub reason: String,
}

/// How a launch's command ended, as the wrapper shell saw it: the shell's `$?`, which is
/// 128 + the signal number for a command killed by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub i32);

impl ExitStatus {
    pub fn succeeded(self) -> bool {
        self.0 == 0
    }

    pub fn describe(self) -> String {
        match self.0 {
            0 => "exited with status 0".to_string(),
            127 => "exited with status 127 (command not found)".to_string(),
            code if code > 128 && code < 128 + 65 => {
                let signal = nix::sys::signal::Signal::try_from(code - 128)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {}", code - 128));
                format!("killed by {signal} (status {code})")
            }
            code => format!("exited with status {code}"),
        }
    }
}

/// One launch directory.
#[derive(Debug, Clone)]
pub struct LaunchDir {
    pub path: PathBuf,
}

impl LaunchDir {
    pub fn new(path: PathBuf) -> Self {
        LaunchDir { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn read_launch(&self) -> io::Result<Option<LaunchRecord>> {
        read_json(&self.file(LAUNCH_FILE))
    }

    pub fn write_launch(&self, record: &LaunchRecord) -> io::Result<()> {
        write_json(&self.file(LAUNCH_FILE), record)
    }

    pub fn read_process(&self) -> io::Result<Option<ProcessIdentity>> {
        read_json(&self.file(PROCESS_FILE))
    }

    pub fn write_process(&self, process: &ProcessIdentity) -> io::Result<()> {
        write_json(&self.file(PROCESS_FILE), process)
    }

    pub fn read_stop(&self) -> io::Result<Option<StopRecord>> {
        read_json(&self.file(STOP_FILE))
    }

    pub fn write_stop(&self, stop: &StopRecord) -> io::Result<()> {
        write_json(&self.file(STOP_FILE), stop)
    }

    /// The recorded exit status; a file that does not hold a number reads as absent, since
    /// the wrapper writes it atomically and anything else is not its doing.
    pub fn read_exit_status(&self) -> io::Result<Option<ExitStatus>> {
        match fs::read_to_string(self.file(EXIT_STATUS_FILE)) {
            Ok(raw) => Ok(raw.trim().parse().ok().map(ExitStatus)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Record an exit status the wrapper could not write itself (it was killed), unless it
    /// already did.
    pub fn record_exit_status_if_absent(&self, status: ExitStatus) -> io::Result<()> {
        if self.read_exit_status()?.is_some() {
            return Ok(());
        }
        write_atomically(
            &self.file(EXIT_STATUS_FILE),
            format!("{}\n", status.0).as_bytes(),
        )
    }
}

pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw).map(Some).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not the JSON expected: {error}", path.display()),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let raw = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomically(path, &raw)
}

/// Write to a temporary name and rename, so a reader (or a restart after a crash) sees the
/// whole file or none of it.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    fs::write(&temporary, contents)?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_describe_signals_and_missing_commands() {
        assert!(ExitStatus(0).succeeded());
        assert_eq!(ExitStatus(3).describe(), "exited with status 3");
        assert_eq!(
            ExitStatus(127).describe(),
            "exited with status 127 (command not found)"
        );
        assert_eq!(ExitStatus(143).describe(), "killed by SIGTERM (status 143)");
        assert_eq!(ExitStatus(137).describe(), "killed by SIGKILL (status 137)");
    }

    #[test]
    fn records_round_trip_and_a_garbled_exit_status_reads_as_absent() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = LaunchDir::new(temp.path().to_path_buf());
        assert!(dir.read_launch().expect("read").is_none());
        dir.record_exit_status_if_absent(ExitStatus(4))
            .expect("write");
        dir.record_exit_status_if_absent(ExitStatus(9))
            .expect("second write is a no-op");
        assert_eq!(dir.read_exit_status().expect("read"), Some(ExitStatus(4)));
        fs::write(dir.file(EXIT_STATUS_FILE), "garbage").expect("write");
        assert_eq!(dir.read_exit_status().expect("read"), None);
        fs::write(dir.file(LAUNCH_FILE), "{not json").expect("write");
        let error = dir.read_launch().expect_err("bad json");
        assert!(error.to_string().contains("launch.json"), "{error}");
    }
}
