//! High availability on Kubernetes, end to end with the `updraft` binary: two schedulers elect
//! a leader with a Lease; the leader is SIGKILLed five times during a 300-job run and the other
//! takes over each time within 15 s, losing no job and running none twice. And a scheduler
//! restarted with its ledger deleted mid-run adopts every in-flight Job from the cluster
//! without launching any again.

mod kubernetes_support;
mod scheduler_process;

use kubernetes_support::*;
use nix::sys::signal::Signal;
use scheduler_process::SchedulerProcess;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use updraft_emulator::JobState;
use updraft_kube_fake::Resource;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TAKE_OVER_LIMIT: Duration = Duration::from_secs(15);
/// A kill between creating a Job and its token Secret leaves a launch that cannot start; it
/// is relaunched after the grace, shortened here.
const QUICK_GRACE: &str = "image_pull_grace = \"5s\"\n";

fn fleet(max_in_flight: u32) -> String {
    format!(
        r#"[[fleet]]
name = "linux"
queue = "{QUEUE}"
backend = "kubernetes"
max_in_flight = {max_in_flight}

[fleet.template]
command = {AGENT_COMMAND}
env = {{ BUILDKITE_SKIP_CHECKOUT = "true" }}

[fleet.kubernetes]
image = "ghcr.io/updraft/updraft:e2e"
"#
    )
}

fn jobs_yaml(count: u32, command: &str) -> String {
    format!(
        "steps:\n  - command: {}\n    parallelism: {count}\n    agents: {{queue: {QUEUE}}}\n",
        quote(command)
    )
}

/// One replica: its config (its own ledger) and log.
struct Replica {
    config: PathBuf,
    log: PathBuf,
    name: &'static str,
    starts: u32,
}

impl Replica {
    fn new(world: &World, name: &'static str) -> Replica {
        let election = format!("{QUICK_GRACE}[kubernetes.leader_election]\nenabled = true\nlease_duration = \"4s\"\nrenew_interval = \"1s\"\n");
        let text = world.config(&format!("ledger-{name}.sqlite"), &election, &fleet(24));
        Replica {
            config: world.write(&format!("updraft-{name}.toml"), &text),
            log: world.state.path().join(format!("scheduler-{name}.log")),
            name,
            starts: 0,
        }
    }

    /// Start a new process of this replica; each has its own identity, as a new pod would.
    async fn start(&mut self) -> (String, SchedulerProcess) {
        self.starts += 1;
        let identity = format!("{}-{}", self.name, self.starts);
        let process =
            SchedulerProcess::start(&self.config, &self.log, &[("POD_NAME", identity.as_str())])
                .await;
        (identity, process)
    }
}

fn lease_holder(fake: &updraft_kube_fake::KubeFakeHandle) -> Option<String> {
    let lease = fake.get(Resource::Leases, NAMESPACE, "updraft-scheduler")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

fn finished(world: &World, jobs: &[uuid::Uuid]) -> usize {
    jobs.iter()
        .filter(|j| {
            world
                .emulator
                .job_state(**j)
                .is_some_and(JobState::is_terminal)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_sigkilled_five_times_during_300_jobs_is_taken_over_within_15_s_and_nothing_is_lost_or_run_twice(
) {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let mut replicas = [Replica::new(&world, "a"), Replica::new(&world, "b")];
    let mut running = Vec::new();
    for replica in &mut replicas {
        running.push(replica.start().await);
    }
    let leader = world
        .fake
        .wait_for(Duration::from_secs(30), lease_holder)
        .await
        .expect("a leader is elected");
    let leading = running
        .iter()
        .position(|(id, _)| *id == leader)
        .expect("the leader is one of ours");
    world.push_to(running[leading].1.addr);

    let build = world.build(&jobs_yaml(300, "sleep 0.2; echo ok"));
    let mut moments: Vec<usize> = (0..5)
        .map(|i| 20 + i * 50 + rand::random_range(0..30))
        .collect();
    moments.sort();
    let mut take_overs = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(240);
    for moment in moments {
        while finished(&world, &build.job_ids) < moment {
            assert!(
                Instant::now() < give_up,
                "the run stalled before {moment} jobs finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let holder = lease_holder(&world.fake).expect("a leader");
        let index = running
            .iter()
            .position(|(id, _)| *id == holder)
            .expect("the leader is running");
        let (_, process) = running.remove(index);
        let killed_at = Instant::now();
        process.kill(Signal::SIGKILL).await;
        let successor = running[0].0.clone();
        world
            .fake
            .wait_for(TAKE_OVER_LIMIT, |w| (lease_holder(w).as_deref() == Some(successor.as_str())).then_some(()))
            .await
            .unwrap_or_else(|| panic!("{successor} did not take over within {TAKE_OVER_LIMIT:?} of the leader's death"));
        let took = killed_at.elapsed();
        take_overs.push(took);
        world.push_to(running[0].1.addr);
        let replica = replicas
            .iter_mut()
            .find(|r| holder.starts_with(r.name))
            .expect("its replica");
        running.push(replica.start().await);
    }
    eprintln!("take-overs after SIGKILL: {take_overs:?}");
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(180))
        .await;
    world.assert_each_passed_once(&build.job_ids);
    for job in &build.job_ids {
        assert_eq!(
            world.agents_started(*job),
            1,
            "agents started for job {job}"
        );
    }
    assert!(
        take_overs.iter().all(|t| *t <= TAKE_OVER_LIMIT),
        "{take_overs:?}"
    );
    for (_, process) in running {
        process.kill(Signal::SIGTERM).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restarted_with_its_ledger_deleted_adopts_every_in_flight_job_and_launches_none_again(
) {
    let _serial = SERIAL.lock().await;
    let world = World::new(|_| {}).await;
    let config = world.write(
        "updraft.toml",
        &world.config("ledger.sqlite", QUICK_GRACE, &fleet(40)),
    );
    let log = world.state.path().join("scheduler.log");
    let scheduler = SchedulerProcess::start(&config, &log, &[]).await;
    world.push_to(scheduler.addr);
    let build = world.build(&jobs_yaml(40, "sleep 3; echo ok"));
    world
        .fake
        .wait_for(Duration::from_secs(60), |fake| {
            (fake.list(Resource::Jobs, Some(NAMESPACE)).len() == 40).then_some(())
        })
        .await
        .expect("every job launched");
    scheduler.kill(Signal::SIGKILL).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(world.state.path().join(format!("ledger.sqlite{suffix}")));
    }
    let scheduler = SchedulerProcess::start(&config, &log, &[]).await;
    world.push_to(scheduler.addr);
    world
        .wait_until_final(&build.job_ids, Duration::from_secs(90))
        .await;
    world.assert_each_passed_once(&build.job_ids);
    for job in &build.job_ids {
        assert_eq!(
            world.agents_started(*job),
            1,
            "agents started for job {job}"
        );
    }
    scheduler.kill(Signal::SIGTERM).await;
}
