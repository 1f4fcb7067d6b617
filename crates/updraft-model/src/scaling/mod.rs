//! Scaling policies for warm pools: pure functions of settings, memory and an
//! `Observation`, returning how many instances a pool should have and why. Time comes in
//! with the observation; nothing here reads a clock or does I/O, so the scheduler's pool
//! mode and `updraft sim` run the very same code.
//!
//! - `elastic-ci`: buildkite-agent-scaler v1.12's rule with the Elastic CI Stack's defaults;
//! - `hpa`: the agent-stack-k8s prototype's HorizontalPodAutoscalers;
//! - `updraft`: demand plus the recent arrivals over one boot time, with quick scale-in;
//! - a scheduled minimum (cron-like periods) under any of them.
//!
//! The policy only says how many; which agents go is the pool's choice (idle ones only,
//! longest idle first).

mod elastic_ci;
mod hpa;
mod observation;
mod pool;
mod schedule;
mod updraft;

pub use elastic_ci::ElasticCiSettings;
pub use hpa::HpaSettings;
pub use observation::{AgentCounts, InstanceCounts, JobCounts, Observation, ScaleDecision};
pub use pool::{Bounds, PolicySettings, PoolSettings, ScalingPolicy};
pub use schedule::{scheduled_minimum, Days, SchedulePeriod, TimeOfDay, UtcOffset};
pub use updraft::UpdraftSettings;

use std::time::Duration;

/// A duration as settings write it ("30s", "10m").
fn human(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}
