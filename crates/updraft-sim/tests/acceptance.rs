//! The warm-pool issue's acceptance on the reference traces in `traces/`: the `updraft`
//! policy uses at least 30 % fewer idle agent-seconds than `elastic-ci` and than `hpa`, at
//! an equal or lower p95 wait, on each trace with the backends its README names. Also: the
//! committed traces are exactly what their documented command generates.

use std::path::PathBuf;
use updraft_sim::compare;
use updraft_sim::workload::generate::{generate, Shape};
use updraft_sim::workload::read_jobs;
use updraft_sim::{simulate, BackendPreset, Report, SimSettings};

fn trace(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join(format!("{name}.jsonl.gz"))
}

fn compare_on(name: &str, backend: BackendPreset) -> Vec<Report> {
    let jobs = read_jobs(&trace(name)).unwrap();
    let empty = SimSettings::with_fleets(Vec::new());
    let base = compare::single_pool(
        backend,
        0,
        1000,
        compare::policy_named("updraft", &empty).unwrap(),
    );
    let names = ["elastic-ci", "hpa", "updraft"].map(String::from);
    compare::scenarios(&base, &names, false)
        .unwrap()
        .iter()
        .map(|s| simulate(&s.settings, &jobs, &s.label).unwrap())
        .collect()
}

fn assert_updraft_wins(name: &str, backend: BackendPreset) {
    let reports = compare_on(name, backend);
    let updraft = &reports[2];
    for anchor in &reports[..2] {
        let ratio = updraft.idle_agent_seconds / anchor.idle_agent_seconds;
        assert!(
            ratio <= 0.7,
            "{name} on {}: updraft idles {:.0} agent-s, {} {:.0} ({:.0} %)",
            backend.name(),
            updraft.idle_agent_seconds,
            anchor.label,
            anchor.idle_agent_seconds,
            ratio * 100.0
        );
        assert!(
            updraft.wait.p95_s <= anchor.wait.p95_s,
            "{name} on {}: updraft p95 {:.0}s, {} {:.0}s",
            backend.name(),
            updraft.wait.p95_s,
            anchor.label,
            anchor.wait.p95_s
        );
    }
}

#[test]
fn weekday_on_ec2_and_kubernetes() {
    assert_updraft_wins("weekday", BackendPreset::Ec2);
    assert_updraft_wins("weekday", BackendPreset::Kubernetes);
}

#[test]
fn nightly_on_ec2_and_kubernetes() {
    assert_updraft_wins("nightly", BackendPreset::Ec2);
    assert_updraft_wins("nightly", BackendPreset::Kubernetes);
}

#[test]
fn merge_queue_on_kubernetes_and_ec2() {
    assert_updraft_wins("merge-queue", BackendPreset::Kubernetes);
    assert_updraft_wins("merge-queue", BackendPreset::Ec2);
}

#[test]
fn the_committed_traces_regenerate_from_their_seed() {
    for shape in [Shape::Weekday, Shape::Nightly, Shape::MergeQueue] {
        let committed = read_jobs(&trace(shape.name())).unwrap();
        assert_eq!(committed, generate(shape, 1, 1.0, None), "{}", shape.name());
    }
}
