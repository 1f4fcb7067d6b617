//! The `hpa` policy: the agent-stack-k8s prototype's two HorizontalPodAutoscalers on one
//! agent Deployment (reference agent-stack-k8s.md §7; manifests
//! `k8s/buildkite/agent-scale-{up,down}-policy.yaml` at 8efa1fa), computed the way the
//! Kubernetes HPA controller computes them.
//!
//! Scale-up: metric `scheduled_jobs_count`, target value 1; desired = ceil(ready × scheduled
//! / 1) unless within the 10 % tolerance; the minimum recommendation of the last 30 s wins;
//! at most max(+7 pods, +100 %) per 30 s. Scale-down: metric `busy_agent_percentage`,
//! target 99; desired = ceil(ready × busy% / 99); the maximum recommendation of the last
//! 20 s wins; at most −1 pod per 10 s. Both within min..max replicas (1 to 30 in the
//! prototype). The README: "scale up by either double or add 7 agents whichever is greater
//! every 30 seconds … scale down 1 box every 20 seconds".

use super::pool::Bounds;
use super::{Observation, ScaleDecision};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::VecDeque;
use std::time::Duration;

/// Settings of the `hpa` policy; defaults are the prototype's manifests. One replica is one
/// instance (a pod running `agents_per_instance` agents, normally 1).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HpaSettings {
    /// Target value of the scheduled-jobs metric for the scale-up autoscaler. Default 1.
    #[serde(default = "one")]
    pub scheduled_jobs_target: f64,
    /// Target value of the busy-agent percentage for the scale-down autoscaler. Default 99.
    #[serde(default = "ninety_nine")]
    pub busy_percentage_target: f64,
    /// No change while metric / target is within this of 1 (the controller's
    /// `--horizontal-pod-autoscaler-tolerance`). Default 0.1.
    #[serde(default = "tenth")]
    pub tolerance: f64,
    /// Pods the scale-up may add per `scale_up_period` (a `Pods` policy). Default 7.
    #[serde(default = "seven")]
    pub scale_up_pods: u32,
    /// Percent of the replicas the scale-up may add per `scale_up_period` (a `Percent`
    /// policy; the larger of the two applies). Default 100.
    #[serde(default = "hundred")]
    pub scale_up_percent: u32,
    /// The period both scale-up policies count over. Default "30s".
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_up_period: Duration,
    /// Scale up only to the lowest recommendation of this window. Default "30s".
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_up_stabilization: Duration,
    /// Pods the scale-down may remove per `scale_down_period`. Default 1.
    #[serde(default = "one_pod")]
    pub scale_down_pods: u32,
    /// The period the scale-down policy counts over. Default "10s".
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_down_period: Duration,
    /// Scale down only to the highest recommendation of this window. Default "20s".
    #[serde(default = "twenty_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_down_stabilization: Duration,
}

