//! The `elastic-ci` policy: buildkite-agent-scaler v1.12's rule as the Elastic CI Stack for
//! AWS runs it (reference elastic-ci-stack.md §1.3–1.5), with the stack's defaults, plus
//! the stack's instance-side scale-in: an instance whose agents have all been idle for
//! `scale_in_idle_period` terminates itself and decrements the desired count.
//!
//! Each step: agents required = scheduled + running (or waiting, when `include_waiting`
//! and waiting > running); instances = ceil(required / agents per instance); +1 instance
//! when fewer than `availability_threshold` of the expected agents are connected and the
//! group has converged; + min(instance_buffer, ceil(jobs / agents per instance)) only while
//! jobs exist; clamped to min and max; then routed against the current desired and
//! in-service counts to a scale-out (cooldown, `scale_out_factor` on the increase) or a
//! scale-in (only when `disable_scale_in` is off; cooldown, `scale_in_factor`).

use super::pool::Bounds;
use super::{Observation, ScaleDecision};
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// Settings of the `elastic-ci` policy; names and defaults are the Elastic CI Stack's
/// (stack v6.71.1 with scaler v1.12.0).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ElasticCiSettings {
    /// Count jobs behind wait steps instead of running jobs when there are more of them
    /// (stack `ScaleOutForWaitingJobs`, scaler `INCLUDE_WAITING`). Default false.
    #[serde(default)]
    pub include_waiting: bool,
    /// Extra instances added while any job exists, at most one per
    /// agents-per-instance jobs (stack `InstanceBuffer`). Default 0.
    #[serde(default)]
    pub instance_buffer: u32,
    /// Multiplies each increase of the desired count, rounding up; 0 means 1 (stack
    /// `ScaleOutFactor`). Default 1.0.
    #[serde(default = "one")]
    pub scale_out_factor: f64,
    /// Multiplies each decrease, rounding towards more scale-in; 0 means 1 (scaler
    /// `SCALE_IN_FACTOR`). Default 0.
    #[serde(default)]
    pub scale_in_factor: f64,
    /// No scale-out within this long of the last one (stack `ScaleOutCooldownPeriod`).
    /// Default "300s".
    #[serde(default = "five_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_out_cooldown: Duration,
    /// No scaler scale-in within this long of the last one (stack
    /// `ScaleInCooldownPeriod`). Default "3600s".
    #[serde(default = "one_hour", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_in_cooldown: Duration,
    /// Measure each cooldown from the later of the last scale-in and scale-out (scaler
    /// `SCALE_ONLY_AFTER_ALL_EVENT`). Default false.
    #[serde(default)]
    pub scale_only_after_all_event: bool,
    /// Below this fraction of expected agents connected, add one instance (scaler
    /// `AVAILABILITY_THRESHOLD`; 0 disables). Default 0.5.
    #[serde(default = "half")]
    pub availability_threshold: f64,
    /// Cap on the instances computed for jobs, 0 for none (scaler `MAX_INSTANCE_CAP`).
    /// Default 0.
    #[serde(default)]
    pub max_instance_cap: u32,
    /// The scaler never lowers the desired count; instances leave by their idle timeout
    /// (stack `DisableScaleIn`). Default true.
    #[serde(default = "yes")]
    pub disable_scale_in: bool,
    /// The scaler never raises the desired count (scaler `DISABLE_SCALE_OUT`). Default false.
    #[serde(default)]
    pub disable_scale_out: bool,
    /// An instance whose agents have all been idle this long terminates itself and
    /// decrements the desired count, unless that would go below min; "0s" disables (stack
    /// `ScaleInIdlePeriod`). Default "600s".
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_in_idle_period: Duration,
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ElasticCiSettings {
    fn default() -> Self {
        ElasticCiSettings {
            include_waiting: false,
            instance_buffer: 0,
            scale_out_factor: one(),
            scale_in_factor: 0.0,
            scale_out_cooldown: five_minutes(),
            scale_in_cooldown: one_hour(),
            scale_only_after_all_event: false,
            availability_threshold: half(),
            max_instance_cap: 0,
            disable_scale_in: true,
            disable_scale_out: false,
            scale_in_idle_period: ten_minutes(),
        }
    }
}

