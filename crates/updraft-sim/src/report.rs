//! What a simulation reports: jobs, wait percentiles (exact, from every wait), busy and
//! idle agent-seconds, instance-seconds, cost and peaks, per run and per fleet, with the
//! samples and wait distribution the plots draw.

use serde::Serialize;

/// One moment of a run, for plots over time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the workload's start.
    pub t_s: f64,
    /// Jobs not yet running: waiting for a pool agent, or for their one-shot launch.
    pub queued: u32,
    /// Connected pool agents, busy or idle.
    pub pool_agents: u32,
    /// Busy agents in every fleet.
    pub busy: u32,
    /// Pool agents still booting.
    pub booting: u32,
    /// One-shot launches alive (booting or running).
    pub one_shot: u32,
}

/// Waits from job runnable to job started, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WaitStats {
    pub p50_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
}

/// One fleet's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub name: String,
    pub jobs: u64,
    pub launches: u64,
    pub busy_agent_seconds: f64,
    pub idle_agent_seconds: f64,
    pub booting_instance_seconds: f64,
    pub instance_seconds: f64,
    pub billed_instance_seconds: f64,
    pub cost: f64,
    pub peak_agents: u32,
    pub peak_instances: u32,
    /// The pool policy's last reason, as the status page would show it.
    pub last_decision: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub label: String,
    pub jobs: u64,
    pub wait: WaitStats,
    pub busy_agent_seconds: f64,
    pub idle_agent_seconds: f64,
    /// Agents connected: busy + idle.
    pub agent_seconds: f64,
    pub booting_instance_seconds: f64,
    /// Instances alive, booting or not.
    pub instance_seconds: f64,
    /// Instance time billed, with each instance's minimum billing period.
    pub billed_instance_seconds: f64,
    /// Dollars: billed instance-seconds times each instance's price.
    pub cost: f64,
    pub peak_agents: u32,
    pub peak_instances: u32,
    pub launches: u64,
    /// Simulated time from the workload's start to the end of the drain, seconds.
    pub span_seconds: f64,
    pub fleets: Vec<FleetReport>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// (wait seconds, fraction of jobs that waited at most that long), for the CDF plot.
    #[serde(skip)]
    pub wait_cdf: Vec<(f64, f64)>,
}

const MS: f64 = 1000.0;

pub(crate) fn seconds(ms: u128) -> f64 {
    ms as f64 / MS
}

impl FleetReport {
    pub(crate) fn new(name: &str, ledger: &crate::engine::Ledger, last_decision: &str) -> Self {
        FleetReport {
            name: name.into(),
            jobs: ledger.jobs,
            launches: ledger.launches,
            busy_agent_seconds: seconds(ledger.busy_agent_ms),
            idle_agent_seconds: seconds(ledger.idle_agent_ms),
            booting_instance_seconds: seconds(ledger.booting_instance_ms),
            instance_seconds: seconds(ledger.instance_ms),
            billed_instance_seconds: seconds(ledger.billed_instance_ms),
            cost: ledger.cost,
            peak_agents: ledger.peak_agents,
            peak_instances: ledger.peak_instances,
            last_decision: last_decision.into(),
        }
    }
}

/// The value at quantile `q` of sorted values (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / MS
}

impl Report {
    pub(crate) fn new(
        label: &str,
        sorted_waits_ms: &[u64],
        fleets: Vec<FleetReport>,
        samples: Vec<Sample>,
        end_ms: i64,
    ) -> Self {
        let n = sorted_waits_ms.len();
        let wait = WaitStats {
            p50_s: quantile(sorted_waits_ms, 0.50),
            p95_s: quantile(sorted_waits_ms, 0.95),
            p99_s: quantile(sorted_waits_ms, 0.99),
            max_s: sorted_waits_ms.last().map_or(0.0, |&w| w as f64 / MS),
            mean_s: if n == 0 {
                0.0
            } else {
                sorted_waits_ms.iter().map(|&w| w as f64).sum::<f64>() / n as f64 / MS
            },
        };
        let points = 400.min(n);
        let wait_cdf = (0..=points)
            .filter(|_| n > 0)
            .map(|i| {
                let index = (i * (n - 1)) / points.max(1);
                (
                    sorted_waits_ms[index] as f64 / MS,
                    (index + 1) as f64 / n as f64,
                )
            })
            .collect();
        let sum = |f: fn(&FleetReport) -> f64| fleets.iter().map(f).sum::<f64>();
        let busy = sum(|f| f.busy_agent_seconds);
        let idle = sum(|f| f.idle_agent_seconds);
        Report {
            label: label.into(),
            jobs: n as u64,
            wait,
            busy_agent_seconds: busy,
            idle_agent_seconds: idle,
            agent_seconds: busy + idle,
            booting_instance_seconds: sum(|f| f.booting_instance_seconds),
            instance_seconds: sum(|f| f.instance_seconds),
            billed_instance_seconds: sum(|f| f.billed_instance_seconds),
            cost: sum(|f| f.cost),
            peak_agents: fleets.iter().map(|f| f.peak_agents).sum(),
            peak_instances: fleets.iter().map(|f| f.peak_instances).sum(),
            launches: fleets.iter().map(|f| f.launches).sum(),
            span_seconds: end_ms as f64 / MS,
            fleets,
            samples,
            wait_cdf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let waits: Vec<u64> = (1..=100).map(|s| s * 1000).collect();
        assert_eq!(quantile(&waits, 0.5), 50.0);
        assert_eq!(quantile(&waits, 0.95), 95.0);
        assert_eq!(quantile(&waits, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
