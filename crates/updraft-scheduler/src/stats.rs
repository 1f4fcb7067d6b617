//! Progress numbers callers can read while the scheduler runs (`SchedulerHandle::stats`):
//! jobs seen, launches, jobs in flight and every pickup with its times, so the demo and the
//! benchmarks report what happened without scraping `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// How the scheduler learned of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Push,
    Pull,
    /// Found by the reconciler (e.g. reserved before a restart).
    Reconcile,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Push => "push",
            Source::Pull => "pull",
            Source::Reconcile => "reconcile",
        }
    }
}

/// One job's first launch: when Buildkite scheduled it, when we heard of it, when the backend
/// confirmed the launch (all Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pickup {
    pub job: Uuid,
    pub source: Source,
    pub scheduled_at_ms: i64,
    pub seen_at_ms: i64,
    pub launched_at_ms: i64,
}

impl Pickup {
    /// Scheduled → launch confirmed.
    pub fn latency(&self) -> Duration {
        Duration::from_millis((self.launched_at_ms - self.scheduled_at_ms).max(0) as u64)
    }

    /// Heard of → launch confirmed: the scheduler's own share of the latency.
    pub fn handling(&self) -> Duration {
        Duration::from_millis((self.launched_at_ms - self.seen_at_ms).max(0) as u64)
    }
}

/// How many pickups `StatsSnapshot::pickups` holds at most (the most recent ones).
pub const MAX_PICKUPS: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub jobs_seen: AtomicU64,
    pub duplicates_ignored: AtomicU64,
    pub launched: AtomicU64,
    pub launch_failures: AtomicU64,
    pub closed: AtomicU64,
    pub in_flight: AtomicU64,
    pub reconcile_passes: AtomicU64,
    pub corrections: AtomicU64,
    pub pickups: Mutex<Vec<Pickup>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_in_flight(&self, slots: u32) {
        self.in_flight.store(slots as u64, Ordering::Relaxed);
    }

    /// Keep the most recent `MAX_PICKUPS`, so a long-running scheduler's memory stays flat.
    pub fn record_pickup(&self, pickup: Pickup) {
        let mut pickups = self.pickups.lock().unwrap_or_else(|e| e.into_inner());
        if pickups.len() >= MAX_PICKUPS {
            pickups.drain(..MAX_PICKUPS / 2);
        }
        pickups.push(pickup);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            jobs_seen: read(&self.jobs_seen),
            duplicates_ignored: read(&self.duplicates_ignored),
            launched: read(&self.launched),
            launch_failures: read(&self.launch_failures),
            closed: read(&self.closed),
            in_flight: read(&self.in_flight),
            reconcile_passes: read(&self.reconcile_passes),
            corrections: read(&self.corrections),
            pickups: self
                .pickups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A point-in-time copy of the scheduler's progress.
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Distinct jobs taken in (push, pull or found at start-up).
    pub jobs_seen: u64,
    /// Events or poll results for jobs already known (push + pull overlap, repeats).
    pub duplicates_ignored: u64,
    /// Launches the backend confirmed (relaunches included).
    pub launched: u64,
    pub launch_failures: u64,
    /// Jobs closed in the ledger (finished, canceled, handed back).
    pub closed: u64,
    /// Launch slots held now.
    pub in_flight: u64,
    pub reconcile_passes: u64,
    pub corrections: u64,
    /// First launch of each job this process made, in launch order (the most recent
    /// `MAX_PICKUPS`).
    pub pickups: Vec<Pickup>,
}

impl StatsSnapshot {
    /// The `q`-quantile (0.0–1.0) of pickup latency for one source, or all when `None`.
    pub fn pickup_quantile(&self, source: Option<Source>, q: f64) -> Option<Duration> {
        let mut latencies: Vec<Duration> = self
            .pickups
            .iter()
            .filter(|p| source.is_none_or(|s| p.source == s))
            .map(Pickup::latency)
            .collect();
        quantile(&mut latencies, q)
    }
}

/// Nearest-rank quantile of a list of durations.
pub fn quantile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut values, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&mut values, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn old_pickups_are_dropped_beyond_the_cap() {
        let stats = Stats::default();
        for i in 0..(MAX_PICKUPS as i64 + 10) {
            stats.record_pickup(Pickup {
                job: Uuid::nil(),
                source: Source::Pull,
                scheduled_at_ms: i,
                seen_at_ms: i,
                launched_at_ms: i,
            });
        }
        let pickups = stats.snapshot().pickups;
        assert!(pickups.len() <= MAX_PICKUPS);
        assert_eq!(
            pickups.last().map(|p| p.launched_at_ms),
            Some(MAX_PICKUPS as i64 + 9)
        );
    }

    #[test]
    fn pickup_quantiles_filter_by_source() {
        let pickup = |source, latency| Pickup {
            job: Uuid::new_v4(),
            source,
            scheduled_at_ms: 0,
            seen_at_ms: 0,
            launched_at_ms: latency,
        };
        let snapshot = StatsSnapshot {
            pickups: vec![pickup(Source::Push, 5), pickup(Source::Pull, 900)],
            ..Default::default()
        };
        assert_eq!(
            snapshot.pickup_quantile(Some(Source::Push), 0.99),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            snapshot.pickup_quantile(None, 1.0),
            Some(Duration::from_millis(900))
        );
    }
}
