//! The `updraft` policy: keep what the jobs in hand need, plus what demand has recently
//! risen by within one boot time, and let idle instances go soon after they fall idle.
//!
//! Each step: demand = busy agents + scheduled jobs (completions already net out of it).
//! For every step of the last `burst_memory`, the rise = the highest demand within one
//! lead time (the pool's measured boot time) after that step, minus the demand at it;
//! headroom = the `headroom_quantile` of those rises — a forecast, from the recent past
//! only, of how many more agents than now will be wanted before a new instance could boot.
//! target = ceil((demand + headroom) / agents per instance). Above the target, an instance
//! idle for `idle_grace` is stopped; below it, instances are launched at once (no cooldown,
//! no stabilization window). Nothing knows the future.

use super::pool::Bounds;
use super::{human, Observation, ScaleDecision};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::VecDeque;
use std::time::Duration;

/// Settings of the `updraft` policy.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct UpdraftSettings {
    /// How far ahead to provide for arrivals; default: the pool's measured boot time, i.e.
    /// how long a job would wait for a new instance.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub lead_time: Option<Duration>,
    /// How far back rises of demand are remembered when sizing the headroom. Default "30m".
    #[serde(default = "thirty_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub burst_memory: Duration,
    /// Which quantile of the recent rises of demand within one lead time to keep as
    /// headroom (1 keeps the largest rise; lower trades wait for idle time). Default 0.8.
    #[serde(default = "headroom_quantile")]
    pub headroom_quantile: f64,
    /// An idle instance above the target is stopped once it has been idle this long.
    /// Default "60s".
    #[serde(default = "one_minute", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_grace: Duration,
}

fn thirty_minutes() -> Duration {
    Duration::from_secs(1800)
}
fn headroom_quantile() -> f64 {
    0.8
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}

impl Default for UpdraftSettings {
    fn default() -> Self {
        UpdraftSettings {
            lead_time: None,
            burst_memory: thirty_minutes(),
            headroom_quantile: headroom_quantile(),
            idle_grace: one_minute(),
        }
    }
}

impl UpdraftSettings {
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if !(self.headroom_quantile > 0.0 && self.headroom_quantile <= 1.0) {
            errors.push((
                format!("{path}.headroom_quantile"),
                format!(
                    "expected a fraction above 0, at most 1, got {}",
                    self.headroom_quantile
                ),
            ));
        }
        if let Some(lead) = self.lead_time {
            if lead > self.burst_memory {
                errors.push((
                    format!("{path}.lead_time"),
                    format!(
                        "expected at most burst_memory = {}, got {}",
                        human(self.burst_memory),
                        human(lead)
                    ),
                ));
            }
        }
        errors
    }
}

/// The policy's memory: demand (busy agents + scheduled jobs) at each step over the
/// burst memory.
#[derive(Debug, Clone, Default)]
pub(super) struct Updraft {
    settings: UpdraftSettings,
    /// (step time, demand), oldest first.
    demand: VecDeque<(i64, u32)>,
    growth_scratch: Vec<u32>,
}

impl Updraft {
    pub(super) fn new(settings: UpdraftSettings) -> Self {
        Updraft {
            settings,
            ..Updraft::default()
        }
    }

