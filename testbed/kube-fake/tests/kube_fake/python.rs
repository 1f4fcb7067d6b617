//! Runs tests/python/conformance.py, which drives the fake with the Python `kubernetes`
//! client and checks what it reads back against the Kubernetes JSON schema.

use crate::common::start_with;
use std::path::PathBuf;
use std::process::Command;

/// The interpreter with `kubernetes` and `kubernetes-validate` installed: `UPDRAFT_PYTHON`
/// (set by .ci/run), else the workspace's `.venv`.
fn python() -> PathBuf {
    let python = std::env::var_os("UPDRAFT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.venv/bin/python"
            ))
        });
    assert!(
        python.exists(),
        "no Python interpreter at {}: set UPDRAFT_PYTHON, or create the workspace .venv with \
         requirements-test.txt (.ci/run does both)",
        python.display()
    );
    python
}

#[test]
fn the_python_kubernetes_client_sees_a_real_api_server() {
    let python = python();
    let fake = start_with(|o| {
        o.namespaces = vec!["python".into()];
        o.watch_history = 100;
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/conformance.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(&kubeconfig)
        .arg("python")
        .output()
        .unwrap_or_else(|e| panic!("running {} {script}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "conformance.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.trim_end().ends_with("passed, 0 failed"),
        "unexpected output:\n{stdout}"
    );
}
