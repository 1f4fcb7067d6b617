//! The job controller, scheduler and kubelet as a client sees them: exit codes and
//! conditions, TTL and deadlines, native sidecars, Secrets in the environment, scheduling
//! failures, image pull failures, eviction, OOM kills, a lost node, and no process left
//! behind.

use crate::common::{client, job, job_from, job_pod, start, start_with, stored, PATIENCE};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, EvictParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::time::Duration;
use updraft_kube_fake::{BadImageRule, KubeFakeHandle, Resource};

fn condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

async fn finished_job(fake: &KubeFakeHandle, name: &str, kind: &str) -> Value {
    stored(fake, &format!("job {name} to be {kind}"), |f| {
        f.get(Resource::Jobs, "default", name)
            .filter(|j| condition(j, kind).is_some())
    })
    .await
}

async fn pod_phase(fake: &KubeFakeHandle, name: &str, phase: &str) -> Value {
    stored(fake, &format!("pod {name} to be {phase}"), |f| {
        f.get(Resource::Pods, "default", name)
            .filter(|p| p["status"]["phase"] == phase)
    })
    .await
}

fn event_reasons(fake: &KubeFakeHandle, name: &str) -> Vec<String> {
    fake.events_for("default", name)
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_failing_container_fails_the_job_with_its_exit_code() {
    let fake = start();
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("fails", "k", &["sh", "-c", "echo hi; exit 3"]),
    )
    .await
    .unwrap();
    let failed = finished_job(&fake, "fails", "Failed").await;
    assert_eq!(
        condition(&failed, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(failed["status"]["failed"], 1);
    assert!(condition(&failed, "FailureTarget").is_some());
    let pod = job_pod(&fake, "default", "fails").await;
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("fails-") && name.len() == "fails-".len() + 5,
        "{name}"
    );
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["exitCode"].as_i64(),
            terminated["reason"].as_str()
        ),
        (Some(3), Some("Error"))
    );
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(
        pod["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "fails"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    let pods: Api<Pod> = Api::namespaced(client, "default");
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.unwrap(),
        "hi\n"
    );
    let job_events = event_reasons(&fake, "fails");
    assert!(
        job_events.contains(&"SuccessfulCreate".into())
            && job_events.contains(&"BackoffLimitExceeded".into()),
        "{job_events:?}"
    );
    let pod_events = event_reasons(&fake, &name);
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(
            pod_events.contains(&reason.into()),
            "{reason} missing from {pod_events:?}"
        );
    }
}

