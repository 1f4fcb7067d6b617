//! Workload generators, deterministic from a seed. Each shape is builds arriving as a
//! Poisson process whose rate follows the hour of the day (a day starts at offset 0,
//! a Monday at midnight), each build fanning out to a number of jobs with log-normal run
//! times. `scale` multiplies every rate (a team `scale` times larger); `jobs` repeats the
//! shape day after day until that many jobs exist. The parameters are printed by
//! `describe` and documented in `traces/README.md`.

use super::JobArrival;
use crate::backend::lognormal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: f64 = 60_000.0;

/// The reference shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The same build rate all day and night.
    Steady,
    /// A 50-engineer team's weekday: morning ramp, lunch dip, quiet night; weekends quiet.
    Weekday,
    /// A nightly batch at 02:00 on top of light daytime traffic.
    Nightly,
    /// Merge-queue trains: bursts of builds every half hour or so in working hours.
    MergeQueue,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Steady,
        Shape::Weekday,
        Shape::Nightly,
        Shape::MergeQueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Steady => "steady",
            Shape::Weekday => "weekday",
            Shape::Nightly => "nightly",
            Shape::MergeQueue => "merge-queue",
        }
    }

    pub fn parse(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The shape's parameters in words, for the trace README and `--help`.
    pub fn describe(self) -> &'static str {
        match self {
            Shape::Steady => "30 builds/h all day, 1–8 jobs each, run time log-normal median 4m p95 12m",
            Shape::Weekday => "50 engineers, Mon–Fri builds/h by hour: 00–07 1, 07 5, 08 20, 09–12 40, 12 20 (lunch), 13–17 42, 17 25, 18–20 8, 20–24 2; weekends 1/h; 3–12 jobs per build, run time median 4m p95 15m",
            Shape::Nightly => "at 02:00 12 batch pipelines start 50 s apart with 40–80 jobs each (median 12m, p95 40m); 08–18 6 builds/h of 2–6 jobs (median 4m, p95 12m)",
            Shape::MergeQueue => "09–18 merge-queue trains every 25 min on average (exponential), each 4–12 builds within 60 s of 15–25 jobs (median 3m, p95 8m); 08–19 10 PR builds/h of 3–7 jobs (median 5m, p95 15m)",
        }
    }
}

/// A kind of build: how many jobs, how long they run, on which pipeline.
struct BuildKind {
    pipeline: &'static str,
    jobs: (u32, u32),
    median_min: f64,
    p95_min: f64,
}

const APP: BuildKind = BuildKind {
    pipeline: "app",
    jobs: (1, 8),
    median_min: 4.0,
    p95_min: 12.0,
};
const TEAM: BuildKind = BuildKind {
    pipeline: "app",
    jobs: (3, 12),
    median_min: 4.0,
    p95_min: 15.0,
};
const BATCH: BuildKind = BuildKind {
    pipeline: "nightly",
    jobs: (40, 80),
    median_min: 12.0,
    p95_min: 40.0,
};
const DAYTIME: BuildKind = BuildKind {
    pipeline: "app",
    jobs: (2, 6),
    median_min: 4.0,
    p95_min: 12.0,
};
const MERGE: BuildKind = BuildKind {
    pipeline: "merge-queue",
    jobs: (15, 25),
    median_min: 3.0,
    p95_min: 8.0,
};
const PULL: BuildKind = BuildKind {
    pipeline: "pull-request",
    jobs: (3, 7),
    median_min: 5.0,
    p95_min: 15.0,
};

/// Builds per hour of the team's weekday, by hour of day.
const WEEKDAY_RATE: [f64; 24] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 20.0, 40.0, 40.0, 40.0, 20.0, 42.0, 42.0, 42.0, 42.0,
    25.0, 8.0, 8.0, 2.0, 2.0, 2.0, 2.0,
];

struct Generator {
    rng: ChaCha8Rng,
    scale: f64,
    jobs: Vec<JobArrival>,
}

impl Generator {
    fn build(&mut self, at_ms: f64, kind: &BuildKind) {
        let count = self.rng.random_range(kind.jobs.0..=kind.jobs.1);
        for _ in 0..count {
            let minutes = lognormal(kind.median_min, kind.p95_min, &mut self.rng);
            self.jobs.push(JobArrival {
                at_ms: at_ms as u64,
                queue: "default".into(),
                duration_ms: (minutes * MINUTE_MS).round().max(1000.0) as u64,
                pipeline: Some(kind.pipeline.into()),
                priority: 0,
            });
        }
    }

