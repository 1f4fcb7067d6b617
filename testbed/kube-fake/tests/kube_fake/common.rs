//! Shared test setup: a fake with quick timings, a `kube::Client` for it, object builders and
//! a poll helper.

use k8s_openapi::api::batch::v1::Job;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Once;
use std::time::{Duration, Instant};
use updraft_kube_fake::{KubeFake, KubeFakeHandle, KubeFakeOptions};

/// The longest any condition in these tests may take to come true.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A fake with short back-offs, tuned by `edit`.
pub fn start_with(edit: impl FnOnce(&mut KubeFakeOptions)) -> KubeFakeHandle {
    let mut options = KubeFakeOptions {
        image_pull_backoff: Duration::from_millis(300),
        crash_loop_backoff: Duration::from_millis(100),
        job_backoff: Duration::from_millis(100),
        bookmark_interval: Duration::from_secs(1),
        ..KubeFakeOptions::default()
    };
    edit(&mut options);
    KubeFake::start(options).expect("the kube fake starts")
}

pub fn start() -> KubeFakeHandle {
    start_with(|_| {})
}

/// A `kube::Client` built from the fake's kubeconfig, as a user's program would build one.
pub async fn client(fake: &KubeFakeHandle) -> Client {
    // The workspace brings two rustls crypto providers; the process must pick one.
    static CRYPTO: Once = Once::new();
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
    let kubeconfig = Kubeconfig::from_yaml(&fake.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    Client::try_from(config).expect("client builds")
}

/// A Job of one container running `command` (image `busybox:1.36`), labelled `app=<label>`.
pub fn job(name: &str, label: &str, command: &[&str]) -> Job {
    job_from(json!({
        "metadata": {"name": name, "labels": {"app": label}},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "busybox:1.36", "command": command}],
            }},
        },
    }))
}

pub fn job_from(value: Value) -> Job {
    serde_json::from_value(value).expect("a valid Job")
}

/// Polls `probe` until it returns `Some`, or panics naming what never happened.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a stored object to satisfy `test`, returning it.
pub async fn stored(
    fake: &KubeFakeHandle,
    what: &str,
    mut find: impl FnMut(&KubeFakeHandle) -> Option<Value>,
) -> Value {
    fake.wait_for(PATIENCE, |f| find(f))
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// The one pod of a Job, once it exists.
pub async fn job_pod(fake: &KubeFakeHandle, namespace: &str, job: &str) -> Value {
    stored(fake, &format!("a pod of job {job}"), |f| {
        f.list(updraft_kube_fake::Resource::Pods, Some(namespace))
            .into_iter()
            .find(|p| p["metadata"]["labels"]["job-name"] == job)
    })
    .await
}
