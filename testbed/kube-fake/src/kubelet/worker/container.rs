//! One container's life: image, config, process, restarts per the restart policy, and the
//! SIGTERM/SIGKILL sequence when the pod is stopped.

use super::{
    lock, wait_for_stop, Outcome, PodWorker, Restart, Slot, StopCause, StopRequest, CONFIG_RETRY,
    MAX_BACKOFF, POD_IP,
};
use crate::kubelet::launch::{self, PodInputs};
use crate::kubelet::paths;
use crate::kubelet::process::ProcessInfo;
use crate::kubelet::status::State;
use crate::meta;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

impl PodWorker {
    /// Runs one container until it is done for good (per `restart`) or stopped.
    pub(super) async fn run_container(
        self: Arc<Self>,
        slot: Slot,
        restart: Restart,
        mut stop: watch::Receiver<Option<StopRequest>>,
        volumes: Arc<HashMap<String, PathBuf>>,
        mut started: Option<oneshot::Sender<()>>,
    ) -> Outcome {
        let mut backoff = self.shared.cluster.options.crash_loop_backoff;
        loop {
            if !self.pull_image(slot, &mut stop).await {
                return Outcome::Stopped;
            }
            let Some(mut child) = self.start(slot, &volumes, &mut stop).await else {
                return Outcome::Stopped;
            };
            let exit = match child.as_mut() {
                Some((process, pid)) => {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                    let (code, stopped) = self.wait(slot, process, *pid, &mut stop).await;
                    lock(&self.pids).remove(&self.container(slot).name);
                    if stopped {
                        return Outcome::Stopped;
                    }
                    code
                }
                None => 128,
            };
            let again = match restart {
                Restart::Never => false,
                Restart::OnFailure => exit != 0,
                Restart::Always => true,
            };
            if !again {
                return Outcome::Exited(exit);
            }
            let name = self.container(slot).name;
            let pod = format!("{}_{}({})", self.key.name, self.key.namespace, self.uid);
            self.update_container(slot, |c| {
                c.last_state = Some(c.state.clone());
                c.state = State::waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {}s restarting failed container={name} pod={pod}",
                        backoff.as_secs()
                    )),
                );
            });
            self.event(
                Some(slot),
                true,
                "BackOff",
                &format!("Back-off restarting failed container {name} in pod {pod}"),
            );
            if !Self::pause(backoff, &mut stop).await {
                return Outcome::Stopped;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.update_container(slot, |c| c.restart_count += 1);
        }
    }

    /// Resolves the container's config (retrying while a Secret is missing) and starts its
    /// process. `None` when stopped first; `Some(None)` when the process could not start.
    async fn start(
        &self,
        slot: Slot,
        volumes: &HashMap<String, PathBuf>,
        stop: &mut watch::Receiver<Option<StopRequest>>,
    ) -> Option<Option<(tokio::process::Child, u32)>> {
        let cluster = &self.shared.cluster;
        let pod_dir = paths::pod_dir(&cluster.work_dir, &self.uid);
        let node = cluster.node().name;
        let spec = self.spec(slot);
        let launch = loop {
            let resolved = {
                let txn = cluster.store.txn();
                let inputs = PodInputs {
                    pod: &self.pod,
                    node_name: &node,
                    pod_ip: POD_IP,
                    pod_dir: &pod_dir,
                    volumes,
                    aliases: &cluster.options.aliases,
                };
                launch::launch(&inputs, spec, &txn)
            };
            match resolved {
                Ok(launch) => break launch,
                Err(message) => {
                    self.update_container(slot, |c| {
                        c.state =
                            State::waiting("CreateContainerConfigError", Some(message.clone()))
                    });
                    self.event(Some(slot), true, "Failed", &format!("Error: {message}"));
                    if !Self::pause(CONFIG_RETRY, stop).await {
                        return None;
                    }
                }
            }
        };
        let container = self.container(slot);
        let log = paths::log_file(
            &cluster.work_dir,
            &self.uid,
            &container.name,
            container.restart_count,
        );
        let info = ProcessInfo {
            pid: 0,
            namespace: self.key.namespace.clone(),
            pod: self.key.name.clone(),
            container: container.name.clone(),
            argv: Vec::new(),
            image: container.image.clone(),
        };
        let container_id = format!(
            "containerd://{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = meta::now();
        match cluster.processes.spawn(&launch, &log, info) {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                lock(&self.pids).insert(container.name.clone(), pid);
                self.update_container(slot, |c| {
                    c.container_id = Some(container_id);
                    c.state = State::Running { started_at: now };
                    c.started = true;
                });
                self.event(
                    Some(slot),
                    false,
                    "Created",
                    &format!("Created container: {}", container.name),
                );
                self.event(
                    Some(slot),
                    false,
                    "Started",
                    &format!("Started container {}", container.name),
                );
                Some(Some((child, pid)))
            }
            Err(error) => {
                let message = format!(
                    "failed to create containerd task: failed to create shim task: OCI runtime create failed: \
                     runc create failed: unable to start container process: exec: \"{}\": {}: unknown",
                    launch.argv[0],
                    if error.kind() == std::io::ErrorKind::NotFound { "executable file not found in $PATH".to_string() } else { error.to_string() },
                );
                self.update_container(slot, |c| {
                    c.container_id = Some(container_id);
                    c.state = State::Terminated {
                        exit_code: 128,
                        reason: "StartError".into(),
                        message: Some(message.clone()),
                        started_at: Some("1970-01-01T00:00:00Z".into()),
                        finished_at: now,
                    };
                });
                self.event(Some(slot), true, "Failed", &format!("Error: {message}"));
                Some(None)
            }
        }
    }

    /// Waits for the process to exit, stopping it on request; returns its exit code and
    /// whether a stop request ended it.
    async fn wait(
        &self,
        slot: Slot,
        process: &mut tokio::process::Child,
        pid: u32,
        stop: &mut watch::Receiver<Option<StopRequest>>,
    ) -> (i32, bool) {
        let processes = &self.shared.cluster.processes;
        let (status, stopped_by) = tokio::select! {
            status = process.wait() => (status, None),
            request = wait_for_stop(stop) => {
                let name = self.container(slot).name;
                if request.cause == StopCause::NodeLost {
                    processes.signal(pid, Signal::SIGKILL);
                } else {
                    self.event(Some(slot), false, "Killing", &format!("Stopping container {name}"));
                    processes.signal(pid, Signal::SIGTERM);
                }
                let mut deadline = tokio::time::Instant::now() + request.grace;
                let status = loop {
                    tokio::select! {
                        status = process.wait() => break status,
                        _ = tokio::time::sleep_until(deadline) => {
                            processes.signal(pid, Signal::SIGKILL);
                            break process.wait().await;
                        }
                        changed = stop.changed() => {
                            let shorter = stop.borrow().as_ref().map(|r| r.grace);
                            match (changed, shorter) {
                                (Ok(()), Some(grace)) => deadline = deadline.min(tokio::time::Instant::now() + grace),
                                _ => std::future::pending::<()>().await,
                            }
                        }
                    }
                };
                (status, Some(request.cause))
            }
        };
        processes.exited(pid).await;
        let code = match &status {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
            Err(_) => 137,
        };
        let name = self.container(slot).name;
        let oom = lock(&self.oom_killed).remove(&name);
        let finished_at = meta::now();
        self.update_container(slot, |c| {
            let started_at = match &c.state {
                State::Running { started_at } => Some(started_at.clone()),
                _ => None,
            };
            c.state = match &stopped_by {
                Some(StopCause::NodeLost) => State::Terminated {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    started_at,
                    finished_at,
                },
                _ => State::Terminated {
                    exit_code: if oom { 137 } else { code },
                    reason: match (oom, code) {
                        (true, _) => "OOMKilled".into(),
                        (false, 0) => "Completed".into(),
                        _ => "Error".into(),
                    },
                    message: None,
                    started_at,
                    finished_at,
                },
            };
        });
        (code, stopped_by.is_some())
    }
}
