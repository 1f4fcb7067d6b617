//! The Kubernetes backend end to end: the `updraft` binary schedules Buildkite jobs from the
//! emulator onto the Kubernetes fake, whose kubelet runs each pod's `updraft agent` (and its
//! sidecars) as local processes. 300 jobs over two fleets (one with a native sidecar, one with
//! resource classes) each run once; a pipeline written for agent-stack-k8s runs unchanged; a
//! bad image, an unschedulable pod, an eviction and a cancel are each explained or handled as
//! promised; nothing of Updraft's is left once the Job TTL has passed.
//!
//! The scenarios run one at a time: they share two cores with many agent processes.

mod kubernetes_support;
mod scheduler_process;

use kubernetes_support::*;
use scheduler_process::SchedulerProcess;
use std::time::{Duration, Instant};
use updraft_emulator::JobState;
use updraft_kube_fake::Resource;
use uuid::Uuid;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fleet with a native sidecar that marks the shared workspace, and a fleet sized by
/// resource class; both on the queue `k8s`, told apart by tags.
fn two_fleets() -> String {
    format!(
        r#"[[fleet]]
name = "sidecar"
queue = "{QUEUE}"
tags = ["sidecar=true"]
backend = "kubernetes"
max_in_flight = 16

[fleet.template]
command = {AGENT_COMMAND}
env = {{ BUILDKITE_SKIP_CHECKOUT = "true" }}

[fleet.kubernetes]
image = "ghcr.io/updraft/updraft:e2e"

[fleet.kubernetes.pod_template]
initContainers = [{{ name = "helper", image = "busybox:1.36", restartPolicy = "Always", command = ["sh", "-c", "touch /workspace/sidecar-ready && exec sleep 3600"] }}]

[[fleet]]
name = "sized"
queue = "{QUEUE}"
tags = ["resource_class=small", "resource_class=large"]
backend = "kubernetes"
max_in_flight = 16

[fleet.template]
command = {AGENT_COMMAND}
env = {{ BUILDKITE_SKIP_CHECKOUT = "true" }}

[fleet.kubernetes]
image = "ghcr.io/updraft/updraft:e2e"
default_resource_class = "small"

[fleet.kubernetes.resource_classes.small]
requests = {{ cpu = "100m", memory = "64Mi" }}

[fleet.kubernetes.resource_classes.large]
requests = {{ cpu = "500m", memory = "256Mi" }}
node_selector = {{ "kubernetes.io/os" = "linux" }}
"#
    )
}

/// Waits for the sidecar's mark in the shared workspace (the sidecar starts first, but on two
/// busy cores its shell may take a while), then says which fleet ran it.
const SIDECAR_JOB: &str = r#"for i in $(seq 300); do test -f "$BUILDKITE_BUILD_PATH/../sidecar-ready" && break; sleep 0.1; done; if test -f "$BUILDKITE_BUILD_PATH/../sidecar-ready"; then echo "sidecar ready; fleet=$UPDRAFT_FLEET"; else echo "no sidecar mark in $BUILDKITE_BUILD_PATH/.."; ls -la "$BUILDKITE_BUILD_PATH/.."; exit 1; fi"#;
const SIZED_JOB: &str = r#"echo "fleet=$UPDRAFT_FLEET""#;

fn step(label: &str, command: &str, agents: &str, parallelism: u32) -> String {
    format!(
        "  - label: {label}\n    command: {}\n    parallelism: {parallelism}\n    agents: {{queue: {QUEUE}, {agents}}}\n",
        quote(command)
    )
}

async fn start(world: &World, kubernetes: &str) -> SchedulerProcess {
    let config = world.write(
        "updraft.toml",
        &world.config("ledger.sqlite", kubernetes, &two_fleets()),
    );
    let scheduler =
        SchedulerProcess::start(&config, &world.state.path().join("scheduler.log"), &[]).await;
    world.push_to(scheduler.addr);
    scheduler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_jobs_over_a_sidecar_fleet_and_a_sized_fleet_each_run_once() {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let scheduler = start(&world, "job_ttl = \"5s\"").await;
    let yaml = format!(
        "steps:\n{}{}{}",
        step("with sidecar", SIDECAR_JOB, "sidecar: \"true\"", 150),
        step("large", SIZED_JOB, "resource_class: large", 75),
        step("small", SIZED_JOB, "resource_class: small", 75),
    );
    let build = world.build(&yaml);
    assert_eq!(build.job_ids.len(), 300);
    let started = Instant::now();
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(240))
        .await;
    eprintln!(
        "300 jobs over two Kubernetes fleets finished in {:?}",
        started.elapsed()
    );
    world.assert_each_passed_once(&build.job_ids);
    for (index, job) in build.job_ids.iter().enumerate() {
        let log = world.log(*job);
        let (fleet, mark) = if index < 150 {
            ("sidecar", "sidecar ready")
        } else {
            ("sized", "fleet=")
        };
        assert!(
            log.contains(&format!("fleet={fleet}")) && log.contains(mark),
            "job {job}: {log}"
        );
    }
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}

