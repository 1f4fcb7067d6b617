//! One pod on the node, from admission to a terminal phase: volumes, then init containers in
//! order (native sidecars are started and left running), then the regular containers in
//! parallel, then the sidecars are stopped; each container pulls its image, resolves its
//! config, runs as a process and restarts per the pod's restart policy. A stop request
//! (deletion, eviction, lost node) SIGTERMs the process groups and SIGKILLs them when the
//! grace period runs out.

mod container;
mod pull;

use super::paths;
use super::status::{Container, PodStatus};
use super::{volumes, Shared};
use crate::controllers::events::{EventSpec, Source};
use crate::meta;
use crate::registry;
use crate::resource::Resource;
use crate::store::ObjectKey;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The longest wait between pulls of a bad image or restarts of a crashing container.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a missing Secret (volume or env) is looked for again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// The address pods report: containers share the host's network.
const POD_IP: &str = "127.0.0.1";

/// Why a pod's containers are being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// Graceful deletion through the API.
    Deleted,
    /// The pod object is gone (deleted with no grace period).
    Removed,
    /// Node-pressure eviction, with its message.
    Evicted(String),
    /// The node went away.
    NodeLost,
}

/// A request to stop the pod's containers within `grace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    pub grace: Duration,
    pub cause: StopCause,
}

/// How a container ended its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Never,
    OnFailure,
    Always,
}

/// Which container: index into `initContainers` or `containers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    init: bool,
    index: usize,
}

impl Slot {
    fn list(self) -> &'static str {
        if self.init {
            "initContainers"
        } else {
            "containers"
        }
    }
}

