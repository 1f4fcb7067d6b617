//! The simulator's settings file (TOML): the fleets serving the workload — each a pool
//! with the scheduler's very `PoolSettings`, or one-shot launches — their backends, caps,
//! and the run's seed and start. Every error is named by its path (`fleet[1].pool.max`).

use crate::backend::{BackendModel, BackendPreset, DurationDistribution, Price};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};
use updraft_model::scaling::PoolSettings;

/// A whole simulation: fleets and how to run them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SimSettings {
    /// Seed of every random draw (boot times, prices); the same seed gives the same report.
    /// Default 1.
    #[serde(default = "one")]
    pub seed: u64,
    /// The wall-clock time of the workload's offset 0, RFC 3339; scheduled minimums read
    /// weekdays and times of day from it. Default "2026-01-05T00:00:00Z" (a Monday).
    #[serde(default = "default_start")]
    pub start: String,
    /// Launches in flight across all fleets (the scheduler's `[limits] max_in_flight`).
    /// Default: no cap.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// How long to go on after the last job finishes, so idle tails are counted. Default
    /// "15m".
    #[serde(default = "fifteen_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain: Duration,
    /// Time between the samples drawn in the plots (raised so a run has at most 5000).
    /// Default "60s".
    #[serde(default = "one_minute", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub sample_interval: Duration,
    /// The fleets, in order. Jobs go to the pools on their queue first; a one-shot fleet on
    /// the same queue takes the jobs no pool agent took within its `overflow_after`.
    #[serde(rename = "fleet")]
    pub fleets: Vec<FleetSettings>,
}

/// One fleet: which jobs it serves, on which backend, and how.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FleetSettings {
    /// The fleet's name in reports. Required.
    pub name: String,
    /// The queue whose jobs it serves. Default "default".
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Backend preset: "local", "kubernetes", "ec2", "ec2-spot", "fargate" or "codebuild".
    /// Default "ec2".
    #[serde(default = "default_backend")]
    pub backend: BackendPreset,
    /// Override the preset's boot time distribution.
    #[serde(default)]
    pub boot_time: Option<DurationDistribution>,
    /// Override the preset's price per instance-hour.
    #[serde(default)]
    pub price: Option<Price>,
    /// Override the preset's minimum billed time per instance.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub minimum_billing: Option<Duration>,
    /// Launches (instances) in flight at once. Default: no cap beyond the pool's `max`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Launches started per minute. Default: no cap.
    #[serde(default)]
    pub launches_per_minute: Option<u32>,
    /// One-shot fleets only: how long a job waits for a pool agent on its queue before it
    /// gets its own launch. Default "0s".
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub overflow_after: Option<Duration>,
    /// Keep a warm pool sized by a scaling policy; without it every job gets its own
    /// launch (one-shot).
    #[serde(default)]
    pub pool: Option<PoolSettings>,
    /// Pools only: how long a waiting job takes to reach an idle agent. Agents ask for work
    /// at intervals (`buildkite-agent` pings every `ping_interval` plus jitter; streaming
    /// pings take under a second), so a job arriving at an idle pool, or waiting when an
    /// agent finishes its job, waits for that agent's next ping; a booting agent's first
    /// ping takes a waiting job at once. Default: none (an idle agent takes a job at once).
    #[serde(default)]
    pub pickup: Option<DurationDistribution>,
}

fn one() -> u64 {
    1
}
fn default_start() -> String {
    "2026-01-05T00:00:00Z".into()
}
fn default_queue() -> String {
    "default".into()
}
fn default_backend() -> BackendPreset {
    BackendPreset::Ec2
}
fn fifteen_minutes() -> Duration {
    Duration::from_secs(900)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}

impl FleetSettings {
    /// A fleet on `backend` with the preset's numbers: a pool when `pool` is given.
    pub fn new(name: &str, backend: BackendPreset, pool: Option<PoolSettings>) -> Self {
        FleetSettings {
            name: name.into(),
            queue: default_queue(),
            backend,
            boot_time: None,
            price: None,
            minimum_billing: None,
            max_in_flight: None,
            launches_per_minute: None,
            overflow_after: None,
            pool,
            pickup: None,
        }
    }

    /// The preset with this fleet's overrides.
    pub fn model(&self) -> BackendModel {
        let mut model = self.backend.model();
        if let Some(boot) = &self.boot_time {
            model.boot_time = boot.clone();
        }
        if let Some(price) = &self.price {
            model.price = price.clone();
        }
        if let Some(minimum) = self.minimum_billing {
            model.minimum_billing = minimum;
        }
        model
    }
}

impl SimSettings {
    /// Settings with these fleets and every other field at its default.
    pub fn with_fleets(fleets: Vec<FleetSettings>) -> Self {
        SimSettings {
            seed: one(),
            start: default_start(),
            max_in_flight: None,
            drain: fifteen_minutes(),
            sample_interval: one_minute(),
            fleets,
        }
    }

