//! Warm-pool members as Pods, against the Kubernetes fake through the real `kube` client:
//! each member is a Pod with one container per agent, named and holding the registration token
//! from the member's own Secret; a drained member's busy agents get their one SIGTERM and
//! finish their job within the grace; a member that was never drained cannot be removed; a
//! removed member leaves neither Pod nor Secret behind.

mod support;

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::*;
use updraft_backends::pool::{MemberName, MemberPhase, MemberSpec, MemberStatus, PoolBackend};
use updraft_backends::BackendError;
use updraft_kube_fake::Resource;
use updraft_kubernetes::KubernetesPool;
use updraft_model::Secret;

const TOKEN: &str = "bkua_pool_registration_token";

/// An agent that records its name and token, then idles; on SIGTERM it "finishes its job"
/// (`busy_seconds`), notes each signal and that it finished, and exits 0.
fn agent_script(busy_seconds: u32) -> String {
    format!(
        r#"trap 'echo TERM >> "$OUT/$BUILDKITE_AGENT_NAME.signals"; sleep {busy_seconds}; echo finished > "$OUT/$BUILDKITE_AGENT_NAME.finished"; exit 0' TERM
echo "$BUILDKITE_AGENT_NAME $BUILDKITE_AGENT_TOKEN" > "$OUT/$BUILDKITE_AGENT_NAME.env"
while true; do sleep 0.1; done"#
    )
}

fn member_spec(out: &Path, busy_seconds: u32) -> MemberSpec {
    MemberSpec {
        fleet: FLEET.into(),
        agents: 2,
        command: vec!["sh".into(), "-c".into(), agent_script(busy_seconds)],
        env: [("OUT".to_string(), out.to_string_lossy().into_owned())].into(),
        secrets: [("BUILDKITE_AGENT_TOKEN".to_string(), Secret::new(TOKEN))].into(),
    }
}

/// A pool on the fake whose members drain for at most 30 s.
async fn pool(kubeconfig: &Kubeconfig) -> KubernetesPool {
    let mut table = fleet_table();
    table["pool_drain_grace"] = json!("30s");
    let backend = backend(
        config(kubeconfig, json!({}), table),
        Duration::from_secs(300),
    )
    .await;
    backend.pool([(FLEET.to_string(), Duration::from_secs(600))].into())
}

async fn members(pool: &KubernetesPool) -> Vec<MemberStatus> {
    pool.members(FLEET).await.expect("members")
}

async fn member(pool: &KubernetesPool, name: &MemberName) -> Option<MemberStatus> {
    members(pool).await.into_iter().find(|m| &m.name == name)
}

/// Wait until every agent of `member` has written its `.env` file; returns their contents.
async fn agents_started(out: &Path, member: &MemberName, agents: u32) -> Vec<String> {
    eventually(&format!("the agents of {member} to start"), || async {
        (1..=agents)
            .map(|n| {
                std::fs::read_to_string(out.join(format!("{}.env", member.agent_name(n)))).ok()
            })
            .collect::<Option<Vec<String>>>()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_is_a_pod_of_agents_named_after_it_holding_the_token_from_its_secret() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let pool = pool(&kubeconfig).await;
    let out = tempfile::tempdir().expect("temp dir");
    assert_eq!(pool.kind(), "kubernetes");

    pool.add(&member_spec(out.path(), 0), 2).await.expect("add");
    let running = eventually("two running members", || async {
        let members = members(&pool).await;
        (members.len() == 2 && members.iter().all(|m| m.phase == MemberPhase::Running))
            .then_some(members)
    })
    .await;
    for status in &running {
        assert_eq!((status.agents, status.fleet.as_str()), (2, FLEET));
        assert_eq!(status.capacity, "pod");
        let name = status.name.as_str();
        let suffix = name
            .strip_prefix(&format!("{FLEET}-"))
            .expect("<fleet>-<hex>");
        assert!(
            suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        let seen = agents_started(out.path(), &status.name, 2).await;
        for (n, line) in (1..).zip(&seen) {
            assert_eq!(
                line.trim(),
                format!("{} {TOKEN}", status.name.agent_name(n))
            );
        }

        let pod = fake.get(Resource::Pods, NAMESPACE, name).expect("the pod");
        let labels = labels_of(&pod);
        assert_eq!(labels["app.kubernetes.io/managed-by"], "updraft");
        assert_eq!(labels["updraft.dev/scheduler"], "updraft-test");
        assert_eq!(labels["updraft.dev/pool"], FLEET);
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert!(
            !pod.to_string().contains(TOKEN),
            "the token is only in the Secret"
        );
        let secret = fake
            .get(Resource::Secrets, NAMESPACE, name)
            .expect("the Secret");
        let owner = &secret["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"]),
            (&json!("Pod"), &pod["metadata"]["uid"])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_member_finishes_its_jobs_before_it_is_removed_without_a_trace() {
    let fake = fake();
    let kubeconfig = kubeconfig(&fake);
    let pool = pool(&kubeconfig).await;
    let out = tempfile::tempdir().expect("temp dir");
    pool.add(&member_spec(out.path(), 3), 1).await.expect("add");
    let name = eventually("a running member", || async {
        members(&pool)
            .await
            .into_iter()
            .find(|m| m.phase == MemberPhase::Running)
            .map(|m| m.name)
    })
    .await;
    agents_started(out.path(), &name, 2).await;

    match pool.remove(&name).await {
        Err(BackendError::Invalid {
            name: refused,
            detail,
            ..
        }) => {
            assert_eq!(refused, name.as_str());
            assert!(detail.contains("drain it"), "{detail}");
        }
        other => panic!("removing a member that was never drained: {other:?}"),
    }
    assert!(fake.get(Resource::Pods, NAMESPACE, name.as_str()).is_some());

    pool.drain(&name).await.expect("drain");
    pool.drain(&name).await.expect("draining again");
    let draining = member(&pool, &name)
        .await
        .expect("still listed while draining");
    assert_eq!(draining.phase, MemberPhase::Draining);
    assert!(
        !out.path()
            .join(format!("{}.finished", name.agent_name(1)))
            .exists(),
        "the busy agent is still finishing its job"
    );

    eventually("the drained member to exit or go", || async {
        match member(&pool, &name).await {
            None => Some(()),
            Some(m) => matches!(m.phase, MemberPhase::Exited { .. }).then_some(()),
        }
    })
    .await;
    for n in 1..=2 {
        let agent = name.agent_name(n);
        let finished = std::fs::read_to_string(out.path().join(format!("{agent}.finished")));
        assert_eq!(
            finished.expect("finished, not killed").trim(),
            "finished",
            "{agent}"
        );
        let signals = std::fs::read_to_string(out.path().join(format!("{agent}.signals")))
            .expect("signalled");
        assert_eq!(
            signals.lines().count(),
            1,
            "{agent} got exactly one SIGTERM"
        );
    }

    pool.remove(&name).await.expect("remove after drain");
    pool.remove(&name).await.expect("removing again");
    eventually("neither Pod nor Secret left", || async {
        let pod = fake.get(Resource::Pods, NAMESPACE, name.as_str());
        let secret = fake.get(Resource::Secrets, NAMESPACE, name.as_str());
        (pod.is_none() && secret.is_none()).then_some(())
    })
    .await;
    assert!(members(&pool).await.is_empty());
}