pub struct PodWorker {
    shared: Arc<Shared>,
    key: ObjectKey,
    uid: String,
    pod: Arc<Value>,
    status: Mutex<PodStatus>,
    pids: Mutex<HashMap<String, u32>>,
    oom_killed: Mutex<HashSet<String>>,
    stop: watch::Receiver<Option<StopRequest>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodWorker {
    pub fn new(
        shared: Arc<Shared>,
        pod: Arc<Value>,
        stop: watch::Receiver<Option<StopRequest>>,
    ) -> PodWorker {
        let containers = |list: &str| -> Vec<Value> {
            pod["spec"][list].as_array().cloned().unwrap_or_default()
        };
        let (init_specs, regular_specs) = (containers("initContainers"), containers("containers"));
        let regular_reason = if init_specs.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let status = PodStatus {
            init: init_specs
                .iter()
                .map(|c| Container::new(c, "PodInitializing", c["restartPolicy"] == "Always"))
                .collect(),
            regular: regular_specs
                .iter()
                .map(|c| Container::new(c, regular_reason, false))
                .collect(),
            phase: "Pending",
            reason: None,
            message: None,
            start_time: meta::now(),
            ip: POD_IP.into(),
            sandbox_ready: false,
        };
        PodWorker {
            shared,
            key: ObjectKey::of(&pod),
            uid: meta::uid(&pod).to_string(),
            pod,
            status: Mutex::new(status),
            pids: Mutex::new(HashMap::new()),
            oom_killed: Mutex::new(HashSet::new()),
            stop,
        }
    }

    /// Runs the pod to a terminal phase.
    pub async fn run(self: Arc<Self>) {
        self.publish();
        let mut stop = self.stop.clone();
        let Some(volumes) = self.mount_volumes(&mut stop).await else {
            return self.finish();
        };
        self.update(|s| s.sandbox_ready = true);
        let volumes = Arc::new(volumes);
        let (sidecar_stop, sidecar_stop_rx) = watch::channel(None);
        let mut sidecars = Vec::new();
        let pod_restart = match meta::str_at(&self.pod, "/spec/restartPolicy") {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        };
        let mut initialized = true;
        let init_count = lock(&self.status).init.len();
        for index in 0..init_count {
            let slot = Slot { init: true, index };
            if lock(&self.status).init[index].sidecar {
                let (started_tx, started_rx) = oneshot::channel();
                let task = tokio::spawn(self.clone().run_container(
                    slot,
                    Restart::Always,
                    sidecar_stop_rx.clone(),
                    volumes.clone(),
                    Some(started_tx),
                ));
                sidecars.push(task);
                if started_rx.await.is_err() {
                    initialized = false;
                    break;
                }
                continue;
            }
            let restart = if pod_restart == Restart::Never {
                Restart::Never
            } else {
                Restart::OnFailure
            };
            let outcome = self
                .clone()
                .run_container(slot, restart, stop.clone(), volumes.clone(), None)
                .await;
            if outcome != Outcome::Exited(0) {
                initialized = false;
                break;
            }
        }
        if initialized {
            let count = lock(&self.status).regular.len();
            let tasks: Vec<_> = (0..count)
                .map(|index| {
                    let slot = Slot { init: false, index };
                    tokio::spawn(self.clone().run_container(
                        slot,
                        pod_restart,
                        stop.clone(),
                        volumes.clone(),
                        None,
                    ))
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        }
        let grace = match self.stop.borrow().clone() {
            Some(request) => request,
            None => StopRequest {
                grace: Duration::from_secs(
                    self.pod["spec"]["terminationGracePeriodSeconds"]
                        .as_u64()
                        .unwrap_or(30),
                ),
                cause: StopCause::Deleted,
            },
        };
        sidecar_stop.send_replace(Some(grace));
        for task in sidecars {
            let _ = task.await;
        }
        self.finish();
    }

    /// Kills one container as the kernel's OOM killer would.
    pub fn oom_kill(&self, container: &str) {
        lock(&self.oom_killed).insert(container.to_string());
        if let Some(pid) = lock(&self.pids).get(container) {
            self.shared.cluster.processes.signal(*pid, Signal::SIGKILL);
        }
    }

    fn spec(&self, slot: Slot) -> &Value {
        &self.pod["spec"][slot.list()][slot.index]
    }

    fn update(&self, edit: impl FnOnce(&mut PodStatus)) {
        edit(&mut lock(&self.status));
        self.publish();
    }

    fn update_container(&self, slot: Slot, edit: impl FnOnce(&mut Container)) {
        self.update(|status| {
            let list = if slot.init {
                &mut status.init
            } else {
                &mut status.regular
            };
            edit(&mut list[slot.index]);
        });
    }

    fn container(&self, slot: Slot) -> Container {
        let status = lock(&self.status);
        if slot.init {
            status.init[slot.index].clone()
        } else {
            status.regular[slot.index].clone()
        }
    }

    fn publish(&self) {
        let status = lock(&self.status).clone();
        let mut txn = self.shared.cluster.store.txn();
        registry::modify(&mut txn, Resource::Pods, &self.key, |pod| {
            if meta::uid(pod) == self.uid {
                status.apply_to(pod);
            }
        });
    }

    fn event(&self, slot: Option<Slot>, warning: bool, reason: &str, message: &str) {
        let cluster = &self.shared.cluster;
        let mut txn = cluster.store.txn();
        let Some(pod) = txn
            .get(Resource::Pods, &self.key)
            .filter(|p| meta::uid(p) == self.uid)
        else {
            return;
        };
        let field_path = slot.map(|s| format!("spec.{}{{{}}}", s.list(), self.container(s).name));
        let node = cluster.node().name;
        cluster.events.record(
            &mut txn,
            Resource::Pods,
            &pod,
            Source {
                component: "kubelet",
                host: Some(&node),
            },
            EventSpec {
                warning,
                reason,
                message,
                field_path: field_path.as_deref(),
            },
        );
    }

    /// Waits `delay`; `false` when a stop request came first.
    async fn pause(delay: Duration, stop: &mut watch::Receiver<Option<StopRequest>>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = wait_for_stop(stop) => false,
        }
    }

    async fn mount_volumes(
        &self,
        stop: &mut watch::Receiver<Option<StopRequest>>,
    ) -> Option<HashMap<String, PathBuf>> {
        let work_dir = &self.shared.cluster.work_dir;
        let pod_dir = paths::pod_dir(work_dir, &self.uid);
        for dir in ["home", "tmp", "root"] {
            if let Err(error) = std::fs::create_dir_all(pod_dir.join(dir)) {
                tracing::error!(%error, pod = %self.key.name, "cannot create the pod directory");
            }
        }
        loop {
            let prepared = volumes::prepare(work_dir, &self.pod, &self.shared.cluster.store.txn());
            match prepared {
                Ok(volumes) => return Some(volumes),
                Err(message) => {
                    self.event(None, true, "FailedMount", &message);
                    if !Self::pause(CONFIG_RETRY, stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sets the terminal phase (and the eviction or lost-node reason) and reports it.
    fn finish(&self) {
        let request = self.stop.borrow().clone();
        let node = self.shared.cluster.node().name;
        let evicted = match &request {
            Some(StopRequest {
                cause: StopCause::Evicted(message),
                ..
            }) => Some(message.clone()),
            _ => None,
        };
        self.update(|status| {
            let all_succeeded = status
                .regular
                .iter()
                .all(|c| c.state.exit_code() == Some(0));
            status.phase = if all_succeeded && evicted.is_none() {
                "Succeeded"
            } else {
                "Failed"
            };
            match &request {
                Some(StopRequest {
                    cause: StopCause::Evicted(message),
                    ..
                }) => {
                    status.reason = Some("Evicted".into());
                    status.message = Some(message.clone());
                }
                Some(StopRequest {
                    cause: StopCause::NodeLost,
                    ..
                }) => {
                    status.phase = "Failed";
                    status.reason = Some("NodeLost".into());
                    status.message = Some(format!(
                        "Node {node} which was running pod {} is unresponsive",
                        self.key.name
                    ));
                }
                _ => {}
            }
        });
        if let Some(message) = evicted {
            let mut txn = self.shared.cluster.store.txn();
            registry::modify(&mut txn, Resource::Pods, &self.key, |pod| {
                super::status::set_condition(
                    pod,
                    "DisruptionTarget",
                    "True",
                    "TerminationByKubelet",
                    &message,
                );
            });
        }
    }
}

/// Resolves with the first stop request; never, if the sender is gone without one.
async fn wait_for_stop(stop: &mut watch::Receiver<Option<StopRequest>>) -> StopRequest {
    let request = stop
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone());
    match request {
        Some(request) => request,
        None => std::future::pending().await,
    }
}

/// A pod status for a pod the kubelet never ran: containers as they were, phase `Failed`,
/// with the reason given.
pub fn fail_unstarted(pod: &mut Value, reason: Option<(&str, &str)>) {
    let status = meta::object_field_mut(pod, "status");
    status.insert("phase".into(), json!("Failed"));
    if let Some((reason, message)) = reason {
        status.insert("reason".into(), json!(reason));
        status.insert("message".into(), json!(message));
    }
}
