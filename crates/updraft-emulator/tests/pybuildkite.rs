//! The REST API as a real third-party client sees it: runs
//! `tests/python/pybuildkite_conformance.py` with pybuildkite from PyPI against an
//! in-process emulator.

use std::path::PathBuf;
use updraft_emulator::EmulatorConfig;

/// `UPDRAFT_PYTHON`, else the workspace venv that `.ci/run` creates.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("UPDRAFT_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "pybuildkite test needs a Python with requirements-test.txt installed: {} is missing. \
         Run `.ci/run` (it creates the venv), or `python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt`, \
         or point UPDRAFT_PYTHON at a python that has pybuildkite.",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pybuildkite_drives_pipelines_builds_jobs_and_agents() {
    let emulator = updraft_emulator::start(EmulatorConfig::default())
        .await
        .unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/pybuildkite_conformance.py");
    let output = tokio::process::Command::new(python())
        .arg(&script)
        .env("UPDRAFT_EMULATOR_URL", emulator.url())
        .env("UPDRAFT_ORG", emulator.org())
        .env("UPDRAFT_API_TOKEN", emulator.api_token().expose())
        .env("UPDRAFT_AGENT_TOKEN", emulator.agent_token().expose())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running the pybuildkite script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pybuildkite script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains("pybuildkite conformance: OK"), "{stdout}");
    emulator.shutdown().await;
}