    fn remember(&mut self, now_ms: i64, demand: u32) {
        self.demand.push_back((now_ms, demand));
        let memory = self.settings.burst_memory.as_millis() as i64;
        while self
            .demand
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - memory)
        {
            self.demand.pop_front();
        }
    }

    /// For each remembered step, how far demand rose above it within one lead time; the
    /// `quantile` of those rises over the whole memory, a step not yet seen (early in a
    /// run) counting as no rise.
    fn rise(&mut self, lead_ms: i64, quantile: f64) -> u32 {
        let n = self.demand.len();
        self.growth_scratch.clear();
        // Indices ahead of step i within one lead time, by falling demand: the front is
        // the highest demand reached.
        let mut ahead: VecDeque<usize> = VecDeque::new();
        let mut j = 0;
        for i in 0..n {
            let (t, d) = self.demand[i];
            while j < n && self.demand[j].0 <= t + lead_ms {
                while ahead
                    .back()
                    .is_some_and(|&k| self.demand[k].1 <= self.demand[j].1)
                {
                    ahead.pop_back();
                }
                ahead.push_back(j);
                j += 1;
            }
            while ahead.front().is_some_and(|&k| k < i) {
                ahead.pop_front();
            }
            let peak = ahead.front().map_or(d, |&k| self.demand[k].1);
            self.growth_scratch.push(peak.saturating_sub(d));
        }
        let step_ms = match (self.demand.front(), self.demand.back()) {
            (Some(first), Some(last)) if n > 1 => ((last.0 - first.0) / (n as i64 - 1)).max(1),
            _ => return 0,
        };
        let slots = n.max(self.settings.burst_memory.as_millis() as usize / step_ms as usize);
        let rank = ((quantile * slots as f64).ceil() as usize).clamp(1, slots);
        let unseen = slots - n;
        if rank <= unseen {
            return 0;
        }
        self.growth_scratch.sort_unstable();
        self.growth_scratch[rank - unseen - 1]
    }

    pub(super) fn decide(
        &mut self,
        obs: &Observation,
        bounds: Bounds,
        agents_per_instance: u32,
    ) -> ScaleDecision {
        let api = agents_per_instance.max(1);
        let lead_ms = self
            .settings
            .lead_time
            .map_or(obs.boot_time_ms, |d| d.as_millis() as i64)
            .max(1);
        let demand = obs.agents.busy + obs.jobs.scheduled;
        self.remember(obs.now_ms, demand);
        let headroom = self.rise(lead_ms, self.settings.headroom_quantile);
        let target = (demand + headroom).div_ceil(api);

        let live = obs.instances_live();
        let grace = self.settings.idle_grace.as_millis() as i64;
        let stale = obs
            .idle_since_ms
            .iter()
            .filter(|&&since| obs.now_ms - since >= grace)
            .count() as u32;
        let keep = target.max(live.saturating_sub(stale));
        let max = bounds.max.max(bounds.min);
        let desired = keep.clamp(bounds.min, max);
        let mut reason = format!(
            "updraft: {} busy + {} scheduled + headroom {headroom} (p{:.0} rise within {})",
            obs.agents.busy,
            obs.jobs.scheduled,
            self.settings.headroom_quantile * 100.0,
            human(Duration::from_millis(lead_ms as u64))
        );
        if api > 1 {
            reason.push_str(&format!(" at {api} agents per instance"));
        }
        reason.push_str(&format!(" → {target}"));
        if keep > target {
            reason.push_str(&format!(
                ", keeps {} idle under {}",
                keep - target,
                human(self.settings.idle_grace)
            ));
        }
        if desired != keep {
            reason.push_str(&format!(" (clamped to {desired})"));
        }
        ScaleDecision { desired, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{AgentCounts, InstanceCounts, JobCounts};

    const T0: i64 = 1_767_571_200_000;
    const BOUNDS: Bounds = Bounds { min: 0, max: 100 };

    fn obs<'a>(
        at_s: i64,
        scheduled: u32,
        busy: u32,
        live: u32,
        idle_since: &'a [i64],
    ) -> Observation<'a> {
        Observation {
            now_ms: T0 + at_s * 1000,
            jobs: JobCounts {
                scheduled,
                running: busy,
                waiting: 0,
            },
            agents: AgentCounts {
                busy,
                idle: live - busy,
                booting: 0,
            },
            instances: InstanceCounts {
                desired: live,
                in_service: live,
                booting: 0,
            },
            arrivals_total: 0,
            idle_since_ms: idle_since,
            boot_time_ms: 60_000,
        }
    }

    #[test]
    fn scales_out_to_the_jobs_at_once_and_keeps_the_rise_it_saw_as_headroom() {
        let mut policy = Updraft::new(UpdraftSettings::default());
        assert_eq!(policy.decide(&obs(0, 0, 0, 0, &[]), BOUNDS, 1).desired, 0);
        let d = policy.decide(&obs(10, 12, 0, 0, &[]), BOUNDS, 1);
        assert_eq!(d.desired, 12, "{}", d.reason);
        // Demand rose by 12 within a minute at one step of the 180 a 30-minute memory
        // holds: far below the 0.8 quantile, so no headroom.
        let d = policy.decide(&obs(20, 0, 12, 12, &[]), BOUNDS, 1);
        assert_eq!(d.desired, 12, "{}", d.reason);
        // Rising by 12 at one step in five: at the 0.8 quantile when memory holds only them.
        let memory = Duration::from_secs(50);
        let mut policy = Updraft::new(UpdraftSettings {
            burst_memory: memory,
            lead_time: Some(Duration::from_secs(60)),
            ..UpdraftSettings::default()
        });
        for (at, scheduled, busy) in [(0, 0, 0), (10, 0, 0), (20, 0, 0), (30, 12, 0)] {
            policy.decide(&obs(at, scheduled, busy, busy, &[]), BOUNDS, 1);
        }
        let d = policy.decide(&obs(40, 0, 12, 12, &[]), BOUNDS, 1);
        assert_eq!(d.desired, 24, "{}", d.reason);
        assert!(
            d.reason
                .starts_with("updraft: 12 busy + 0 scheduled + headroom 12 (p80 rise within 1m)"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn idle_instances_above_the_target_go_after_the_grace() {
        let mut policy = Updraft::new(UpdraftSettings::default());
        let idle = [T0 + 50_000, T0 + 20_000, T0 - 100_000];
        let d = policy.decide(&obs(100, 0, 2, 5, &idle), BOUNDS, 1);
        assert_eq!(d.desired, 3, "{}", d.reason);
        assert!(d.reason.contains("keeps 1 idle under 1m"), "{}", d.reason);
        let d = policy.decide(&obs(100, 3, 0, 0, &[]), BOUNDS, 4);
        assert_eq!(d.desired, 1, "3 jobs fit one instance of 4 agents");
    }
}
