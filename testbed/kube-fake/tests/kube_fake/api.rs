//! API semantics through `kube`: CRUD and patch formats, Kubernetes errors as `kube` maps
//! them, watches (resume and relist), garbage collection, Leases.

use crate::common::{client, eventually, job, start, start_with};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;
use updraft_kube_fake::Resource;

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_crud_and_every_patch_format() {
    let fake = start_with(|o| o.run_containers = false);
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let created = jobs
        .create(&PostParams::default(), &job("build-1", "ci", &["true"]))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let selector = &created
        .spec
        .as_ref()
        .unwrap()
        .selector
        .as_ref()
        .unwrap()
        .match_labels;
    assert_eq!(
        selector.as_ref().unwrap()["batch.kubernetes.io/controller-uid"],
        created.uid().unwrap()
    );
    jobs.create(&PostParams::default(), &job("build-2", "other", &["true"]))
        .await
        .unwrap();

    let listed = jobs
        .list(&ListParams::default().labels("app=ci"))
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|j| j.name_any())
            .collect::<Vec<_>>(),
        ["build-1"]
    );
    assert!(listed.metadata.resource_version.is_some());
    let not_ci = jobs
        .list(&ListParams::default().labels("app notin (ci),app"))
        .await
        .unwrap();
    assert_eq!(not_ci.items.len(), 1);
    let metadata_only = jobs.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(metadata_only.items.len(), 2);
    assert_eq!(
        metadata_only.items[0].metadata.labels.as_ref().unwrap()["app"],
        "ci"
    );
    let by_name = jobs
        .list(&ListParams::default().fields("metadata.name=build-2"))
        .await
        .unwrap();
    assert_eq!(by_name.items[0].name_any(), "build-2");
    let first_page = jobs.list(&ListParams::default().limit(1)).await.unwrap();
    let token = first_page
        .metadata
        .continue_
        .clone()
        .expect("a continue token");
    let second_page = jobs
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        (
            first_page.items[0].name_any(),
            second_page.items[0].name_any()
        ),
        ("build-1".into(), "build-2".into())
    );

    let merge = Patch::Merge(json!({"metadata": {"labels": {"stage": "one"}}}));
    let patched = jobs
        .patch("build-1", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(patched.labels()["stage"], "one");
    let strategic = Patch::Strategic(json!({"metadata": {"annotations": {"note": "two"}}}));
    jobs.patch("build-1", &PatchParams::default(), &strategic)
        .await
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 60}
    ]))
    .unwrap();
    let json_patched = jobs
        .patch("build-1", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(
        json_patched.spec.as_ref().unwrap().active_deadline_seconds,
        Some(60)
    );
    assert_eq!(json_patched.annotations()["note"], "two");
    let applied = jobs
        .patch("build-1", &PatchParams::apply("tests"), &Patch::Apply(json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "build-1", "labels": {"applied": "yes"}}
        })))
        .await
        .unwrap();
    assert_eq!(applied.labels()["applied"], "yes");

    let mut replacement = applied.clone();
    replacement
        .labels_mut()
        .insert("replaced".into(), "yes".into());
    let replaced = jobs
        .replace("build-1", &PostParams::default(), &replacement)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), applied.resource_version());

    jobs.delete("build-1", &DeleteParams::background())
        .await
        .unwrap();
    assert!(jobs.get_opt("build-1").await.unwrap().is_none());
    assert_eq!(fake.request_count("create", "jobs"), 2);
    assert_eq!(fake.request_count("patch", "jobs"), 4);
    assert_eq!(fake.request_count("delete", "jobs"), 1);
}

