//! The state every part of the fake shares: the store, the settings tests may change while
//! it runs (node capacity, bad images, paused scheduling), request counts, the process
//! table, and the signals that wake controllers or cut watches.

use crate::controllers::events::EventRecorder;
use crate::kubelet::process::ProcessTable;
use crate::options::{BadImageRule, KubeFakeOptions, NodeOptions, Taint};
use crate::quantity;
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The node as the scheduler sees it now.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub cpu_milli: i128,
    pub memory_milli: i128,
    pub max_pods: usize,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl Node {
    /// The node described by the options, or why a quantity in them is not one.
    pub fn from_options(options: &NodeOptions) -> Result<Node, String> {
        let parse = |what: &str, text: &str| {
            quantity::parse_milli(text)
                .ok_or_else(|| format!("node {what} {text:?} is not a Kubernetes quantity"))
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), options.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), arch.to_string()),
        ]);
        labels.extend(options.labels.clone());
        Ok(Node {
            name: options.name.clone(),
            cpu_milli: parse("cpu", &options.cpu)?,
            memory_milli: parse("memory", &options.memory)?,
            max_pods: options.max_pods,
            labels,
            taints: options.taints.clone(),
        })
    }
}

/// Something a test asks of the kubelet directly.
#[derive(Debug)]
pub enum KubeletCommand {
    /// Node-pressure eviction of one pod.
    Evict {
        namespace: String,
        pod: String,
        message: String,
    },
    /// The kernel's OOM killer takes one container.
    OomKill {
        namespace: String,
        pod: String,
        container: String,
    },
    /// The node disappears with everything on it.
    LoseNode,
    /// A pod's containers end with this exit code, without processes (for a kubelet that
    /// runs none).
    FinishPod {
        namespace: String,
        pod: String,
        exit_code: i32,
    },
}

/// Request counts by verb and resource.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<BTreeMap<(String, String), u64>>);

impl RequestCounts {
    pub fn record(&self, verb: &str, resource: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reset(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Everything shared; lives in an `Arc`.
pub struct Cluster {
    pub store: Store,
    pub options: KubeFakeOptions,
    pub work_dir: PathBuf,
    pub node: Mutex<Node>,
    pub bad_images: Mutex<BadImageRule>,
    scheduling_paused: AtomicBool,
    pub counts: RequestCounts,
    pub processes: ProcessTable,
    pub events: EventRecorder,
    /// Wakes the scheduler when something other than a stored change matters to it.
    pub scheduler_nudge: Notify,
    pub kubelet_commands: mpsc::UnboundedSender<KubeletCommand>,
    watches: Mutex<CancellationToken>,
    /// Cancelled once, on shutdown.
    pub shutdown: CancellationToken,
}

impl Cluster {
    pub fn new(
        options: KubeFakeOptions,
        node: Node,
        work_dir: PathBuf,
        kubelet_commands: mpsc::UnboundedSender<KubeletCommand>,
    ) -> Cluster {
        let shutdown = CancellationToken::new();
        Cluster {
            store: Store::new(options.watch_history),
            bad_images: Mutex::new(options.bad_images.clone()),
            options,
            work_dir,
            node: Mutex::new(node),
            scheduling_paused: AtomicBool::new(false),
            counts: RequestCounts::default(),
            processes: ProcessTable::default(),
            events: EventRecorder::default(),
            scheduler_nudge: Notify::new(),
            kubelet_commands,
            watches: Mutex::new(shutdown.child_token()),
            shutdown,
        }
    }

    pub fn node(&self) -> Node {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn bad_images(&self) -> BadImageRule {
        self.bad_images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn scheduling_paused(&self) -> bool {
        self.scheduling_paused.load(Ordering::SeqCst)
    }

    pub fn set_scheduling_paused(&self, paused: bool) {
        self.scheduling_paused.store(paused, Ordering::SeqCst);
        self.scheduler_nudge.notify_one();
    }

    /// A token cancelled when open watches are cut (or on shutdown).
    pub fn watch_cancellation(&self) -> CancellationToken {
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child_token()
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        let mut current = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        current.cancel();
        *current = self.shutdown.child_token();
    }
}
