//! The backend's Prometheus metrics, registered into the registry the binary gives it (under
//! whatever prefix it chose, e.g. `updraft_kubernetes_`): API requests by verb, resource and
//! status with their latency, backend errors by class, watch events, errors and relists, the
//! cache's size, and whether this replica leads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
    /// The HTTP status, or `error` when none came back.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What the backend was doing: `launch`, `stop`, `delete`.
    pub operation: &'static str,
    /// `BackendError::metric_label`: `at_capacity`, `invalid`, `unavailable`, `fatal`.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// `jobs` or `pods`.
    pub resource: &'static str,
    pub namespace: String,
}

/// Every series the backend keeps. Cheap to clone; clones share the series.
#[derive(Clone)]
pub struct Metrics {
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_seconds: Family<VerbLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub watch_events: Family<WatchLabels, Counter>,
    pub watch_errors: Family<WatchLabels, Counter>,
    pub relists: Family<WatchLabels, Counter>,
    pub cached_jobs: Gauge,
    pub cached_pods: Gauge,
    pub cached_bytes: Gauge,
    pub leader: Gauge,
    /// Every request sent (the sum of `api_requests`), read by benchmarks.
    pub requests_sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            api_requests: Family::default(),
            api_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            errors: Family::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            relists: Family::default(),
            cached_jobs: Gauge::default(),
            cached_pods: Gauge::default(),
            cached_bytes: Gauge::default(),
            leader: Gauge::default(),
            requests_sent: Counter::default(),
        }
    }
}

impl Metrics {
    /// Count a failed call by operation and class, and hand the error on.
    pub fn count_error(
        &self,
        operation: &'static str,
        error: updraft_backends::BackendError,
    ) -> updraft_backends::BackendError {
        self.errors
            .get_or_create(&ErrorLabels {
                operation,
                class: error.metric_label(),
            })
            .inc();
        error
    }

    /// New series, registered into `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb, resource and HTTP status",
            metrics.api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "Time from sending a Kubernetes API request to its response headers",
            metrics.api_request_seconds.clone(),
        );
        registry.register(
            "errors",
            "Backend calls that failed, by operation and error class",
            metrics.errors.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events applied to the cache",
            metrics.watch_events.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch requests that failed (each is retried with back-off)",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "relists",
            "Full lists of a watch: at start-up and after 410 Gone",
            metrics.relists.clone(),
        );
        registry.register(
            "cached_jobs",
            "Jobs in the watch cache",
            metrics.cached_jobs.clone(),
        );
        registry.register(
            "cached_pods",
            "Pods in the watch cache",
            metrics.cached_pods.clone(),
        );
        registry.register(
            "cached_bytes",
            "Roughly the bytes the watch cache holds (flat per launch, whatever the pods' size)",
            metrics.cached_bytes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        metrics
    }
}
