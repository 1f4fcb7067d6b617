//! How a fake cluster is set up: listen address, namespaces, the node, which images fail to
//! pull, program aliases for containers, kubelet limits, and the timings that the real
//! components hard-code (shortened here so tests stay quick when they ask).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings for [`crate::KubeFake::start`]. `Default` gives a large node, a running kubelet
/// and the real components' timings.
#[derive(Debug, Clone)]
pub struct KubeFakeOptions {
    /// Where the API server listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Namespaces that exist from the start, besides `default`.
    pub namespaces: Vec<String>,
    /// The one node pods are scheduled on.
    pub node: NodeOptions,
    /// Which image references fail to pull.
    pub bad_images: BadImageRule,
    /// Program name → host command prefix. A container whose program (`command[0]`, or
    /// `args[0]` without a command) is a key here, exactly or by its base name, runs the
    /// prefix followed by the rest of its arguments.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Whether the kubelet runs containers. Off, pods are scheduled but never started, and
    /// deleting one removes it at once.
    pub run_containers: bool,
    /// The most pods whose containers run at once; later pods wait, `Pending`, for a slot.
    pub max_running_pods: Option<usize>,
    /// How many changes the watch history keeps. A watch resuming from a resourceVersion
    /// older than that gets `410 Expired`.
    pub watch_history: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long pulling a good image takes.
    pub image_pull_delay: Duration,
    /// How long a bad image stays `ErrImagePull` before `ImagePullBackOff`, and the first
    /// wait before the next pull (doubling, at most five minutes), as the kubelet's 10 s.
    pub image_pull_backoff: Duration,
    /// The first wait before a crashed container restarts (doubling, at most five minutes).
    pub crash_loop_backoff: Duration,
    /// The first wait before a Job replaces a failed pod (doubling, at most six minutes).
    pub job_backoff: Duration,
    /// Where pod directories (volumes, logs, scratch) go; a temporary directory, removed on
    /// shutdown, when unset.
    pub work_dir: Option<PathBuf>,
}

impl Default for KubeFakeOptions {
    fn default() -> Self {
        KubeFakeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            namespaces: Vec::new(),
            node: NodeOptions::default(),
            bad_images: BadImageRule::default(),
            aliases: BTreeMap::new(),
            run_containers: true,
            max_running_pods: None,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            image_pull_delay: Duration::ZERO,
            image_pull_backoff: Duration::from_secs(10),
            crash_loop_backoff: Duration::from_secs(10),
            job_backoff: Duration::from_secs(10),
            work_dir: None,
        }
    }
}

/// The node: its name, what it can hold, and what pods must match or tolerate.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    /// Allocatable CPU, as a Kubernetes quantity.
    pub cpu: String,
    /// Allocatable memory, as a Kubernetes quantity.
    pub memory: String,
    /// The most pods the node takes (the real default is 110; large here for benchmarks).
    pub max_pods: usize,
    /// Labels besides `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch`.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            name: "kube-fake-node".into(),
            cpu: "64".into(),
            memory: "256Gi".into(),
            max_pods: 100_000,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Which images cannot be pulled: any reference containing one of `substrings`, or whose
/// registry host ends with one of `registry_suffixes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadImageRule {
    pub substrings: Vec<String>,
    pub registry_suffixes: Vec<String>,
}

impl Default for BadImageRule {
    fn default() -> Self {
        BadImageRule {
            substrings: vec!["does-not-exist".into()],
            registry_suffixes: vec![".invalid".into()],
        }
    }
}