    /// Parse and check a settings file; every problem comes back with its path.
    pub fn from_toml(text: &str) -> Result<SimSettings, Vec<(String, String)>> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| vec![("(file)".to_string(), e.message().to_string())])?;
        let settings: SimSettings =
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().message().to_string();
                vec![(if path == "." { "(file)".into() } else { path }, message)]
            })?;
        let errors = settings.validate();
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// Milliseconds since the Unix epoch of the workload's offset 0.
    pub fn start_ms(&self) -> Result<i64, String> {
        let time =
            humantime_serde::re::humantime::parse_rfc3339_weak(self.start.trim_end_matches('Z'))
                .map_err(|e| {
                    format!(
                        "expected an RFC 3339 time such as \"2026-01-05T00:00:00Z\", got {:?}: {e}",
                        self.start
                    )
                })?;
        Ok(time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64))
    }

    /// Every cross-field problem, each with its path.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if let Err(message) = self.start_ms() {
            errors.push(("start".into(), message));
        }
        if self.fleets.is_empty() {
            errors.push(("fleet".into(), "expected at least one [[fleet]]".into()));
        }
        if self.max_in_flight == Some(0) {
            errors.push(("max_in_flight".into(), "expected at least 1, got 0".into()));
        }
        if self.sample_interval < Duration::from_secs(1) {
            errors.push(("sample_interval".into(), "expected at least 1s".into()));
        }
        let mut names = BTreeSet::new();
        let mut pooled_queues = BTreeSet::new();
        for (i, fleet) in self.fleets.iter().enumerate() {
            let path = format!("fleet[{i}]");
            if !names.insert(fleet.name.as_str()) {
                errors.push((
                    format!("{path}.name"),
                    format!(
                        "expected a name no other fleet has, got {:?} again",
                        fleet.name
                    ),
                ));
            }
            if let Some(boot) = &fleet.boot_time {
                errors.extend(boot.validate(&format!("{path}.boot_time")));
            }
            if let Some(price) = &fleet.price {
                errors.extend(price.validate(&format!("{path}.price")));
            }
            if let Some(pickup) = &fleet.pickup {
                errors.extend(pickup.validate(&format!("{path}.pickup")));
                if fleet.pool.is_none() {
                    errors.push((
                        format!("{path}.pickup"),
                        "only a pool's agents ask for work; a one-shot launch runs its own job"
                            .into(),
                    ));
                }
            }
            if fleet.max_in_flight == Some(0) {
                errors.push((
                    format!("{path}.max_in_flight"),
                    "expected at least 1, got 0".into(),
                ));
            }
            if fleet.launches_per_minute == Some(0) {
                errors.push((
                    format!("{path}.launches_per_minute"),
                    "expected at least 1, got 0".into(),
                ));
            }
            match &fleet.pool {
                Some(pool) => {
                    errors.extend(pool.validate(&format!("{path}.pool")));
                    if fleet.overflow_after.is_some() {
                        errors.push((
                            format!("{path}.overflow_after"),
                            "only a one-shot fleet (no [fleet.pool]) takes overflow".into(),
                        ));
                    }
                    pooled_queues.insert(fleet.queue.as_str());
                }
                None => {
                    if fleet.overflow_after.is_some()
                        && !pooled_queues.contains(fleet.queue.as_str())
                    {
                        errors.push((
                            format!("{path}.overflow_after"),
                            format!(
                                "expected a pool fleet on queue {:?} listed before this one to overflow from",
                                fleet.queue
                            ),
                        ));
                    }
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_pool_with_one_shot_overflow_reads() {
        let settings = SimSettings::from_toml(
            r#"
            seed = 7
            [[fleet]]
            name = "warm"
            backend = "ec2"
            [fleet.pool]
            max = 20
            policy = { kind = "elastic-ci", instance_buffer = 2 }
            [[fleet.pool.schedule]]
            days = "mon-fri"
            from = "08:00"
            to = "18:00"
            min = 3

            [[fleet]]
            name = "burst"
            backend = "fargate"
            overflow_after = "30s"
            boot_time = { kind = "constant", value = "45s" }
            "#,
        )
        .unwrap();
        assert_eq!(settings.fleets.len(), 2);
        assert_eq!(
            settings.fleets[0].pool.as_ref().unwrap().policy.kind(),
            "elastic-ci"
        );
        assert_eq!(settings.fleets[1].model().boot_time.median_ms(), 45_000);
        assert_eq!(settings.start_ms().unwrap(), 1_767_571_200_000);
    }

    #[test]
    fn the_example_settings_read() {
        let settings = SimSettings::from_toml(include_str!("../examples/warm-pool.toml")).unwrap();
        assert_eq!(settings.fleets.len(), 2);
        assert_eq!(settings.fleets[0].pool.as_ref().unwrap().schedule[0].min, 5);
    }

    #[test]
    fn every_bad_setting_is_named_by_its_path() {
        let errors = SimSettings::from_toml(
            "[[fleet]]\nname = \"a\"\n[fleet.pool]\nmax = 30\nmin = 40\n[[fleet]]\nname = \"a\"\noverflow_after = \"1m\"\nqueue = \"other\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "fleet[0].pool.min",
                "fleet[1].name",
                "fleet[1].overflow_after"
            ]
        );
        assert_eq!(errors[0].1, "expected at most max = 30, got min = 40");

        let errors =
            SimSettings::from_toml("[[fleet]]\nname = \"a\"\n[fleet.pool]\nmax = \"ten\"\n")
                .unwrap_err();
        assert_eq!(errors[0].0, "fleet[0].pool.max");
        let errors = SimSettings::from_toml("[[fleet]]\nname = \"a\"\nbackend = \"mainframe\"\n")
            .unwrap_err();
        assert_eq!(errors[0].0, "fleet[0].backend");
    }
}