#[tokio::test]
async fn kubernetes_errors_reach_kube_as_api_errors() {
    let fake = start_with(|o| o.run_containers = false);
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let created = jobs
        .create(&PostParams::default(), &job("dup", "ci", &["true"]))
        .await
        .unwrap();

    let exists = api_error(
        jobs.create(&PostParams::default(), &job("dup", "ci", &["true"]))
            .await,
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(exists.message, "jobs.batch \"dup\" already exists");

    let missing = api_error(jobs.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "jobs.batch \"nope\" not found");

    let mut stale = created.clone();
    jobs.patch(
        "dup",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    stale.labels_mut().insert("y".into(), "2".into());
    let conflict = api_error(jobs.replace("dup", &PostParams::default(), &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );

    let invalid = api_error(
        jobs.create(&PostParams::default(), &job("Not_Valid", "ci", &["true"]))
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid
            .message
            .starts_with("Job.batch \"Not_Valid\" is invalid: metadata.name: Invalid value"),
        "{}",
        invalid.message
    );

    let mut no_image = job("no-image", "ci", &["true"]);
    no_image
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = None;
    let invalid = api_error(jobs.create(&PostParams::default(), &no_image).await);
    assert!(
        invalid
            .message
            .contains("spec.template.spec.containers[0].image: Required value"),
        "{}",
        invalid.message
    );

    let elsewhere: Api<Job> = Api::namespaced(client(&fake).await, "missing-ns");
    let no_namespace = api_error(
        elsewhere
            .create(&PostParams::default(), &job("x", "ci", &["true"]))
            .await,
    );
    assert_eq!(
        (no_namespace.code, no_namespace.message.as_str()),
        (404, "namespaces \"missing-ns\" not found")
    );
}

/// Waits for the next watcher event that is not an error, skipping errors (a relist after
/// a 410 shows up as one).
async fn next_event<S>(stream: &mut S) -> Event<Job>
where
    S: futures::Stream<Item = Result<Event<Job>, watcher::Error>> + Unpin,
{
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watcher event in time")
            .expect("the watcher keeps going");
        if let Ok(event) = item {
            return event;
        }
    }
}

/// Reads events until `expected` arrives (others, such as the job controller's status
/// updates, are skipped).
async fn expect_event<S>(stream: &mut S, expected: &str)
where
    S: futures::Stream<Item = Result<Event<Job>, watcher::Error>> + Unpin,
{
    let mut skipped = Vec::new();
    loop {
        let seen = describe(&next_event(stream).await);
        if seen == expected {
            return;
        }
        skipped.push(seen);
        assert!(skipped.len() < 50, "no {expected:?} among {skipped:?}");
    }
}

fn describe(event: &Event<Job>) -> String {
    match event {
        Event::Apply(j) => format!("apply {}", j.name_any()),
        Event::Delete(j) => format!("delete {}", j.name_any()),
        Event::Init => "init".into(),
        Event::InitApply(j) => format!("init-apply {}", j.name_any()),
        Event::InitDone => "init-done".into(),
    }
}

#[tokio::test]
async fn watcher_follows_changes_resumes_and_relists_after_410() {
    let fake = start_with(|o| o.run_containers = false);
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    jobs.create(&PostParams::default(), &job("before", "watched", &["true"]))
        .await
        .unwrap();
    let mut events = watcher::watcher(
        jobs.clone(),
        watcher::Config::default().labels("app=watched"),
    )
    .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut events).await));
    }
    assert_eq!(seen, ["init", "init-apply before", "init-done"]);

    jobs.create(&PostParams::default(), &job("ignored", "other", &["true"]))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("during", "watched", &["true"]))
        .await
        .unwrap();
    expect_event(&mut events, "apply during").await;
    let unlabel = Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}}));
    jobs.patch("before", &PatchParams::default(), &unlabel)
        .await
        .unwrap();
    expect_event(&mut events, "delete before").await;

    let lists_before = fake.request_count("list", "jobs");
    let watches_before = fake.request_count("watch", "jobs");
    fake.drop_watches();
    jobs.create(
        &PostParams::default(),
        &job("after-drop", "watched", &["true"]),
    )
    .await
    .unwrap();
    expect_event(&mut events, "apply after-drop").await;
    assert_eq!(
        fake.request_count("list", "jobs"),
        lists_before,
        "a dropped watch resumes without a list"
    );
    assert!(fake.request_count("watch", "jobs") > watches_before);

    fake.expire_watch_history();
    jobs.create(
        &PostParams::default(),
        &job("after-410", "watched", &["true"]),
    )
    .await
    .unwrap();
    expect_event(&mut events, "init").await;
    let mut relisted = Vec::new();
    while relisted.last().map(String::as_str) != Some("init-done") {
        relisted.push(describe(&next_event(&mut events).await));
    }
    assert!(
        relisted.contains(&"init-apply after-410".to_string()),
        "{relisted:?}"
    );
    assert!(
        fake.request_count("list", "jobs") > lists_before,
        "a 410 makes the watcher list again"
    );
    jobs.delete("during", &DeleteParams::background())
        .await
        .unwrap();
    expect_event(&mut events, "delete during").await;
}

#[tokio::test]
async fn streaming_list_watch_sends_initial_events_then_bookmark() {
    let fake = start_with(|o| o.run_containers = false);
    let jobs: Api<Job> = Api::namespaced(client(&fake).await, "default");
    jobs.create(&PostParams::default(), &job("streamed", "s", &["true"]))
        .await
        .unwrap();
    let mut events =
        watcher::watcher(jobs.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut described = Vec::new();
    for _ in 0..3 {
        described.push(describe(&next_event(&mut events).await));
    }
    assert_eq!(described, ["init", "init-apply streamed", "init-done"]);
    assert_eq!(fake.request_count("list", "jobs"), 0);
}

#[tokio::test]
async fn deleting_an_owner_collects_or_orphans_its_dependents() {
    let fake = start_with(|o| o.run_containers = false);
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    for name in ["collected", "orphaned"] {
        let owner = jobs
            .create(&PostParams::default(), &job(name, "gc", &["true"]))
            .await
            .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-token"), "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": owner.uid().unwrap(),
                "controller": false, "blockOwnerDeletion": true}]},
            "stringData": {"token": "s3cret"},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    jobs.delete("collected", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the owned Secret to be collected", || async {
        secrets
            .get_opt("collected-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    jobs.delete("orphaned", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("the orphaning owner to go", || async {
        jobs.get_opt("orphaned")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let kept = secrets.get("orphaned-token").await.unwrap();
    assert!(
        kept.metadata.owner_references.is_none(),
        "orphaned dependents lose the reference"
    );
    assert_eq!(
        fake.get(Resource::Secrets, "default", "orphaned-token")
            .unwrap()["data"]["token"],
        "czNjcmV0"
    );
}

#[tokio::test]
async fn lease_replace_with_a_stale_resource_version_conflicts() {
    let fake = start();
    let leases: Api<Lease> = Api::namespaced(client(&fake).await, "default");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "updraft-leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z"},
    })).unwrap();
    let first = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut renewed = first.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let second = leases
        .replace("updraft-leader", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_eq!(second.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let conflict = api_error(
        leases
            .replace("updraft-leader", &PostParams::default(), &renewed)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
}