#[tokio::test]
async fn retries_within_the_backoff_limit_then_completes_and_ttl_deletes() {
    let fake = start();
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("ran-once");
    let script = format!(
        "if [ -e {0} ]; then exit 0; fi; touch {0}; exit 1",
        flag.display()
    );
    let mut retried = job("retried", "k", &["sh", "-c", &script]);
    retried.spec.as_mut().unwrap().backoff_limit = Some(1);
    jobs.create(&PostParams::default(), &retried).await.unwrap();
    let complete = finished_job(&fake, "retried", "Complete").await;
    assert_eq!(
        (
            complete["status"]["succeeded"].as_i64(),
            complete["status"]["failed"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert!(complete["status"]["completionTime"].is_string());
    let ttl = Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": 0}}));
    jobs.patch("retried", &PatchParams::default(), &ttl)
        .await
        .unwrap();
    stored(&fake, "the TTL to delete the job and its pods", |f| {
        let gone = f.get(Resource::Jobs, "default", "retried").is_none()
            && f.list(Resource::Pods, Some("default")).is_empty();
        gone.then_some(Value::Null)
    })
    .await;
}

#[tokio::test]
async fn active_deadline_fails_the_job_and_kills_its_pod() {
    let fake = start();
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let mut slow = job("slow", "k", &["sleep", "1000"]);
    slow.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    jobs.create(&PostParams::default(), &slow).await.unwrap();
    let failed = finished_job(&fake, "slow", "Failed").await;
    let condition = condition(&failed, "Failed").unwrap();
    assert_eq!(condition["reason"], "DeadlineExceeded");
    assert_eq!(
        condition["message"],
        "Job was active longer than specified deadline"
    );
    assert!(
        fake.running_processes().is_empty(),
        "{:?}",
        fake.running_processes()
    );
    let created = fake
        .events_for("default", "slow")
        .into_iter()
        .find(|e| e["reason"] == "SuccessfulCreate")
        .expect("a SuccessfulCreate event");
    let pod = created["message"]
        .as_str()
        .unwrap()
        .trim_start_matches("Created pod: ")
        .to_string();
    let pod_events = event_reasons(&fake, &pod);
    assert!(pod_events.contains(&"Killing".into()), "{pod_events:?}");
}

#[tokio::test]
async fn a_native_sidecar_is_stopped_once_the_main_container_exits() {
    let fake = start();
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let with_sidecar = job_from(json!({
        "metadata": {"name": "sidecar"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "initContainers": [
                {"name": "setup", "image": "busybox", "command": ["true"]},
                {"name": "proxy", "image": "busybox", "restartPolicy": "Always", "command": ["sleep", "1000"]},
            ],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "sleep 0.3"]}],
        }}},
    }));
    jobs.create(&PostParams::default(), &with_sidecar)
        .await
        .unwrap();
    finished_job(&fake, "sidecar", "Complete").await;
    let pod = job_pod(&fake, "default", "sidecar").await;
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let init = &pod["status"]["initContainerStatuses"];
    assert_eq!(init[0]["state"]["terminated"]["exitCode"], 0);
    assert_eq!(
        init[1]["state"]["terminated"]["exitCode"], 143,
        "the sidecar got SIGTERM: {init}"
    );
    assert!(fake.running_processes().is_empty());
    let started: Vec<String> = fake
        .processes_started()
        .iter()
        .map(|p| p.container.clone())
        .collect();
    assert_eq!(started, ["setup", "proxy", "main"]);
}

#[tokio::test]
async fn secret_env_waits_for_the_secret_then_reaches_the_process() {
    let fake = start();
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let with_secret = job_from(json!({
        "metadata": {"name": "needs-token"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "workspace", "emptyDir": {}}],
            "containers": [{
                "name": "main", "image": "buildkite/agent:3",
                "command": ["sh", "-c", "echo \"$(TOKEN_LABEL)=$TOKEN $MY_POD $KUBE_FAKE_IMAGE\" > /workspace/out; cat /workspace/out"],
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent-token", "key": "token"}}},
                    {"name": "TOKEN_LABEL", "value": "token"},
                    {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
            }],
        }}},
    }));
    jobs.create(&PostParams::default(), &with_secret)
        .await
        .unwrap();
    let waiting = stored(&fake, "CreateContainerConfigError", |f| {
        f.list(Resource::Pods, Some("default"))
            .into_iter()
            .find(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
    })
    .await;
    assert_eq!(
        waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"],
        "secret \"agent-token\" not found"
    );
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "agent-token"}, "stringData": {"token": "bkct_123"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    finished_job(&fake, "needs-token", "Complete").await;
    let pod_name = waiting["metadata"]["name"].as_str().unwrap().to_string();
    let logs = Api::<Pod>::namespaced(client, "default")
        .logs(&pod_name, &LogParams::default())
        .await
        .unwrap();
    assert_eq!(
        logs,
        format!("token=bkct_123 {pod_name} buildkite/agent:3\n")
    );
    let out = fake
        .pod_dir("default", &pod_name)
        .unwrap()
        .join("volumes/workspace/out");
    assert!(std::fs::read_to_string(out).unwrap().starts_with("token="));
}

