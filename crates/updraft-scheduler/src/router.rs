//! The router: which fleet serves a job, by the reference's query-rule matching (§7.2), or
//! the reason no fleet does, worded for a person reading the build ("no fleet serves
//! queue=gpu").

use crate::config::FleetConfig;
use updraft_model::QueryRules;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The index of the first fleet (in config order) whose tags match every rule.
    Fleet(usize),
    Unserved(String),
}

/// The first fleet, in config order, that serves these rules.
pub fn route(fleets: &[FleetConfig], rules: &QueryRules) -> Route {
    match fleets
        .iter()
        .position(|fleet| rules.matched_by(&fleet.tags))
    {
        Some(index) => Route::Fleet(index),
        None => Route::Unserved(unserved_reason(fleets, rules)),
    }
}

fn unserved_reason(fleets: &[FleetConfig], rules: &QueryRules) -> String {
    let queue = rules.queue();
    let same_queue: Vec<&FleetConfig> = fleets.iter().filter(|f| f.queue == queue).collect();
    if same_queue.is_empty() {
        return format!("no fleet serves queue={queue}");
    }
    let missing: Vec<String> = rules
        .0
        .iter()
        .filter(|rule| rule.key != "queue")
        .filter(|rule| {
            !same_queue
                .iter()
                .any(|f| f.tags.values(&rule.key).any(|v| rule.matches_value(v)))
        })
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        format!("no single fleet on queue={queue} matches all of {rules}")
    } else {
        format!("no fleet on queue={queue} has {}", missing.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn fleets() -> Vec<FleetConfig> {
        Config::parse(
            r#"
            [buildkite]
            agent_token = "t"
            [[fleet]]
            name = "linux"
            queue = "linux"
            [[fleet]]
            name = "docker"
            queue = "linux"
            tags = ["docker=true"]
            [[fleet]]
            name = "default"
            queue = "default"
        "#,
        )
        .unwrap()
        .fleets
    }

    fn rules(raw: &[&str]) -> QueryRules {
        QueryRules::parse("r", raw).unwrap()
    }

    #[test]
    fn the_first_matching_fleet_wins() {
        let fleets = fleets();
        assert_eq!(route(&fleets, &rules(&["queue=linux"])), Route::Fleet(0));
        assert_eq!(
            route(&fleets, &rules(&["queue=linux", "docker=true"])),
            Route::Fleet(1)
        );
        assert_eq!(route(&fleets, &rules(&[])), Route::Fleet(2));
    }

    #[test]
    fn unserved_jobs_say_why() {
        let fleets = fleets();
        assert_eq!(
            route(&fleets, &rules(&["queue=gpu"])),
            Route::Unserved("no fleet serves queue=gpu".into())
        );
        assert_eq!(
            route(&fleets, &rules(&["queue=linux", "arch=arm64"])),
            Route::Unserved("no fleet on queue=linux has arch=arm64".into())
        );
    }
}
