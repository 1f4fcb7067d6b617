//! EC2 pools against moto and the `ec2-boot` stand-in (which boots each InService instance by
//! running its user data's agents — real `updraft agent start` processes — against the
//! emulator): the pool scales out, scales in busy-safely (no instance is terminated while
//! one of its agents is alive, and an idle instance goes while a busy one stays), buys
//! on-demand when spot capacity fails, and drains an instance named by a spot interruption
//! notice. Every job passes, untouched, taken once. The scenarios run one at a time.

mod pool_support;

use aws_config::SdkConfig;
use base64::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use updraft_aws_fakes::{sdk_config, Moto};
use updraft_backends::{MemberPhase, PoolBackend};
use updraft_ec2::{Ec2Clients, Ec2Fleet, Ec2FleetSettings, Ec2Pool, Ec2Settings};
use updraft_ec2_boot::{BootSettings, Ec2Boot};
use updraft_emulator::JobState;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};
use uuid::Uuid;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const QUEUE: &str = "ec2";
const FLEET: &str = "warm";

/// moto, the stand-in, the emulator and a state directory.
struct Ec2World {
    boot: Ec2Boot,
    /// Runs until the world is dropped.
    _moto: Moto,
    sdk: SdkConfig,
    subnet: String,
    notice_queue: String,
    pool: pool_support::PoolWorld,
}

impl Ec2World {
    async fn new() -> Ec2World {
        let moto = Moto::start().await.expect("moto");
        let sdk = sdk_config(moto.endpoint());
        let subnet = aws_sdk_ec2::Client::new(&sdk)
            .describe_subnets()
            .send()
            .await
            .expect("subnets")
            .subnets()[0]
            .subnet_id()
            .expect("subnet id")
            .to_string();
        let notice_queue = aws_sdk_sqs::Client::new(&sdk)
            .create_queue()
            .queue_name("updraft-notices")
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("queue url")
            .to_string();
        let boot = Ec2Boot::start(
            &moto,
            BootSettings {
                boot_delay: Duration::from_millis(300),
                poll: Duration::from_millis(200),
            },
        )
        .await
        .expect("ec2-boot");
        Ec2World {
            boot,
            _moto: moto,
            sdk,
            subnet,
            notice_queue,
            pool: pool_support::PoolWorld::new().await,
        }
    }

