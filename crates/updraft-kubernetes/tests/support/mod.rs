//! Shared setup for the tests against the Kubernetes fake: a fake with quick timings, the
//! backend's config read the way the binary reads it (through a kubeconfig file, so the real
//! `kube` client is built as in production), launch specs, and a poll helper.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};
use updraft_backends::{Backend, JobContext, LaunchName, LaunchPhase, LaunchSpec, LaunchStatus};
use updraft_config::{Errors, Path};
use updraft_kube_fake::{KubeFake, KubeFakeHandle, KubeFakeOptions};
use updraft_kubernetes::{read_config, FleetTable, KubernetesBackend, KubernetesConfig};
use updraft_model::Secret;
use uuid::Uuid;

/// The longest anything here may take to come true.
pub const PATIENCE: Duration = Duration::from_secs(20);
pub const NAMESPACE: &str = "ci";
pub const FLEET: &str = "linux";

/// A fake with the namespace `ci` and short back-offs, tuned by `edit`.
pub fn fake_with(edit: impl FnOnce(&mut KubeFakeOptions)) -> KubeFakeHandle {
    install_crypto();
    let mut options = KubeFakeOptions {
        namespaces: vec![NAMESPACE.into()],
        image_pull_backoff: Duration::from_millis(300),
        crash_loop_backoff: Duration::from_millis(100),
        job_backoff: Duration::from_millis(100),
        bookmark_interval: Duration::from_secs(1),
        ..KubeFakeOptions::default()
    };
    edit(&mut options);
    KubeFake::start(options).expect("the kube fake starts")
}

pub fn fake() -> KubeFakeHandle {
    fake_with(|_| {})
}

/// kube and the AWS SDK bring two rustls crypto providers; the process picks one.
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A kubeconfig file for the fake, kept as long as the returned guard.
pub struct Kubeconfig {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn kubeconfig(fake: &KubeFakeHandle) -> Kubeconfig {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path).expect("kubeconfig");
    Kubeconfig { _dir: dir, path }
}

/// The backend's config from a `[kubernetes]` table (the kubeconfig is added) and one fleet
/// table; panics on any config problem.
pub fn config(kubeconfig: &Kubeconfig, section: Value, fleet: Value) -> KubernetesConfig {
    let mut section = section;
    section["kubeconfig"] = json!(kubeconfig.path.to_string_lossy());
    section["namespace"] = json!(NAMESPACE);
    let fleets = [FleetTable {
        at: Path::root().key("fleet").index(0),
        name: FLEET.into(),
        table: fleet,
        tags: vec!["resource_class=large".into()],
    }];
    let mut errors = Errors::new();
    let config = read_config(&section, &fleets, "updraft-test", &mut errors);
    let errors = errors.into_vec();
    assert!(errors.is_empty(), "config problems: {errors:?}");
    config.expect("config")
}

/// A fleet table with an image and a `large` resource class.
pub fn fleet_table() -> Value {
    json!({"image": "busybox:1.36", "resource_classes": {"large": {"requests": {"cpu": "2"}}}})
}

pub async fn backend(config: KubernetesConfig, pending_deadline: Duration) -> KubernetesBackend {
    let mut registry = prometheus_client::registry::Registry::default();
    KubernetesBackend::open(
        config,
        [(FLEET.to_string(), pending_deadline)].into(),
        &mut registry,
    )
    .await
    .expect("the backend opens")
}

/// A launch running `script` with `sh -c`, holding a job acquisition token.
pub fn spec(script: &str) -> LaunchSpec {
    let job_id = Uuid::new_v4();
    LaunchSpec {
        name: LaunchName::for_job(job_id),
        job_id,
        fleet: FLEET.into(),
        job: JobContext {
            queue: "linux".into(),
            agent_query_rules: vec!["queue=linux".into()],
            pipeline_slug: Some("app".into()),
            build_number: Some(1),
            ..JobContext::default()
        },
        env: [
            (
                "BUILDKITE_AGENT_ACQUIRE_JOB".to_string(),
                job_id.to_string(),
            ),
            ("GREETING".to_string(), "hello".to_string()),
        ]
        .into(),
        secrets: [(
            "BUILDKITE_AGENT_TOKEN".to_string(),
            Secret::new(format!("bkaj_{job_id}")),
        )]
        .into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        deadline: Duration::from_secs(600),
    }
}

/// The spec with `BUILDKITE_PLUGINS` set to `plugins`.
pub fn with_plugins(mut spec: LaunchSpec, plugins: Value) -> LaunchSpec {
    spec.job
        .env
        .insert("BUILDKITE_PLUGINS".into(), plugins.to_string());
    spec
}

pub async fn status_of(backend: &KubernetesBackend, name: &LaunchName) -> Option<LaunchStatus> {
    backend
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|s| &s.name == name)
}

/// Poll until the launch's phase satisfies `done`; returns its status.
pub async fn phase_until(
    backend: &KubernetesBackend,
    name: &LaunchName,
    done: impl Fn(&LaunchPhase) -> bool,
) -> LaunchStatus {
    let give_up = Instant::now() + PATIENCE;
    loop {
        let status = status_of(backend, name).await;
        if let Some(status) = status.as_ref().filter(|s| done(&s.phase)) {
            return status.clone();
        }
        assert!(
            Instant::now() < give_up,
            "launch {name} never reached the phase; last {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Poll `probe` every 25 ms for up to `patience`.
pub async fn eventually_for<T>(
    patience: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let give_up = Instant::now() + patience;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Poll an async `probe` until it returns `Some`, or panic naming `what`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An object's labels.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default()
}
