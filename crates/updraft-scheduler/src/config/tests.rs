use super::*;

const MINIMAL: &str = r#"
    [buildkite]
    agent_token = "bkct_test"
    [[fleet]]
    name = "linux"
    queue = "linux"
"#;

fn lines(errors: &ConfigErrors) -> Vec<String> {
    errors.0.iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::parse(MINIMAL).unwrap();
    let fleet = &config.fleets[0];
    assert_eq!(fleet.tags.to_strings(), vec!["queue=linux"]);
    assert_eq!(fleet.mode, Mode::Acquire);
    assert_eq!(fleet.backend, "local");
    assert_eq!(config.buildkite.poll_interval, Duration::from_secs(1));
    assert_eq!(config.buildkite.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(fleet.template.command[4], "{job_id}");
    assert_eq!(config.ledger.retention, Duration::from_secs(7 * 24 * 3600));
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = r#"
        bogus = 1
        [buildkite]
        agent_token = "bkct_test"
        poll_interval_ms = 200
        [[fleet]]
        name = "a"
        queue = "linux"
        [[fleet]]
        name = "b"
        queue = "gpu"
        max_in_flight = 0
        mode = "relay"
        tags = ["gpu"]
        colour = "red"
        pending_deadline = "soon"
    "#;
    let lines = lines(&Config::parse(text).unwrap_err());
    for expected in [
        "bogus: unknown section; known: buildkite, push, http, ledger, limits, reconcile, local, [[fleet]]",
        "buildkite.poll_interval_ms: expected at least 1000 (the Stacks API asks for ≥ 1 s between polls), got the integer 200",
        "fleet[1].max_in_flight: expected at least 1, got the integer 0",
        "fleet[1].mode: expected \"acquire\" or \"pool\", got the string \"relay\"",
        "fleet[1].colour: unknown key",
        "fleet[1].tags[0]: \"gpu\" is not a key=value pair (expected e.g. \"queue=linux\")",
    ] {
        assert!(lines.iter().any(|l| l == expected), "missing {expected:?} in {lines:#?}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("fleet[1].pending_deadline: expected a duration")));
}

#[test]
fn a_fleet_missing_its_name_or_queue_is_an_error_not_dropped() {
    let text = r#"
        [buildkite]
        agent_token = "t"
        [[fleet]]
        queue = "r"
        [[fleet]]
        name = "only-name"
        backend = "local"
    "#;
    let lines = lines(&Config::parse(text).unwrap_err());
    assert_eq!(
        lines,
        vec![
            "fleet[0].name: missing; it is required".to_string(),
            "fleet[1].queue: missing; it is required".to_string(),
        ]
    );
}

#[test]
fn ten_different_mistakes_are_all_listed_with_their_paths() {
    let text = r#"
        [buildkite]
        endpoint = "agent.buildkite.com"
        page_limit = 5000
        reservation_expiry = "2h"
        [http]
        listen = "everywhere"
        [ledger]
        retention = "10m"
        [[fleet]]
        queue = "linux"
        [[fleet]]
        name = "gpu box"
        queue = "gpu"
        backend = "mainframe"
        [[fleet]]
        name = "arm"
        queue = "arm"
        max_inflight = 3
    "#;
    let lines = lines(&Config::parse(text).unwrap_err());
    let expected = [
        "buildkite.endpoint: expected an http:// or https:// URL, got the string \"agent.buildkite.com\"",
        "buildkite.page_limit: expected at most 1000, got the integer 5000",
        "buildkite.reservation_expiry: expected at most 1h (the Stacks API maximum), got 2h",
        "buildkite.agent_token: missing: set agent_token, agent_token_env, agent_token_from, or the BUILDKITE_AGENT_TOKEN environment variable",
        "http.listen: expected an address like \"127.0.0.1:7070\", got \"everywhere\"",
        "ledger.retention: expected at least 1h (closed jobs stay readable at least that long), got 10m",
        "fleet[0].name: missing; it is required",
        "fleet[1].name: expected letters, digits, '-' or '_', got the string \"gpu box\"",
        "fleet[1].backend: unknown backend \"mainframe\"; available: local",
        "fleet[2].max_inflight: unknown key (did you mean `max_in_flight`?)",
    ];
    if std::env::var(DEFAULT_AGENT_TOKEN_ENV).is_ok() {
        return;
    }
    let mut sorted_lines = lines.clone();
    sorted_lines.sort();
    let mut sorted_expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    sorted_expected.sort();
    assert_eq!(sorted_lines, sorted_expected, "{lines:#?}");
}

#[test]
fn duplicate_fleet_names_and_missing_token_are_errors() {
    let text = r#"
        [[fleet]]
        name = "a"
        queue = "x"
        [[fleet]]
        name = "a"
        queue = "y"
    "#;
    let errors = Config::parse_with_env(text, Vec::new()).unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"fleet[1].name"), "{paths:?}");
    if std::env::var(DEFAULT_AGENT_TOKEN_ENV).is_err() {
        assert!(paths.contains(&"buildkite.agent_token"), "{paths:?}");
    }
}

#[test]
fn environment_overrides_sections() {
    let env = vec![
        (
            "UPDRAFT_BUILDKITE_POLL_INTERVAL_MS".to_string(),
            "2500".to_string(),
        ),
        ("UPDRAFT_HTTP_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "UPDRAFT_LEDGER_PATH".to_string(),
            "/tmp/x.sqlite".to_string(),
        ),
        (
            "UPDRAFT_LOCAL_STATE_DIR".to_string(),
            "/tmp/launches".to_string(),
        ),
        ("UNRELATED".to_string(), "1".to_string()),
    ];
    let config = Config::parse_with_env(MINIMAL, env).unwrap();
    assert_eq!(config.buildkite.poll_interval, Duration::from_millis(2500));
    assert_eq!(config.http.listen.port(), 0);
    assert_eq!(config.ledger.path, PathBuf::from("/tmp/x.sqlite"));
    assert_eq!(
        config.backend_sections["local"]["state_dir"],
        "/tmp/launches"
    );
}

#[test]
fn secrets_come_inline_or_from_a_named_variable_never_both() {
    let text = MINIMAL.replace(
        "agent_token = \"bkct_test\"",
        "agent_token_env = \"MY_TOKEN\"",
    );
    let config = Config::parse_with_env(
        &text,
        vec![("MY_TOKEN".to_string(), "bkct_env".to_string())],
    )
    .unwrap();
    assert_eq!(config.buildkite.agent_token.expose(), "bkct_env");
    let unset = lines(&Config::parse_with_env(&text, Vec::new()).unwrap_err());
    assert_eq!(
        unset,
        vec!["buildkite.agent_token_env: environment variable MY_TOKEN is not set or empty"]
    );
    let reference = MINIMAL.replace(
        "agent_token = \"bkct_test\"",
        "agent_token_from = \"ssm:/buildkite/agent-token\"",
    );
    let config = Config::parse(&reference).unwrap();
    assert_eq!(
        config.buildkite.agent_token_from.as_deref(),
        Some("ssm:/buildkite/agent-token")
    );
    assert!(config.buildkite.agent_token.is_empty());
    let bad = MINIMAL.replace(
        "agent_token = \"bkct_test\"",
        "agent_token_from = \"vault:x\"",
    );
    assert!(lines(&Config::parse(&bad).unwrap_err())[0]
        .starts_with("buildkite.agent_token_from: expected \"ssm:<parameter name>\""));
    let both = MINIMAL.replace(
        "agent_token = \"bkct_test\"",
        "agent_token = \"a\"\nagent_token_env = \"B\"",
    );
    assert_eq!(
        lines(&Config::parse(&both).unwrap_err()),
        vec!["buildkite.agent_token: set only one of agent_token, agent_token_env"]
    );
}

#[test]
fn a_backend_table_goes_to_its_backend_and_a_wrong_one_is_named() {
    let text = format!(
        "{MINIMAL}\n[fleet.local]\nanything = 1\n[[fleet]]\nname = \"k\"\nqueue = \"k\"\nbackend = \"kubernetes\"\n[fleet.local]\nx = 1\n[kubernetes]\nnamespace = \"ci\"\n"
    );
    let config = Config::parse_checked(&text, Vec::new(), &["local", "kubernetes"]).unwrap_err();
    assert_eq!(
        lines(&config),
        vec!["fleet[1].local: settings for backend \"local\", but this fleet's backend is \"kubernetes\""]
    );
    let text =
        format!("{MINIMAL}\n[fleet.local]\nanything = 1\n[kubernetes]\nnamespace = \"ci\"\n");
    let config = Config::parse_checked(&text, Vec::new(), &["local", "kubernetes"]).unwrap();
    assert_eq!(
        config.fleets[0].backend_settings.as_ref().unwrap()["anything"],
        1
    );
    assert_eq!(config.backend_sections["kubernetes"]["namespace"], "ci");
}

#[test]
fn queue_tag_is_added_and_extra_tags_kept() {
    let text = format!("{MINIMAL}\ntags = [\"docker=true\"]\n");
    let config = Config::parse(&text).unwrap();
    assert_eq!(
        config.fleets[0].tags.to_strings(),
        vec!["queue=linux", "docker=true"]
    );
}

#[test]
fn the_example_config_is_valid() {
    let env = vec![
        ("BUILDKITE_AGENT_TOKEN".to_string(), "bkct_x".to_string()),
        ("UPDRAFT_WEBHOOK_TOKEN".to_string(), "w".to_string()),
    ];
    let text = include_str!("../../updraft.example.toml");
    let config = Config::parse_checked(text, env, &["local"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.fleets.len(), 2);
    assert_eq!(config.fleets[0].launches_per_minute, Some(600));
    assert_eq!(
        config.fleets[0].template.env["BUILDKITE_BUILD_PATH"],
        "/tmp/builds"
    );
    assert_eq!(config.queues(), vec!["linux"]);
}

#[test]
fn ledger_retention_refuses_less_than_an_hour() {
    let env = vec![("UPDRAFT_LEDGER_RETENTION".to_string(), "30d".to_string())];
    let config = Config::parse_with_env(MINIMAL, env).unwrap();
    assert_eq!(config.ledger.retention, Duration::from_secs(30 * 24 * 3600));
    for (retention, expected) in [
        (
            "\"10m\"",
            "ledger.retention: expected at least 1h (closed jobs stay readable at least that long), got 10m",
        ),
        (
            "\"forever\"",
            "ledger.retention: expected a duration like \"90s\", \"5m\", \"2h\" or \"7d\" (or whole seconds), at most 100 years, got the string \"forever\"",
        ),
    ] {
        let text = format!("[ledger]\nretention = {retention}\n{MINIMAL}");
        assert_eq!(lines(&Config::parse(&text).unwrap_err()), vec![expected.to_string()]);
    }
}
