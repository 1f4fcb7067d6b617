//! The watch behind `list()`: a cut watch resumes from its last `resourceVersion` without
//! listing again; a `410 Gone` (expired history) makes it list again and the cache matches
//! the server afterwards; and the cache stays small however large the watched Jobs are.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use updraft_backends::Backend;
use updraft_kube_fake::Resource;
use updraft_kubernetes::metrics::WatchLabels;
use updraft_kubernetes::KubernetesBackend;
use uuid::Uuid;

/// A Job as another scheduler process (or an earlier one) would have left it, with `env_bytes`
/// of environment in its pod template.
fn foreign_job(env_bytes: usize) -> (Uuid, Value) {
    let id = Uuid::new_v4();
    let job = json!({
        "metadata": {"name": format!("updraft-{id}"), "labels": {
            "app.kubernetes.io/managed-by": "updraft", "updraft.dev/scheduler": "updraft-test",
            "updraft.dev/fleet": FLEET, "buildkite.com/job-uuid": id.to_string()}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"app.kubernetes.io/managed-by": "updraft", "updraft.dev/scheduler": "updraft-test",
                                    "buildkite.com/job-uuid": id.to_string()}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": "busybox:1.36",
                "command": ["true"], "env": [{"name": "PADDING", "value": "x".repeat(env_bytes)}]}]}}},
    });
    (id, job)
}

fn relists(backend: &KubernetesBackend, resource: &'static str) -> u64 {
    backend
        .metrics()
        .relists
        .get_or_create(&WatchLabels {
            resource,
            namespace: NAMESPACE.into(),
        })
        .get()
}

async fn listed(backend: &KubernetesBackend) -> Vec<String> {
    let mut names: Vec<String> = backend
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_watch_resumes_and_an_expired_history_relists_into_a_cache_that_matches_the_server() {
    let fake = fake_with(|o| o.run_containers = false);
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        (relists(&backend, "jobs"), relists(&backend, "pods")),
        (1, 1)
    );

    fake.drop_watches();
    let (first, job) = foreign_job(10);
    fake.create(Resource::Jobs, NAMESPACE, job).expect("create");
    eventually("the Job created after the cut", || async {
        listed(&backend)
            .await
            .contains(&format!("updraft-{first}"))
            .then_some(())
    })
    .await;
    assert_eq!(
        relists(&backend, "jobs"),
        1,
        "a cut watch resumes from its resourceVersion"
    );

    fake.expire_watch_history();
    let (second, job) = foreign_job(10);
    fake.create(Resource::Jobs, NAMESPACE, job).expect("create");
    eventually("the Job created after the history expired", || async {
        listed(&backend)
            .await
            .contains(&format!("updraft-{second}"))
            .then_some(())
    })
    .await;
    eventually("a relist after 410 Gone", || async {
        (relists(&backend, "jobs") == 2).then_some(())
    })
    .await;
    let mut on_server: Vec<String> = fake
        .list(Resource::Jobs, Some(NAMESPACE))
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    on_server.sort();
    assert_eq!(listed(&backend).await, on_server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_holds_a_few_hundred_bytes_per_launch_however_large_the_jobs_are() {
    const JOBS: usize = 1000;
    const PADDING: usize = 20_000;
    let fake = fake_with(|o| o.run_containers = false);
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({"list_page_size": 100}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    for _ in 0..JOBS {
        let (_, job) = foreign_job(PADDING);
        fake.create(Resource::Jobs, NAMESPACE, job).expect("create");
    }
    eventually("every Job and pod in the cache", || async {
        let listed = backend.list().await.expect("list").len();
        let pods = backend.metrics().cached_pods.get();
        (listed == JOBS && pods as usize == JOBS).then_some(())
    })
    .await;
    let per_launch = backend.cache_footprint() / JOBS;
    assert!(
        per_launch < 1024,
        "{per_launch} bytes per launch for Jobs and pods of over {PADDING} bytes each"
    );
    assert_eq!(
        backend.metrics().cached_bytes.get() as usize,
        backend.cache_footprint()
    );
}