    /// A scheduler with the pool fleet on EC2 (spot first when `spot`), 2 agents per instance.
    async fn start(&self, spot: bool) -> (SchedulerHandle, Ec2Pool) {
        let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let world = &self.pool;
        let text = format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"ec2-e2e\"\n\
             rest_endpoint = {}\napi_token = {}\nmetrics_interval = \"1s\"\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
             [[fleet]]\nname = \"{FLEET}\"\nqueue = \"{QUEUE}\"\nbackend = \"ec2\"\nmode = \"pool\"\n\
             price_per_second = 0.0000231\n\
             [fleet.template]\ncommand = [{}, \"agent\", \"start\"]\nenv = {}\n\
             [fleet.pool]\nmax = 4\nagents_per_instance = 2\ninterval = \"1s\"\n\
             policy = {{ kind = \"updraft\", idle_grace = \"3s\", lead_time = \"5s\" }}\n",
            quote(&world.emulator.agent_endpoint()),
            quote(world.emulator.agent_token().expose()),
            quote(&world.emulator.rest_endpoint()),
            quote(world.emulator.api_token().expose()),
            quote(&world.state.path().join("ledger.sqlite").to_string_lossy()),
            quote(pool_support::UPDRAFT),
            world.agent_env(),
        );
        let config =
            Config::parse_checked(&text, std::iter::empty(), &["local", "ec2"]).expect("config");
        let settings = Ec2Settings {
            notice_queue_url: Some(self.notice_queue.clone()),
            notice_wait: updraft_config::Duration::from_secs(1),
            ..Ec2Settings::default()
        };
        let fleet: Ec2FleetSettings = serde_json::from_value(serde_json::json!({
            "image_id": "ami-12c6146b",
            "instance_type": "t3.micro",
            "subnets": [self.subnet],
            "spot": spot,
            "spot_launch_timeout": "3s",
            "spot_retry_after": "10m",
            "agent_dir": world.state.path().join("instances").to_string_lossy(),
            "drain_poll": "1s",
            "tags": {"team": "ci"},
        }))
        .expect("fleet settings");
        let pool = Ec2Pool::open(
            &Ec2Clients::new(self.sdk.clone(), &settings),
            settings,
            vec![Ec2Fleet {
                name: FLEET.into(),
                settings: fleet,
                agents: 2,
                max: 4,
            }],
        )
        .await
        .expect("ec2 pool");
        let pools: BTreeMap<String, Arc<dyn PoolBackend>> = [(
            "ec2".to_string(),
            Arc::new(pool.clone()) as Arc<dyn PoolBackend>,
        )]
        .into();
        let scheduler = Scheduler::start_with_pools(config, BTreeMap::new(), pools, None)
            .await
            .expect("scheduler");
        (scheduler, pool)
    }

    /// A build of jobs sleeping `sleeps` seconds on the pool's queue.
    fn build(&self, slug: &str, sleeps: &[f64]) -> Vec<Uuid> {
        let mut yaml = String::from("steps:\n");
        for (i, seconds) in sleeps.iter().enumerate() {
            yaml.push_str(&format!(
                "  - label: job-{i}\n    command: \"sleep {seconds}\"\n    agents: {{queue: {QUEUE}}}\n"
            ));
        }
        self.pool
            .emulator
            .create_pipeline(slug, &yaml)
            .expect("pipeline");
        self.pool
            .emulator
            .create_build(slug)
            .expect("build")
            .job_ids
    }

    /// Wait until every instance that booted is gone and the pool has no member.
    async fn wait_until_empty(&self, pool: &Ec2Pool) {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let members = pool.members(FLEET).await.expect("members");
            let left: Vec<_> = self
                .boot
                .instances()
                .into_iter()
                .filter(|i| i.booted && i.terminated.is_none())
                .collect();
            if members.is_empty() && left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "the pool did not scale in: members {members:?}, instances {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// No instance went while an agent (or its job) on it was alive, and each went by the
    /// protocol: drained first. (Its `updraft:agents = exited` tag may come a poll after
    /// Buildkite already stopped listing its agents, which is the scheduler's proof; the
    /// processes the stand-in finds alive at termination are what must be none.)
    fn assert_no_busy_instance_terminated(&self) {
        for instance in self.boot.instances().iter().filter(|i| i.booted) {
            let ended = instance.terminated.as_ref().expect("terminated");
            assert_eq!(
                ended.agent_processes_alive,
                0,
                "{instance:?}\n{}",
                self.boot.log(&instance.instance)
            );
            assert!(ended.drained, "{instance:?}");
        }
    }

    async fn desired(&self, group: &str) -> i32 {
        aws_sdk_autoscaling::Client::new(&self.sdk)
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .expect("groups")
            .auto_scaling_groups()[0]
            .desired_capacity()
            .unwrap_or(-1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_pool_scales_out_then_in_and_terminates_no_busy_instance() {
    let _serial = SERIAL.lock().await;
    let world = Ec2World::new().await;
    let (scheduler, pool) = world.start(false).await;
    let started = Instant::now();
    let jobs = world.build("mixed", &[2.0, 2.0, 2.0, 14.0]);
    let long = jobs[3];

    // While the long job runs, its instance stays; the other goes once idle.
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut idle_one_went_while_busy = false;
    while !jobs.iter().all(|j| {
        world
            .pool
            .emulator
            .job_state(*j)
            .is_some_and(JobState::is_terminal)
    }) {
        let gone = world
            .boot
            .instances()
            .iter()
            .filter(|i| i.terminated.is_some())
            .count();
        let long_running = world.pool.emulator.job_state(long) == Some(JobState::Running);
        idle_one_went_while_busy |= gone > 0 && long_running;
        assert!(Instant::now() < give_up, "jobs did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.pool.assert_each_passed_untouched(&jobs);
    let booted = world.boot.instances().iter().filter(|i| i.booted).count();
    assert_eq!(
        booted,
        2,
        "4 jobs at 2 agents per instance: {:?}",
        world.boot.instances()
    );
    for job in &jobs {
        assert!(world.pool.agent_of(*job).starts_with("i-"));
    }
    assert!(
        idle_one_went_while_busy,
        "the idle instance went while the busy one kept running its job"
    );
    world.wait_until_empty(&pool).await;
    world.assert_no_busy_instance_terminated();
    let group = updraft_ec2::group_name("updraft", FLEET, updraft_ec2::Capacity::OnDemand);
    assert_eq!(
        world.desired(&group).await,
        0,
        "each termination decremented"
    );
    println!(
        "scale out and busy-safe scale in: {} instances, {:.1} s",
        booted,
        started.elapsed().as_secs_f64()
    );

    // Cost attribution tags on the instances; no secret in user data; the token in SSM.
    let ec2 = aws_sdk_ec2::Client::new(&world.sdk);
    let instance = world.boot.instances()[0].instance.clone();
    let described = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .expect("instance");
    let tags: BTreeMap<String, String> = described.reservations()[0].instances()[0]
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect();
    for (key, value) in [
        ("updraft:pool", "updraft"),
        ("updraft:fleet", FLEET),
        ("updraft:capacity", "on-demand"),
        ("team", "ci"),
    ] {
        assert_eq!(tags.get(key).map(String::as_str), Some(value), "{tags:?}");
    }
    let user_data = ec2
        .describe_instance_attribute()
        .instance_id(&instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let script = base64::engine::general_purpose::STANDARD
        .decode(
            user_data
                .user_data()
                .and_then(|u| u.value())
                .unwrap_or_default(),
        )
        .expect("base64");
    let token = world.pool.emulator.agent_token();
    assert!(!String::from_utf8_lossy(&script).contains(token.expose()));
    let parameter = aws_sdk_ssm::Client::new(&world.sdk)
        .get_parameter()
        .name(format!("/updraft/pools/{FLEET}/agent-token"))
        .send()
        .await
        .expect("parameter");
    assert_eq!(
        parameter.parameter().and_then(|p| p.r#type()),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    let costs = scheduler.job_costs(10);
    assert!(
        costs
            .iter()
            .any(|c| c.job == long && c.spent.seconds >= 10.0),
        "{costs:?}"
    );
    scheduler.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_spot_capacity_fails_the_pool_buys_on_demand() {
    let _serial = SERIAL.lock().await;
    let world = Ec2World::new().await;
    world.boot.set_spot_failing(true);
    let (scheduler, pool) = world.start(true).await;
    let started = Instant::now();
    let jobs = world.build("spotless", &[2.0, 2.0]);
    world
        .pool
        .wait_until_final(&jobs, Duration::from_secs(60))
        .await;
    world.pool.assert_each_passed_untouched(&jobs);
    let instances = world.boot.instances();
    assert!(
        instances
            .iter()
            .any(|i| i.refused_spot && i.capacity == "spot"),
        "spot was asked first: {instances:?}"
    );
    for job in &jobs {
        let agent = world.pool.agent_of(*job);
        let instance = instances
            .iter()
            .find(|i| agent.starts_with(&format!("{}-", i.instance)))
            .expect("the job's instance");
        assert_eq!(instance.capacity, "on-demand", "{instance:?}");
    }
    println!(
        "on-demand fallback: jobs done {:.1} s after spot began failing",
        started.elapsed().as_secs_f64()
    );
    world.wait_until_empty(&pool).await;
    world.assert_no_busy_instance_terminated();
    scheduler.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_notice_drains_the_instance_and_its_job_finishes() {
    let _serial = SERIAL.lock().await;
    let world = Ec2World::new().await;
    let (scheduler, pool) = world.start(true).await;
    let jobs = world.build("interrupted", &[8.0]);
    let job = jobs[0];
    let give_up = Instant::now() + Duration::from_secs(60);
    while world.pool.emulator.job_state(job) != Some(JobState::Running) {
        assert!(Instant::now() < give_up, "the job did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agent = world.pool.agent_of(job);
    let instance = agent.rsplit_once('-').expect("agent name").0.to_string();
    let noticed = Instant::now();
    world
        .boot
        .interrupt(&instance, &world.notice_queue, Duration::from_secs(25))
        .await
        .expect("interrupt");
    let drained_after = loop {
        let member = pool
            .members(FLEET)
            .await
            .expect("members")
            .into_iter()
            .find(|m| m.name.as_str() == instance);
        if let Some(member) = member {
            if member.phase == MemberPhase::Draining {
                assert!(member.notice.is_some(), "{member:?}");
                break noticed.elapsed();
            }
        }
        assert!(noticed.elapsed() < Duration::from_secs(15), "not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    world
        .pool
        .wait_until_final(&jobs, Duration::from_secs(30))
        .await;
    world.pool.assert_each_passed_untouched(&jobs);
    let give_up = Instant::now() + Duration::from_secs(40);
    let ended = loop {
        let record = world
            .boot
            .instances()
            .into_iter()
            .find(|i| i.instance == instance)
            .expect("record");
        if let Some(ended) = record.terminated {
            break ended;
        }
        assert!(
            Instant::now() < give_up,
            "the instance was never terminated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended.agent_processes_alive, 0, "{ended:?}");
    assert!(ended.drained, "{ended:?}");
    println!(
        "interruption: drained {:.1} s after the notice; terminated before the 25 s reclaim: {}",
        drained_after.as_secs_f64(),
        !ended.reclaimed
    );
    world.wait_until_empty(&pool).await;
    scheduler.shutdown().await.expect("shutdown");
}