    /// Poisson builds at `per_hour` (times `scale`) between two offsets.
    fn poisson(&mut self, from_ms: f64, to_ms: f64, per_hour: f64, kind: &BuildKind) {
        let rate = per_hour * self.scale / HOUR_MS;
        if rate <= 0.0 {
            return;
        }
        let mut t = from_ms;
        loop {
            t += -(1.0 - self.rng.random::<f64>()).ln() / rate;
            if t >= to_ms {
                return;
            }
            self.build(t, kind);
        }
    }

    fn hourly(&mut self, day_ms: f64, rates: &[f64; 24], kind: &BuildKind) {
        for (hour, rate) in rates.iter().enumerate() {
            let from = day_ms + hour as f64 * HOUR_MS;
            self.poisson(from, from + HOUR_MS, *rate, kind);
        }
    }

    fn day(&mut self, shape: Shape, day: u64) {
        let start = (day * DAY_MS) as f64;
        let weekend = day % 7 >= 5;
        let h = |hour: f64| start + hour * HOUR_MS;
        match shape {
            Shape::Steady => self.poisson(start, h(24.0), 30.0, &APP),
            Shape::Weekday if weekend => self.poisson(start, h(24.0), 1.0, &TEAM),
            Shape::Weekday => self.hourly(start, &WEEKDAY_RATE, &TEAM),
            Shape::Nightly => {
                let pipelines = (12.0 * self.scale).round().max(1.0) as u32;
                for i in 0..pipelines {
                    self.build(h(2.0) + i as f64 * 50_000.0 / self.scale.max(1.0), &BATCH);
                }
                self.poisson(h(8.0), h(18.0), 6.0, &DAYTIME);
            }
            Shape::MergeQueue => {
                self.poisson(h(8.0), h(19.0), 10.0, &PULL);
                let mut t = h(9.0);
                loop {
                    t += -(1.0 - self.rng.random::<f64>()).ln() * 25.0 * MINUTE_MS;
                    if t >= h(18.0) {
                        break;
                    }
                    let builds = (self.rng.random_range(4..=12) as f64 * self.scale).round() as u32;
                    for _ in 0..builds {
                        let offset = self.rng.random::<f64>() * MINUTE_MS;
                        self.build(t + offset, &MERGE);
                    }
                }
            }
        }
    }
}

/// Jobs of `shape`: one day, or as many days as it takes to reach `jobs` (then cut to
/// exactly that many).
pub fn generate(shape: Shape, seed: u64, scale: f64, jobs: Option<u64>) -> Vec<JobArrival> {
    let mut g = Generator {
        rng: ChaCha8Rng::seed_from_u64(seed),
        scale,
        jobs: Vec::new(),
    };
    let mut day = 0;
    loop {
        let before = g.jobs.len();
        g.day(shape, day);
        g.jobs[before..].sort_by_key(|j| j.at_ms);
        day += 1;
        match jobs {
            None => break,
            Some(n) if g.jobs.len() as u64 >= n => {
                g.jobs.truncate(n as usize);
                break;
            }
            Some(_) if day > 100_000 => break,
            Some(_) => {}
        }
    }
    g.jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_deterministic_and_sized() {
        let a = generate(Shape::Weekday, 3, 1.0, None);
        assert_eq!(a, generate(Shape::Weekday, 3, 1.0, None));
        assert_ne!(a, generate(Shape::Weekday, 4, 1.0, None));
        assert!((2000..4000).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let night = a.iter().filter(|j| j.at_ms < 7 * 3_600_000).count();
        assert!(night < a.len() / 20);
        assert_eq!(generate(Shape::Steady, 1, 1.0, Some(5000)).len(), 5000);
        let batch = generate(Shape::Nightly, 1, 1.0, None);
        let at_two = batch
            .iter()
            .filter(|j| j.pipeline.as_deref() == Some("nightly"))
            .count();
        assert!((480..=960).contains(&at_two), "{at_two}");
    }
}
