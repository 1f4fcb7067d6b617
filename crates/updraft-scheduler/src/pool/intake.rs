//! How jobs reach a pool. A job routed to a pool fleet is left to the pool's agents: it is
//! not reserved, and it simply leaves the scheduled list when an agent takes it (the next
//! poll forgets it). Until then it counts as demand on the pool. If a one-shot fleet on the
//! same queue has `overflow_after` and serves the job's rules too, the job moves to that
//! fleet's waiting queue once it has waited that long, and is reserved and launched there
//! like any other; a pool agent that took it first makes the reservation fail, which
//! releases it.

use crate::config::FleetConfig;
use crate::core::{Core, Phase};
use std::collections::{BTreeMap, HashMap};
use updraft_backends::JobContext;
use updraft_model::QueryRules;
use uuid::Uuid;

/// How long a pool job's pipeline and queue are kept for attributing its cost, once taken in.
const LABEL_MEMORY_MS: i64 = 24 * 3600 * 1000;

/// What a pool job is, for attributing its compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobLabel {
    pub pipeline: String,
    pub queue: String,
}

impl JobLabel {
    pub fn of(context: &JobContext, queue: &str) -> JobLabel {
        JobLabel {
            pipeline: context.pipeline_slug.clone().unwrap_or_default(),
            queue: queue.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pooled {
    pool: usize,
    /// The one-shot fleet that takes the job over, and when.
    overflow: Option<(usize, i64)>,
}

/// The jobs left to pools, what arrived at each, and what each job is.
#[derive(Debug, Default)]
pub(crate) struct PoolIntake {
    pooled: HashMap<Uuid, Pooled>,
    arrivals: BTreeMap<usize, u64>,
    labels: HashMap<Uuid, (JobLabel, i64)>,
}

impl PoolIntake {
    /// A job for pool fleet `pool`, which overflows to `overflow` (fleet, at ms) if given.
    pub fn take(
        &mut self,
        job: Uuid,
        pool: usize,
        overflow: Option<(usize, i64)>,
        label: JobLabel,
        now_ms: i64,
    ) {
        self.pooled.insert(job, Pooled { pool, overflow });
        *self.arrivals.entry(pool).or_default() += 1;
        self.labels.insert(job, (label, now_ms));
    }

    /// Jobs taken in for `pool` since start.
    pub fn arrivals(&self, pool: usize) -> u64 {
        self.arrivals.get(&pool).copied().unwrap_or(0)
    }

    /// The jobs of `pool` still waiting for one of its agents.
    pub fn waiting(&self, pool: usize) -> impl Iterator<Item = Uuid> + '_ {
        self.pooled
            .iter()
            .filter(move |(_, p)| p.pool == pool)
            .map(|(job, _)| *job)
    }

    /// Keep only the pooled jobs `still` says are waiting (the rest were taken or forgotten).
    pub fn retain(&mut self, still: impl Fn(Uuid) -> bool) {
        self.pooled.retain(|job, _| still(*job));
    }

    /// Jobs whose overflow time has come, with the fleet that takes them; they leave the pool.
    fn due(&mut self, now_ms: i64) -> Vec<(Uuid, usize)> {
        let due: Vec<(Uuid, usize)> = self
            .pooled
            .iter()
            .filter_map(|(job, p)| {
                p.overflow
                    .filter(|(_, at)| *at <= now_ms)
                    .map(|(fleet, _)| (*job, fleet))
            })
            .collect();
        for (job, _) in &due {
            self.pooled.remove(job);
        }
        due
    }

    /// The pipeline and queue of a job taken in for a pool.
    pub fn label(&self, job: Uuid) -> Option<&JobLabel> {
        self.labels.get(&job).map(|(label, _)| label)
    }

    fn forget_old_labels(&mut self, now_ms: i64) {
        self.labels
            .retain(|_, (_, seen)| now_ms - *seen < LABEL_MEMORY_MS);
    }
}

/// The one-shot fleet behind pool fleet `pool` that takes `rules`' jobs after waiting: the
/// first later fleet on the same queue with `overflow_after` whose tags serve the rules.
pub(crate) fn overflow_fleet(
    fleets: &[FleetConfig],
    pool: usize,
    rules: &QueryRules,
) -> Option<(usize, std::time::Duration)> {
    let queue = &fleets[pool].queue;
    fleets
        .iter()
        .enumerate()
        .skip(pool + 1)
        .filter(|(_, f)| !f.is_pool() && &f.queue == queue && rules.matched_by(&f.tags))
        .find_map(|(i, f)| f.overflow_after.map(|after| (i, after)))
}

/// Hand the jobs whose overflow time has come to their one-shot fleet's waiting queue.
pub(crate) fn overflow_due(core: &Core) {
    let now = core.now_ms();
    let mut state = core.state();
    state.pools.forget_old_labels(now);
    for (job, fleet) in state.pools.due(now) {
        let Some(tracked) = state.jobs.get_mut(&job) else {
            continue;
        };
        if tracked.phase != Phase::Pooled {
            continue;
        }
        tracked.fleet = Some(fleet);
        tracked.phase = Phase::Waiting;
        tracked.reason = None;
        let (priority, scheduled_at) = (tracked.priority, tracked.scheduled_at_ms);
        state.limiter.enqueue(fleet, job, priority, scheduled_at);
        core.telemetry
            .pools
            .overflowed
            .get_or_create(&crate::pool::metrics::FleetLabel::new(
                &core.fleet(fleet).name,
            ))
            .inc();
        tracing::info!(%job, fleet = %core.fleet(fleet).name, "no pool agent took the job in time; launching it one-shot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn overflow_goes_to_the_first_later_one_shot_fleet_serving_the_rules() {
        let config = Config::parse(
            r#"
            [buildkite]
            agent_token = "t"
            [[fleet]]
            name = "warm"
            queue = "linux"
            mode = "pool"
            pool = { max = 4 }
            [[fleet]]
            name = "arm-burst"
            queue = "linux"
            tags = ["arch=arm64"]
            overflow_after = "10s"
            [[fleet]]
            name = "amd-burst"
            queue = "linux"
            tags = ["arch=amd64"]
            overflow_after = "30s"
            [[fleet]]
            name = "other"
            queue = "mac"
            "#,
        )
        .unwrap();
        let overflow = |rules: &[&str]| {
            overflow_fleet(&config.fleets, 0, &QueryRules::parse("r", rules).unwrap())
        };
        let secs = std::time::Duration::from_secs;
        assert_eq!(overflow(&["queue=linux"]), Some((1, secs(10))));
        assert_eq!(
            overflow(&["queue=linux", "arch=amd64"]),
            Some((2, secs(30)))
        );
        assert_eq!(overflow(&["queue=linux", "arch=riscv"]), None);
    }

    #[test]
    fn pooled_jobs_overflow_once_when_due() {
        let mut intake = PoolIntake::default();
        let label = JobLabel {
            pipeline: "app".into(),
            queue: "linux".into(),
        };
        let (early, late, stays) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        intake.take(early, 0, Some((1, 1_000)), label.clone(), 0);
        intake.take(late, 0, Some((1, 5_000)), label.clone(), 0);
        intake.take(stays, 0, None, label.clone(), 0);
        assert_eq!(intake.arrivals(0), 3);
        assert_eq!(intake.due(2_000), vec![(early, 1)]);
        assert!(intake.due(2_000).is_empty());
        assert_eq!(intake.waiting(0).count(), 2);
        intake.retain(|job| job != stays);
        assert_eq!(intake.waiting(0).collect::<Vec<_>>(), vec![late]);
        assert_eq!(intake.label(stays), Some(&label));
        intake.forget_old_labels(LABEL_MEMORY_MS + 1);
        assert_eq!(intake.label(stays), None);
    }
}
