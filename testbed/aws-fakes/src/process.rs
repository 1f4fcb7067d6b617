//! Local processes that stand in for build containers and tasks: each runs in its own process
//! group, and the supervisor knows every live group and every runner task, so shutdown can
//! kill them all and nothing new starts afterwards. Stopping one follows the container
//! runtimes' rule: SIGTERM, then SIGKILL after a grace period.

use std::collections::HashSet;
use std::future::Future;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct Registry {
    groups: HashSet<i32>,
    tasks: Vec<AbortHandle>,
    closed: bool,
}

/// Owns the stand-ins' processes and runner tasks.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    registry: Arc<Mutex<Registry>>,
}

impl Supervisor {
    /// Spawns `command` as the leader of a new process group and registers the group.
    pub fn spawn_process(&self, command: &mut Command) -> std::io::Result<(Child, i32)> {
        let mut registry = self.registry.lock().unwrap();
        if registry.closed {
            return Err(std::io::Error::other("the test bed is shutting down"));
        }
        command.process_group(0).kill_on_drop(true);
        let child = command.spawn()?;
        let group = child
            .id()
            .map(|pid| pid as i32)
            .ok_or_else(|| std::io::Error::other("the child exited before it had a pid"))?;
        registry.groups.insert(group);
        Ok((child, group))
    }

    /// Runs a build's or task's life on the runtime; shutdown aborts it.
    pub fn spawn_task(&self, work: impl Future<Output = ()> + Send + 'static) {
        let mut registry = self.registry.lock().unwrap();
        if registry.closed {
            return;
        }
        registry.tasks.retain(|task| !task.is_finished());
        registry.tasks.push(tokio::spawn(work).abort_handle());
    }

    /// Kills whatever is left in `group` (background processes a command left behind, as a
    /// container's teardown would) and forgets it.
    pub fn tear_down(&self, group: i32) {
        if self.registry.lock().unwrap().groups.remove(&group) {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }

    /// Aborts every runner task and kills every process group; nothing starts afterwards.
    pub fn shut_down(&self) {
        let mut registry = self.registry.lock().unwrap();
        registry.closed = true;
        for task in registry.tasks.drain(..) {
            task.abort();
        }
        for group in registry.groups.drain() {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }

    /// How many process groups are still alive (registered and not torn down).
    pub fn live_groups(&self) -> usize {
        self.registry.lock().unwrap().groups.len()
    }
}

/// Stops `child` the way a container runtime does: SIGTERM to its group, SIGKILL after `grace`.
pub async fn terminate(child: &mut Child, group: i32, grace: Duration) -> ExitStatus {
    let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    match child.wait().await {
        Ok(status) => status,
        Err(_) => {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(Signal::SIGKILL as i32)
        }
    }
}

/// The exit code a container runtime reports: the code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}
