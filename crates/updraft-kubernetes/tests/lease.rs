//! Leader election on the fake's Leases: one leader at a time; a released Lease is taken at
//! the next try; a leader that dies without releasing is replaced once the lease duration has
//! passed; a leader that finds another holder stops leading at once.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};
use support::*;
use updraft_backends::LeaderElection;
use updraft_kubernetes::{LeaseElection, LeaseOptions, Metrics};

const LEASE_DURATION: Duration = Duration::from_secs(2);

fn election(client: &kube::Client, identity: &str) -> LeaseElection {
    LeaseElection::new(
        client.clone(),
        LeaseOptions {
            namespace: NAMESPACE.into(),
            name: "updraft-scheduler".into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            renew_interval: Duration::from_millis(500),
        },
        Metrics::default(),
    )
}

async fn client(fake: &updraft_kube_fake::KubeFakeHandle) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&fake.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_released_lease_is_taken_at_once() {
    let fake = fake();
    let client = client(&fake).await;
    let a = election(&client, "a");
    let b = election(&client, "b");
    a.acquire().await.expect("a leads");
    assert!(a.is_leading());
    let waiting = tokio::time::timeout(Duration::from_secs(3), b.acquire()).await;
    assert!(waiting.is_err(), "b must not lead while a renews");
    assert_eq!(b.leader().as_deref(), Some("a"));

    a.release().await;
    let released_at = Instant::now();
    b.acquire().await.expect("b leads");
    assert!(
        released_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        released_at.elapsed()
    );
    assert!(!a.is_leading());
    let lease: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let spec = lease
        .get("updraft-scheduler")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_is_replaced_after_the_lease_duration() {
    let fake = fake();
    let client = client(&fake).await;
    let a = election(&client, "a");
    let b = election(&client, "b");
    a.acquire().await.expect("a leads");
    let taking = tokio::spawn(async move {
        b.acquire().await.expect("b leads");
        (b, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let died_at = Instant::now();
    drop(a);
    let (b, took_at) = taking.await.expect("b's attempt");
    let take_over = took_at - died_at;
    assert!(
        take_over <= LEASE_DURATION + Duration::from_secs(1),
        "took over after {take_over:?}"
    );
    assert!(b.is_leading());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_finds_another_holder_stops_leading() {
    let fake = fake();
    let client = client(&fake).await;
    let a = election(&client, "a");
    a.acquire().await.expect("a leads");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let mut lease = leases.get("updraft-scheduler").await.expect("lease");
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    leases
        .replace("updraft-scheduler", &PostParams::default(), &lease)
        .await
        .expect("steal");
    tokio::time::timeout(Duration::from_secs(3), a.lost())
        .await
        .expect("a notices within a renewal");
    assert!(!a.is_leading());
}
