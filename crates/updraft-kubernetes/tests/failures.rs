//! Failures explained, against the fake's scheduler and kubelet: an image that cannot be
//! pulled is refused after the grace with the image and the kubelet's reason; a pod that
//! cannot be scheduled waits with the scheduler's message and is refused at the pending
//! deadline; a pod evicted, lost with its node or deleted fails the launch with the reason.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use updraft_backends::{Backend, LaunchPhase};
use updraft_kube_fake::Resource;

fn pod_of(fake: &updraft_kube_fake::KubeFakeHandle, job: uuid::Uuid) -> Option<String> {
    fake.list(Resource::Pods, Some(NAMESPACE))
        .into_iter()
        .find(|p| labels_of(p).get("buildkite.com/job-uuid") == Some(&job.to_string()))
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_refused_after_the_grace_with_the_image_and_reason() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let mut fleet = fleet_table();
    fleet["image"] = json!("registry.does-not-exist.invalid/acme/agent:1");
    let backend = backend(
        config(&kubeconfig, json!({"image_pull_grace": "2s"}), fleet),
        Duration::from_secs(300),
    )
    .await;
    let spec = spec("true");
    let launched = Instant::now();
    backend.launch(&spec).await.expect("launch");
    let waiting = phase_until(&backend, &spec.name, |_| true).await;
    assert!(
        matches!(
            waiting.phase,
            LaunchPhase::Pending | LaunchPhase::Refused { .. }
        ),
        "{waiting:?}"
    );
    let refused = phase_until(&backend, &spec.name, LaunchPhase::is_finished).await;
    let LaunchPhase::Refused { reason } = refused.phase else {
        panic!("{refused:?}")
    };
    assert!(
        reason.contains("registry.does-not-exist.invalid/acme/agent:1"),
        "{reason}"
    );
    assert!(
        reason.contains("ErrImagePull") || reason.contains("ImagePullBackOff"),
        "{reason}"
    );
    assert!(
        launched.elapsed() < Duration::from_secs(2 + 5),
        "refused after {:?}",
        launched.elapsed()
    );
    assert!(
        launched.elapsed() >= Duration::from_secs(2),
        "not before the grace: {:?}",
        launched.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_waits_with_the_schedulers_message_and_is_refused_at_the_pending_deadline(
) {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let mut fleet = fleet_table();
    fleet["resources"] = json!({"requests": {"cpu": "1000"}});
    let backend = backend(
        config(&kubeconfig, json!({}), fleet),
        Duration::from_secs(4),
    )
    .await;
    let spec = spec("true");
    backend.launch(&spec).await.expect("launch");
    let waiting = phase_until(&backend, &spec.name, |_| true).await;
    let waiting = if waiting.detail.is_none() {
        eventually("the scheduler's message", || async {
            status_of(&backend, &spec.name)
                .await
                .filter(|s| s.detail.is_some())
        })
        .await
    } else {
        waiting
    };
    assert_eq!(waiting.phase, LaunchPhase::Pending);
    assert!(
        waiting
            .detail
            .as_deref()
            .unwrap()
            .contains("Insufficient cpu"),
        "{waiting:?}"
    );
    let refused = phase_until(&backend, &spec.name, LaunchPhase::is_finished).await;
    let LaunchPhase::Refused { reason } = refused.phase else {
        panic!("{refused:?}")
    };
    assert!(
        reason.contains("0/1 nodes are available") && reason.contains("Insufficient cpu"),
        "{reason}"
    );
    let age = (chrono::Utc::now() - refused.started_at).to_std().unwrap();
    assert!(
        age >= Duration::from_secs(3) && age < Duration::from_secs(4),
        "refused at {age:?}, just before the 4 s deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pod_fails_the_launch_with_the_kubelets_message() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let spec = spec("sleep 60");
    backend.launch(&spec).await.expect("launch");
    phase_until(&backend, &spec.name, |p| *p == LaunchPhase::Running).await;
    let pod = pod_of(&fake, spec.job_id).expect("its pod");
    fake.evict(NAMESPACE, &pod, "The node was low on resource: memory.")
        .expect("evict");
    let failed = phase_until(&backend, &spec.name, LaunchPhase::is_finished).await;
    assert_eq!(
        failed.phase,
        LaunchPhase::Failed {
            reason: "the pod was evicted (Evicted: The node was low on resource: memory.)".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_and_a_deleted_pod_fail_their_launches() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let on_lost_node = spec("sleep 60");
    backend.launch(&on_lost_node).await.expect("launch");
    phase_until(&backend, &on_lost_node.name, |p| *p == LaunchPhase::Running).await;
    fake.lose_node();
    let failed = phase_until(&backend, &on_lost_node.name, LaunchPhase::is_finished).await;
    let LaunchPhase::Failed { reason } = failed.phase else {
        panic!("{failed:?}")
    };
    assert!(reason.starts_with("the pod's node was lost"), "{reason}");

    let deleted = spec("sleep 60");
    backend.launch(&deleted).await.expect("launch");
    phase_until(&backend, &deleted.name, |p| *p == LaunchPhase::Running).await;
    let pod = pod_of(&fake, deleted.job_id).expect("its pod");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(backend.client(), NAMESPACE);
    pods.delete(&pod, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("delete the pod");
    let failed = phase_until(&backend, &deleted.name, LaunchPhase::is_finished).await;
    assert!(
        matches!(failed.phase, LaunchPhase::Failed { .. }),
        "{failed:?}"
    );
}
