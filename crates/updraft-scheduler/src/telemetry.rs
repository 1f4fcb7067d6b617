//! The Prometheus metrics `/metrics` serves: Buildkite's queue numbers under
//! buildkite-agent-metrics' names and labels (`buildkite_total_*{cluster}`,
//! `buildkite_queues_*{queue,cluster}`), and Updraft's own — jobs seen, launches by fleet and
//! outcome, pickup latency from scheduled to launch, slots in flight, reconcile passes and
//! corrections, push events, ledger rows pruned past the retention, and the pools' and per-job
//! cost series (`pool::metrics`). Backends keep their own series in registries of their own,
//! which `/metrics` serves after these (`SchedulerHandle::serve_metrics`).

use crate::pool::metrics::PoolMetrics;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use updraft_buildkite::metrics::{busy_percentage, AgentCounts, JobCounts, QueueMetrics};

type Labels = Vec<(&'static str, String)>;

/// The eight numbers buildkite-agent-metrics reports, by its metric names.
const QUEUE_METRICS: [&str; 8] = [
    "scheduled_jobs_count",
    "running_jobs_count",
    "unfinished_jobs_count",
    "waiting_jobs_count",
    "idle_agent_count",
    "busy_agent_count",
    "total_agent_count",
    "busy_agent_percentage",
];

fn queue_values(agents: &AgentCounts, jobs: &JobCounts) -> [u64; 8] {
    [
        jobs.scheduled,
        jobs.running,
        jobs.total,
        jobs.waiting,
        agents.idle,
        agents.busy,
        agents.total,
        busy_percentage(agents),
    ]
}

fn pickup_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub(crate) struct Telemetry {
    registry: Registry,
    backends: Mutex<Vec<Registry>>,
    totals: Vec<Family<Labels, Gauge>>,
    queues: Vec<Family<Labels, Gauge>>,
    known_queues: Mutex<Vec<Labels>>,
    pub jobs_seen: Family<Labels, Counter>,
    pub launches: Family<Labels, Counter>,
    pub pickup_latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub in_flight: Family<Labels, Gauge>,
    pub waiting: Family<Labels, Gauge>,
    pub reconcile_passes: Counter,
    pub reconcile_failures: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub corrections: Family<Labels, Counter>,
    pub backend_failures: Family<Labels, Counter>,
    pub agents_lost: Counter,
    pub jobs_waiting_on_lost_agent: Gauge,
    pub jobs_failed_by_scheduler: Counter,
    pub push_events: Family<Labels, Counter>,
    pub ledger_pruned: Family<Labels, Counter>,
    pub pools: PoolMetrics,
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut totals = Vec::new();
        let mut queues = Vec::new();
        for name in QUEUE_METRICS {
            let total = Family::<Labels, Gauge>::default();
            registry.register(
                format!("buildkite_total_{name}"),
                format!("Buildkite Total: {name}"),
                total.clone(),
            );
            totals.push(total);
            let queue = Family::<Labels, Gauge>::default();
            registry.register(
                format!("buildkite_queues_{name}"),
                format!("Buildkite Queues: {name}"),
                queue.clone(),
            );
            queues.push(queue);
        }
        let jobs_seen = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_jobs_seen",
            "Distinct jobs taken in, by source",
            jobs_seen.clone(),
        );
        let launches = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_launches",
            "Launch attempts by fleet and outcome",
            launches.clone(),
        );
        let pickup_latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(pickup_histogram);
        registry.register(
            "updraft_pickup_latency_seconds",
            "From the job's scheduled time to its launch, by fleet and source",
            pickup_latency.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "updraft_in_flight",
            "Launch slots held, by fleet",
            in_flight.clone(),
        );
        let waiting = Family::<Labels, Gauge>::default();
        registry.register(
            "updraft_waiting_jobs",
            "Jobs held back by a limit, by fleet",
            waiting.clone(),
        );
        let reconcile_passes = Counter::default();
        registry.register(
            "updraft_reconcile_passes",
            "Reconcile passes run",
            reconcile_passes.clone(),
        );
        let reconcile_failures = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_reconcile_failures",
            "Reconcile passes that could not complete, by reason",
            reconcile_failures.clone(),
        );
        // 1 ms … ~16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "updraft_reconcile_duration_seconds",
            "How long a reconcile pass took",
            reconcile_duration.clone(),
        );
        let backend_failures = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_backend_failures",
            "Backend calls that failed, by backend, call and error class (at_capacity, invalid, unavailable, fatal)",
            backend_failures.clone(),
        );
        let agents_lost = Counter::default();
        registry.register(
            "updraft_agents_lost",
            "Launches found gone while Buildkite showed their agent holding the job",
            agents_lost.clone(),
        );
        let jobs_waiting_on_lost_agent = Gauge::default();
        registry.register(
            "updraft_jobs_waiting_on_lost_agent",
            "Jobs whose agent is gone, waiting for Buildkite's lost-agent timeout to fail them",
            jobs_waiting_on_lost_agent.clone(),
        );
        let jobs_failed_by_scheduler = Counter::default();
        registry.register(
            "updraft_jobs_failed_by_scheduler",
            "Jobs no agent had taken that the scheduler failed through the Stacks API (refused, budget used up, removed fleet)",
            jobs_failed_by_scheduler.clone(),
        );
        let corrections = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_reconcile_corrections",
            "Corrections the reconciler made, by action",
            corrections.clone(),
        );
        let push_events = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_push_events",
            "Push events received, by kind and result",
            push_events.clone(),
        );
        let ledger_pruned = Family::<Labels, Counter>::default();
        registry.register(
            "updraft_ledger_pruned_rows",
            "Ledger rows of jobs closed longer ago than [ledger] retention, pruned, by table",
            ledger_pruned.clone(),
        );
        let pools = PoolMetrics::register(&mut registry);
        Telemetry {
            registry,
            backends: Mutex::new(Vec::new()),
            totals,
            queues,
            known_queues: Mutex::new(Vec::new()),
            jobs_seen,
            launches,
            pickup_latency,
            in_flight,
            waiting,
            reconcile_passes,
            reconcile_failures,
            reconcile_duration,
            corrections,
            backend_failures,
            agents_lost,
            jobs_waiting_on_lost_agent,
            jobs_failed_by_scheduler,
            push_events,
            ledger_pruned,
            pools,
        }
    }

    /// Copy a metrics-endpoint reading into the buildkite_* gauges, dropping queues that
    /// disappeared since the last reading (as buildkite-agent-metrics does).
    pub fn record_queue_metrics(&self, reading: &QueueMetrics) {
        let cluster = reading.cluster_name().to_string();
        let total_values = queue_values(&reading.agents.counts, &reading.jobs.counts);
        for (family, value) in self.totals.iter().zip(total_values) {
            family
                .get_or_create(&vec![("cluster", cluster.clone())])
                .set(value as i64);
        }
        let mut current = Vec::new();
        for queue in reading.queue_names() {
            let agents = reading
                .agents
                .queues
                .get(queue)
                .cloned()
                .unwrap_or_default();
            let jobs = reading.jobs.queues.get(queue).cloned().unwrap_or_default();
            let labels: Labels = vec![("queue", queue.to_string()), ("cluster", cluster.clone())];
            for (family, value) in self.queues.iter().zip(queue_values(&agents, &jobs)) {
                family.get_or_create(&labels).set(value as i64);
            }
            current.push(labels);
        }
        let mut known = self.known_queues.lock().unwrap_or_else(|e| e.into_inner());
        for gone in known.iter().filter(|labels| !current.contains(labels)) {
            for family in &self.queues {
                family.remove(gone);
            }
        }
        *known = current;
    }

    /// Serve a backend's registry on `/metrics` too.
    pub fn add_registry(&self, registry: Registry) {
        self.backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(registry);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let backends = self
            .backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        for registry in backends.iter() {
            let _ = encode_registry(&mut out, registry);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

pub(crate) fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_metrics_use_buildkite_agent_metrics_names_and_drop_gone_queues() {
        let telemetry = Telemetry::new();
        let reading: QueueMetrics = serde_json::from_str(
            r#"{"agents":{"idle":0,"busy":2,"total":2,"queues":{"linux":{"idle":0,"busy":2,"total":2}}},
                "jobs":{"scheduled":5,"running":2,"waiting":0,"total":7,"queues":{"linux":{"scheduled":5,"running":2,"waiting":0,"total":7}}},
                "organization":{"slug":"acme"},"cluster":{"name":"main"}}"#,
        )
        .unwrap();
        telemetry.record_queue_metrics(&reading);
        let text = telemetry.encode();
        assert!(
            text.contains("buildkite_total_scheduled_jobs_count{cluster=\"main\"} 5"),
            "{text}"
        );
        assert!(
            text.contains(
                "buildkite_queues_busy_agent_percentage{queue=\"linux\",cluster=\"main\"} 100"
            ),
            "{text}"
        );
        let empty: QueueMetrics =
            serde_json::from_str(r#"{"organization":{"slug":"acme"},"cluster":{"name":"main"}}"#)
                .unwrap();
        telemetry.record_queue_metrics(&empty);
        assert!(!telemetry.encode().contains("queue=\"linux\""));
    }

    #[test]
    fn a_backend_registry_is_served_after_the_schedulers_with_one_eof() {
        let telemetry = Telemetry::new();
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry
            .sub_registry_with_prefix("updraft_kubernetes")
            .register("api_requests", "API requests", requests.clone());
        requests.inc_by(3);
        telemetry.add_registry(registry);
        let text = telemetry.encode();
        assert!(
            text.contains("updraft_kubernetes_api_requests_total 3"),
            "{text}"
        );
        assert!(text.contains("updraft_reconcile_passes"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