fn one() -> f64 {
    1.0
}
fn ninety_nine() -> f64 {
    99.0
}
fn tenth() -> f64 {
    0.1
}
fn seven() -> u32 {
    7
}
fn hundred() -> u32 {
    100
}
fn one_pod() -> u32 {
    1
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn twenty_seconds() -> Duration {
    Duration::from_secs(20)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

impl Default for HpaSettings {
    fn default() -> Self {
        HpaSettings {
            scheduled_jobs_target: one(),
            busy_percentage_target: ninety_nine(),
            tolerance: tenth(),
            scale_up_pods: seven(),
            scale_up_percent: hundred(),
            scale_up_period: thirty_seconds(),
            scale_up_stabilization: thirty_seconds(),
            scale_down_pods: one_pod(),
            scale_down_period: ten_seconds(),
            scale_down_stabilization: twenty_seconds(),
        }
    }
}

impl HpaSettings {
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        for (name, value) in [
            ("scheduled_jobs_target", self.scheduled_jobs_target),
            ("busy_percentage_target", self.busy_percentage_target),
        ] {
            if !(value.is_finite() && value > 0.0) {
                errors.push((
                    format!("{path}.{name}"),
                    format!("expected a target above 0, got {value}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            errors.push((
                format!("{path}.tolerance"),
                format!(
                    "expected a fraction from 0 to below 1, got {}",
                    self.tolerance
                ),
            ));
        }
        for (name, value) in [
            ("scale_up_period", self.scale_up_period),
            ("scale_down_period", self.scale_down_period),
        ] {
            if value.is_zero() {
                errors.push((
                    format!("{path}.{name}"),
                    "expected a period above 0s".into(),
                ));
            }
        }
        errors
    }
}

/// One autoscaler's memory: its recent recommendations (for the stabilization window) and
/// the scale events it made (for the rate policies).
#[derive(Debug, Clone, Default)]
struct Autoscaler {
    recommendations: VecDeque<(i64, u32)>,
    events: VecDeque<(i64, i64)>,
}

impl Autoscaler {
    fn remember(&mut self, now_ms: i64, recommendation: u32, window_ms: i64) {
        self.recommendations.push_back((now_ms, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - window_ms)
        {
            self.recommendations.pop_front();
        }
    }

    /// Replicas changed by this autoscaler within the last `period_ms`.
    fn changed_within(&mut self, now_ms: i64, period_ms: i64) -> i64 {
        while self
            .events
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - period_ms)
        {
            self.events.pop_front();
        }
        self.events.iter().map(|&(_, d)| d).sum()
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Hpa {
    settings: HpaSettings,
    up: Autoscaler,
    down: Autoscaler,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Hpa {
    pub(super) fn new(settings: HpaSettings) -> Self {
        Hpa {
            settings,
            ..Hpa::default()
        }
    }

    /// The replica calculator for a plain (Value) external metric: no change within the
    /// tolerance, else ceil(ratio × ready pods).
    fn recommend(&self, current: u32, ready: u32, ratio: f64) -> u32 {
        if (1.0 - ratio).abs() <= self.settings.tolerance {
            current
        } else {
            (ratio * ready as f64).ceil() as u32
        }
    }

    pub(super) fn decide(&mut self, obs: &Observation, bounds: Bounds) -> ScaleDecision {
        let s = &self.settings;
        let now = obs.now_ms;
        let current = obs.instances.desired;
        let ready = obs.instances.in_service;
        let max = bounds.max.max(bounds.min);

        // A Deployment at 0 replicas is not autoscaled; min brings it back.
        if current == 0 {
            let desired = bounds.min.min(max);
            return ScaleDecision {
                desired,
                reason: format!("hpa: 0 replicas, raised to min {desired}"),
            };
        }

        // Both autoscalers recommend every step, each into its own window. With no agent
        // connected the busy percentage has no value and the scale-down autoscaler skips.
        let scheduled = obs.jobs.scheduled;
        let up_raw = self
            .recommend(current, ready, scheduled as f64 / s.scheduled_jobs_target)
            .clamp(bounds.min, max);
        self.up.remember(now, up_raw, ms(s.scale_up_stabilization));
        let registered = obs.agents.registered();
        let busy_percent = (100 * obs.agents.busy).checked_div(registered);
        if let Some(busy) = busy_percent {
            let down_raw = self
                .recommend(current, ready, busy as f64 / s.busy_percentage_target)
                .clamp(bounds.min, max);
            self.down
                .remember(now, down_raw, ms(s.scale_down_stabilization));
        }

        if let Some(desired) = self.scale_up(current, now, max) {
            return ScaleDecision {
                desired,
                reason: format!(
                    "hpa: {scheduled} scheduled on {ready} ready, up by at most max(+{}, +{}%) per {}s → {desired}",
                    self.settings.scale_up_pods,
                    self.settings.scale_up_percent,
                    self.settings.scale_up_period.as_secs(),
                ),
            };
        }
        if let Some(busy) = busy_percent {
            if let Some(desired) = self.scale_down(current, now, bounds.min) {
                return ScaleDecision {
                    desired,
                    reason: format!(
                        "hpa: {busy}% busy of {registered} agents, down by at most {} per {}s → {desired}",
                        self.settings.scale_down_pods,
                        self.settings.scale_down_period.as_secs()
                    ),
                };
            }
        }
        let busy = busy_percent.map_or("no agent connected".to_string(), |b| format!("{b}% busy"));
        ScaleDecision {
            desired: current.clamp(bounds.min, max),
            reason: format!("hpa: {scheduled} scheduled, {busy}, holds at {current}"),
        }
    }

    /// The scale-up autoscaler: the lowest recommendation of its window, if above the
    /// current replicas, limited by the larger of its two rate policies.
    fn scale_up(&mut self, current: u32, now: i64, max: u32) -> Option<u32> {
        let s = &self.settings;
        let stabilized = self.up.recommendations.iter().map(|&(_, r)| r).min()?;
        if stabilized <= current {
            return None;
        }
        let added = self.up.changed_within(now, ms(s.scale_up_period));
        let start = (current as i64 - added).max(0) as u32;
        let by_pods = start + s.scale_up_pods;
        let by_percent = (start as f64 * (1.0 + s.scale_up_percent as f64 / 100.0)).ceil() as u32;
        let desired = stabilized.min(by_pods.max(by_percent)).min(max);
        (desired > current).then(|| {
            self.up.events.push_back((now, (desired - current) as i64));
            desired
        })
    }

    /// The scale-down autoscaler: the highest recommendation of its window, if below the
    /// current replicas, limited by its rate policy.
    fn scale_down(&mut self, current: u32, now: i64, min: u32) -> Option<u32> {
        let s = &self.settings;
        let stabilized = self.down.recommendations.iter().map(|&(_, r)| r).max()?;
        if stabilized >= current {
            return None;
        }
        let removed = -self.down.changed_within(now, ms(s.scale_down_period));
        let start = current as i64 + removed;
        let limit = (start - s.scale_down_pods as i64).max(0) as u32;
        let desired = stabilized.max(limit).max(min);
        (desired < current).then(|| {
            self.down
                .events
                .push_back((now, desired as i64 - current as i64));
            desired
        })
    }
}

#[cfg(test)]
mod tests {
    //! Cases from the prototype's README ("scale up by either double or add 7 agents
    //! whichever is greater every 30 seconds … scale down 1 box every 20 seconds") and its
    //! manifests at agent-stack-k8s 8efa1fa (`agent-scale-up-policy.yaml`: Pods 7 / Percent
    //! 100 per 30 s, stabilization 30 s, target 1; `agent-scale-down-policy.yaml`: Pods 1
    //! per 10 s, stabilization 20 s, target 99; both `minReplicas: 1`, `maxReplicas: 30`).
    use super::*;
    use crate::scaling::{AgentCounts, InstanceCounts, JobCounts};

    const T0: i64 = 1_767_571_200_000;
    const PROTOTYPE: Bounds = Bounds { min: 1, max: 30 };

    fn obs(
        at_s: i64,
        scheduled: u32,
        replicas: u32,
        ready: u32,
        busy: u32,
    ) -> Observation<'static> {
        Observation {
            now_ms: T0 + at_s * 1000,
            jobs: JobCounts {
                scheduled,
                running: busy,
                waiting: 0,
            },
            agents: AgentCounts {
                busy,
                idle: ready - busy,
                booting: replicas - ready,
            },
            instances: InstanceCounts {
                desired: replicas,
                in_service: ready,
                booting: replicas - ready,
            },
            arrivals_total: 0,
            idle_since_ms: &[],
            boot_time_ms: 0,
        }
    }

    #[test]
    fn scales_up_by_the_larger_of_seven_or_double_per_30s_to_30() {
        let mut hpa = Hpa::new(HpaSettings::default());
        let mut replicas = 1;
        let mut seen = vec![replicas];
        for step in 0..10 {
            let decision = hpa.decide(&obs(step * 10, 40, replicas, 1, 1), PROTOTYPE);
            if decision.desired != replicas {
                replicas = decision.desired;
                seen.push(replicas);
            }
        }
        // +7 from 1, then ×2 from 8, then capped at maxReplicas.
        assert_eq!(seen, vec![1, 8, 16, 30]);
    }

    #[test]
    fn one_scheduled_job_is_on_target_and_a_short_spike_is_stabilized_away() {
        let mut hpa = Hpa::new(HpaSettings::default());
        assert_eq!(hpa.decide(&obs(0, 1, 10, 10, 10), PROTOTYPE).desired, 10);
        let mut hpa = Hpa::new(HpaSettings::default());
        hpa.decide(&obs(0, 0, 10, 10, 10), PROTOTYPE);
        hpa.decide(&obs(10, 0, 10, 10, 10), PROTOTYPE);
        // The lowest recommendation of the last 30 s is still 10.
        assert_eq!(hpa.decide(&obs(20, 5, 10, 10, 10), PROTOTYPE).desired, 10);
        assert_eq!(hpa.decide(&obs(30, 5, 10, 10, 10), PROTOTYPE).desired, 10);
        assert_eq!(hpa.decide(&obs(40, 5, 10, 10, 10), PROTOTYPE).desired, 20);
    }

    #[test]
    fn scales_down_one_at_a_time_after_the_20s_window_and_never_below_one() {
        let mut hpa = Hpa::new(HpaSettings::default());
        assert_eq!(hpa.decide(&obs(0, 0, 10, 10, 10), PROTOTYPE).desired, 10);
        assert_eq!(hpa.decide(&obs(10, 0, 10, 10, 2), PROTOTYPE).desired, 10);
        assert_eq!(hpa.decide(&obs(20, 0, 10, 10, 2), PROTOTYPE).desired, 9);
        let mut replicas = 9;
        let mut times = Vec::new();
        for step in 3..20 {
            let d = hpa.decide(&obs(step * 10, 0, replicas, replicas, 0), PROTOTYPE);
            if d.desired < replicas {
                assert_eq!(replicas - d.desired, 1, "{}", d.reason);
                times.push(step * 10);
            }
            replicas = d.desired;
        }
        assert_eq!(replicas, 1);
        assert_eq!(times, (3..11).map(|s| s * 10).collect::<Vec<_>>());
    }

    #[test]
    fn with_no_agent_connected_the_scale_down_holds() {
        let mut hpa = Hpa::new(HpaSettings::default());
        let d = hpa.decide(&obs(0, 1, 5, 0, 0), PROTOTYPE);
        assert_eq!(d.desired, 5, "{}", d.reason);
    }
}
