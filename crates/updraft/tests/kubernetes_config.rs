//! `updraft check` on Kubernetes settings: every mistake is named with its path (an unknown
//! field in a pod template, a resource class the fleet does not define, a kubeconfig that is
//! not there), and the configs shipped in deploy/kubernetes check out.

use std::path::Path;
use std::process::Command;

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");

fn check(config: &Path) -> (bool, String) {
    let output = Command::new(UPDRAFT)
        .args(["check", "--config"])
        .arg(config)
        .env("BUILDKITE_AGENT_TOKEN", "bkct_check")
        .env("UPDRAFT_WEBHOOK_TOKEN", "check-webhook-token")
        .output()
        .expect("run updraft check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn bad_kubernetes_settings_are_each_named_with_their_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("updraft.toml");
    std::fs::write(
        &config,
        r#"[kubernetes]
kubeconfig = "/nonexistent/kubeconfig"

[[fleet]]
name = "linux"
queue = "k8s"
backend = "kubernetes"
tags = ["resource_class=huge"]

[fleet.kubernetes]
image = "buildkite/agent:3"
default_resource_class = "small"

[fleet.kubernetes.pod_template]
containers = [{ name = "agent", imagePullPolicyy = "Always" }]

[fleet.kubernetes.resource_classes.small]
requests = { cpu = "1" }
"#,
    )
    .expect("config");
    let (ok, output) = check(&config);
    assert!(!ok, "{output}");
    for expected in [
        "kubernetes.kubeconfig: the file /nonexistent/kubeconfig does not exist",
        "fleet[0].kubernetes.pod_template.containers[0].imagePullPolicyy: unknown field",
        "fleet[0].tags[0]: resource class \"huge\" is not defined in [fleet.kubernetes.resource_classes] (defined: small)",
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
}

#[test]
fn the_configs_in_deploy_kubernetes_check_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    for config in ["base/updraft.toml", "overlays/example/updraft.toml"] {
        let (ok, output) = check(&root.join(config));
        assert!(ok, "{config}: {output}");
    }
}
