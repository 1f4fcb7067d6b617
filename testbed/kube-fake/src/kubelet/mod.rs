//! The fake kubelet of the one node: it admits pods bound to the node (up to the cap on
//! pods running at once), gives each a [`worker::PodWorker`], passes deletions and
//! test-injected faults to the workers, and finishes a pod's deletion once its containers
//! are gone. With containers off it only finishes deletions.

pub mod image;
pub mod launch;
pub mod paths;
pub mod process;
pub mod status;
mod volumes;
mod worker;

use crate::cluster::{Cluster, KubeletCommand};
use crate::controllers::events::{EventSpec, Source};
use crate::meta;
use crate::registry;
use crate::resource::Resource;
use crate::store::{Change, ChangeKind, ObjectKey};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use worker::{PodWorker, StopCause, StopRequest};

/// What every pod worker shares: the cluster and the images already on the node.
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub pulled: Mutex<HashSet<String>>,
}

struct Running {
    uid: String,
    worker: Arc<PodWorker>,
    stop: watch::Sender<Option<StopRequest>>,
}

struct Kubelet {
    shared: Arc<Shared>,
    running: HashMap<ObjectKey, Running>,
    waiting: VecDeque<ObjectKey>,
    done: mpsc::UnboundedSender<ObjectKey>,
}

/// Runs the kubelet until shutdown.
pub async fn run(
    cluster: Arc<Cluster>,
    mut changes: mpsc::UnboundedReceiver<Arc<Change>>,
    mut commands: mpsc::UnboundedReceiver<KubeletCommand>,
) {
    let (done, mut finished) = mpsc::unbounded_channel();
    let shutdown = cluster.shutdown.clone();
    let mut kubelet = Kubelet {
        shared: Arc::new(Shared {
            cluster,
            pulled: Mutex::new(HashSet::new()),
        }),
        running: HashMap::new(),
        waiting: VecDeque::new(),
        done,
    };
    loop {
        tokio::select! {
            Some(change) = changes.recv() => kubelet.on_change(&change),
            Some(command) = commands.recv() => kubelet.on_command(command),
            Some(key) = finished.recv() => kubelet.on_done(&key),
            _ = shutdown.cancelled() => {
                kubelet.shared.cluster.processes.kill_all();
                return;
            }
        }
        kubelet.admit();
    }
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        meta::str_at(pod, "/status/phase"),
        Some("Succeeded" | "Failed")
    )
}

impl Kubelet {
    fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    fn on_change(&mut self, change: &Change) {
        if change.resource != Resource::Pods {
            return;
        }
        let pod = &change.object;
        let key = ObjectKey::of(pod);
        if change.kind == ChangeKind::Deleted {
            self.waiting.retain(|k| *k != key);
            match self.running.get(&key) {
                Some(running) => stop(running, Duration::ZERO, StopCause::Removed),
                None => remove_pod_dir(self.cluster(), meta::uid(pod)),
            }
            return;
        }
        if meta::str_at(pod, "/spec/nodeName") != Some(self.cluster().node().name.as_str()) {
            return;
        }
        if meta::is_deleting(pod) {
            match self.running.get(&key).filter(|r| r.uid == meta::uid(pod)) {
                Some(running) => {
                    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                        .as_u64()
                        .unwrap_or(0);
                    stop(running, Duration::from_secs(grace), StopCause::Deleted);
                }
                None => {
                    self.waiting.retain(|k| *k != key);
                    let mut txn = self.cluster().store.txn();
                    registry::modify(&mut txn, Resource::Pods, &key, |pod| {
                        if !is_terminal(pod) {
                            worker::fail_unstarted(pod, None);
                        }
                    });
                    registry::finish_pod_deletion(&mut txn, &key);
                }
            }
            return;
        }
        let known = self.running.contains_key(&key) || self.waiting.contains(&key);
        if !known && !is_terminal(pod) && self.cluster().options.run_containers {
            self.waiting.push_back(key);
        }
    }

    /// Starts waiting pods while there is room.
    fn admit(&mut self) {
        let cap = self
            .cluster()
            .options
            .max_running_pods
            .unwrap_or(usize::MAX);
        while self.running.len() < cap {
            let Some(key) = self.waiting.pop_front() else {
                return;
            };
            let pod = self.cluster().store.txn().get(Resource::Pods, &key);
            let Some(pod) = pod.filter(|p| !meta::is_deleting(p) && !is_terminal(p)) else {
                continue;
            };
            let (stop, stop_rx) = watch::channel(None);
            let worker = Arc::new(PodWorker::new(self.shared.clone(), pod.clone(), stop_rx));
            let done = self.done.clone();
            let task = (worker.clone(), key.clone());
            tokio::spawn(async move {
                let (worker, key) = task;
                worker.run().await;
                let _ = done.send(key);
            });
            self.running.insert(
                key,
                Running {
                    uid: meta::uid(&pod).to_string(),
                    worker,
                    stop,
                },
            );
        }
    }

