//! Starting a fake cluster and the handle tests hold: the address and kubeconfig, direct
//! inspection (objects, request counts, processes), fault injection (eviction, OOM kill, a
//! lost node, capacity, bad images, paused scheduling, cut watches, expired watch history),
//! and shutdown, which dropping the handle also does, killing every process it started.

use crate::cluster::{Cluster, KubeletCommand, Node};
use crate::error::ApiError;
use crate::kubelet::{self, paths, process::ProcessInfo};
use crate::options::{BadImageRule, KubeFakeOptions};
use crate::registry;
use crate::resource::Resource;
use crate::store::ObjectKey;
use crate::{api, controllers, meta, quantity};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the fake could not start, or a helper could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeFakeError {
    #[error("invalid kube-fake setting: {0}")]
    InvalidSetting(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] ApiError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeFakeError {
    let what = what.into();
    move |source| KubeFakeError::Io { what, source }
}

/// Starts fake clusters.
pub struct KubeFake;

impl KubeFake {
    /// Starts the API server, controllers, scheduler and kubelet on a runtime of their own
    /// (so it works from sync tests and any async runtime alike) and returns once the
    /// server is listening.
    pub fn start(options: KubeFakeOptions) -> Result<KubeFakeHandle, KubeFakeError> {
        let node = Node::from_options(&options.node).map_err(KubeFakeError::InvalidSetting)?;
        let (temp_dir, work_dir) = match &options.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(io_error(format!("creating {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("kube-fake-")
                    .tempdir()
                    .map_err(io_error("creating a temporary work directory"))?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-fake")
            .enable_all()
            .build()
            .map_err(io_error("starting the kube-fake runtime"))?;
        let listener = std::net::TcpListener::bind(options.listen)
            .map_err(io_error(format!("listening on {}", options.listen)))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("configuring the listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("reading the listen address"))?;
        let namespaces: BTreeSet<String> = std::iter::once("default".to_string())
            .chain(options.namespaces.iter().cloned())
            .collect();
        let (kubelet_commands, kubelet_inbox) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster::new(options, node, work_dir, kubelet_commands));
        {
            let mut txn = cluster.store.txn();
            for namespace in namespaces {
                let object = json!({ "metadata": { "name": namespace } });
                registry::create(&mut txn, Resource::Namespaces, "", object, false)?;
            }
        }
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(io_error("registering the listener"))?;
        runtime.spawn(controllers::gc::run(
            cluster.clone(),
            cluster.store.subscribe(),
        ));
        runtime.spawn(controllers::job::run(
            cluster.clone(),
            cluster.store.subscribe(),
        ));
        runtime.spawn(controllers::scheduler::run(
            cluster.clone(),
            cluster.store.subscribe(),
        ));
        runtime.spawn(kubelet::run(
            cluster.clone(),
            cluster.store.subscribe(),
            kubelet_inbox,
        ));
        let shutdown = cluster.shutdown.clone();
        let router = api::router(cluster.clone());
        runtime.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "kube-fake API server stopped");
            }
        });
        tracing::info!(%addr, "kube fake started");
        Ok(KubeFakeHandle {
            cluster,
            addr,
            runtime: Some(runtime),
            _temp_dir: temp_dir,
        })
    }
}

/// A running fake cluster. Dropping it shuts it down.
pub struct KubeFakeHandle {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl KubeFakeHandle {
    /// The address the API server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for the fake: cluster, a user with a dummy token, and the current context
    /// `kube-fake` (namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-fake\n  cluster:\n    server: {url}\n\
             users:\n- name: kube-fake\n  user:\n    token: kube-fake-token\n\
             contexts:\n- name: kube-fake\n  context:\n    cluster: kube-fake\n    user: kube-fake\n    namespace: default\n\
             current-context: kube-fake\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), KubeFakeError> {
        std::fs::write(path, self.kubeconfig_yaml())
            .map_err(io_error(format!("writing {}", path.display())))
    }

