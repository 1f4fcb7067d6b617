//! The scheduler under chaos, as `updraft bench chaos` runs it: one full run in the test suite
//! (the soak of many runs in a row is the benchmark's `--runs`). 240 jobs; the scheduler
//! SIGKILLed 20 times and restarted; two agents SIGKILLed mid-job; 15 % of API calls answered
//! 429/503; 30 % of push events dropped, 20 % duplicated, 20 % delayed 1.5 s. Nothing may be
//! lost or acquired twice, every job whose agent survived must pass, no `finish` may reach a
//! job an agent holds, and no process may be left behind.

use std::process::Command;

#[test]
fn a_chaos_run_loses_nothing_runs_nothing_twice_and_fails_no_healthy_job() {
    let out = tempfile::tempdir().unwrap();
    let figures = out.path().join("chaos.json");
    let output = Command::new(env!("CARGO_BIN_EXE_updraft"))
        .args(["bench", "chaos", "--runs", "1", "--out"])
        .arg(&figures)
        .env("UPDRAFT_LOG", "warn")
        .output()
        .expect("run updraft bench chaos");
    let text = std::fs::read_to_string(&figures).unwrap_or_default();
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}\nfigures: {text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_str(&text).unwrap();
    let run = &figures["results"][0];
    assert_eq!(run["jobs"], 240);
    assert_eq!(run["scheduler_kills"], 20);
    assert_eq!(run["agents_killed"], 2, "{run:#}");
    for empty in ["lost", "acquired_twice", "healthy_jobs_failed"] {
        assert_eq!(run[empty], serde_json::json!([]), "{empty}: {run:#}");
    }
    assert_eq!(run["finishes_of_held_jobs"], 0);
    assert_eq!(run["processes_left"], 0);
    assert!(run["emulator"]["api_faults_injected"].as_u64().unwrap() > 0);
    assert!(run["emulator"]["push"]["dropped"].as_u64().unwrap() > 0);
}