#[tokio::test]
async fn a_pod_that_does_not_fit_waits_with_failed_scheduling() {
    let fake = start_with(|o| o.node.cpu = "1".into());
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let mut big = job("big", "k", &["true"]);
    big.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "2", "memory": "1Gi"}})).unwrap());
    jobs.create(&PostParams::default(), &big).await.unwrap();
    let pod = stored(&fake, "an unschedulable pod", |f| {
        f.list(Resource::Pods, Some("default"))
            .into_iter()
            .find(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
    })
    .await;
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    let event = fake
        .events_for("default", name)
        .into_iter()
        .find(|e| e["reason"] == "FailedScheduling")
        .unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        event["message"],
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    assert_eq!(event["source"]["component"], "default-scheduler");
    fake.set_node_capacity("4", "8Gi").unwrap();
    finished_job(&fake, "big", "Complete").await;
}

#[tokio::test]
async fn a_bad_image_goes_from_err_image_pull_to_back_off() {
    let fake = start();
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let mut bad = job("bad-image", "k", &["true"]);
    bad.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("registry.example/does-not-exist:1".into());
    jobs.create(&PostParams::default(), &bad).await.unwrap();
    let waiting_reason = |reason: &'static str| {
        move |f: &KubeFakeHandle| {
            f.list(Resource::Pods, Some("default"))
                .into_iter()
                .find(|p| {
                    p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
                })
        }
    };
    let pulling = stored(&fake, "ErrImagePull", waiting_reason("ErrImagePull")).await;
    let message = pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("failed to pull and unpack image \"registry.example/does-not-exist:1\""),
        "{message}"
    );
    let backing_off = stored(
        &fake,
        "ImagePullBackOff",
        waiting_reason("ImagePullBackOff"),
    )
    .await;
    assert_eq!(
        backing_off["status"]["containerStatuses"][0]["state"]["waiting"]["message"],
        "Back-off pulling image \"registry.example/does-not-exist:1\""
    );
    let events = fake.events_for("default", backing_off["metadata"]["name"].as_str().unwrap());
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"Error: ErrImagePull") && messages.contains(&"Error: ImagePullBackOff"),
        "{messages:?}"
    );
    assert!(fake.processes_started().is_empty());
    fake.set_bad_image_rule(BadImageRule {
        substrings: vec![],
        registry_suffixes: vec![],
    });
    finished_job(&fake, "bad-image", "Complete").await;
}

#[tokio::test]
async fn eviction_oom_and_a_lost_node_fail_pods_with_their_reasons() {
    let fake = start();
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    for name in ["evicted", "oom", "lost"] {
        jobs.create(&PostParams::default(), &job(name, "k", &["sleep", "1000"]))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    for name in ["evicted", "oom", "lost"] {
        let pod = job_pod(&fake, "default", name).await;
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
        pod_phase(&fake, &pod_name, "Running").await;
        names.push(pod_name);
    }
    let message =
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ";
    fake.evict("default", &names[0], message).unwrap();
    let evicted = pod_phase(&fake, &names[0], "Failed").await;
    assert_eq!(
        (
            evicted["status"]["reason"].as_str(),
            evicted["status"]["message"].as_str()
        ),
        (Some("Evicted"), Some(message))
    );
    assert!(event_reasons(&fake, &names[0]).contains(&"Evicted".into()));

    fake.oom_kill("default", &names[1], "main").unwrap();
    let oom = pod_phase(&fake, &names[1], "Failed").await;
    let terminated = &oom["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (
            terminated["reason"].as_str(),
            terminated["exitCode"].as_i64()
        ),
        (Some("OOMKilled"), Some(137))
    );

    fake.lose_node();
    let lost = pod_phase(&fake, &names[2], "Failed").await;
    assert_eq!(lost["status"]["reason"], "NodeLost");
    assert_eq!(
        lost["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "ContainerStatusUnknown"
    );
    finished_job(&fake, "lost", "Failed").await;

    let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}]}}))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &plain).await.unwrap();
    pod_phase(&fake, "plain", "Running").await;
    pods.evict("plain", &EvictParams::default()).await.unwrap();
    stored(&fake, "the API-evicted pod to be deleted", |f| {
        f.get(Resource::Pods, "default", "plain")
            .is_none()
            .then_some(Value::Null)
    })
    .await;
    assert!(fake
        .wait_for(PATIENCE, |f| f.running_processes().is_empty().then_some(()))
        .await
        .is_some());
}

