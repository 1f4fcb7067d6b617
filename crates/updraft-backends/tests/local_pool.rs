//! The local pool with real processes: members start their agents named `<member>-<n>` with
//! the spec's environment and secrets, a drain sends each agent exactly one SIGTERM (also when
//! asked again, and by a restarted backend), a member is removed only once its agents have
//! exited, and a new backend instance finds the members a previous one left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use updraft_backends::local::LocalPool;
use updraft_backends::{BackendError, MemberName, MemberPhase, MemberSpec, PoolBackend};
use updraft_model::Secret;

/// Upper bound for anything asynchronous to happen; tests poll and finish as soon as it does.
const PATIENCE: Duration = Duration::from_secs(15);

/// A stand-in agent: records its name and token, counts the SIGTERMs it gets, and on the
/// first one "finishes its job" for a moment, then exits.
const AGENT: &str = r#"echo "$BUILDKITE_AGENT_NAME $POOL_TOKEN $FLEET_VAR" > identity
trap 'echo term >> terms; sleep 0.3; exit 0' TERM
while :; do sleep 0.05; done"#;

fn spec(fleet: &str, agents: u32) -> MemberSpec {
    MemberSpec {
        fleet: fleet.to_string(),
        agents,
        command: vec!["sh".into(), "-c".into(), AGENT.into()],
        env: BTreeMap::from([("FLEET_VAR".to_string(), format!("of-{fleet}"))]),
        secrets: BTreeMap::from([("POOL_TOKEN".to_string(), Secret::new("bkct_pool"))]),
    }
}

fn work(state: &Path, member: &MemberName, n: u32) -> PathBuf {
    state
        .join("pool")
        .join(member.as_str())
        .join(format!("agent-{n}"))
        .join("work")
}

async fn eventually(mut check: impl FnMut() -> bool, what: &str) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < give_up, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn phase(pool: &LocalPool, fleet: &str, member: &MemberName) -> Option<MemberPhase> {
    pool.members(fleet)
        .await
        .unwrap()
        .into_iter()
        .find(|m| &m.name == member)
        .map(|m| m.phase)
}

#[tokio::test]
async fn members_run_named_agents_and_drain_with_one_signal_each() {
    let state = tempfile::tempdir().unwrap();
    let pool = LocalPool::open(state.path()).unwrap();
    pool.add(&spec("warm", 2), 2).await.unwrap();
    pool.add(&spec("other", 1), 1).await.unwrap();
    let members = pool.members("warm").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(pool.members("other").await.unwrap().len(), 1);
    for member in &members {
        assert_eq!(member.phase, MemberPhase::Running);
        assert!(member.name.as_str().starts_with("warm-"), "{}", member.name);
        for n in 1..=2 {
            let identity = work(state.path(), &member.name, n).join("identity");
            eventually(|| identity.exists(), "the agent starts").await;
            let text = std::fs::read_to_string(&identity).unwrap();
            assert_eq!(
                text.trim(),
                format!("{} bkct_pool of-warm", member.name.agent_name(n))
            );
        }
    }

    let target = &members[0].name;
    let refused = pool.remove(target).await.unwrap_err();
    assert!(matches!(refused, BackendError::Invalid { .. }), "{refused}");
    pool.drain(target).await.unwrap();
    pool.drain(target).await.unwrap();
    assert_eq!(
        phase(&pool, "warm", target).await,
        Some(MemberPhase::Draining)
    );
    let gone = async {
        loop {
            if let Some(MemberPhase::Exited { detail }) = phase(&pool, "warm", target).await {
                return detail;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let detail = tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("agents exit");
    assert_eq!(
        detail,
        "agent 1: exited with status 0; agent 2: exited with status 0"
    );
    for n in 1..=2 {
        let terms = std::fs::read_to_string(work(state.path(), target, n).join("terms")).unwrap();
        assert_eq!(terms, "term\n", "agent {n} got exactly one SIGTERM");
    }
    assert_eq!(
        phase(&pool, "warm", &members[1].name).await,
        Some(MemberPhase::Running),
        "the other member is untouched"
    );
    pool.remove(target).await.unwrap();
    pool.remove(target).await.unwrap();
    assert!(!state.path().join("pool").join(target.as_str()).exists());
    assert_eq!(pool.members("warm").await.unwrap().len(), 1);

    for member in pool
        .members("warm")
        .await
        .unwrap()
        .into_iter()
        .chain(pool.members("other").await.unwrap())
    {
        pool.drain(&member.name).await.unwrap();
    }
}

#[tokio::test]
async fn a_new_backend_finds_members_and_never_signals_a_drain_twice() {
    let state = tempfile::tempdir().unwrap();
    let first = LocalPool::open(state.path()).unwrap();
    first.add(&spec("warm", 1), 2).await.unwrap();
    let members = first.members("warm").await.unwrap();
    for member in &members {
        let identity = work(state.path(), &member.name, 1).join("identity");
        eventually(|| identity.exists(), "the agent starts").await;
    }
    let drained = &members[0].name;
    first.drain(drained).await.unwrap();
    drop(first);

    let second = LocalPool::open(state.path()).unwrap();
    let found = second.members("warm").await.unwrap();
    assert_eq!(found.len(), 2);
    let running = &members[1].name;
    assert_eq!(
        phase(&second, "warm", running).await,
        Some(MemberPhase::Running)
    );
    second.drain(drained).await.unwrap();
    let terms = work(state.path(), drained, 1).join("terms");
    eventually(|| terms.exists(), "the first drain reached the agent").await;
    let exited = async {
        while !matches!(
            phase(&second, "warm", drained).await,
            Some(MemberPhase::Exited { .. })
        ) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, exited).await.expect("exits");
    assert_eq!(std::fs::read_to_string(&terms).unwrap(), "term\n");
    second.remove(drained).await.unwrap();

    second.drain(running).await.unwrap();
    let exited = async {
        while !matches!(
            phase(&second, "warm", running).await,
            Some(MemberPhase::Exited { .. })
        ) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, exited).await.expect("exits");
    second.remove(running).await.unwrap();
    assert!(second.members("warm").await.unwrap().is_empty());
}