    /// One stored object (`namespace` is ignored for Namespaces).
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if resource.namespaced() { namespace } else { "" };
        let object = self
            .cluster
            .store
            .txn()
            .get(resource, &ObjectKey::new(namespace, name))?;
        Some((*object).clone())
    }

    /// Stored objects of a resource, in one namespace or all, in key order.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        let objects = self.cluster.store.txn().list(resource, namespace, None);
        objects.iter().map(|o| (**o).clone()).collect()
    }

    /// Creates an object as a client would (defaults, validation), without HTTP; not counted.
    pub fn create(
        &self,
        resource: Resource,
        namespace: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let mut txn = self.cluster.store.txn();
        let created = registry::create(&mut txn, resource, namespace, object, false)?;
        Ok((*created).clone())
    }

    /// Events in `namespace` about the object named `involved_name`, oldest first.
    pub fn events_for(&self, namespace: &str, involved_name: &str) -> Vec<Value> {
        let mut events: Vec<Value> = self
            .list(Resource::Events, Some(namespace))
            .into_iter()
            .filter(|e| meta::str_at(e, "/involvedObject/name") == Some(involved_name))
            .collect();
        events.sort_by(|a, b| {
            a["firstTimestamp"]
                .as_str()
                .cmp(&b["firstTimestamp"].as_str())
        });
        events
    }

    /// API requests so far by (verb, resource): `("create", "jobs")`, `("watch", "pods")`,
    /// `("get", "pods/log")`, `("get", "discovery")`.
    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.cluster.counts.snapshot()
    }

    /// Requests so far with this verb and resource.
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.request_counts()
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// All API requests so far.
    pub fn total_requests(&self) -> u64 {
        self.request_counts().values().sum()
    }

    pub fn reset_request_counts(&self) {
        self.cluster.counts.reset();
    }

    /// Every container process started so far.
    pub fn processes_started(&self) -> Vec<ProcessInfo> {
        self.cluster.processes.started()
    }

    /// Started processes whose process group still has a live member.
    pub fn running_processes(&self) -> Vec<ProcessInfo> {
        self.cluster.processes.running()
    }

    /// Pods (namespace, name) with a container process running now.
    pub fn running_pods(&self) -> Vec<(String, String)> {
        let pods: BTreeSet<(String, String)> = self
            .running_processes()
            .into_iter()
            .map(|p| (p.namespace, p.pod))
            .collect();
        pods.into_iter().collect()
    }

    /// The host directory of a pod (volumes under `volumes/`, logs under `logs/`).
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        let pod = self.get(Resource::Pods, namespace, pod)?;
        Some(paths::pod_dir(&self.cluster.work_dir, meta::uid(&pod)))
    }

    fn require_pod(&self, namespace: &str, pod: &str) -> Result<(), KubeFakeError> {
        match self.get(Resource::Pods, namespace, pod) {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(Resource::Pods, pod).into()),
        }
    }

    fn command(&self, command: KubeletCommand) {
        let _ = self.cluster.kubelet_commands.send(command);
    }

    /// Node-pressure eviction: the kubelet kills the pod's containers at once and leaves the
    /// pod `Failed` with `reason: Evicted`, this message, and a `DisruptionTarget` condition.
    pub fn evict(&self, namespace: &str, pod: &str, message: &str) -> Result<(), KubeFakeError> {
        self.require_pod(namespace, pod)?;
        self.command(KubeletCommand::Evict {
            namespace: namespace.into(),
            pod: pod.into(),
            message: message.into(),
        });
        Ok(())
    }

    /// The kernel OOM-kills a container: SIGKILL, terminated with `OOMKilled` and exit 137.
    pub fn oom_kill(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<(), KubeFakeError> {
        self.require_pod(namespace, pod)?;
        self.command(KubeletCommand::OomKill {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        });
        Ok(())
    }

    /// The node is lost: every pod on it has its processes SIGKILLed (no `Killing` events)
    /// and ends `Failed` with `reason: NodeLost`, its containers `ContainerStatusUnknown`.
    /// The pods stay; new pods still schedule (the node "comes back" empty).
    pub fn lose_node(&self) {
        self.command(KubeletCommand::LoseNode);
    }

    /// Ends a pod whose containers the kubelet does not run (`run_containers: false`): every
    /// container terminated with `exit_code`, phase `Succeeded` (0) or `Failed`.
    pub fn finish_pod(
        &self,
        namespace: &str,
        pod: &str,
        exit_code: i32,
    ) -> Result<(), KubeFakeError> {
        self.require_pod(namespace, pod)?;
        self.command(KubeletCommand::FinishPod {
            namespace: namespace.into(),
            pod: pod.into(),
            exit_code,
        });
        Ok(())
    }

    /// Changes the node's allocatable CPU and memory (Kubernetes quantities); pending pods
    /// are tried again.
    pub fn set_node_capacity(&self, cpu: &str, memory: &str) -> Result<(), KubeFakeError> {
        let parse = |text: &str| {
            quantity::parse_milli(text).ok_or_else(|| {
                KubeFakeError::InvalidSetting(format!("{text:?} is not a Kubernetes quantity"))
            })
        };
        let (cpu, memory) = (parse(cpu)?, parse(memory)?);
        {
            let mut node = self.cluster.node.lock().unwrap_or_else(|e| e.into_inner());
            node.cpu_milli = cpu;
            node.memory_milli = memory;
        }
        self.cluster.scheduler_nudge.notify_one();
        Ok(())
    }

    /// Replaces the rule for images that fail to pull (pulls in back-off use it next time).
    pub fn set_bad_image_rule(&self, rule: BadImageRule) {
        *self
            .cluster
            .bad_images
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = rule;
    }

    /// Stops (or resumes) binding pods; paused, new pods stay `Pending` with no condition.
    pub fn pause_scheduling(&self, paused: bool) {
        self.cluster.set_scheduling_paused(paused);
    }

    /// Ends every open watch stream, as an API server restart would; clients re-watch from
    /// their last resourceVersion.
    pub fn drop_watches(&self) {
        self.cluster.drop_watches();
    }

    /// Forgets the watch history (an etcd compaction), so a watch resumed from any
    /// resourceVersion handed out so far gets `410 Expired` and must list again. Open
    /// watches are cut too, so their clients resume (and get the 410) right away.
    pub fn expire_watch_history(&self) {
        self.cluster.store.txn().expire_history();
        self.cluster.drop_watches();
    }

    /// Polls `probe` every 50 ms until it returns `Some` or `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe(self) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops everything and kills every process started; the same as dropping the handle.
    pub fn shutdown(self) {}
}

impl Drop for KubeFakeHandle {
    fn drop(&mut self) {
        self.cluster.shutdown.cancel();
        self.cluster.processes.kill_all();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.cluster.processes.running().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
