//! One seeded run: the scheduler's real pipeline steps, reconciler pass, intake and ledger
//! against the simulated world, interleaved by a seeded random driver. Every outside call is
//! a point where the driver may let another call land first, fail it (before or after its
//! effect), move an agent, expire a reservation, lose or repeat a push event, or kill the
//! scheduler and start it again from its ledger. Then the faults stop and the run must settle:
//! every job final, every ledger row closed, no launch left.

use super::ports::{Shared, SimBackend, SimBuildkite, SimClock};
use super::world::{Landing, World};
use crate::config::Config;
use crate::core::{Candidate, Core, Inboxes, Parts};
use crate::ledger::Ledger;
use crate::stats::Source;
use crate::{pipeline, pull, reconciler};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use updraft_backends::{Backend, JobContext};
use updraft_buildkite::stacks::ScheduledJob;
use updraft_model::QueryRules;
use uuid::Uuid;

/// Steps with faults before the run must settle.
const FAULTY_STEPS: usize = 400;
/// Steps the run gets to settle once faults stop.
const SETTLE_STEPS: usize = 4_000;

const CONFIG: &str = r#"
[buildkite]
endpoint = "http://sim.invalid/v3"
agent_token = "bkct_sim"
reservation_expiry = "10m"
[[fleet]]
name = "sim"
queue = "q"
backend = "sim"
max_in_flight = 3
relaunch_budget = 1
pending_deadline = "10m"
running_deadline = "10h"
"#;

/// What one run found.
pub struct Outcome {
    pub violations: Vec<String>,
    pub log: Vec<String>,
    pub crashes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pass,
    Reserver,
    Launcher,
    Writer,
    Notifier,
    Launch,
}

struct Task {
    kind: Kind,
    future: Pin<Box<dyn Future<Output = ()>>>,
}

type Spawned = Rc<RefCell<Vec<Task>>>;

/// One scheduler process: its core, the receiving ends of its channels, its running tasks.
struct Instance {
    core: Arc<Core>,
    inboxes: Inboxes,
    tasks: Vec<Task>,
    spawned: Spawned,
}

struct Run {
    rng: StdRng,
    world: Shared,
    ledger: Arc<Ledger>,
    config: Config,
    backend: Arc<dyn Backend>,
    instance: Option<Instance>,
    to_create: Vec<Uuid>,
    delayed_pushes: Vec<Uuid>,
    crashes: u32,
    faults: bool,
}

/// Run `seed`; `verbose` keeps the whole log (a replay).
pub fn run(seed: u64, verbose: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let world: Shared = Arc::new(Mutex::new(World::at(1_700_000_000_000, verbose)));
    let clock = Arc::new(SimClock(world.clone()));
    let ledger = Arc::new(Ledger::in_memory(clock).expect("an in-memory ledger"));
    let config = Config::parse_checked(CONFIG, Vec::new(), &["sim"]).expect("the sim config");
    let jobs = rng.random_range(2..=6);
    let to_create = (0..jobs).map(|_| Uuid::from_u128(rng.random())).collect();
    let backend: Arc<dyn Backend> = Arc::new(SimBackend(world.clone()));
    let mut run = Run {
        rng,
        world,
        ledger,
        config,
        backend,
        instance: None,
        to_create,
        delayed_pushes: Vec::new(),
        crashes: 0,
        faults: true,
    };
    run.start();
    for _ in 0..FAULTY_STEPS {
        run.step();
        if run.failed() {
            return run.outcome();
        }
    }
    run.faults = false;
    while !run.to_create.is_empty() {
        run.create_job();
    }
    for _ in 0..SETTLE_STEPS {
        run.step();
        if run.failed() || run.settled() {
            break;
        }
    }
    run.final_checks();
    run.outcome()
}

