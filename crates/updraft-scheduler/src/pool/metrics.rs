//! The pools' and the cost attribution's series on `/metrics`: each pool's decision and its
//! members and agents by state, what it did, how long its members took to boot, jobs that
//! overflowed to one-shot launches, and compute-seconds and dollars by fleet, queue, pipeline
//! and kind (`job`: a job ran; `idle`: a pool agent waited; `booting`: a pool member was not
//! serving yet).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FleetLabel {
    pub fleet: String,
}

impl FleetLabel {
    pub fn new(fleet: &str) -> Self {
        FleetLabel {
            fleet: fleet.to_string(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub fleet: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabel {
    pub fleet: String,
    pub action: String,
}

/// Where compute time went.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UseLabel {
    pub fleet: String,
    pub queue: String,
    pub pipeline: String,
    /// `job`, `idle` or `booting`.
    pub kind: String,
}

fn boot_histogram() -> Histogram {
    // 0.25 s … ~17 min.
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

pub(crate) struct PoolMetrics {
    pub desired: Family<FleetLabel, Gauge>,
    pub members: Family<StateLabel, Gauge>,
    pub agents: Family<StateLabel, Gauge>,
    pub actions: Family<ActionLabel, Counter>,
    pub boot_seconds: Family<FleetLabel, Histogram, fn() -> Histogram>,
    pub overflowed: Family<FleetLabel, Counter>,
    pub compute_seconds: Family<UseLabel, Counter<f64, AtomicU64>>,
    pub compute_dollars: Family<UseLabel, Counter<f64, AtomicU64>>,
}

impl PoolMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = PoolMetrics {
            desired: Family::default(),
            members: Family::default(),
            agents: Family::default(),
            actions: Family::default(),
            boot_seconds: Family::new_with_constructor(boot_histogram),
            overflowed: Family::default(),
            compute_seconds: Family::default(),
            compute_dollars: Family::default(),
        };
        registry.register(
            "updraft_pool_desired",
            "Members the pool's policy asked for at its last step",
            metrics.desired.clone(),
        );
        registry.register(
            "updraft_pool_members",
            "Pool members by state (booting, ready, draining, exited)",
            metrics.members.clone(),
        );
        registry.register(
            "updraft_pool_agents",
            "Pool agents by state (busy, idle, booting)",
            metrics.agents.clone(),
        );
        registry.register(
            "updraft_pool_actions",
            "Pool members added, drained and removed",
            metrics.actions.clone(),
        );
        registry.register(
            "updraft_pool_boot_seconds",
            "From a pool member's launch until all its agents were connected",
            metrics.boot_seconds.clone(),
        );
        registry.register(
            "updraft_pool_overflowed_jobs",
            "Jobs no pool agent took within overflow_after, launched one-shot, by the fleet that took them",
            metrics.overflowed.clone(),
        );
        registry.register(
            "updraft_compute_seconds",
            "Compute-seconds by fleet, queue, pipeline and kind (job, idle, booting)",
            metrics.compute_seconds.clone(),
        );
        registry.register(
            "updraft_compute_cost_dollars",
            "Compute cost in dollars (price_per_second) by fleet, queue, pipeline and kind",
            metrics.compute_dollars.clone(),
        );
        metrics
    }
}
