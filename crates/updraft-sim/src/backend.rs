//! What a backend costs in time and money: boot time and price as distributions, a
//! minimum billing period, and presets for the backends Updraft launches on. The numbers
//! are documented where they are defined, each with where it comes from.

use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// z for the 95th percentile of a standard normal.
const Z95: f64 = 1.644_853_626_951_472_2;

/// A spread of durations: an instance's boot time, a job's run time.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DurationDistribution {
    /// Always the same: `{ kind = "constant", value = "90s" }`.
    Constant {
        /// The duration.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        value: Duration,
    },
    /// Evenly spread: `{ kind = "uniform", low = "60s", high = "180s" }`.
    Uniform {
        /// Shortest.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        low: Duration,
        /// Longest.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        high: Duration,
    },
    /// Log-normal with this median and 95th percentile, the usual shape of boot and
    /// run times: `{ kind = "lognormal", median = "120s", p95 = "240s" }`.
    Lognormal {
        /// Half are shorter than this.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        median: Duration,
        /// 95 % are shorter than this.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        p95: Duration,
    },
}

impl DurationDistribution {
    pub fn sample_ms(&self, rng: &mut impl Rng) -> i64 {
        let ms = |d: &Duration| d.as_millis() as f64;
        let value = match self {
            DurationDistribution::Constant { value } => ms(value),
            DurationDistribution::Uniform { low, high } => {
                ms(low) + rng.random::<f64>() * (ms(high) - ms(low))
            }
            DurationDistribution::Lognormal { median, p95 } => lognormal(ms(median), ms(p95), rng),
        };
        value.round().max(0.0) as i64
    }

    /// The typical value (a pool assumes this boot time before it has measured any).
    pub fn median_ms(&self) -> i64 {
        match self {
            DurationDistribution::Constant { value } => value.as_millis() as i64,
            DurationDistribution::Uniform { low, high } => {
                ((low.as_millis() + high.as_millis()) / 2) as i64
            }
            DurationDistribution::Lognormal { median, .. } => median.as_millis() as i64,
        }
    }

    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        match self {
            DurationDistribution::Uniform { low, high } if high < low => vec![(
                format!("{path}.high"),
                format!("expected at least low = {low:?}, got {high:?}"),
            )],
            DurationDistribution::Lognormal { median, p95 } if p95 < median || median.is_zero() => vec![(
                format!("{path}.p95"),
                format!("expected a median above 0 and p95 at least the median = {median:?}, got {p95:?}"),
            )],
            _ => Vec::new(),
        }
    }
}

/// What an instance costs per hour of existence, drawn once per instance (spot prices
/// differ between instances and over a day).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Price {
    /// `{ kind = "constant", per_hour = 0.0832 }`, in dollars per hour.
    Constant {
        /// Dollars per hour.
        per_hour: f64,
    },
    /// `{ kind = "uniform", low_per_hour = 0.02, high_per_hour = 0.035 }`.
    Uniform {
        /// Lowest dollars per hour.
        low_per_hour: f64,
        /// Highest dollars per hour.
        high_per_hour: f64,
    },
}

impl Price {
    /// Dollars per millisecond for one instance.
    pub fn sample_per_ms(&self, rng: &mut impl Rng) -> f64 {
        let per_hour = match self {
            Price::Constant { per_hour } => *per_hour,
            Price::Uniform {
                low_per_hour,
                high_per_hour,
            } => low_per_hour + rng.random::<f64>() * (high_per_hour - low_per_hour),
        };
        per_hour / 3_600_000.0
    }

    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let (low, high) = match self {
            Price::Constant { per_hour } => (*per_hour, *per_hour),
            Price::Uniform {
                low_per_hour,
                high_per_hour,
            } => (*low_per_hour, *high_per_hour),
        };
        if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= low) {
            return vec![(
                path.to_string(),
                format!("expected prices ≥ 0 with high ≥ low, got {low} and {high}"),
            )];
        }
        Vec::new()
    }
}

/// A log-normal draw given its median and 95th percentile.
pub fn lognormal(median: f64, p95: f64, rng: &mut impl Rng) -> f64 {
    let sigma = (p95 / median).ln() / Z95;
    median * (sigma * standard_normal(rng)).exp()
}

/// Box–Muller.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The backends Updraft launches on, with typical numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendPreset {
    Local,
    Kubernetes,
    Ec2,
    Ec2Spot,
    Fargate,
    Codebuild,
}

