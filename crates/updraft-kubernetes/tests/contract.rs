//! The backend contract against the Kubernetes fake, through the real `kube` client: launching
//! twice is one Job (with its token in a Secret the Job owns, never in the Job), a launch is
//! listed as soon as `launch` returns, a new backend instance finds the launches of the old,
//! stop deletes a pending launch within 2 s and ends a running one through its grace, delete
//! is idempotent and takes the pod and the Secret with the Job, the deadline ends a launch,
//! and a Job the API server refuses is `Invalid` with the field.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use updraft_backends::{Backend, BackendError, LaunchOutcome, LaunchPhase};
use updraft_kube_fake::Resource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launching_twice_is_one_job_whose_pod_gets_the_token_from_a_secret_it_owns() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let spec = spec(
        r#"test "$BUILDKITE_AGENT_TOKEN" = "bkaj_$BUILDKITE_AGENT_ACQUIRE_JOB" && test "$GREETING" = hello"#,
    );

    assert_eq!(
        backend.launch(&spec).await.expect("launch"),
        LaunchOutcome::Started
    );
    assert!(
        status_of(&backend, &spec.name).await.is_some(),
        "listed as soon as launch returns"
    );
    assert_eq!(
        backend.launch(&spec).await.expect("again"),
        LaunchOutcome::AlreadyExists
    );

    let job = fake
        .get(Resource::Jobs, NAMESPACE, spec.name.as_str())
        .expect("the Job");
    let secret = fake
        .get(Resource::Secrets, NAMESPACE, spec.name.as_str())
        .expect("the Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        job["metadata"]["uid"]
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Job");
    let token = spec.secrets["BUILDKITE_AGENT_TOKEN"].expose().to_string();
    assert!(
        !job.to_string().contains(&token),
        "the token is only in the Secret"
    );
    assert_eq!(fake.list(Resource::Jobs, Some(NAMESPACE)).len(), 1);
    assert_eq!(labels_of(&job)["updraft.dev/fleet"], FLEET);

    let done = phase_until(&backend, &spec.name, LaunchPhase::is_finished).await;
    assert_eq!(
        done.phase,
        LaunchPhase::Succeeded,
        "the agent saw its token and environment: {done:?}"
    );

    let restarted = support::backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let found = status_of(&restarted, &spec.name)
        .await
        .expect("a new instance lists the launch");
    assert_eq!(found.phase, LaunchPhase::Succeeded);
    assert_eq!(found.fleet, FLEET);
    let creates = fake.request_count("create", "jobs");
    assert_eq!(
        restarted.launch(&spec).await.expect("after a restart"),
        LaunchOutcome::AlreadyExists
    );
    assert_eq!(
        fake.request_count("create", "jobs"),
        creates,
        "the cache knew it: no second create was even tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_deletes_a_pending_launch_within_two_seconds_and_ends_a_running_one_through_its_grace()
{
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;

    fake.pause_scheduling(true);
    let pending = spec("sleep 60");
    backend.launch(&pending).await.expect("launch");
    eventually("the pending pod", || async {
        fake.list(Resource::Pods, Some(NAMESPACE))
            .into_iter()
            .find(|p| labels_of(p)["buildkite.com/job-uuid"] == pending.job_id.to_string())
    })
    .await;
    let stopped_at = Instant::now();
    backend.stop(&pending.name).await.expect("stop");
    eventually("the pending Job and pod to be gone", || async {
        let job = fake.get(Resource::Jobs, NAMESPACE, pending.name.as_str());
        let pods = fake.list(Resource::Pods, Some(NAMESPACE));
        (job.is_none() && pods.is_empty()).then_some(())
    })
    .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopped_at.elapsed()
    );
    fake.pause_scheduling(false);

    let running = spec("sleep 60");
    backend.launch(&running).await.expect("launch");
    phase_until(&backend, &running.name, |p| *p == LaunchPhase::Running).await;
    backend.stop(&running.name).await.expect("stop");
    let stopped = phase_until(&backend, &running.name, LaunchPhase::is_finished).await;
    assert_eq!(
        stopped.phase,
        LaunchPhase::Failed {
            reason: "stopped by Updraft".into()
        }
    );
    eventually("the stopped pod's processes to end", || async {
        fake.running_pods().is_empty().then_some(())
    })
    .await;
    backend
        .stop(&running.name)
        .await
        .expect("stopping again is a no-op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_takes_the_pod_and_the_secret_with_the_job_and_deleting_twice_is_fine() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let spec = spec("true");
    backend.launch(&spec).await.expect("launch");
    phase_until(&backend, &spec.name, LaunchPhase::is_finished).await;

    backend.delete(&spec.name).await.expect("delete");
    backend
        .delete(&spec.name)
        .await
        .expect("deleting again is not an error");
    eventually("the Job, pod and Secret to be gone", || async {
        let left = fake.list(Resource::Jobs, Some(NAMESPACE)).len()
            + fake.list(Resource::Pods, Some(NAMESPACE)).len()
            + fake.list(Resource::Secrets, Some(NAMESPACE)).len();
        (left == 0).then_some(())
    })
    .await;
    eventually("the launch to leave the listing", || async {
        status_of(&backend, &spec.name)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        backend.launch(&spec).await.expect("relaunch after delete"),
        LaunchOutcome::Started
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_ends_a_launch() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let mut slow = spec("sleep 60");
    slow.deadline = Duration::from_secs(1);
    backend.launch(&slow).await.expect("launch");
    let ended = phase_until(&backend, &slow.name, LaunchPhase::is_finished).await;
    let LaunchPhase::Failed { reason } = ended.phase else {
        panic!("{ended:?}")
    };
    assert!(reason.contains("activeDeadlineSeconds"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_api_server_refuses_is_invalid_with_the_field_and_nothing_is_left() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let backend = backend(
        config(&kubeconfig, json!({}), fleet_table()),
        Duration::from_secs(300),
    )
    .await;
    let spec = with_plugins(
        spec("true"),
        json!([{"kubernetes": {"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/cache"}]}}]),
    );
    let error = backend.launch(&spec).await.expect_err("refused");
    assert!(matches!(error, BackendError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("volumeMounts"), "{error}");
    assert!(fake.list(Resource::Secrets, Some(NAMESPACE)).is_empty());
    assert!(status_of(&backend, &spec.name).await.is_none());
}
