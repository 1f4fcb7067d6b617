//! Container processes: each runs in its own process group (so a signal reaches everything it
//! started, as a container's PID namespace would), with its output appended to the
//! container's log file. The table remembers every process started, for tests, and kills
//! what is left on shutdown.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

/// One container process the kubelet started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id, which is also its process group id.
    pub pid: u32,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The command line as run on the host (after aliases and path rewriting).
    pub argv: Vec<String>,
    /// The container's image, as the pod spec names it.
    pub image: String,
}

/// What to run for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
}

/// How long a container's leftover processes may take to die after SIGKILL.
pub const GROUP_EXIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Table {
    started: Vec<ProcessInfo>,
    /// Process groups that may still have members.
    live: BTreeSet<u32>,
}

/// Every process the kubelet started.
#[derive(Debug, Default)]
pub struct ProcessTable(Mutex<Table>);

impl ProcessTable {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a container process with its output appended to `log`.
    pub fn spawn(
        &self,
        launch: &Launch,
        log: &Path,
        mut info: ProcessInfo,
    ) -> io::Result<tokio::process::Child> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::create_dir_all(&launch.working_dir)?;
        let stdout = OpenOptions::new().create(true).append(true).open(log)?;
        let stderr = stdout.try_clone()?;
        let (program, args) = launch
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command to run"))?;
        let path = launch
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let program = resolve(program, path.unwrap_or_default())?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.working_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        info.pid = child.id().unwrap_or_default();
        info.argv = launch.argv.clone();
        let mut table = self.table();
        table.live.insert(info.pid);
        table.started.push(info);
        Ok(child)
    }

    /// Signals a container's whole process group.
    pub fn signal(&self, pid: u32, signal: Signal) {
        if self.table().live.contains(&pid) {
            let _ = killpg(Pid::from_raw(pid as i32), signal);
        }
    }

    /// The container's main process has exited: whatever it left behind in its group is
    /// killed too, as when a container's init process dies, and this returns once none of it
    /// is left running (or after [`GROUP_EXIT_WAIT`]).
    pub async fn exited(&self, pid: u32) {
        if !self.table().live.remove(&pid) {
            return;
        }
        let group = Pid::from_raw(pid as i32);
        if killpg(group, None).is_err() {
            return;
        }
        let _ = killpg(group, Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + GROUP_EXIT_WAIT;
        while live_process_groups().contains(&pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs every process group that may still be alive.
    pub fn kill_all(&self) {
        let live = std::mem::take(&mut self.table().live);
        for pid in live {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Every process started so far, oldest first.
    pub fn started(&self) -> Vec<ProcessInfo> {
        self.table().started.clone()
    }

    /// The started processes whose process group still has a live (not zombie) member.
    pub fn running(&self) -> Vec<ProcessInfo> {
        let alive = live_process_groups();
        self.started()
            .into_iter()
            .filter(|p| alive.contains(&p.pid))
            .collect()
    }
}

/// The program as an absolute path, found on the container's `PATH` as `execvp` would. Doing
/// the search here (rather than in the child) also lets the standard library spawn with
/// `posix_spawn` instead of forking a copy of this (large) process for every container.
fn resolve(program: &str, path: &str) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{program} is not on PATH")))
}

/// Process groups with at least one process that is not a zombie, from `/proc`.
fn live_process_groups() -> HashSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            let after_name = &stat[stat.rfind(')')? + 2..];
            let mut fields = after_name.split_whitespace();
            let state = fields.next()?;
            let group: u32 = fields.nth(1)?.parse().ok()?;
            (state != "Z" && state != "X").then_some(group)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kills_what_a_container_leaves_behind_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let table = ProcessTable::default();
        let launch = Launch {
            argv: vec!["sh".into(), "-c".into(), "sleep 30 & echo started".into()],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap())],
            working_dir: dir.path().join("work"),
        };
        let info = ProcessInfo {
            pid: 0,
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            argv: vec![],
            image: "i".into(),
        };
        let log = dir.path().join("log/0.log");
        let mut child = table.spawn(&launch, &log, info).unwrap();
        let pid = child.id().unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(
            table.running().len(),
            1,
            "the background sleep outlives its parent"
        );
        table.exited(pid).await;
        assert!(
            table.running().is_empty(),
            "left behind: {:?}",
            table.running()
        );
        assert_eq!(fs::read_to_string(log).unwrap(), "started\n");
    }
}
