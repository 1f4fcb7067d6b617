//! `updraft demo` as a user runs it (here not on a terminal, so with plain progress lines):
//! it must finish the sample on its own, exit 0, and report the outcome the sample pipeline
//! is built to produce — one failing job per build that ran to the end, a canceled build —
//! with pickup latency and the status page's address.

use std::process::Command;

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");

fn field<'a>(summary: &'a str, prefix: &str) -> &'a str {
    summary
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in the summary:\n{summary}"))
}

/// The number after `label ` in a "passed 20 · failed 2 · …" line.
fn count(line: &str, label: &str) -> usize {
    line.split(" · ")
        .find_map(|part| {
            part.trim()
                .strip_prefix(label)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count for {label:?} in {line:?}"))
}

#[test]
fn the_demo_runs_the_sample_to_the_end_and_summarises_it() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(UPDRAFT)
        .args(["demo", "--builds", "2", "--state-dir"])
        .arg(state.path())
        .env("UPDRAFT_LOG", "warn")
        .output()
        .expect("run updraft demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    assert!(
        stdout.contains("build #1  :hammer: compile"),
        "plain progress lines expected off a terminal:\n{stdout}"
    );
    assert!(
        stdout.contains("canceling build #2 while its jobs run"),
        "{stdout}"
    );
    assert!(stdout.contains("updraft demo: 2 builds"), "{stdout}");
    assert_eq!(
        field(&stdout, "build #1  ").trim(),
        "failed",
        "build 1 runs to the end with its failing job"
    );
    assert_eq!(field(&stdout, "build #2  ").trim(), "canceled");

    let jobs = field(&stdout, "jobs: ");
    assert_eq!(
        count(jobs, "failed"),
        1,
        "only build 1 reaches the failing job: {jobs}"
    );
    assert!(
        count(jobs, "passed") >= 10,
        "build 1's ten other jobs pass: {jobs}"
    );
    assert!(count(jobs, "canceled") >= 1, "{jobs}");

    let pickup = field(&stdout, "pickup latency (scheduled → launched): ");
    assert!(
        pickup.starts_with("p50 ") && pickup.contains(" ms"),
        "{pickup}"
    );
    let largest = field(&stdout, "largest log: ");
    assert!(
        largest.contains(":scroll: large log"),
        "the large-log job streams the most: {largest}"
    );
    assert!(
        field(&stdout, "status page: ").starts_with("http://127.0.0.1:"),
        "{stdout}"
    );

    // With --state-dir the ledger stays for a look afterwards.
    assert!(field(&stdout, "ledger and launch state kept in ")
        .contains(&state.path().display().to_string()));
    assert!(state.path().join("ledger.sqlite").exists());
}

#[test]
fn the_demo_explains_a_bad_argument() {
    let output = Command::new(UPDRAFT)
        .args(["demo", "--builds", "0"])
        .output()
        .expect("run updraft demo");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--builds"), "{stderr}");
}
