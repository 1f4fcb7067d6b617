//! The processes of local launches, found by the marker variable the local backend puts in
//! each launch's environment: to read the job acquisition token the scheduler handed a
//! launch (so the test can look for it where it must not be), and to make sure no launch
//! process outlives the test, even one that fails half-way.

use std::collections::BTreeSet;
use updraft_backends::local::LAUNCH_MARKER_VAR;

/// One live (not zombie) process carrying a launch marker, with its environment.
struct MarkedProcess {
    pid: i32,
    environment: Vec<(String, String)>,
}

fn environment_of(pid: i32) -> Option<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|var| {
                let (key, value) = std::str::from_utf8(var).ok()?.split_once('=')?;
                Some((key.to_string(), value.to_string()))
            })
            .collect(),
    )
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Live processes whose launch marker is one of `launches`.
fn marked_processes(launches: &BTreeSet<String>) -> Vec<MarkedProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !is_zombie(*pid))
        .filter_map(|pid| {
            let environment = environment_of(pid)?;
            let marked = environment
                .iter()
                .any(|(key, value)| key == LAUNCH_MARKER_VAR && launches.contains(value));
            marked.then_some(MarkedProcess { pid, environment })
        })
        .collect()
}

/// The values `variable` has in the environments of the processes of `launch`.
pub fn environment_values(launch: &str, variable: &str) -> BTreeSet<String> {
    let launches = BTreeSet::from([launch.to_string()]);
    marked_processes(&launches)
        .into_iter()
        .flat_map(|process| process.environment)
        .filter(|(key, value)| key == variable && !value.is_empty())
        .map(|(_, value)| value)
        .collect()
}

/// Owns the launches of one test: `live()` lists what still runs, and dropping it SIGKILLs
/// whatever still does, so a failing test leaves no `sleep` behind.
pub struct LaunchReaper {
    launches: BTreeSet<String>,
}

impl LaunchReaper {
    pub fn new(launches: BTreeSet<String>) -> LaunchReaper {
        LaunchReaper { launches }
    }

    /// Pids of the live processes of these launches.
    pub fn live(&self) -> Vec<i32> {
        marked_processes(&self.launches)
            .iter()
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for LaunchReaper {
    fn drop(&mut self) {
        for pid in self.live() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