/// A backend's numbers as the simulator uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendModel {
    pub boot_time: DurationDistribution,
    pub price: Price,
    pub minimum_billing: Duration,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl BackendPreset {
    pub const ALL: [BackendPreset; 6] = [
        BackendPreset::Local,
        BackendPreset::Kubernetes,
        BackendPreset::Ec2,
        BackendPreset::Ec2Spot,
        BackendPreset::Fargate,
        BackendPreset::Codebuild,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendPreset::Local => "local",
            BackendPreset::Kubernetes => "kubernetes",
            BackendPreset::Ec2 => "ec2",
            BackendPreset::Ec2Spot => "ec2-spot",
            BackendPreset::Fargate => "fargate",
            BackendPreset::Codebuild => "codebuild",
        }
    }

    pub fn parse(name: &str) -> Option<BackendPreset> {
        BackendPreset::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The preset's numbers. Sources: reference `elastic-ci-stack.md` §6.1, `aws.md`
    /// (CodeBuild), `peers.md`; prices are AWS us-east-1 on-demand list prices for the
    /// shape named (check them against your own bill).
    pub fn model(self) -> BackendModel {
        let lognormal = |median, p95| DurationDistribution::Lognormal {
            median: secs(median),
            p95: secs(p95),
        };
        match self {
            // A child process on this machine: starts in about a second, costs nothing.
            BackendPreset::Local => BackendModel {
                boot_time: DurationDistribution::Lognormal {
                    median: Duration::from_millis(500),
                    p95: Duration::from_millis(1500),
                },
                price: Price::Constant { per_hour: 0.0 },
                minimum_billing: Duration::ZERO,
            },
            // A pod on a node that is already up: scheduling, image pull from a warm cache,
            // agent start; the cold path with a new node is ~80 s (peers.md [A12]), taken
            // as the tail. Price: a 2 vCPU / 8 GiB share, m5.large $0.096/h; nodes are
            // shared, so no minimum.
            BackendPreset::Kubernetes => BackendModel {
                boot_time: lognormal(15, 60),
                price: Price::Constant { per_hour: 0.096 },
                minimum_billing: Duration::ZERO,
            },
            // An Elastic CI Stack instance: users report 90 s–3.5 min to a connected agent
            // (ES#731, ES#523), the scaler's comment says 3–5 min. t3.large $0.0832/h, billed
            // per second with a 60 s minimum.
            BackendPreset::Ec2 => BackendModel {
                boot_time: lognormal(120, 240),
                price: Price::Constant { per_hour: 0.0832 },
                minimum_billing: secs(60),
            },
            // Spot: the same boot (capacity shortfalls slow some, ES#983); t3.large spot
            // typically 25–40 % of on-demand.
            BackendPreset::Ec2Spot => BackendModel {
                boot_time: lognormal(130, 300),
                price: Price::Uniform {
                    low_per_hour: 0.021,
                    high_per_hour: 0.033,
                },
                minimum_billing: secs(60),
            },
            // An ECS Fargate task, 2 vCPU / 4 GiB: image pull and ENI attach, 30–90 s;
            // $0.04048 per vCPU-hour + $0.004445 per GB-hour, 60 s minimum.
            BackendPreset::Fargate => BackendModel {
                boot_time: lognormal(40, 90),
                price: Price::Constant { per_hour: 0.0987 },
                minimum_billing: secs(60),
            },
            // A CodeBuild build: "60 seconds of provisioning" (aws.md §CodeBuild anecdote),
            // sometimes minutes longer; general1.medium $0.01/min ($0.60/h), billed by the
            // minute, so a 60 s minimum.
            BackendPreset::Codebuild => BackendModel {
                boot_time: lognormal(60, 180),
                price: Price::Constant { per_hour: 0.60 },
                minimum_billing: secs(60),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lognormal_hits_its_median_and_p95() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let boot = BackendPreset::Ec2.model().boot_time;
        let mut draws: Vec<i64> = (0..20_000).map(|_| boot.sample_ms(&mut rng)).collect();
        draws.sort_unstable();
        let at = |q: f64| draws[(q * draws.len() as f64) as usize] as f64 / 1000.0;
        assert!((at(0.5) - 120.0).abs() < 4.0, "median {}", at(0.5));
        assert!((at(0.95) - 240.0).abs() < 12.0, "p95 {}", at(0.95));
    }
}
