//! A pool's settings (bounds, step interval, policy, scheduled minimum) and
//! `ScalingPolicy`, the one thing the scheduler's pool mode and `updraft sim` call each
//! step: settings plus memory in, an observation in, a `ScaleDecision` out.

use super::elastic_ci::{ElasticCi, ElasticCiSettings};
use super::hpa::{Hpa, HpaSettings};
use super::schedule::{scheduled_minimum, SchedulePeriod};
use super::updraft::{Updraft, UpdraftSettings};
use super::{human, Observation, ScaleDecision};
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// A warm pool: long-lived agents on instances, as many as its policy decides.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PoolSettings {
    /// The fewest instances kept, whatever the policy says (an ASG's MinSize, an HPA's
    /// minReplicas). Default 0.
    #[serde(default)]
    pub min: u32,
    /// The most instances the policy may ask for (MaxSize, maxReplicas). Required.
    pub max: u32,
    /// Agents each instance runs (the Elastic CI Stack's `AgentsPerInstance`); an instance
    /// is stopped only when all of them are idle. Default 1.
    #[serde(default = "one")]
    pub agents_per_instance: u32,
    /// How often the policy decides (the agent scaler polls every 10 s). Default "10s".
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// The scaling policy and its settings. Default `{ kind = "updraft" }`.
    #[serde(default)]
    pub policy: PolicySettings,
    /// Scheduled minimums: during each period the pool keeps at least its `min`
    /// instances, with any policy. Default none.
    #[serde(default)]
    pub schedule: Vec<SchedulePeriod>,
}

fn one() -> u32 {
    1
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Which rule sizes the pool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicySettings {
    /// buildkite-agent-scaler v1.12's rule as the Elastic CI Stack runs it.
    ElasticCi(ElasticCiSettings),
    /// The agent-stack-k8s prototype's two HorizontalPodAutoscalers.
    Hpa(HpaSettings),
    /// Updraft's own: demand plus the recent arrivals over one boot time.
    Updraft(UpdraftSettings),
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings::Updraft(UpdraftSettings::default())
    }
}

impl PolicySettings {
    /// The policy's name as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicySettings::ElasticCi(_) => "elastic-ci",
            PolicySettings::Hpa(_) => "hpa",
            PolicySettings::Updraft(_) => "updraft",
        }
    }
}

impl PoolSettings {
    /// A pool with `policy`'s default settings.
    pub fn new(min: u32, max: u32, policy: PolicySettings) -> Self {
        PoolSettings {
            min,
            max,
            agents_per_instance: 1,
            interval: ten_seconds(),
            policy,
            schedule: Vec::new(),
        }
    }

    /// Every cross-field problem, each with the path of the field to change (`path` is the
    /// pool's own, e.g. `fleet[2].pool`).
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.max == 0 {
            errors.push((format!("{path}.max"), "expected at least 1, got 0".into()));
        }
        if self.min > self.max {
            errors.push((
                format!("{path}.min"),
                format!(
                    "expected at most max = {}, got min = {}",
                    self.max, self.min
                ),
            ));
        }
        if self.agents_per_instance == 0 {
            errors.push((
                format!("{path}.agents_per_instance"),
                "expected at least 1, got 0".into(),
            ));
        }
        if self.interval < Duration::from_secs(1) {
            errors.push((
                format!("{path}.interval"),
                format!("expected at least 1s, got {}", human(self.interval)),
            ));
        }
        let policy_path = format!("{path}.policy");
        match &self.policy {
            PolicySettings::ElasticCi(s) => errors.extend(s.validate(&policy_path)),
            PolicySettings::Hpa(s) => {
                if self.min == 0 {
                    errors.push((
                        format!("{path}.min"),
                        "expected at least 1 with the hpa policy (a HorizontalPodAutoscaler does not scale from 0 replicas), got 0".into(),
                    ));
                }
                errors.extend(s.validate(&policy_path));
            }
            PolicySettings::Updraft(s) => errors.extend(s.validate(&policy_path)),
        }
        for (i, period) in self.schedule.iter().enumerate() {
            let period_path = format!("{path}.schedule[{i}]");
            errors.extend(period.validate(&period_path));
            if period.min > self.max {
                errors.push((
                    format!("{period_path}.min"),
                    format!(
                        "expected at most max = {}, got min = {}",
                        self.max, period.min
                    ),
                ));
            }
        }
        errors
    }
}

/// The instance bounds a policy works within at one step: the pool's min raised by any
/// scheduled minimum, and its max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone)]
enum Rule {
    ElasticCi(ElasticCi),
    Hpa(Hpa),
    Updraft(Updraft),
}

/// A pool's policy with its memory between steps (cooldowns, windows, averages). Call
/// `decide` every `interval` with a fresh observation.
#[derive(Debug, Clone)]
pub struct ScalingPolicy {
    pool: PoolSettings,
    rule: Rule,
}

impl ScalingPolicy {
    pub fn new(pool: PoolSettings) -> Self {
        let rule = match &pool.policy {
            PolicySettings::ElasticCi(s) => Rule::ElasticCi(ElasticCi::new(s.clone())),
            PolicySettings::Hpa(s) => Rule::Hpa(Hpa::new(s.clone())),
            PolicySettings::Updraft(s) => Rule::Updraft(Updraft::new(s.clone())),
        };
        ScalingPolicy { pool, rule }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.pool
    }