#[tokio::test]
async fn without_a_kubelet_pods_are_finished_by_hand() {
    let fake = start_with(|o| o.run_containers = false);
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    jobs.create(
        &PostParams::default(),
        &job("by-hand", "k", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    let pod = job_pod(&fake, "default", "by-hand").await;
    let name = pod["metadata"]["name"].as_str().unwrap();
    stored(&fake, "the pod to be bound", |f| {
        f.get(Resource::Pods, "default", name)
            .filter(|p| p["spec"]["nodeName"] == "kube-fake-node")
    })
    .await;
    fake.finish_pod("default", name, 0).unwrap();
    finished_job(&fake, "by-hand", "Complete").await;
    assert!(fake.processes_started().is_empty());
}

#[tokio::test]
async fn shutdown_leaves_no_process_behind() {
    let fake = start();
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    jobs.create(
        &PostParams::default(),
        &job("lingering", "k", &["sh", "-c", "sleep 1000 & sleep 1000"]),
    )
    .await
    .unwrap();
    let running = fake
        .wait_for(PATIENCE, |f| {
            (!f.running_processes().is_empty()).then(|| f.running_processes())
        })
        .await
        .expect("the container runs");
    let work_dir = fake.pod_dir("default", &running[0].pod).unwrap();
    fake.shutdown();
    let groups: Vec<u32> = running.iter().map(|p| p.pid).collect();
    assert!(
        live_members(&groups).is_empty(),
        "still alive: {:?}",
        live_members(&groups)
    );
    assert!(
        !work_dir.exists(),
        "the temporary work directory is removed"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Non-zombie processes in these process groups, from `/proc`.
fn live_members(groups: &[u32]) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let group: u32 = fields[2].parse().unwrap();
        if groups.contains(&group) && fields[0] != "Z" {
            live.push(pid);
        }
    }
    live
}

#[tokio::test]
async fn aliases_mount_paths_and_secret_volumes_shape_the_command() {
    let fake = start_with(|o| {
        o.aliases
            .insert("buildkite-agent".into(), vec!["sh".into(), "-c".into()]);
        o.aliases.insert(
            "updraft".into(),
            vec!["echo".into(), "updraft-alias".into()],
        );
        o.aliases.insert(
            "agent".into(),
            vec!["echo".into(), "image-entrypoint".into()],
        );
    });
    let client = client(&fake).await;
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "files"}, "stringData": {"config.yml": "a: 1"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "shaped"}, "spec": {
        "restartPolicy": "Never",
        "volumes": [{"name": "ws", "emptyDir": {}}, {"name": "config", "secret": {"secretName": "files"}}],
        "initContainers": [{"name": "by-path", "image": "busybox", "command": ["/workspace/updraft", "agent"],
            "volumeMounts": [{"name": "ws", "mountPath": "/workspace"}]}],
        "containers": [
            {"name": "by-name", "image": "busybox", "command": ["buildkite-agent", "cat /etc/agent/config.yml; pwd"],
             "workingDir": "/workspace/builds",
             "volumeMounts": [{"name": "ws", "mountPath": "/workspace"}, {"name": "config", "mountPath": "/etc/agent"}]},
            {"name": "by-image", "image": "buildkite/agent:3", "args": ["start"]},
        ]}})).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pod_phase(&fake, "shaped", "Succeeded").await;
    let workspace = fake
        .pod_dir("default", "shaped")
        .unwrap()
        .join("volumes/ws");
    let log = |container: &str| {
        let params = LogParams {
            container: Some(container.into()),
            ..LogParams::default()
        };
        let pods = pods.clone();
        async move { pods.logs("shaped", &params).await.unwrap() }
    };
    assert_eq!(log("by-path").await, "updraft-alias agent\n");
    assert_eq!(
        log("by-name").await,
        format!("a: 1{}\n", workspace.join("builds").display())
    );
    assert_eq!(log("by-image").await, "image-entrypoint start\n");
    let argv: Vec<Vec<String>> = fake
        .processes_started()
        .into_iter()
        .map(|p| p.argv)
        .collect();
    assert_eq!(argv[0], ["echo", "updraft-alias", "agent"]);
}

