//! A warm pool on Kubernetes end to end: `updraft run` with a pool fleet on the Kubernetes
//! fake, whose kubelet runs each member pod's `updraft agent start` containers as local
//! processes. Demand comes: the pool adds member pods and their agents take every job, each
//! once, none stopped mid-job. Demand ends: the pool drains its members and removes them until
//! neither a pod nor a Secret of it is left.

mod kubernetes_support;
mod scheduler_process;

use kubernetes_support::*;
use scheduler_process::SchedulerProcess;
use serde_json::Value;
use std::time::{Duration, Instant};
use updraft_emulator::JobState;
use updraft_kube_fake::Resource;

/// The pool's objects in the fake now (pods or Secrets), by their pool label.
fn pool_objects(world: &World, resource: Resource) -> usize {
    world
        .fake
        .list(resource, Some(NAMESPACE))
        .iter()
        .filter(|o| o["metadata"]["labels"]["updraft.dev/pool"] == "warm")
        .count()
}

fn pool_fleet() -> String {
    format!(
        r#"[[fleet]]
name = "warm"
queue = "{QUEUE}"
backend = "kubernetes"
mode = "pool"

[fleet.template]
command = ["updraft", "agent", "start"]
env = {{ BUILDKITE_SKIP_CHECKOUT = "true" }}

[fleet.kubernetes]
image = "ghcr.io/updraft/updraft:e2e"
pool_drain_grace = "30s"

[fleet.pool]
max = 4
interval = "1s"
policy = {{ kind = "updraft", idle_grace = "4s", burst_memory = "1m" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_pool_takes_every_job_once_then_scales_to_zero() {
    let world = World::new(|_| {}).await;
    let config = world.write(
        "updraft.toml",
        &world.config("ledger.sqlite", "", &pool_fleet()),
    );
    let api_token = world.emulator.api_token();
    let rest_endpoint = quote(&world.emulator.rest_endpoint());
    // Pools read Buildkite's agents (REST) to know a drained member's agents are gone.
    let scheduler = SchedulerProcess::start(
        &config,
        &world.state.path().join("scheduler.log"),
        &[
            ("UPDRAFT_BUILDKITE_REST_ENDPOINT", rest_endpoint.as_str()),
            ("UPDRAFT_BUILDKITE_API_TOKEN_ENV", "\"POOL_E2E_API_TOKEN\""),
            ("POOL_E2E_API_TOKEN", api_token.expose()),
            ("UPDRAFT_BUILDKITE_METRICS_INTERVAL", "\"1s\""),
        ],
    )
    .await;
    world.push_to(scheduler.addr);

    let yaml = format!(
        "steps:\n  - label: work\n    command: \"sleep 2\"\n    parallelism: 6\n    agents: {{queue: {QUEUE}}}\n"
    );
    let build = world.build(&yaml);
    let jobs = build.job_ids;
    let started = Instant::now();
    let mut peak_pods = 0;
    let give_up = Instant::now() + Duration::from_secs(90);
    while !jobs.iter().all(|j| {
        world
            .emulator
            .job_state(*j)
            .is_some_and(JobState::is_terminal)
    }) {
        peak_pods = peak_pods.max(pool_objects(&world, Resource::Pods));
        assert!(
            Instant::now() < give_up,
            "the pool's agents did not finish the jobs; scheduler log in {}",
            world.state.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for job in &jobs {
        let timeline = world.timeline(*job);
        assert_eq!(
            world.emulator.job_state(*job),
            Some(JobState::Passed),
            "{timeline:#}"
        );
        assert!(timeline["signal_reason"].is_null(), "{timeline:#}");
        let taken =
            timeline["accepts"].as_u64().unwrap_or(0) + timeline["acquires"].as_u64().unwrap_or(0);
        assert_eq!(taken, 1, "taken once: {timeline:#}");
        let agent = timeline["attempts"]
            .as_array()
            .and_then(|attempts| attempts.iter().find(|a| a["status"] == 200))
            .and_then(|a| a["agent_name"].as_str())
            .map(str::to_string);
        assert!(
            agent.as_deref().is_some_and(|a| a.starts_with("warm-")),
            "ran on a pool agent: {timeline:#}"
        );
    }
    assert!(peak_pods >= 1, "the pool added member pods");
    let jobs_done = started.elapsed();

    let give_up = Instant::now() + Duration::from_secs(90);
    while pool_objects(&world, Resource::Pods) + pool_objects(&world, Resource::Secrets) > 0 {
        let pods: Vec<Value> = world.fake.list(Resource::Pods, Some(NAMESPACE));
        assert!(
            Instant::now() < give_up,
            "the pool did not scale to zero: {} pods, {} secrets left: {pods:#?}",
            pool_objects(&world, Resource::Pods),
            pool_objects(&world, Resource::Secrets),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "6 jobs done in {jobs_done:?} on up to {peak_pods} member pods; no pod or Secret of the pool left {:?} later",
        started.elapsed() - jobs_done
    );
    scheduler.kill(nix::sys::signal::Signal::SIGTERM).await;
}
