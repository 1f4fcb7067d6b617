//! Invariants of the simulator on small workloads: every job runs exactly once and for its
//! whole duration (so no busy agent was ever stopped), agent time adds up, cost is billed
//! time times price, the limiter's caps hold, and a seed fixes the report.

use std::time::Duration;
use updraft_model::scaling::{
    ElasticCiSettings, HpaSettings, PolicySettings, PoolSettings, UpdraftSettings,
};
use updraft_sim::workload::generate::{generate, Shape};
use updraft_sim::workload::JobArrival;
use updraft_sim::{
    simulate, BackendPreset, DurationDistribution, FleetSettings, Price, Report, SimSettings,
};

fn policies() -> Vec<PolicySettings> {
    vec![
        PolicySettings::ElasticCi(ElasticCiSettings::default()),
        PolicySettings::ElasticCi(ElasticCiSettings {
            disable_scale_in: false,
            scale_in_cooldown: Duration::from_secs(60),
            instance_buffer: 3,
            ..ElasticCiSettings::default()
        }),
        PolicySettings::Hpa(HpaSettings::default()),
        PolicySettings::Updraft(UpdraftSettings::default()),
        PolicySettings::Updraft(UpdraftSettings {
            idle_grace: Duration::ZERO,
            ..UpdraftSettings::default()
        }),
    ]
}

fn pool_fleet(
    policy: PolicySettings,
    agents_per_instance: u32,
    backend: BackendPreset,
) -> FleetSettings {
    let mut pool = PoolSettings::new(1, 200, policy);
    pool.agents_per_instance = agents_per_instance;
    FleetSettings::new("pool", backend, Some(pool))
}

fn workload() -> Vec<JobArrival> {
    generate(Shape::MergeQueue, 7, 0.5, None)
}

fn check_accounting(report: &Report, jobs: &[JobArrival], agents_per_instance: f64) {
    let label = &report.label;
    assert_eq!(
        report.jobs,
        jobs.len() as u64,
        "{label}: every job started once"
    );
    assert_eq!(
        report.fleets.iter().map(|f| f.jobs).sum::<u64>(),
        jobs.len() as u64,
        "{label}"
    );
    let run_s: f64 = jobs.iter().map(|j| j.duration_ms as f64 / 1000.0).sum();
    assert!(
        (report.busy_agent_seconds - run_s).abs() < 1e-6,
        "{label}: busy time is every job's whole run"
    );
    assert!(
        (report.agent_seconds - report.busy_agent_seconds - report.idle_agent_seconds).abs() < 1e-6
    );
    let on_instances = report.agent_seconds / agents_per_instance + report.booting_instance_seconds;
    assert!(
        (report.instance_seconds - on_instances).abs() < 1e-3,
        "{label}: {} vs {on_instances}",
        report.instance_seconds
    );
    assert!(report.billed_instance_seconds >= report.instance_seconds - 1e-6);
}

#[test]
fn every_job_runs_once_in_full_and_time_adds_up() {
    let jobs = workload();
    for policy in policies() {
        for api in [1, 4] {
            let settings =
                SimSettings::with_fleets(vec![pool_fleet(policy.clone(), api, BackendPreset::Ec2)]);
            let report = simulate(&settings, &jobs, policy.kind()).unwrap();
            check_accounting(&report, &jobs, api as f64);
        }
    }
    let one_shot = SimSettings::with_fleets(vec![FleetSettings::new(
        "each",
        BackendPreset::Fargate,
        None,
    )]);
    let report = simulate(&one_shot, &jobs, "one-shot").unwrap();
    check_accounting(&report, &jobs, 1.0);
    assert_eq!(report.launches, jobs.len() as u64);
    assert_eq!(report.idle_agent_seconds, 0.0);
}

#[test]
fn cost_is_billed_time_times_price() {
    let jobs = workload();
    let mut fleet = pool_fleet(
        PolicySettings::Updraft(UpdraftSettings::default()),
        1,
        BackendPreset::Ec2,
    );
    fleet.price = Some(Price::Constant { per_hour: 0.36 });
    fleet.minimum_billing = Some(Duration::from_secs(300));
    let report = simulate(&SimSettings::with_fleets(vec![fleet]), &jobs, "priced").unwrap();
    assert!((report.cost - report.billed_instance_seconds * 0.0001).abs() < 1e-6);
    assert!(report.billed_instance_seconds >= 300.0 * report.launches as f64 - 1e-6);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let jobs = workload();
    let mut settings = SimSettings::with_fleets(vec![pool_fleet(
        PolicySettings::Hpa(HpaSettings::default()),
        2,
        BackendPreset::Ec2Spot,
    )]);
    let a = simulate(&settings, &jobs, "a").unwrap();
    let b = simulate(&settings, &jobs, "a").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.samples, b.samples);
    settings.seed = 2;
    assert_ne!(simulate(&settings, &jobs, "a").unwrap(), a);
}