/// agent-stack-k8s's own fixture pipeline (sidecars, podSpec, podSpecPatch, metadata),
/// as its users write it.
const AGENT_STACK_K8S_PIPELINE: &str = r#"
env:
  BUILDKITE_SKIP_CHECKOUT: "true"
steps:
  - label: test
    agents: { queue: k8s, resource_class: small }
    plugins:
      - kubernetes:
          metadata: { labels: { team: core }, annotations: { note: x } }
          checkout: { skip: true }
          sidecars: [ { image: postgres:16, command: ["sh", "-c", "exec sleep 3600"], env: [ { name: POSTGRES_PASSWORD, value: pw } ] } ]
          podSpec:
            containers:
              - name: tests
                image: alpine:latest
                command: [ "sleep 1; echo \"MOUNTAIN=$$MOUNTAIN\"" ]
          podSpecPatch:
            containers: [ { name: tests, env: [ { name: MOUNTAIN, value: cotopaxi } ] } ]
          jobActiveDeadlineSeconds: 3600
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_written_for_agent_stack_k8s_runs_unchanged() {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let scheduler = start(&world, "").await;
    let build = world.build(AGENT_STACK_K8S_PIPELINE);
    let job = build.job_ids[0];
    let labelled = world
        .fake
        .wait_for(Duration::from_secs(30), |fake| {
            fake.list(Resource::Jobs, Some(NAMESPACE))
                .into_iter()
                .find(|j| j["metadata"]["labels"]["buildkite.com/job-uuid"] == job.to_string())
        })
        .await
        .expect("the step's Job");
    assert_eq!(labelled["metadata"]["labels"]["team"], "core");
    assert_eq!(labelled["metadata"]["annotations"]["note"], "x");
    let pod = &labelled["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["restartPolicy"], "Always",
        "the sidecar is native"
    );
    assert_eq!(pod["containers"][0]["image"], "alpine:latest");
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(60))
        .await;
    world.assert_each_passed_once(&build.job_ids);
    let log = world.log(job);
    assert!(log.contains("MOUNTAIN=cotopaxi"), "{log}");
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}