impl Run {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self) -> bool {
        !self.world().violations.is_empty()
    }

    fn outcome(self) -> Outcome {
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Outcome {
            violations: world.violations.clone(),
            log: world.log.clone(),
            crashes: self.crashes,
        }
    }

    /// Start a scheduler process from the ledger, as `Scheduler::start` does: take up the
    /// open jobs, then a reconcile pass.
    fn start(&mut self) {
        let (core, inboxes) = Core::new(Parts {
            config: self.config.clone(),
            buildkite: Arc::new(SimBuildkite(self.world.clone())),
            ledger: self.ledger.clone(),
            backends: [("sim".to_string(), self.backend.clone())].into(),
            fleet_backends: vec![Some(self.backend.clone())],
            pool_backends: vec![None],
            ledger_inline: true,
        });
        let core = Arc::new(core);
        let open = self
            .ledger
            .open_jobs_to_resume()
            .expect("reading the ledger");
        core.adopt_ledger_jobs(&open);
        let mut instance = Instance {
            core,
            inboxes,
            tasks: Vec::new(),
            spawned: Rc::default(),
        };
        instance.start_pass();
        self.instance = Some(instance);
        self.world().note(|| "scheduler started".into());
    }

    /// The scheduler dies between two outside calls: its in-memory state and tasks go, some
    /// of its unanswered calls had landed.
    fn crash(&mut self) {
        self.crashes += 1;
        self.instance = None;
        let unanswered = self.world().unanswered();
        let landed: Vec<u64> = unanswered
            .into_iter()
            .filter(|_| self.rng.random_bool(0.5))
            .collect();
        let mut world = self.world();
        world.note(|| "CRASH".into());
        world.forget_calls(|id| landed.contains(&id));
        drop(world);
        self.start();
    }

    fn step(&mut self) {
        self.settle();
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=34 => self.land_a_call(),
            35..=59 => self.run_a_scheduler_step(),
            60..=79 => self.move_an_agent(),
            80..=87 => self.advance_clock(),
            88..=93 => self.deliver(),
            94..=98 => self.hurt(),
            _ => {
                if self.faults && self.crashes < 4 {
                    self.crash();
                } else {
                    self.advance_clock();
                }
            }
        }
        self.world().tick();
        self.settle();
    }

    /// Poll every task until none can go further without a call landing.
    fn settle(&mut self) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let before = self.world.lock().map(|w| w.unanswered().len()).unwrap_or(0);
            let spawned: Vec<Task> = instance.spawned.borrow_mut().drain(..).collect();
            let mut progress = !spawned.is_empty();
            instance.tasks.extend(spawned);
            let mut i = 0;
            while i < instance.tasks.len() {
                if instance.tasks[i].future.as_mut().poll(&mut cx) == Poll::Ready(()) {
                    instance.tasks.remove(i);
                    progress = true;
                } else {
                    i += 1;
                }
            }
            let after = self.world.lock().map(|w| w.unanswered().len()).unwrap_or(0);
            if !progress && before == after && instance.spawned.borrow().is_empty() {
                return;
            }
        }
    }

    fn land_a_call(&mut self) {
        let unanswered = self.world().unanswered();
        if unanswered.is_empty() {
            return self.run_a_scheduler_step();
        }
        let id = unanswered[self.rng.random_range(0..unanswered.len())];
        let landing = if !self.faults {
            Landing::Ok
        } else {
            let launch = self.world().is_launch(id);
            match self.rng.random_range(0..100) {
                0..=77 => Landing::Ok,
                78..=87 => Landing::Refused,
                88..=95 => Landing::LostAnswer,
                96..=97 if launch => Landing::AtCapacity,
                98 if launch => Landing::Invalid,
                _ => Landing::Ok,
            }
        };
        self.world().land(id, landing);
    }

    fn run_a_scheduler_step(&mut self) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        match self.rng.random_range(0..7) {
            0 => pipeline::admit(&instance.core),
            1 => instance.start_pass(),
            2 => {
                let jobs: Vec<ScheduledJob> = {
                    let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
                    world
                        .jobs
                        .iter()
                        .filter(|(_, j)| j.state == updraft_model::JobState::Scheduled)
                        .map(|(id, _)| scheduled_job(*id, world.now_ms))
                        .collect()
                };
                let started = instance.core.now_ms();
                pull::take_in_listing(&instance.core, "q", &jobs, true, started);
            }
            3 => instance.start_reserver(),
            4 => instance.start_launcher(),
            5 => instance.start_writer(),
            _ => instance.start_notifier(),
        }
    }

    fn move_an_agent(&mut self) {
        let movable = self.world().agents_that_can_move();
        if movable.is_empty() {
            return self.advance_clock();
        }
        let id = movable[self.rng.random_range(0..movable.len())];
        self.world().step_agent(id);
    }

    fn advance_clock(&mut self) {
        let by = if self.rng.random_bool(0.05) {
            self.rng.random_range(5_000..40_000)
        } else {
            self.rng.random_range(1..2_000)
        };
        self.world().now_ms += by;
    }

    /// A new job and its push event — lost, repeated or late when faults are on.
    fn deliver(&mut self) {
        if !self.delayed_pushes.is_empty() && self.rng.random_bool(0.5) {
            let job = self.delayed_pushes.remove(0);
            return self.push(job);
        }
        if self.to_create.is_empty() {
            return self.move_an_agent();
        }
        self.create_job();
    }

    fn create_job(&mut self) {
        let job = self.to_create.remove(0);
        self.world().schedule(job);
        if !self.faults {
            return self.push(job);
        }
        match self.rng.random_range(0..10) {
            0..=2 => {}
            3 | 4 => {
                self.push(job);
                self.push(job);
            }
            5 | 6 => self.delayed_pushes.push(job),
            _ => self.push(job),
        }
    }

    fn push(&mut self, job: Uuid) {
        let Some(instance) = &self.instance else {
            return;
        };
        let now = instance.core.now_ms();
        instance.core.intake(vec![Candidate {
            id: job,
            rules: Ok(QueryRules::parse("agent_query_rules", &["queue=q"]).expect("rules")),
            priority: 0,
            scheduled_at_ms: now,
            source: Source::Push,
            context: JobContext::default(),
        }]);
    }

    /// Kill a launch, refuse a pending one, or cancel a job.
    fn hurt(&mut self) {
        if !self.faults {
            return self.move_an_agent();
        }
        let roll = self.rng.random_range(0..10);
        let (launches, jobs): (Vec<Uuid>, Vec<Uuid>) = {
            let world = self.world();
            (
                world.agents_that_can_move(),
                world.jobs.keys().copied().collect(),
            )
        };
        let pick = |rng: &mut StdRng, from: &[Uuid]| from[rng.random_range(0..from.len())];
        match roll {
            0..=4 if !launches.is_empty() => {
                let id = pick(&mut self.rng, &launches);
                self.world().kill(id);
            }
            5..=6 if !launches.is_empty() => {
                let id = pick(&mut self.rng, &launches);
                self.world().refuse_pending(id);
            }
            7 if !jobs.is_empty() => {
                let id = pick(&mut self.rng, &jobs);
                self.world().cancel(id);
            }
            _ => {}
        }
    }

    /// Every job final, the ledger closed, no launch left, nothing in flight.
    fn settled(&mut self) -> bool {
        let open = self.ledger.open_jobs().map(|j| j.len()).unwrap_or(1);
        let world = self.world();
        world.all_final() && world.launches.is_empty() && open == 0 && world.unanswered().is_empty()
    }

    fn final_checks(&mut self) {
        let open = self.ledger.open_jobs().expect("reading the ledger");
        let mut world = self.world();
        world.check_healthy_jobs();
        let mut problems = Vec::new();
        for (id, job) in &world.jobs {
            if !job.state.is_terminal() {
                problems.push(format!("job {id} never became final ({})", job.state));
            }
        }
        for job in &open {
            problems.push(format!(
                "ledger row of {} still open ({:?})",
                job.id, job.stage
            ));
        }
        for (id, launch) in &world.launches {
            problems.push(format!("launch of {id} left behind ({:?})", launch.phase));
        }
        for problem in problems {
            let line = format!("VIOLATION {problem}");
            world.note(|| line);
            world.violations.push(problem);
        }
    }
}

