//! Per-job cost: compute-seconds and dollars (the fleet's `price_per_second`) attributed to
//! the job that used them, by fleet, queue and pipeline. A one-shot launch's whole life is
//! its job's (read from the ledger once the launch has ended). A pool member's time is split
//! among its agents; each agent's share goes to the job it ran, step by step (a job's first
//! step counts from when Buildkite says it started), and what no job used is reported as
//! `idle`, or `booting` while the agent had not connected yet.

use super::intake::JobLabel;
use super::metrics::{PoolMetrics, UseLabel};
use super::observe::MemberView;
use crate::core::Core;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often ended one-shot launches are read from the ledger.
const LAUNCH_COST_INTERVAL: Duration = Duration::from_secs(10);
/// Jobs whose cost the status page can still show.
const JOBS_KEPT: usize = 500;

/// What a job or a use of compute spent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub seconds: f64,
    pub dollars: f64,
}

/// One line of the cost table: compute by fleet, queue, pipeline and kind (`job`, `idle`,
/// `booting`).
#[derive(Debug, Clone, PartialEq)]
pub struct CostLine {
    pub fleet: String,
    pub queue: String,
    pub pipeline: String,
    pub kind: &'static str,
    pub spent: Spent,
}

/// What one job cost.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCost {
    pub job: Uuid,
    pub fleet: String,
    pub queue: String,
    pub pipeline: String,
    pub spent: Spent,
    /// When it was last charged (ms).
    pub last_ms: i64,
}

/// Compute time to charge: to a job, or to a fleet's idle or booting time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Charge {
    pub job: Option<Uuid>,
    pub queue: String,
    pub pipeline: String,
    pub kind: &'static str,
    pub seconds: f64,
}

/// Every charge so far, with the per-job totals of the most recent jobs.
#[derive(Debug, Default)]
pub(crate) struct CostBook {
    totals: BTreeMap<(String, String, String, &'static str), Spent>,
    jobs: HashMap<Uuid, JobCost>,
}

impl CostBook {
    /// Record charges of `fleet` at `price_per_second` (per unit charged), on `/metrics` too.
    pub fn charge(
        &mut self,
        metrics: &PoolMetrics,
        fleet: &str,
        price_per_second: f64,
        charges: &[Charge],
        now_ms: i64,
    ) {
        for charge in charges.iter().filter(|c| c.seconds > 0.0) {
            let spent = Spent {
                seconds: charge.seconds,
                dollars: charge.seconds * price_per_second,
            };
            let total = self
                .totals
                .entry((
                    fleet.to_string(),
                    charge.queue.clone(),
                    charge.pipeline.clone(),
                    charge.kind,
                ))
                .or_default();
            total.seconds += spent.seconds;
            total.dollars += spent.dollars;
            let label = UseLabel {
                fleet: fleet.to_string(),
                queue: charge.queue.clone(),
                pipeline: charge.pipeline.clone(),
                kind: charge.kind.to_string(),
            };
            metrics
                .compute_seconds
                .get_or_create(&label)
                .inc_by(spent.seconds);
            metrics
                .compute_dollars
                .get_or_create(&label)
                .inc_by(spent.dollars);
            if let Some(job) = charge.job {
                let entry = self.jobs.entry(job).or_insert_with(|| JobCost {
                    job,
                    fleet: fleet.to_string(),
                    queue: charge.queue.clone(),
                    pipeline: charge.pipeline.clone(),
                    spent: Spent::default(),
                    last_ms: now_ms,
                });
                entry.spent.seconds += spent.seconds;
                entry.spent.dollars += spent.dollars;
                entry.last_ms = now_ms;
            }
        }
        if self.jobs.len() > JOBS_KEPT {
            let mut by_age: Vec<(i64, Uuid)> =
                self.jobs.values().map(|j| (j.last_ms, j.job)).collect();
            by_age.sort_unstable();
            for (_, job) in by_age.iter().take(self.jobs.len() - JOBS_KEPT) {
                self.jobs.remove(job);
            }
        }
    }

    pub fn lines(&self) -> Vec<CostLine> {
        self.totals
            .iter()
            .map(|((fleet, queue, pipeline, kind), spent)| CostLine {
                fleet: fleet.clone(),
                queue: queue.clone(),
                pipeline: pipeline.clone(),
                kind,
                spent: *spent,
            })
            .collect()
    }

    /// The jobs charged most recently, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Vec<JobCost> {
        let mut jobs: Vec<JobCost> = self.jobs.values().cloned().collect();
        jobs.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.job.cmp(&b.job)));
        jobs.truncate(limit);
        jobs
    }
}

/// Splits a pool's member time into charges, step by step.
#[derive(Debug, Default)]
pub(crate) struct PoolMeter {
    last_ms: Option<i64>,
    /// Each running job, charged up to when.
    charged_to: HashMap<Uuid, i64>,
}

