//! Kubernetes' own schema, strictly, for Kubernetes 1.29 (the oldest release Updraft supports:
//! native sidecars): every kind of object the backend creates — Jobs (plain, with an
//! agent-stack-k8s step, with a pod template and a resource class), their Secrets, and the
//! Lease — and everything `kubectl kustomize deploy/kubernetes/overlays/example` renders. The
//! validator is `kubernetes-validate` from PyPI, found through `UPDRAFT_PYTHON` or the
//! project's `.venv`.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;
use updraft_kubernetes::builder::{build, step_plugin, BuildInputs};
use updraft_kubernetes::pod_template::PodSource;

const KUBERNETES_VERSION: &str = "1.29.0";

fn python() -> PathBuf {
    std::env::var_os("UPDRAFT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

/// Validate a multi-document YAML (or JSON) file; panics with the validator's words.
fn validate(file: &Path) {
    let output = Command::new(python())
        .args([
            "-m",
            "kubernetes_validate",
            "-k",
            KUBERNETES_VERSION,
            "--strict",
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running kubernetes-validate with {}: {e}",
                python().display()
            )
        });
    let words = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} is not valid Kubernetes {KUBERNETES_VERSION}:\n{words}",
        file.display()
    );
    assert!(
        !words.contains("ERROR") && !words.contains("WARN"),
        "{words}"
    );
}

fn with_kind(mut object: Value, api_version: &str, kind: &str) -> Value {
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object
}

#[test]
fn every_object_the_backend_builds_is_valid_kubernetes_1_29() {
    let kubeconfig_dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig_path = kubeconfig_dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig_path,
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .expect("kubeconfig");
    let fleet = json!({
        "image": "ghcr.io/acme/agent:3",
        "image_pull_policy": "IfNotPresent",
        "service_account": "ci-jobs",
        "pod_template": {
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "securityContext": {"runAsNonRoot": true},
            "initContainers": [{"name": "dind", "image": "docker:27-dind", "restartPolicy": "Always",
                                "securityContext": {"privileged": true}}],
        },
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
        "resource_classes": {"large": {"requests": {"cpu": "8"}, "limits": {"memory": "16Gi"},
            "node_selector": {"pool": "large"}, "tolerations": [{"key": "large", "operator": "Exists", "effect": "NoSchedule"}]}},
        "labels": {"example.com/team": "platform"},
        "annotations": {"example.com/owner": "ci"},
    });
    let config = config_from(&kubeconfig_path, fleet);
    let template = &config.fleets[FLEET];
    let PodSource::Spec(base) = &template.pod else {
        panic!("an inline template")
    };

    let plain = spec("true");
    let mut sized = spec("true");
    sized
        .job
        .agent_query_rules
        .push("resource_class=large".into());
    let stepped = with_plugins(
        spec("true"),
        json!([{"github.com/buildkite-plugins/kubernetes-buildkite-plugin": {
            "metadata": {"labels": {"team": "core"}, "annotations": {"note": "x"}},
            "checkout": {"skip": true, "cloneFlags": "--depth=1"},
            "gitEnvFrom": [{"secretRef": {"name": "git-ssh-key"}}],
            "sidecars": [{"image": "postgres:16", "env": [{"name": "POSTGRES_PASSWORD", "value": "pw"}]}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "podSpec": {"volumes": [{"name": "cache", "emptyDir": {}}],
                        "containers": [{"name": "tests", "image": "alpine:latest", "command": ["echo \"MOUNTAIN=$$MOUNTAIN\""]}]},
            "podSpecPatch": {"containers": [{"name": "tests", "env": [{"name": "MOUNTAIN", "value": "cotopaxi"}]}]},
            "jobActiveDeadlineSeconds": 3600,
        }}]),
    );
    let mut documents = Vec::new();
    for launch in [&plain, &sized, &stepped] {
        let plugin = step_plugin(launch).expect("plugin");
        let built = build(
            launch,
            plugin.as_ref(),
            &BuildInputs {
                fleet: template,
                base: Some(base),
                step_template: None,
                scheduler_id: &config.scheduler_id,
                job_ttl: config.settings.job_ttl.get(),
            },
        )
        .expect("builds");
        documents.push(with_kind(
            serde_json::to_value(&built.job).unwrap(),
            "batch/v1",
            "Job",
        ));
        documents.push(with_kind(
            serde_json::to_value(&built.secret).unwrap(),
            "v1",
            "Secret",
        ));
    }
    documents.push(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "updraft-scheduler", "namespace": NAMESPACE},
        "spec": {"holderIdentity": "updraft-0", "leaseDurationSeconds": 10, "leaseTransitions": 0,
                 "acquireTime": "2026-11-28T10:00:00.000000Z", "renewTime": "2026-11-28T10:00:02.000000Z"},
    }));
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, document) in documents.iter().enumerate() {
        let file = dir.path().join(format!("object-{i}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(document).unwrap()).expect("write");
        validate(&file);
    }
}

fn config_from(kubeconfig_path: &Path, fleet: Value) -> updraft_kubernetes::KubernetesConfig {
    let mut errors = updraft_config::Errors::new();
    let config = updraft_kubernetes::read_config(
        &json!({"kubeconfig": kubeconfig_path.to_string_lossy(), "namespace": NAMESPACE}),
        &[updraft_kubernetes::FleetTable {
            at: updraft_config::Path::root().key("fleet").index(0),
            name: FLEET.into(),
            table: fleet,
            tags: vec!["resource_class=large".into()],
        }],
        "updraft",
        &mut errors,
    );
    let errors = errors.into_vec();
    assert!(errors.is_empty(), "{errors:?}");
    config.expect("config")
}

#[test]
fn the_example_kustomize_overlay_renders_valid_kubernetes_1_29() {
    let overlay =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/overlays/example");
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).expect("utf-8");
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("write");
    validate(&file);
}