#[tokio::test]
async fn deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period() {
    let fake = start();
    let pods: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    let stubborn: Pod = serde_json::from_value(json!({"metadata": {"name": "stubborn"}, "spec": {
        "terminationGracePeriodSeconds": 30,
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &stubborn)
        .await
        .unwrap();
    pod_phase(&fake, "stubborn", "Running").await;
    let deleting = pods
        .delete(
            "stubborn",
            &kube::api::DeleteParams {
                grace_period_seconds: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pending = deleting
        .left()
        .expect("a running pod is deleted gracefully");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(1));
    stored(&fake, "the pod to be gone", |f| {
        f.get(Resource::Pods, "default", "stubborn")
            .is_none()
            .then_some(Value::Null)
    })
    .await;
    let reasons = event_reasons(&fake, "stubborn");
    assert!(reasons.contains(&"Killing".into()), "{reasons:?}");
    assert!(fake.running_processes().is_empty());
}

#[tokio::test]
async fn the_running_cap_and_paused_scheduling_hold_pods_pending() {
    let fake = start_with(|o| o.max_running_pods = Some(1));
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    jobs.create(
        &PostParams::default(),
        &job("first", "k", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    let first = job_pod(&fake, "default", "first").await;
    pod_phase(
        &fake,
        first["metadata"]["name"].as_str().unwrap(),
        "Running",
    )
    .await;
    jobs.create(&PostParams::default(), &job("second", "k", &["true"]))
        .await
        .unwrap();
    let second = job_pod(&fake, "default", "second").await;
    let second_name = second["metadata"]["name"].as_str().unwrap().to_string();
    let bound = stored(&fake, "the second pod to be bound", |f| {
        f.get(Resource::Pods, "default", &second_name)
            .filter(|p| p["spec"]["nodeName"].is_string())
    })
    .await;
    assert_eq!(bound["status"]["phase"], "Pending");
    assert!(
        bound["status"]["containerStatuses"].is_null(),
        "not started while the first runs"
    );
    jobs.delete("first", &DeleteParams::background())
        .await
        .unwrap();
    finished_job(&fake, "second", "Complete").await;

    fake.pause_scheduling(true);
    jobs.create(&PostParams::default(), &job("third", "k", &["true"]))
        .await
        .unwrap();
    let third = job_pod(&fake, "default", "third").await;
    assert!(third["spec"]["nodeName"].is_null());
    fake.pause_scheduling(false);
    finished_job(&fake, "third", "Complete").await;
}

#[tokio::test]
async fn following_a_log_streams_until_the_container_exits() {
    use futures::AsyncBufReadExt;
    let fake = start();
    let pods: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    let chatty: Pod = serde_json::from_value(json!({"metadata": {"name": "chatty"}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo one; sleep 0.5; echo two"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &chatty).await.unwrap();
    stored(&fake, "chatty to start", |f| {
        f.get(Resource::Pods, "default", "chatty")
            .filter(|p| p["status"]["containerStatuses"][0]["containerID"].is_string())
    })
    .await;
    let stream = pods
        .log_stream(
            "chatty",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let lines: Vec<String> =
        tokio::time::timeout(PATIENCE, futures::TryStreamExt::try_collect(stream.lines()))
            .await
            .expect("the followed log ends with the container")
            .unwrap();
    assert_eq!(lines, ["one", "two"]);
}