fn finish_detail(world: &World, job: Uuid) -> String {
    world.timeline(job)["stack_finish_detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_image_fails_its_job_within_the_grace_with_the_image_and_the_reason() {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let scheduler = start(&world, "image_pull_grace = \"3s\"").await;
    let yaml = r#"steps:
  - label: bad image
    agents: { queue: k8s, resource_class: small }
    plugins:
      - kubernetes:
          podSpec:
            containers: [ { name: main, image: "registry.does-not-exist.invalid/acme/ci:1", command: ["true"] } ]
"#;
    let created = Instant::now();
    let build = world.build(yaml);
    let job = build.job_ids[0];
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(3 + 5))
        .await;
    let took = created.elapsed();
    assert_eq!(world.emulator.job_state(job), Some(JobState::Failed));
    let detail = finish_detail(&world, job);
    assert!(
        detail.contains("registry.does-not-exist.invalid/acme/ci:1"),
        "{detail}"
    );
    assert!(
        detail.contains("ErrImagePull") || detail.contains("ImagePullBackOff"),
        "{detail}"
    );
    assert_eq!(world.timeline(job)["acquires"].as_u64(), Some(0));
    eprintln!("the bad image failed its job {took:?} after the build was created");
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_fails_at_the_pending_deadline_with_the_schedulers_message() {
    let _serial = SERIAL.lock().await;
    let world = World::new(|o| o.node.cpu = "2".into()).await;
    let fleets = format!(
        r#"[[fleet]]
name = "huge"
queue = "{QUEUE}"
backend = "kubernetes"
pending_deadline = "6s"

[fleet.template]
command = {AGENT_COMMAND}

[fleet.kubernetes]
image = "ghcr.io/updraft/updraft:e2e"
resources = {{ requests = {{ cpu = "16" }} }}
"#
    );
    let config = world.write("updraft.toml", &world.config("ledger.sqlite", "", &fleets));
    let scheduler =
        SchedulerProcess::start(&config, &world.state.path().join("scheduler.log"), &[]).await;
    world.push_to(scheduler.addr);
    let build = world.build(&format!(
        "steps:\n  - command: \"true\"\n    agents: {{queue: {QUEUE}}}\n"
    ));
    let job = build.job_ids[0];
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(20))
        .await;
    assert_eq!(world.emulator.job_state(job), Some(JobState::Failed));
    let detail = finish_detail(&world, job);
    assert!(
        detail.contains("0/1 nodes are available") && detail.contains("Insufficient cpu"),
        "{detail}"
    );
    let timeline = world.timeline(job);
    let notes = timeline["notifications"].to_string();
    assert!(
        notes.contains("waiting for a node"),
        "the reason was shown while it waited: {timeline:#}"
    );
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_evicted_before_its_agent_took_the_job_is_relaunched_and_passes() {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let scheduler = start(&world, "").await;
    world.fake.pause_scheduling(true);
    let build = world.build(&format!(
        "steps:\n{}",
        step("evicted", SIZED_JOB, "resource_class: small", 1)
    ));
    let job = build.job_ids[0];
    let pod = world
        .fake
        .wait_for(Duration::from_secs(30), |fake| {
            fake.list(Resource::Pods, Some(NAMESPACE))
                .into_iter()
                .find(|p| p["metadata"]["labels"]["buildkite.com/job-uuid"] == job.to_string())
                .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        })
        .await
        .expect("the job's pod");
    world
        .fake
        .evict(NAMESPACE, &pod, "The node was low on resource: memory.")
        .expect("evict");
    world.fake.pause_scheduling(false);
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(60))
        .await;
    world.assert_each_passed_once(&build.job_ids);
    assert!(world.log(job).contains("fleet=sized"));
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_pending_job_deletes_its_job_within_two_seconds_and_the_ttl_cleans_up_after_a_crash(
) {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let scheduler = start(&world, "job_ttl = \"3s\"").await;
    world.fake.pause_scheduling(true);
    let build = world.build(&format!(
        "steps:\n{}",
        step("pending", SIZED_JOB, "resource_class: small", 1)
    ));
    let job = build.job_ids[0];
    let name = format!("updraft-{job}");
    world
        .fake
        .wait_for(Duration::from_secs(30), |fake| {
            fake.get(Resource::Jobs, NAMESPACE, &name)
        })
        .await
        .expect("the pending Job");
    let canceled_at = Instant::now();
    world.emulator.cancel_job(job).expect("cancel");
    world
        .fake
        .wait_for(Duration::from_secs(2), |fake| {
            fake.get(Resource::Jobs, NAMESPACE, &name)
                .is_none()
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the Job was still there 2 s after the cancel"));
    eprintln!(
        "the canceled pending Job was gone {:?} after the cancel",
        canceled_at.elapsed()
    );
    world.fake.pause_scheduling(false);

    // Jobs that finish while no scheduler is there to delete them go with their TTL.
    let build = world.build(&format!(
        "steps:\n{}",
        step("orphaned", "sleep 2", "resource_class: small", 3)
    ));
    world
        .fake
        .wait_for(Duration::from_secs(30), |fake| {
            (fake.list(Resource::Jobs, Some(NAMESPACE)).len() == 3).then_some(())
        })
        .await
        .expect("three Jobs");
    scheduler.kill(nix::sys::signal::Signal::SIGKILL).await;
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(30))
        .await;
    world.assert_each_passed_once(&build.job_ids);
    let gone = world
        .fake
        .wait_for(Duration::from_secs(3 + 10), |_| {
            (world.leftovers() == (0, 0)).then_some(())
        })
        .await;
    assert!(
        gone.is_some(),
        "left behind after the TTL: {:?} (Jobs, Secrets)",
        world.leftovers()
    );
}
