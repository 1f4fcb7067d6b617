//! Pool settings as the scheduler reads them: every mistake named by its path, the pool's
//! defaults, and what each member is started with.

use super::*;
use crate::config::Config;

fn lines(text: &str) -> Vec<String> {
    Config::parse(text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_bad_pool_setting_is_named_by_its_path() {
    let errors = lines(
        r#"
        [buildkite]
        agent_token = "t"
        [[fleet]]
        name = "warm"
        queue = "linux"
        mode = "pool"
        [fleet.pool]
        max = 2
        min = 3
        interval = "500ms"
        agents_per_instance = 0
        policy = { kind = "updraft", headroom_quantile = 1.5 }
        [[fleet.pool.schedule]]
        from = "18:00"
        to = "08:00"
        min = 9
        [[fleet]]
        name = "no-table"
        queue = "linux"
        mode = "pool"
        [[fleet]]
        name = "stray-table"
        queue = "linux"
        pool = { max = 1 }
        [[fleet]]
        name = "acquiring"
        queue = "linux"
        mode = "pool"
        pool = { max = 1 }
        template = { command = ["updraft", "agent", "start", "--acquire-job", "{job_id}", "-v"] }
        [[fleet]]
        name = "typo"
        queue = "linux"
        mode = "pool"
        pool = { max = 1, policy = { kind = "hpa", scale_up_podz = 4 } }
        [[fleet]]
        name = "no-pool-before"
        queue = "mac"
        overflow_after = "30s"
        [[fleet]]
        name = "pool-overflow"
        queue = "mac"
        mode = "pool"
        overflow_after = "30s"
        pool = { max = 1, interval = "soon" }
        "#,
    );
    for expected in [
        "fleet[0].pool.min: expected at most max = 2, got min = 3",
        "fleet[0].pool.agents_per_instance: expected at least 1, got 0",
        "fleet[0].pool.interval: expected at least 1s, got 500ms",
        "fleet[0].pool.policy.headroom_quantile: expected a fraction above 0, at most 1, got 1.5",
        "fleet[0].pool.schedule[0].to: expected a time after from = \"18:00\", got \"08:00\" (split a period across midnight in two)",
        "fleet[0].pool.schedule[0].min: expected at most max = 2, got min = 9",
        "fleet[1].pool: missing: a mode = \"pool\" fleet needs a [fleet.pool] table (at least max)",
        "fleet[2].pool: only a mode = \"pool\" fleet has a pool; set mode = \"pool\" or remove the table",
        "fleet[3].template.command: a pool agent serves many jobs: remove {job_id} and --acquire-job",
        "fleet[5].overflow_after: expected a mode = \"pool\" fleet on queue \"mac\" listed before this one to take overflow from",
        "fleet[6].overflow_after: only a one-shot fleet (mode = \"acquire\") takes a pool's overflow",
    ] {
        assert!(
            errors.iter().any(|l| l == expected),
            "missing {expected:?} in {errors:#?}"
        );
    }
    assert!(
        errors.iter().any(|l| l
            == "fleet[4].pool.policy.scale_up_podz: unknown key (did you mean `scale_up_pods`?)"),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("fleet[6].pool.interval")),
        "{errors:#?}"
    );
}

#[test]
fn a_pool_runs_pool_agents_registered_with_the_cluster_token() {
    let config = Config::parse(
        r#"
        [buildkite]
        agent_token = "bkct_cluster"
        endpoint = "http://127.0.0.1:9/v3"
        [[fleet]]
        name = "warm"
        queue = "linux"
        tags = ["docker=true"]
        mode = "pool"
        price_per_second = 0.0000231
        [fleet.pool]
        max = 10
        agents_per_instance = 2
        [fleet.template]
        env = { BUILDKITE_BUILD_PATH = "/tmp/b" }
        [[fleet]]
        name = "burst"
        queue = "linux"
        overflow_after = "30s"
        "#,
    )
    .unwrap();
    let warm = &config.fleets[0];
    assert!(warm.is_pool() && !config.fleets[1].is_pool());
    assert_eq!(warm.template.command, ["updraft", "agent", "start"]);
    assert_eq!(
        config.fleets[1].overflow_after,
        Some(Duration::from_secs(30))
    );
    assert_eq!(metrics_interval(&config), Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(config, dir.path());
    let warm = &core.config.fleets[0];
    let spec = member_spec(&core, warm, warm.pool.as_ref().unwrap());
    assert_eq!(spec.agents, 2);
    assert_eq!(spec.env["BUILDKITE_AGENT_TAGS"], "queue=linux,docker=true");
    assert_eq!(
        spec.env["BUILDKITE_AGENT_ENDPOINT"],
        "http://127.0.0.1:9/v3"
    );
    assert_eq!(spec.env["BUILDKITE_BUILD_PATH"], "/tmp/b");
    assert_eq!(
        spec.secrets["BUILDKITE_AGENT_TOKEN"].expose(),
        "bkct_cluster"
    );
    assert!(!spec.env.values().any(|v| v.contains("bkct_cluster")));
}

fn test_core(config: Config, dir: &std::path::Path) -> Core {
    use crate::clock::{Clock, SystemClock};
    use crate::core::Parts;
    use crate::ledger::Ledger;
    use crate::stackset::StackSet;
    let stacks = StackSet::new(&config).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let ledger = Arc::new(Ledger::open_with_clock(&dir.join("l.sqlite"), clock).unwrap());
    Core::new(Parts {
        config,
        buildkite: Arc::new(stacks),
        ledger,
        backends: BTreeMap::new(),
        fleet_backends: Vec::new(),
        pool_backends: Vec::new(),
        ledger_inline: true,
    })
    .0
}
