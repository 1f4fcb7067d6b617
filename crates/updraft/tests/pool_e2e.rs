//! Warm pools end to end: the emulator, the scheduler and a local pool of real `updraft
//! agent start` processes. Demand rises and falls to zero: the pool scales up, then down to
//! no member at all, and no job ends because its agent was stopped (every job passes with no
//! signal, taken once, by a pool agent). Jobs the pool does not take in time overflow to a
//! one-shot fleet on the same queue, and each still runs once. The scenarios run one at a
//! time (they share two cores with their agent processes).

mod pool_support;

use pool_support::{processes_marked_with, PoolWorld};
use std::time::{Duration, Instant};
use updraft_backends::PoolBackend;
use updraft_scheduler::SchedulerHandle;
use uuid::Uuid;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pool's members now, as the scheduler last saw them.
fn members(scheduler: &SchedulerHandle) -> usize {
    scheduler
        .pools()
        .iter()
        .find(|p| p.fleet == "warm")
        .map_or(0, |p| p.members.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_scales_up_then_to_zero_and_never_stops_a_busy_agent() {
    let _serial = SERIAL.lock().await;
    let world = PoolWorld::new().await;
    let config = world.config(
        "max = 6\ninterval = \"1s\"\npolicy = { kind = \"updraft\", idle_grace = \"4s\", burst_memory = \"1m\" }",
        "",
    );
    let (scheduler, pool) = world.start(&config).await;
    world.pipeline("rise", &[4.0; 4]);
    world.pipeline("more", &[4.0; 3]);

    let started = Instant::now();
    let mut jobs = world.emulator.create_build("rise").expect("build").job_ids;
    let mut peak = 0;
    let mut second_wave = false;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        peak = peak.max(pool.members("warm").await.expect("members").len());
        if !second_wave && started.elapsed() >= Duration::from_secs(2) {
            jobs.extend(world.emulator.create_build("more").expect("build").job_ids);
            second_wave = true;
        }
        let done = jobs.iter().all(|j| {
            world
                .emulator
                .job_state(*j)
                .is_some_and(updraft_emulator::JobState::is_terminal)
        });
        if second_wave && done {
            break;
        }
        assert!(Instant::now() < give_up, "jobs did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.assert_each_passed_untouched(&jobs);
    for job in &jobs {
        let agent = world.agent_of(*job);
        assert!(agent.starts_with("warm-"), "{job} ran on {agent:?}");
    }
    assert!(peak >= 4, "the pool scaled up to its demand, peak {peak}");

    let give_up = Instant::now() + Duration::from_secs(40);
    while !(pool.members("warm").await.expect("members").is_empty() && members(&scheduler) == 0) {
        assert!(
            Instant::now() < give_up,
            "the pool did not scale to zero: {:#?}",
            scheduler.pools()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        processes_marked_with("warm-").is_empty(),
        "no pool agent process is left"
    );
    let snapshot = scheduler.pools().remove(0);
    assert_eq!(snapshot.desired, 0, "{snapshot:#?}");
    assert!(snapshot.actions.iter().any(|a| a.starts_with("drained")));
    assert!(snapshot.actions.iter().any(|a| a.starts_with("removed")));
    assert!(!snapshot.boots.is_empty());

    let costs = scheduler.job_costs(100);
    for job in &jobs {
        let cost = costs
            .iter()
            .find(|c| c.job == *job)
            .unwrap_or_else(|| panic!("job {job} was charged: {costs:#?}"));
        assert!(
            (2.0..=7.0).contains(&cost.spent.seconds),
            "a 4 s job's compute: {cost:?}"
        );
        assert!((cost.spent.dollars - cost.spent.seconds * 0.001).abs() < 1e-9);
        assert_eq!((cost.queue.as_str(), cost.fleet.as_str()), ("pool", "warm"));
        assert!(
            ["rise", "more"].contains(&cost.pipeline.as_str()),
            "{cost:?}"
        );
    }
    let idle: f64 = scheduler
        .costs()
        .iter()
        .filter(|l| l.kind == "idle")
        .map(|l| l.spent.seconds)
        .sum();
    assert!(idle > 0.0, "idle pool time is reported as idle");
    scheduler.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_the_pool_does_not_take_in_time_overflow_to_one_shot_launches() {
    let _serial = SERIAL.lock().await;
    let world = PoolWorld::new().await;
    let burst = format!(
        "[[fleet]]\nname = \"burst\"\nqueue = \"{}\"\noverflow_after = \"3s\"\nmax_in_flight = 4\n\
         [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\nenv = {}\n",
        pool_support::QUEUE,
        serde_json::Value::String(pool_support::UPDRAFT.into()),
        world.agent_env(),
    );
    let config = world.config(
        "max = 1\ninterval = \"1s\"\npolicy = { kind = \"updraft\", idle_grace = \"2s\" }",
        &burst,
    );
    let (scheduler, pool) = world.start(&config).await;
    world.pipeline("wide", &[6.0; 3]);
    let jobs: Vec<Uuid> = world.emulator.create_build("wide").expect("build").job_ids;
    world.wait_until_final(&jobs, Duration::from_secs(60)).await;
    world.assert_each_passed_untouched(&jobs);
    let by_pool = jobs
        .iter()
        .filter(|j| world.agent_of(**j).starts_with("warm-"))
        .count();
    assert_eq!(by_pool, 1, "the pool of one took one job");
    for job in &jobs {
        let timeline = world.emulator.job_timeline(*job).expect("timeline");
        if !world.agent_of(*job).starts_with("warm-") {
            assert_eq!(timeline["acquires"].as_u64(), Some(1), "{timeline:#}");
            let waited = world.entered_ms(*job, "reserved").expect("reserved")
                - world.entered_ms(*job, "scheduled").expect("scheduled");
            assert!(waited >= 2_900, "overflowed after 3 s, not {waited} ms");
        }
    }
    assert_eq!(scheduler.stats().launched, 2);
    let give_up = Instant::now() + Duration::from_secs(30);
    while !pool.members("warm").await.expect("members").is_empty() {
        assert!(Instant::now() < give_up, "the pool did not scale to zero");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scheduler.shutdown().await.expect("clean shutdown");
}