impl ElasticCiSettings {
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        for (name, value) in [
            ("scale_out_factor", self.scale_out_factor),
            ("scale_in_factor", self.scale_in_factor),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                errors.push((
                    format!("{path}.{name}"),
                    format!("expected a factor ≥ 0 (0 means 1), got {value}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.availability_threshold) {
            errors.push((
                format!("{path}.availability_threshold"),
                format!(
                    "expected a fraction from 0 to 1, got {}",
                    self.availability_threshold
                ),
            ));
        }
        errors
    }
}

/// The scaler's memory between steps: when it last scaled out and in.
#[derive(Debug, Clone, Default)]
pub(super) struct ElasticCi {
    settings: ElasticCiSettings,
    last_scale_out_ms: Option<i64>,
    last_scale_in_ms: Option<i64>,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl ElasticCi {
    pub(super) fn new(settings: ElasticCiSettings) -> Self {
        ElasticCi {
            settings,
            last_scale_out_ms: None,
            last_scale_in_ms: None,
        }
    }

    fn per_instance(&self, count: u32, agents_per_instance: u32) -> u32 {
        let instances = count.div_ceil(agents_per_instance.max(1));
        match self.settings.max_instance_cap {
            0 => instances,
            cap => instances.min(cap),
        }
    }

    fn in_cooldown(
        &self,
        mine: Option<i64>,
        other: Option<i64>,
        cooldown: Duration,
        now_ms: i64,
    ) -> bool {
        let Some(mut last) = mine else {
            return false;
        };
        if self.settings.scale_only_after_all_event {
            last = last.max(other.unwrap_or(i64::MIN));
        }
        now_ms - last < ms(cooldown)
    }

    pub(super) fn decide(
        &mut self,
        obs: &Observation,
        bounds: Bounds,
        agents_per_instance: u32,
    ) -> ScaleDecision {
        let s = &self.settings;
        let api = agents_per_instance.max(1);
        let jobs = obs.jobs;

        // Instances idle past the idle period terminate themselves and decrement desired
        // (the stack's `terminate-instance --should-decrement-desired-capacity`).
        let expired = if s.scale_in_idle_period.is_zero() {
            0
        } else {
            let period = ms(s.scale_in_idle_period);
            obs.idle_since_ms
                .iter()
                .filter(|&&since| obs.now_ms - since >= period)
                .count() as u32
        };
        let leaving = expired.min(obs.instances.desired.saturating_sub(bounds.min));
        let asg_desired = obs.instances.desired - leaving;
        let actual = obs.instances.in_service.saturating_sub(leaving);
        let agents_total = obs.agents.registered().saturating_sub(leaving * api);

        // scaling_calculator.go DesiredCount
        let counted = if s.include_waiting && jobs.waiting > jobs.running {
            jobs.waiting
        } else {
            jobs.running
        };
        let required = jobs.scheduled + counted;
        let mut desired = if required > 0 {
            self.per_instance(required, api)
        } else {
            0
        };
        let mut boosted = false;
        let instance_count = if actual == 0 { asg_desired } else { actual };
        let expected_agents = api * instance_count;
        let availability = if expected_agents > 0 {
            agents_total as f64 / expected_agents as f64
        } else {
            1.0
        };
        if required > 0
            && s.availability_threshold > 0.0
            && availability < s.availability_threshold
            && actual == asg_desired
        {
            let target = if asg_desired == 0 { 1 } else { asg_desired + 1 };
            if target > desired {
                desired = target;
                boosted = true;
            }
        }

        // scaler.go Run: the proportional buffer, only while jobs exist.
        let mut buffer = 0;
        if jobs.scheduled + jobs.running + jobs.waiting > 0 {
            let mut total = jobs.scheduled + jobs.running;
            if s.include_waiting {
                total += jobs.waiting;
            }
            buffer = self.per_instance(total, api).min(s.instance_buffer);
            desired += buffer;
        }
        let computed = desired;
        desired = desired.clamp(bounds.min, bounds.max.max(bounds.min));

        let mut why = format!(
            "elastic-ci: {} scheduled + {counted} running",
            jobs.scheduled
        );
        if s.include_waiting && counted == jobs.waiting && jobs.waiting > 0 {
            why = format!(
                "elastic-ci: {} scheduled + {counted} waiting",
                jobs.scheduled
            );
        }
        if api > 1 {
            why.push_str(&format!(" at {api} agents per instance"));
        }
        if buffer > 0 {
            why.push_str(&format!(", buffer {buffer}"));
        }
        if boosted {
            why.push_str(&format!(
                ", availability {:.0}% < {:.0}% (+1)",
                availability * 100.0,
                s.availability_threshold * 100.0
            ));
        }
        why.push_str(&format!(" → {computed}"));
        if computed != desired {
            why.push_str(&format!(" (clamped to {desired})"));
        }
        if leaving > 0 {
            why.push_str(&format!(
                "; {leaving} idle for {} terminated",
                super::human(s.scale_in_idle_period)
            ));
        }

        let now = obs.now_ms;
        let instance_count = if actual == 0 { asg_desired } else { actual };
        let new_desired = if desired > instance_count {
            if desired > asg_desired {
                self.scale_out(desired, asg_desired, bounds, now, &mut why)
            } else if desired < asg_desired {
                self.scale_in(desired, asg_desired, bounds, now, &mut why)
            } else {
                asg_desired
            }
        } else if asg_desired > desired || instance_count > desired {
            self.scale_in(desired, asg_desired, bounds, now, &mut why)
        } else {
            asg_desired
        };
        ScaleDecision {
            desired: new_desired,
            reason: why,
        }
    }

    fn scale_out(
        &mut self,
        desired: u32,
        current: u32,
        bounds: Bounds,
        now: i64,
        why: &mut String,
    ) -> u32 {
        let s = &self.settings;
        if s.disable_scale_out {
            why.push_str("; scale-out disabled");
            return current;
        }
        if self.in_cooldown(
            self.last_scale_out_ms,
            self.last_scale_in_ms,
            s.scale_out_cooldown,
            now,
        ) {
            why.push_str("; scale-out in cooldown");
            return current;
        }
        let mut target = desired;
        if s.scale_out_factor != 0.0 {
            let change = (desired - current) as f64;
            let factored = (change * s.scale_out_factor).ceil() as u32;
            target = (current + factored).min(bounds.max);
            if target != desired {
                why.push_str(&format!(
                    ", ×{} on the increase → {target}",
                    s.scale_out_factor
                ));
            }
        }
        self.last_scale_out_ms = Some(now);
        target
    }

    fn scale_in(
        &mut self,
        desired: u32,
        current: u32,
        bounds: Bounds,
        now: i64,
        why: &mut String,
    ) -> u32 {
        let s = &self.settings;
        if s.disable_scale_in {
            why.push_str(&format!("; the scaler never scales in, keeps {current}"));
            return current;
        }
        if self.in_cooldown(
            self.last_scale_in_ms,
            self.last_scale_out_ms,
            s.scale_in_cooldown,
            now,
        ) {
            why.push_str("; scale-in in cooldown");
            return current;
        }
        let mut target = desired as i64;
        if s.scale_in_factor != 0.0 {
            let change = desired as i64 - current as i64;
            let factored = (change as f64 * s.scale_in_factor).floor() as i64;
            target = (current as i64 + factored).max(bounds.min as i64);
            if target != desired as i64 {
                why.push_str(&format!(", ×{} on the decrease", s.scale_in_factor));
            }
        }
        self.last_scale_in_ms = Some(now);
        target.max(0) as u32
    }
}

#[cfg(test)]
mod tests {
    //! Cases from buildkite-agent-scaler @49c4145 `scaler/scaler_test.go`
    //! (`TestScalingOutWithoutError`, `TestScalingInWithoutError`,
    //! `TestAvailabilityBasedScaling`). Its test ASG has MinSize 0 and MaxSize 100, an
    //! actual count equal to desired unless given, and scale-in enabled.
    use super::*;
    use crate::scaling::{AgentCounts, InstanceCounts, JobCounts};

    const NOW: i64 = 1_767_571_200_000;
    const MINUTE: i64 = 60_000;

    struct Case {
        scheduled: u32,
        running: u32,
        waiting: u32,
        total_agents: u32,
        desired: u32,
        actual: Option<u32>,
        api: u32,
        settings: ElasticCiSettings,
        last_out: Option<i64>,
        last_in: Option<i64>,
        expected: u32,
    }

    /// The scaler test's defaults: every knob at the code's zero value.
    fn test_settings() -> ElasticCiSettings {
        ElasticCiSettings {
            scale_out_factor: 0.0,
            scale_in_factor: 0.0,
            scale_out_cooldown: Duration::ZERO,
            scale_in_cooldown: Duration::ZERO,
            availability_threshold: 0.0,
            disable_scale_in: false,
            scale_in_idle_period: Duration::ZERO,
            ..ElasticCiSettings::default()
        }
    }

    fn case(scheduled: u32, running: u32, total_agents: u32, desired: u32, expected: u32) -> Case {
        Case {
            scheduled,
            running,
            waiting: 0,
            total_agents,
            desired,
            actual: None,
            api: 1,
            settings: test_settings(),
            last_out: None,
            last_in: None,
            expected,
        }
    }

    fn run(c: Case) -> ScaleDecision {
        let actual = c.actual.unwrap_or(c.desired);
        let obs = Observation {
            now_ms: NOW,
            jobs: JobCounts {
                scheduled: c.scheduled,
                running: c.running,
                waiting: c.waiting,
            },
            agents: AgentCounts {
                busy: c.running.min(c.total_agents),
                idle: c.total_agents - c.running.min(c.total_agents),
                booting: 0,
            },
            instances: InstanceCounts {
                desired: c.desired,
                in_service: actual,
                booting: c.desired - actual,
            },
            arrivals_total: 0,
            idle_since_ms: &[],
            boot_time_ms: 0,
        };
        let mut policy = ElasticCi::new(c.settings);
        policy.last_scale_out_ms = c.last_out;
        policy.last_scale_in_ms = c.last_in;
        policy.decide(&obs, Bounds { min: 0, max: 100 }, c.api)
    }

    fn check(name: &str, c: Case) {
        let expected = c.expected;
        let decision = run(c);
        assert_eq!(decision.desired, expected, "{name}: {}", decision.reason);
    }

    #[test]
    fn scaling_out() {
        check(
            "basic scale out without waiting jobs",
            Case {
                waiting: 2,
                ..case(10, 2, 2, 2, 12)
            },
        );
        check(
            "basic scale out with waiting jobs",
            Case {
                waiting: 20,
                settings: ElasticCiSettings {
                    include_waiting: true,
                    ..test_settings()
                },
                ..case(8, 2, 2, 2, 28)
            },
        );
        check(
            "basic scale out with instance buffer",
            Case {
                waiting: 2,
                settings: ElasticCiSettings {
                    instance_buffer: 10,
                    ..test_settings()
                },
                ..case(10, 2, 2, 12, 22)
            },
        );
        check(
            "4 agents per instance",
            Case {
                api: 4,
                ..case(10, 2, 4, 1, 3)
            },
        );
        check(
            "2 agents per instance",
            Case {
                api: 2,
                ..case(10, 2, 2, 1, 6)
            },
        );
        check(
            "5 agents per instance, uneven",
            Case {
                api: 5,
                ..case(10, 2, 5, 1, 3)
            },
        );
        check(
            "20 agents per instance",
            Case {
                api: 20,
                ..case(10, 2, 20, 1, 1)
            },
        );
        let factor = |f: f64| ElasticCiSettings {
            scale_out_factor: f,
            ..test_settings()
        };
        check(
            "50% scale factor",
            Case {
                settings: factor(0.5),
                ..case(10, 2, 2, 2, 7)
            },
        );
        check(
            "10% scale factor",
            Case {
                settings: factor(0.1),
                ..case(10, 2, 11, 11, 12)
            },
        );
        check(
            "500% scale factor, capped by max",
            Case {
                settings: factor(5.0),
                ..case(10, 0, 0, 0, 50)
            },
        );
        let cooldown = ElasticCiSettings {
            scale_out_cooldown: Duration::from_secs(300),
            ..test_settings()
        };
        check(
            "scale-out in cooldown",
            Case {
                settings: cooldown.clone(),
                last_out: Some(NOW),
                ..case(10, 2, 4, 4, 4)
            },
        );
        check(
            "scale-out out of cooldown",
            Case {
                settings: cooldown.clone(),
                last_out: Some(NOW - 10 * MINUTE),
                ..case(10, 2, 4, 4, 12)
            },
        );
        check(
            "factor applies after cooldown",
            Case {
                settings: ElasticCiSettings {
                    scale_out_factor: 2.0,
                    ..cooldown
                },
                last_out: Some(NOW - 10 * MINUTE),
                ..case(10, 2, 4, 4, 20)
            },
        );
        check(
            "scale out disabled",
            Case {
                settings: ElasticCiSettings {
                    disable_scale_out: true,
                    ..test_settings()
                },
                api: 0,
                ..case(10, 2, 1, 1, 1)
            },
        );
        check(
            "no scale out after a recent scale in",
            Case {
                settings: ElasticCiSettings {
                    scale_in_cooldown: Duration::from_secs(300),
                    scale_out_cooldown: Duration::from_secs(120),
                    scale_only_after_all_event: true,
                    ..test_settings()
                },
                last_in: Some(NOW - MINUTE),
                last_out: Some(NOW - 10 * MINUTE),
                ..case(1, 0, 1, 1, 1)
            },
        );
    }

    #[test]
    fn scaling_in() {
        let cooldown = |factor: f64| ElasticCiSettings {
            scale_in_cooldown: Duration::from_secs(300),
            scale_in_factor: factor,
            ..test_settings()
        };
        check(
            "inside cooldown",
            Case {
                settings: cooldown(0.0),
                last_in: Some(NOW),
                ..case(0, 0, 10, 10, 10)
            },
        );
        check(
            "out of cooldown, factor 10%",
            Case {
                settings: cooldown(0.1),
                last_in: Some(NOW - 10 * MINUTE),
                ..case(0, 0, 10, 10, 9)
            },
        );
        check(
            "instance buffer",
            Case {
                settings: ElasticCiSettings {
                    instance_buffer: 10,
                    ..test_settings()
                },
                ..case(10, 5, 30, 30, 25)
            },
        );
        check(
            "500% factor scales all the way down",
            Case {
                settings: ElasticCiSettings {
                    scale_in_factor: 5.0,
                    ..test_settings()
                },
                ..case(10, 0, 20, 20, 0)
            },
        );
        check(
            "rounds down to reach zero",
            Case {
                settings: ElasticCiSettings {
                    scale_in_factor: 0.1,
                    ..test_settings()
                },
                ..case(0, 0, 1, 1, 0)
            },
        );
        check(
            "scale in disabled",
            Case {
                settings: ElasticCiSettings {
                    disable_scale_in: true,
                    ..test_settings()
                },
                api: 0,
                ..case(0, 0, 1, 1, 1)
            },
        );
        check(
            "no scale in after a recent scale out",
            Case {
                settings: ElasticCiSettings {
                    scale_out_cooldown: Duration::from_secs(300),
                    scale_in_cooldown: Duration::from_secs(120),
                    scale_only_after_all_event: true,
                    ..test_settings()
                },
                last_out: Some(NOW - MINUTE),
                last_in: Some(NOW - 10 * MINUTE),
                ..case(0, 0, 3, 3, 3)
            },
        );
    }

    #[test]
    fn availability_boost() {
        let threshold = |t: f64| ElasticCiSettings {
            availability_threshold: t,
            ..test_settings()
        };
        let avail = |desired, actual, agents, scheduled, t, expected| Case {
            api: 4,
            actual: Some(actual),
            settings: threshold(t),
            ..case(
                scheduled,
                if scheduled == 5 { 2 } else { 0 },
                agents,
                desired,
                expected,
            )
        };
        check("low availability, converged: +1", avail(2, 2, 3, 5, 0.5, 3));
        check(
            "low availability while converging: wait",
            avail(2, 1, 3, 5, 0.5, 2),
        );
        check("good availability", avail(2, 2, 7, 5, 0.5, 2));
        check("threshold 0 disables", avail(2, 2, 2, 5, 0.0, 2));
        check("from zero instances", avail(0, 0, 0, 5, 0.5, 2));
        check(
            "boost above a lower job-based need",
            avail(3, 3, 2, 2, 0.5, 4),
        );
        check("job-based need above the boost", avail(2, 2, 2, 20, 0.5, 5));
    }

    #[test]
    fn the_reason_reads_like_the_anchor() {
        let decision = run(Case {
            waiting: 2,
            settings: ElasticCiSettings {
                instance_buffer: 10,
                ..test_settings()
            },
            ..case(10, 2, 2, 12, 22)
        });
        assert_eq!(
            decision.reason,
            "elastic-ci: 10 scheduled + 2 running, buffer 10 → 22"
        );
    }

    /// The stack's defaults (§2.1): DisableScaleIn, so the desired count falls only as
    /// instances idle for ScaleInIdlePeriod (600 s) terminate themselves; and a 300 s
    /// scale-out cooldown holds a second wave.
    #[test]
    fn stack_defaults_idle_timeout_and_cooldown() {
        let mut policy = ElasticCi::new(ElasticCiSettings::default());
        let idle = [NOW - 11 * MINUTE, NOW - 9 * MINUTE, NOW - 20 * MINUTE];
        let obs = Observation {
            now_ms: NOW,
            jobs: JobCounts::default(),
            agents: AgentCounts {
                busy: 2,
                idle: 3,
                booting: 0,
            },
            instances: InstanceCounts {
                desired: 5,
                in_service: 5,
                booting: 0,
            },
            arrivals_total: 0,
            idle_since_ms: &idle,
            boot_time_ms: 0,
        };
        let bounds = Bounds { min: 0, max: 10 };
        assert_eq!(policy.decide(&obs, bounds, 1).desired, 3);
        assert_eq!(
            policy.decide(&obs, Bounds { min: 4, max: 10 }, 1).desired,
            4
        );

        let wave = |scheduled, desired| Observation {
            jobs: JobCounts {
                scheduled,
                running: desired,
                waiting: 0,
            },
            agents: AgentCounts {
                busy: desired,
                idle: 0,
                booting: 0,
            },
            instances: InstanceCounts {
                desired,
                in_service: desired,
                booting: 0,
            },
            idle_since_ms: &[],
            ..obs
        };
        assert_eq!(policy.decide(&wave(4, 2), bounds, 1).desired, 6);
        let later = Observation {
            now_ms: NOW + 4 * MINUTE,
            ..wave(3, 6)
        };
        assert_eq!(policy.decide(&later, bounds, 1).desired, 6, "in cooldown");
        let after = Observation {
            now_ms: NOW + 5 * MINUTE,
            ..wave(3, 6)
        };
        assert_eq!(policy.decide(&after, bounds, 1).desired, 9);
    }
}