impl PoolMeter {
    /// Charges for the time since the last step: per member, its agents' time goes to their
    /// jobs, the rest to idle (connected) or booting (not yet connected). Members still
    /// holding compute count whatever their phase; the first step only sets the clock.
    pub fn step(
        &mut self,
        now_ms: i64,
        views: &[MemberView],
        queue: &str,
        label_of: impl Fn(Uuid) -> Option<JobLabel>,
    ) -> Vec<Charge> {
        let Some(last) = self.last_ms.replace(now_ms) else {
            return Vec::new();
        };
        let mut charges = Vec::new();
        let (mut idle, mut booting) = (0.0, 0.0);
        let mut running = HashMap::new();
        for view in views {
            let from = last.max(view.launched_ms);
            let span = (now_ms - from).max(0) as f64 / 1000.0;
            let mut used = 0.0;
            for (job, started) in &view.jobs {
                let start = self
                    .charged_to
                    .get(job)
                    .copied()
                    .or(*started)
                    .unwrap_or(from)
                    .clamp(from, now_ms);
                let seconds = (now_ms - start) as f64 / 1000.0;
                used += seconds;
                running.insert(*job, now_ms);
                let label = label_of(*job).unwrap_or(JobLabel {
                    pipeline: String::new(),
                    queue: queue.to_string(),
                });
                charges.push(Charge {
                    job: Some(*job),
                    queue: label.queue,
                    pipeline: label.pipeline,
                    kind: "job",
                    seconds,
                });
            }
            let unconnected = view.agents.saturating_sub(view.registered) as f64 * span;
            booting += unconnected;
            idle += (view.agents as f64 * span - unconnected - used).max(0.0);
        }
        self.charged_to = running;
        for (kind, seconds) in [("idle", idle), ("booting", booting)] {
            charges.push(Charge {
                job: None,
                queue: queue.to_string(),
                pipeline: String::new(),
                kind,
                seconds,
            });
        }
        charges
    }
}

/// Charge each ended one-shot launch to its job, every few seconds, from when this process
/// started.
pub(crate) async fn charge_launches(core: Arc<Core>) {
    let mut since = core.now_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LAUNCH_COST_INTERVAL) => {}
            _ = core.stopped() => return,
        }
        let until = core.now_ms();
        let Some(ended) = core
            .ledger(move |ledger| ledger.launches_ended_between(since, until))
            .await
        else {
            return;
        };
        since = until;
        // One charge per fleet: the book trims its oldest jobs after each charge, which with
        // thousands of launches ending together would be a sort per launch.
        let mut by_fleet: BTreeMap<String, Vec<Charge>> = BTreeMap::new();
        for launch in ended {
            by_fleet.entry(launch.fleet).or_default().push(Charge {
                job: Some(launch.job_id),
                queue: launch.queue,
                pipeline: launch.pipeline.unwrap_or_default(),
                kind: "job",
                seconds: (launch.ended_at_ms - launch.started_at_ms).max(0) as f64 / 1000.0,
            });
        }
        let mut book = core.pools.costs();
        for (fleet, charges) in by_fleet {
            let Some(index) = core.fleet_index(&fleet) else {
                continue;
            };
            let price = core.fleet(index).price_per_second.unwrap_or(0.0);
            book.charge(&core.telemetry.pools, &fleet, price, &charges, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use updraft_backends::{MemberName, MemberPhase};

    fn member(
        name: &str,
        agents: u32,
        registered: u32,
        jobs: Vec<(Uuid, Option<i64>)>,
    ) -> MemberView {
        MemberView {
            name: MemberName::new(name),
            phase: MemberPhase::Running,
            launched_ms: 0,
            agents,
            registered,
            busy: jobs.len() as u32,
            jobs,
            idle_since_ms: None,
            seen_registered: registered == agents,
            notice: None,
            capacity: "process",
        }
    }

    #[test]
    fn member_time_goes_to_its_jobs_and_the_rest_is_idle_or_booting() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let label = |job: Uuid| {
            (job == a).then(|| JobLabel {
                pipeline: "app".into(),
                queue: "linux".into(),
            })
        };
        let mut meter = PoolMeter::default();
        assert!(meter.step(10_000, &[], "linux", label).is_empty());
        let views = [
            member("m1", 2, 2, vec![(a, Some(14_000))]),
            member("m2", 1, 0, Vec::new()),
        ];
        let charges = meter.step(20_000, &views, "linux", label);
        let seconds = |kind: &str| -> f64 {
            charges
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.seconds)
                .sum()
        };
        assert_eq!(seconds("job"), 6.0, "from the job's start");
        assert_eq!(seconds("idle"), 14.0, "m1's other agent, and a's first 4 s");
        assert_eq!(seconds("booting"), 10.0);
        assert_eq!(charges[0].pipeline, "app");
        // The next step charges a from where the last left off; b counts from its start.
        let views = [member(
            "m1",
            2,
            2,
            vec![(a, Some(14_000)), (b, Some(25_000))],
        )];
        let charges = meter.step(30_000, &views, "linux", label);
        let job = |id: Uuid| charges.iter().find(|c| c.job == Some(id)).unwrap().seconds;
        assert_eq!((job(a), job(b)), (10.0, 5.0));
        assert_eq!(
            charges.iter().find(|c| c.job == Some(b)).unwrap().pipeline,
            ""
        );

        let mut book = CostBook::default();
        let metrics = PoolMetrics::register(&mut Registry::default());
        book.charge(&metrics, "warm", 0.5, &charges, 30_000);
        let recent = book.recent_jobs(10);
        assert_eq!(recent.len(), 2);
        let a_cost = recent.iter().find(|j| j.job == a).unwrap();
        assert_eq!(
            a_cost.spent,
            Spent {
                seconds: 10.0,
                dollars: 5.0
            }
        );
        let idle = book.lines().into_iter().find(|l| l.kind == "idle").unwrap();
        assert_eq!(idle.spent.seconds, 5.0);
    }
}
