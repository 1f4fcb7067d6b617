//! The simulator against reality: one two-minute trace (a quiet start, two bursts, a lull)
//! run through the emulator with a local pool of real `updraft agent start` processes, then
//! through `updraft sim` with the same pool settings, a boot-time distribution fitted to the
//! boots the pool measured and a pickup delay fitted to the emulator's ping interval. Agent-seconds (connected agents, sampled from Buildkite's
//! agents list) and the p95 wait (scheduled → assigned, from the emulator's job timelines)
//! must agree within 15 %. Both sets of numbers are printed.

mod pool_support;

use pool_support::{PoolWorld, QUEUE};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use updraft_backends::PoolBackend;
use updraft_buildkite::rest::RestClient;
use updraft_buildkite::ClientOptions;
use updraft_scheduler::stats::quantile;
use updraft_sim::workload::JobArrival;
use updraft_sim::{simulate, SimSettings};
use uuid::Uuid;

/// The pool, as both the scheduler and the simulator read it.
const POOL: &str = r#"max = 12
interval = "10s"
policy = { kind = "updraft", idle_grace = "6s", burst_memory = "2m", lead_time = "4s" }"#;

/// How long a waiting job takes to reach an idle agent: the emulator's agents ping every
/// 1 s plus up to 1 s of jitter (about 0.8 s on average to the next ping for a job arriving
/// at an idle agent, 0.5 s after a job), so uniform over 0–1.5 s.
const PICKUP: &str = r#"{ kind = "uniform", low = "0s", high = "1500ms" }"#;

/// Arrival rate (jobs per second) by 20-second window of the trace.
const RATES: [f64; 6] = [0.1, 1.0, 1.0, 0.2, 0.8, 0.1];

/// The trace: Poisson arrivals at `RATES`, each job sleeping 4–10 s (half seconds).
fn trace() -> Vec<JobArrival> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut jobs = Vec::new();
    let mut at = 0.0_f64;
    loop {
        let window = (at / 20.0) as usize;
        let Some(rate) = RATES.get(window) else {
            break;
        };
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
        if (at / 20.0) as usize != window {
            at = (window + 1) as f64 * 20.0;
            continue;
        }
        let duration = 4.0 + (rng.random_range(0..=12) as f64) / 2.0;
        jobs.push(JobArrival {
            at_ms: (at * 1000.0) as u64,
            queue: QUEUE.into(),
            duration_ms: (duration * 1000.0) as u64,
            pipeline: Some(format!("sleep-{}", duration * 2.0)),
            priority: 0,
        });
    }
    jobs
}

fn lognormal_fit(boots: &[Duration]) -> String {
    // Nearest rank, as the simulator reports its quantiles.
    let mut boots = boots.to_vec();
    let mut ms = |q| quantile(&mut boots, q).map_or(0.0, |b| b.as_secs_f64() * 1000.0);
    let median = ms(0.5).max(1.0);
    let p95 = ms(0.95).max(median);
    format!(
        "{{ kind = \"lognormal\", median = \"{}ms\", p95 = \"{}ms\" }}",
        median.round(),
        p95.round()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_through_a_local_pool_agrees_with_updraft_sim() {
    let jobs = trace();
    let world = PoolWorld::new().await;
    let durations: BTreeSet<u64> = jobs.iter().map(|j| j.duration_ms).collect();
    for duration in &durations {
        let seconds = *duration as f64 / 1000.0;
        world.pipeline(&format!("sleep-{}", seconds * 2.0), &[seconds]);
    }
    let (scheduler, pool) = world.start(&world.config(POOL, "")).await;
    let rest = RestClient::new(
        &world.emulator.rest_endpoint(),
        &world.emulator.api_token(),
        &world.emulator.org(),
        ClientOptions::default(),
    )
    .expect("rest client");

    let started = Instant::now();
    // Builds are created on time by this loop, which also samples the connected agents.
    let mut created_jobs: Vec<Uuid> = Vec::new();
    let mut next = 0;
    let mut agent_seconds = 0.0;
    let mut last_sample = Instant::now();
    let give_up = started + Duration::from_secs(300);
    loop {
        while next < jobs.len() && started.elapsed() >= Duration::from_millis(jobs[next].at_ms) {
            let pipeline = jobs[next].pipeline.as_deref().expect("pipeline");
            created_jobs.extend(
                world
                    .emulator
                    .create_build(pipeline)
                    .expect("build")
                    .job_ids,
            );
            next += 1;
        }
        let connected = rest
            .list_agents()
            .await
            .expect("agents")
            .iter()
            .filter(|a| a.name.starts_with("warm-"))
            .count();
        let now = Instant::now();
        agent_seconds += connected as f64 * (now - last_sample).as_secs_f64();
        last_sample = now;
        let all_done = next == jobs.len()
            && created_jobs.iter().all(|j| {
                world
                    .emulator
                    .job_state(*j)
                    .is_some_and(updraft_emulator::JobState::is_terminal)
            });
        if all_done && connected == 0 && pool.members("warm").await.expect("members").is_empty() {
            break;
        }
        assert!(Instant::now() < give_up, "the trace did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.assert_each_passed_untouched(&created_jobs);
    let mut waits: Vec<Duration> = created_jobs
        .iter()
        .map(|j| {
            let scheduled = world.entered_ms(*j, "scheduled").expect("scheduled");
            let assigned = world.entered_ms(*j, "assigned").expect("assigned");
            Duration::from_millis(
                u64::try_from(assigned - scheduled).expect("assigned after scheduled"),
            )
        })
        .collect();
    let real_p95 = quantile(&mut waits, 0.95).expect("waits").as_secs_f64();
    let boots = scheduler.pools().remove(0).boots;
    scheduler.shutdown().await.expect("clean shutdown");

    let settings = SimSettings::from_toml(&format!(
        "drain = \"60s\"\n[[fleet]]\nname = \"warm\"\nqueue = \"{QUEUE}\"\nbackend = \"local\"\n\
         boot_time = {}\npickup = {PICKUP}\n[fleet.pool]\n{POOL}\n",
        lognormal_fit(&boots)
    ))
    .expect("sim settings");
    let report = simulate(&settings, &jobs, "sim").expect("simulation");
    println!(
        "{} jobs · boots measured {:?}\n            agent-s   p95 wait\n reality   {:>7.1}   {:>6.2} s\n sim       {:>7.1}   {:>6.2} s",
        jobs.len(),
        boots,
        agent_seconds,
        real_p95,
        report.agent_seconds,
        report.wait.p95_s
    );
    let off = |real: f64, sim: f64| (real - sim).abs() / sim;
    assert!(
        off(agent_seconds, report.agent_seconds) <= 0.15,
        "agent-seconds: reality {agent_seconds:.1}, sim {:.1}",
        report.agent_seconds
    );
    assert!(
        off(real_p95, report.wait.p95_s) <= 0.15,
        "p95 wait: reality {real_p95:.2} s, sim {:.2} s",
        report.wait.p95_s
    );
}
