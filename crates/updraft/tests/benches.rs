//! The scheduler benchmarks run, small, as the suite's check that they still start and report
//! (`bench pickup` and `bench burst` once stopped at start-up on a config check nobody ran).
//! The figures themselves are the benchmarks' business, not asserted here.

use std::process::Command;

/// Run `updraft bench <args> --out FILE` and return the figures it wrote.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let figures = out.path().join("figures.json");
    let output = Command::new(env!("CARGO_BIN_EXE_updraft"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(&figures)
        .env("UPDRAFT_LOG", "warn")
        .output()
        .expect("run updraft bench");
    assert!(
        output.status.success(),
        "updraft bench {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&figures).unwrap()).unwrap()
}

#[test]
fn bench_pickup_measures_push_and_pull() {
    let figures = bench(&["pickup", "--push-samples", "5", "--pull-samples", "2"]);
    let samples = |source: &str| figures[source]["samples"].as_u64().unwrap();
    // A poll may find a job before its push event does; each job is counted once.
    assert_eq!(samples("push") + samples("pull"), 7, "{figures:#}");
    assert!(samples("push") >= 1, "{figures:#}");
    assert!(figures["push"]["p99_ms"].is_number(), "{figures:#}");
}

#[test]
fn bench_burst_launches_every_job() {
    let figures = bench(&["burst", "--jobs", "300"]);
    assert_eq!(figures["jobs"], 300, "{figures:#}");
    assert!(
        figures["peak_rss_mb"].as_f64().unwrap() > 0.0,
        "{figures:#}"
    );
}
