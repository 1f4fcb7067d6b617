//! What the local backend asks of the operating system about a launch's processes: is the
//! wrapper we started still the same process (pid plus its start time from `/proc`, so a
//! reused pid is never mistaken for ours), signalling its process group, and finding every
//! process that carries a launch's environment marker (for stragglers and crash windows).

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

/// The environment variable every launch's processes carry, naming their launch. Descendants
/// inherit it, so it finds a launch's processes even when no pid was recorded.
pub const LAUNCH_MARKER_VAR: &str = "UPDRAFT_LAUNCH";

/// One process, identified beyond its pid: `start_ticks` is field 22 of `/proc/<pid>/stat`
/// (start time in clock ticks after boot), which differs for a later process reusing the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_ticks: u64,
}

/// The parts of `/proc/<pid>/stat` the backend uses.
struct ProcStat {
    state: char,
    start_ticks: u64,
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'; the
    // fields after the last ')' are plain: state is field 3 and starttime field 22.
    let after_name = &raw[raw.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

impl ProcessIdentity {
    /// The identity of a live process, read from `/proc`.
    pub fn of(pid: i32) -> Option<Self> {
        read_stat(pid).map(|stat| ProcessIdentity {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// True while this very process exists and has not exited (a zombie has exited: it only
    /// waits for its parent to collect the status).
    pub fn is_alive(&self) -> bool {
        matches!(read_stat(self.pid), Some(stat) if stat.start_ticks == self.start_ticks && stat.state != 'Z')
    }

    /// Signal the process group this process leads. Only sent while the leader is provably
    /// ours, so a reused pid never receives it. Returns false when nothing was signalled.
    pub fn signal_group(&self, signal: Signal) -> bool {
        if !self.is_alive() {
            return false;
        }
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(error) => {
                tracing::warn!(pid = self.pid, %error, "signalling a launch's process group failed");
                false
            }
        }
    }
}

/// Every live process whose environment names `launch` in [`LAUNCH_MARKER_VAR`].
pub fn processes_marked(launch: &str) -> Vec<ProcessIdentity> {
    let marker = format!("{LAUNCH_MARKER_VAR}={launch}");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            environ_contains(
                &Path::new("/proc").join(pid.to_string()).join("environ"),
                &marker,
            )
        })
        .filter_map(ProcessIdentity::of)
        .filter(ProcessIdentity::is_alive)
        .collect()
}

fn environ_contains(path: &Path, entry: &str) -> bool {
    fs::read(path)
        .map(|raw| raw.split(|b| *b == 0).any(|var| var == entry.as_bytes()))
        .unwrap_or(false)
}

/// Signal each process individually (used for stragglers found by their marker, which may
/// have left the launch's process group).
pub fn signal_each(processes: &[ProcessIdentity], signal: Signal) {
    for process in processes.iter().filter(|p| p.is_alive()) {
        if let Err(error) = nix::sys::signal::kill(Pid::from_raw(process.pid), signal) {
            if error != Errno::ESRCH {
                tracing::warn!(pid = process.pid, %error, "signalling a launch's process failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_identity_and_a_different_start_time_is_not_alive() {
        let me = ProcessIdentity::of(std::process::id() as i32).expect("own /proc entry");
        assert!(me.is_alive());
        let impostor = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!impostor.is_alive());
        assert!(ProcessIdentity::of(-5).is_none());
    }
}
