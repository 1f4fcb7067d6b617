//! `--compare`: the same workload, backend and bounds under each policy and under
//! one-shot launches. The first pool fleet of the settings is the one varied; every other
//! fleet (an overflow fleet behind it, other queues) stays as it is.

use crate::settings::{FleetSettings, SimSettings};
use crate::BackendPreset;
use updraft_model::scaling::{
    ElasticCiSettings, HpaSettings, PolicySettings, PoolSettings, UpdraftSettings,
};

/// One run of a comparison.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub label: String,
    pub settings: SimSettings,
}

/// Settings for one pool fleet on `backend` between `min` and `max` instances.
pub fn single_pool(
    backend: BackendPreset,
    min: u32,
    max: u32,
    policy: PolicySettings,
) -> SimSettings {
    let pool = PoolSettings::new(min, max, policy);
    SimSettings::with_fleets(vec![FleetSettings::new("pool", backend, Some(pool))])
}

/// A policy by name with its default settings, or the settings `base` gives that kind.
pub fn policy_named(name: &str, base: &SimSettings) -> Option<PolicySettings> {
    if let Some(pool) = base.fleets.iter().find_map(|f| f.pool.as_ref()) {
        if pool.policy.kind() == name {
            return Some(pool.policy.clone());
        }
    }
    match name {
        "elastic-ci" => Some(PolicySettings::ElasticCi(ElasticCiSettings::default())),
        "hpa" => Some(PolicySettings::Hpa(HpaSettings::default())),
        "updraft" => Some(PolicySettings::Updraft(UpdraftSettings::default())),
        _ => None,
    }
}

/// `base` with its first pool fleet run by `policy` (an hpa pool keeps at least one
/// replica, as a HorizontalPodAutoscaler must).
pub fn with_policy(base: &SimSettings, policy: PolicySettings) -> SimSettings {
    let mut settings = base.clone();
    if let Some(pool) = settings.fleets.iter_mut().find_map(|f| f.pool.as_mut()) {
        if matches!(policy, PolicySettings::Hpa(_)) {
            pool.min = pool.min.max(1);
        }
        pool.policy = policy;
    }
    settings
}

/// `base` with its first pool fleet replaced by one-shot launches on the same backend and
/// caps; a one-shot overflow fleet of the same queue is dropped, as it would have nothing
/// left to take.
pub fn one_shot(base: &SimSettings) -> SimSettings {
    let mut settings = base.clone();
    let Some(index) = settings.fleets.iter().position(|f| f.pool.is_some()) else {
        return settings;
    };
    let queue = settings.fleets[index].queue.clone();
    settings.fleets[index].pool = None;
    settings.fleets[index].overflow_after = None;
    let mut position = 0;
    settings.fleets.retain(|f| {
        let keep = position == index || f.queue != queue || f.pool.is_some();
        position += 1;
        keep
    });
    settings
}

/// Every named policy, then one-shot when `with_one_shot`.
pub fn scenarios(
    base: &SimSettings,
    policies: &[String],
    with_one_shot: bool,
) -> Result<Vec<Scenario>, String> {
    let mut out = Vec::new();
    for name in policies {
        let policy = policy_named(name, base)
            .ok_or_else(|| format!("no policy {name:?}; expected elastic-ci, hpa or updraft"))?;
        out.push(Scenario {
            label: name.clone(),
            settings: with_policy(base, policy),
        });
    }
    if with_one_shot {
        out.push(Scenario {
            label: "one-shot".into(),
            settings: one_shot(base),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_varies_the_first_pool_and_keeps_the_rest() {
        let base = SimSettings::from_toml(
            "[[fleet]]\nname = \"warm\"\n[fleet.pool]\nmax = 9\npolicy = { kind = \"updraft\", idle_grace = \"2m\" }\n[[fleet]]\nname = \"burst\"\noverflow_after = \"1m\"\n",
        )
        .unwrap();
        let runs = scenarios(
            &base,
            &["elastic-ci".into(), "hpa".into(), "updraft".into()],
            true,
        )
        .unwrap();
        let labels: Vec<&str> = runs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["elastic-ci", "hpa", "updraft", "one-shot"]);
        let hpa = runs[1].settings.fleets[0].pool.as_ref().unwrap();
        assert_eq!((hpa.min, hpa.max, hpa.policy.kind()), (1, 9, "hpa"));
        assert_eq!(runs[0].settings.fleets.len(), 2);
        match &runs[2].settings.fleets[0].pool.as_ref().unwrap().policy {
            PolicySettings::Updraft(s) => assert_eq!(s.idle_grace.as_secs(), 120),
            other => panic!("{other:?}"),
        }
        assert_eq!(runs[3].settings.fleets.len(), 1);
        assert!(runs[3].settings.fleets[0].pool.is_none());
        assert!(runs.iter().all(|r| r.settings.validate().is_empty()));
        assert!(scenarios(&base, &["karpenter".into()], false).is_err());
    }
}