    /// How many instances the pool should have now, and why.
    pub fn decide(&mut self, obs: &Observation) -> ScaleDecision {
        let period = scheduled_minimum(&self.pool.schedule, obs.now_ms);
        let floor = period.map_or(0, |p| p.min);
        let bounds = Bounds {
            min: self.pool.min.max(floor).min(self.pool.max),
            max: self.pool.max,
        };
        let api = self.pool.agents_per_instance;
        let mut decision = match &mut self.rule {
            Rule::ElasticCi(rule) => rule.decide(obs, bounds, api),
            Rule::Hpa(rule) => rule.decide(obs, bounds),
            Rule::Updraft(rule) => rule.decide(obs, bounds, api),
        };
        // The bounds hold whatever a rule's cooldowns say, as an ASG holds MinSize.
        decision.desired = decision.desired.clamp(bounds.min, bounds.max);
        if let Some(period) = period.filter(|p| p.min > self.pool.min) {
            decision
                .reason
                .push_str(&format!("; scheduled minimum {} ({period})", period.min));
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{AgentCounts, InstanceCounts, JobCounts};

    /// 2026-01-05T00:00:00Z, a Monday.
    const MONDAY: i64 = 1_767_571_200_000;

    fn pool(text: &str) -> PoolSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn settings_read_with_defaults_and_refuse_unknown_keys() {
        let p = pool("max = 30");
        assert_eq!(
            (p.min, p.max, p.agents_per_instance, p.interval.as_secs()),
            (0, 30, 1, 10)
        );
        assert_eq!(p.policy.kind(), "updraft");
        let p = pool("max = 30\nmin = 1\npolicy = { kind = \"hpa\", scale_up_pods = 4 }");
        assert!(matches!(&p.policy, PolicySettings::Hpa(h) if h.scale_up_pods == 4));
        let p = pool("max = 5\npolicy = { kind = \"elastic-ci\", scale_out_cooldown = \"1m\" }");
        assert!(
            matches!(&p.policy, PolicySettings::ElasticCi(e) if e.scale_out_cooldown.as_secs() == 60)
        );
        for bad in [
            "max = 30\npolicy = { kind = \"hpa\", scale_up_podz = 4 }",
            "max = 30\npolicy = { kind = \"keda\" }",
            "max = 30\nmaximum = 3",
            "max = 30\ninterval = \"soon\"",
        ] {
            assert!(toml::from_str::<PoolSettings>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_each_field_by_its_path() {
        let p = pool(
            "max = 30\nmin = 40\nagents_per_instance = 0\ninterval = \"500ms\"\npolicy = { kind = \"elastic-ci\", availability_threshold = 2.0 }\n[[schedule]]\nmin = 50\nfrom = \"18:00\"\nto = \"08:00\"",
        );
        let errors = p.validate("fleet[2].pool");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "fleet[2].pool.min",
                "fleet[2].pool.agents_per_instance",
                "fleet[2].pool.interval",
                "fleet[2].pool.policy.availability_threshold",
                "fleet[2].pool.schedule[0].to",
                "fleet[2].pool.schedule[0].min",
            ]
        );
        assert_eq!(errors[0].1, "expected at most max = 30, got min = 40");
        let hpa = pool("max = 30\npolicy = { kind = \"hpa\" }");
        assert_eq!(hpa.validate("fleet[0].pool")[0].0, "fleet[0].pool.min");
    }

    #[test]
    fn a_scheduled_minimum_raises_the_floor_of_any_policy() {
        for kind in ["updraft", "elastic-ci"] {
            let mut policy = ScalingPolicy::new(pool(&format!(
                "max = 30\npolicy = {{ kind = \"{kind}\" }}\n[[schedule]]\ndays = \"mon-fri\"\nfrom = \"08:00\"\nto = \"18:00\"\nmin = 5"
            )));
            let at = |hour: i64| Observation {
                now_ms: MONDAY + hour * 3_600_000,
                jobs: JobCounts::default(),
                agents: AgentCounts::default(),
                instances: InstanceCounts::default(),
                arrivals_total: 0,
                idle_since_ms: &[],
                boot_time_ms: 60_000,
            };
            assert_eq!(policy.decide(&at(7)).desired, 0, "{kind}");
            let d = policy.decide(&at(9));
            assert_eq!(d.desired, 5, "{kind}");
            assert!(
                d.reason
                    .ends_with("; scheduled minimum 5 (mon-fri 08:00–18:00)"),
                "{}",
                d.reason
            );
        }
    }

    #[test]
    fn the_schema_documents_every_setting() {
        let schema = schemars::schema_for!(PoolSettings);
        let text = serde_json::to_string(&schema).unwrap();
        for phrase in [
            "The most instances the policy may ask for",
            "scale_out_cooldown",
            "headroom_quantile",
            "HH:MM",
        ] {
            assert!(text.contains(phrase), "{phrase}");
        }
    }
}