impl Instance {
    fn has(&self, kind: Kind) -> bool {
        self.tasks.iter().any(|t| t.kind == kind)
    }

    fn add(&mut self, kind: Kind, future: impl Future<Output = ()> + 'static) {
        self.tasks.push(Task {
            kind,
            future: Box::pin(future),
        });
    }

    /// One pass at a time, as the reconciler loop runs them.
    fn start_pass(&mut self) {
        if self.has(Kind::Pass) {
            return;
        }
        let core = self.core.clone();
        self.add(Kind::Pass, async move {
            let _ = reconciler::pass(&core).await;
        });
    }

    fn start_reserver(&mut self) {
        if self.has(Kind::Reserver) {
            return;
        }
        let batch = drain(&mut self.inboxes.to_reserve);
        if batch.is_empty() {
            return;
        }
        let core = self.core.clone();
        self.add(Kind::Reserver, async move {
            pipeline::reserve_admitted(&core, batch).await;
        });
    }

    fn start_launcher(&mut self) {
        if self.has(Kind::Launcher) {
            return;
        }
        let batch = drain(&mut self.inboxes.to_launch);
        if batch.is_empty() {
            return;
        }
        let core = self.core.clone();
        let spawned = self.spawned.clone();
        self.add(Kind::Launcher, async move {
            let Some(ready) = pipeline::prepare_launches(&core, batch).await else {
                return;
            };
            for launch in ready {
                let core = core.clone();
                spawned.borrow_mut().push(Task {
                    kind: Kind::Launch,
                    future: Box::pin(async move { pipeline::launch_one(&core, launch).await }),
                });
            }
        });
    }

    fn start_writer(&mut self) {
        if self.has(Kind::Writer) {
            return;
        }
        let batch = drain(&mut self.inboxes.to_commit);
        if batch.is_empty() {
            return;
        }
        let core = self.core.clone();
        self.add(Kind::Writer, async move {
            pipeline::commit_launched(&core, batch).await;
        });
    }

    fn start_notifier(&mut self) {
        if self.has(Kind::Notifier) {
            return;
        }
        let batch = drain(&mut self.inboxes.to_notify);
        if batch.is_empty() {
            return;
        }
        let core = self.core.clone();
        self.add(Kind::Notifier, async move {
            pipeline::post_notes(&core, batch).await;
        });
    }
}

fn drain<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut batch = Vec::new();
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
    }
    batch
}

fn scheduled_job(id: Uuid, now_ms: i64) -> ScheduledJob {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "priority": 0,
        "agent_query_rules": ["queue=q"],
        "scheduled_at": chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default(),
        "pipeline": {"slug": "sim"},
        "build": {"number": 1},
        "step": {},
    }))
    .expect("a scheduled job")
}