    fn on_done(&mut self, key: &ObjectKey) {
        let Some(running) = self.running.remove(key) else {
            return;
        };
        let mut txn = self.cluster().store.txn();
        match txn
            .get(Resource::Pods, key)
            .filter(|p| meta::uid(p) == running.uid)
        {
            Some(pod) if meta::is_deleting(&pod) => registry::finish_pod_deletion(&mut txn, key),
            Some(_) => {}
            None => remove_pod_dir(self.cluster(), &running.uid),
        }
    }

    fn on_command(&mut self, command: KubeletCommand) {
        match command {
            KubeletCommand::Evict {
                namespace,
                pod,
                message,
            } => {
                let key = ObjectKey::new(&namespace, &pod);
                self.record(&key, true, "Evicted", &message);
                match self.running.get(&key) {
                    Some(running) => stop(running, Duration::ZERO, StopCause::Evicted(message)),
                    None => self.fail_waiting(&key, "Evicted", &message),
                }
            }
            KubeletCommand::OomKill {
                namespace,
                pod,
                container,
            } => {
                if let Some(running) = self.running.get(&ObjectKey::new(&namespace, &pod)) {
                    running.worker.oom_kill(&container);
                }
            }
            KubeletCommand::LoseNode => {
                for running in self.running.values() {
                    stop(running, Duration::ZERO, StopCause::NodeLost);
                }
                let node = self.cluster().node().name;
                for key in std::mem::take(&mut self.waiting) {
                    let message = format!(
                        "Node {node} which was running pod {} is unresponsive",
                        key.name
                    );
                    self.fail_waiting(&key, "NodeLost", &message);
                }
            }
            KubeletCommand::FinishPod {
                namespace,
                pod,
                exit_code,
            } => {
                let key = ObjectKey::new(&namespace, &pod);
                if self.running.contains_key(&key) {
                    tracing::warn!(
                        pod,
                        "finish_pod ignored: the kubelet is running this pod's containers"
                    );
                    return;
                }
                let mut txn = self.cluster().store.txn();
                registry::modify(&mut txn, Resource::Pods, &key, |pod| {
                    finish_without_processes(pod, exit_code)
                });
            }
        }
    }

    fn fail_waiting(&mut self, key: &ObjectKey, reason: &str, message: &str) {
        self.waiting.retain(|k| k != key);
        let mut txn = self.cluster().store.txn();
        registry::modify(&mut txn, Resource::Pods, key, |pod| {
            if !is_terminal(pod) {
                worker::fail_unstarted(pod, Some((reason, message)));
            }
        });
    }

    fn record(&self, key: &ObjectKey, warning: bool, reason: &str, message: &str) {
        let cluster = self.cluster();
        let mut txn = cluster.store.txn();
        if let Some(pod) = txn.get(Resource::Pods, key) {
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
                    field_path: None,
                },
            );
        }
    }
}

/// Asks a worker to stop, keeping the shortest grace period asked for so far.
fn stop(running: &Running, grace: Duration, cause: StopCause) {
    running.stop.send_if_modified(|current| match current {
        Some(existing) if existing.grace <= grace => false,
        _ => {
            *current = Some(StopRequest { grace, cause });
            true
        }
    });
}

fn remove_pod_dir(cluster: &Cluster, uid: &str) {
    let dir = paths::pod_dir(&cluster.work_dir, uid);
    if dir.exists() {
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(%error, dir = %dir.display(), "cannot remove a pod directory");
        }
    }
}

/// Every container terminated with `exit_code`, and the phase that follows, for a pod whose
/// containers the kubelet does not run.
fn finish_without_processes(pod: &mut Value, exit_code: i32) {
    let now = meta::now();
    let terminated = |spec: &Value| {
        json!({
            "name": spec["name"],
            "image": spec["image"],
            "imageID": "",
            "ready": false,
            "started": false,
            "restartCount": 0,
            "state": { "terminated": {
                "exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": now,
                "finishedAt": now,
            }},
            "lastState": {},
        })
    };
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(terminated)
        .collect();
    let status = meta::object_field_mut(pod, "status");
    status.insert("containerStatuses".into(), Value::from(statuses));
    status.insert(
        "phase".into(),
        json!(if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        }),
    );
    status.entry("startTime").or_insert_with(|| json!(now));
}