#[test]
fn a_warm_pool_in_front_of_one_shot_overflow_shares_the_queue() {
    let jobs = workload();
    let mut overflow = FleetSettings::new("overflow", BackendPreset::Fargate, None);
    overflow.overflow_after = Some(Duration::from_secs(30));
    let mut warm = pool_fleet(
        PolicySettings::Updraft(UpdraftSettings::default()),
        1,
        BackendPreset::Ec2,
    );
    warm.pool.as_mut().unwrap().max = 20;
    let settings = SimSettings::with_fleets(vec![warm, overflow]);
    let report = simulate(&settings, &jobs, "warm+overflow").unwrap();
    check_accounting(&report, &jobs, 1.0);
    let (pool, one_shot) = (&report.fleets[0], &report.fleets[1]);
    assert!(
        pool.jobs > 0 && one_shot.jobs > 0,
        "{} / {}",
        pool.jobs,
        one_shot.jobs
    );
    assert!(pool.peak_instances <= 20);
    assert_eq!(one_shot.launches, one_shot.jobs);
}

#[test]
fn the_limiter_caps_hold() {
    let jobs = workload();
    let mut capped = FleetSettings::new("capped", BackendPreset::Kubernetes, None);
    capped.max_in_flight = Some(5);
    let report = simulate(&SimSettings::with_fleets(vec![capped]), &jobs, "capped").unwrap();
    assert_eq!(report.peak_instances, 5);

    let mut rated = FleetSettings::new("rated", BackendPreset::Local, None);
    rated.launches_per_minute = Some(60);
    rated.boot_time = Some(DurationDistribution::Constant {
        value: Duration::from_millis(100),
    });
    let burst: Vec<JobArrival> = (0..120)
        .map(|_| JobArrival {
            at_ms: 0,
            queue: "default".into(),
            duration_ms: 1000,
            pipeline: None,
            priority: 0,
        })
        .collect();
    let report = simulate(&SimSettings::with_fleets(vec![rated]), &burst, "rated").unwrap();
    // 10 launches at once (the bucket), then one a second: the last starts near 110 s.
    assert!(
        (105.0..=115.0).contains(&report.wait.max_s),
        "{}",
        report.wait.max_s
    );

    let mut settings = SimSettings::with_fleets(vec![pool_fleet(
        PolicySettings::Hpa(HpaSettings::default()),
        1,
        BackendPreset::Kubernetes,
    )]);
    settings.max_in_flight = Some(7);
    let report = simulate(&settings, &jobs, "global").unwrap();
    assert!(report.peak_instances <= 7, "{}", report.peak_instances);
    check_accounting(&report, &jobs, 1.0);
}

#[test]
fn jobs_on_a_queue_no_fleet_serves_are_refused() {
    let jobs = vec![JobArrival {
        at_ms: 0,
        queue: "gpu".into(),
        duration_ms: 1,
        pipeline: None,
        priority: 0,
    }];
    let settings =
        SimSettings::with_fleets(vec![FleetSettings::new("cpu", BackendPreset::Local, None)]);
    assert!(simulate(&settings, &jobs, "x")
        .unwrap_err()
        .contains("\"gpu\""));
}

#[test]
fn a_pickup_delay_holds_jobs_for_idle_agents_but_not_for_a_booting_agent_s_first_ping() {
    let job = |at_s: u64| JobArrival {
        at_ms: at_s * 1000,
        queue: "default".into(),
        duration_ms: 10_000,
        pipeline: None,
        priority: 0,
    };
    // One warm agent from the start: the job at 100 s finds it idle and waits for its ping;
    // the job at 101 s finds none idle, so a new agent boots (5 s) and its first ping takes
    // the job.
    let mut fleet = pool_fleet(
        PolicySettings::Updraft(UpdraftSettings::default()),
        1,
        BackendPreset::Local,
    );
    fleet.boot_time = Some(DurationDistribution::Constant {
        value: Duration::from_secs(5),
    });
    fleet.pickup = Some(DurationDistribution::Constant {
        value: Duration::from_secs(2),
    });
    let settings = SimSettings::with_fleets(vec![fleet]);
    let report = simulate(&settings, &[job(100), job(101)], "pickup").unwrap();
    let interval = 10.0;
    assert_eq!(report.wait.p50_s, 2.0, "{:?}", report.wait);
    assert!(
        report.wait.max_s > 5.0 && report.wait.max_s <= 5.0 + interval,
        "the second job waited for a step and a boot, with no pickup: {:?}",
        report.wait
    );

    let mut one_shot = FleetSettings::new("burst", BackendPreset::Local, None);
    one_shot.pickup = Some(DurationDistribution::Constant {
        value: Duration::from_secs(2),
    });
    let errors = SimSettings::with_fleets(vec![one_shot]).validate();
    assert_eq!(errors[0].0, "fleet[0].pickup");
}
