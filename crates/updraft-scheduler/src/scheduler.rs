//! Starting and stopping the scheduler: check the config against the backends given, open
//! the ledger, bind the HTTP listeners and serve them, then lead — register the stacks, run
//! one reconcile pass so a restart picks up exactly where the last process stopped and one
//! poll so every job scheduled now is taken in, then start the sources and the pipeline.
//! With a `LeaderElection`, leading waits until this replica holds the lease; until then it
//! serves `/healthz`, `/readyz` and `/metrics` and refuses push events, and it stops at once
//! if the lease is lost. `SchedulerHandle` is what callers hold: addresses, progress, intake
//! from other sources, and shutdown.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::core::{Core, Inboxes, Parts, Phase};
use crate::ledger::Ledger;
use crate::listener::BoundedListener;
use crate::pool::{CostLine, JobCost, PoolSnapshot};
use crate::stackset::StackSet;
use crate::stats::StatsSnapshot;
use crate::{http, pipeline, pool, pull, push, queue_metrics, reconciler};
use anyhow::Context;
use axum::serve::Listener;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use updraft_backends::{Backend, LeaderElection, PoolBackend};
use updraft_buildkite::events::PushEvent;
use uuid::Uuid;

/// How long `shutdown` waits for tasks to finish their current step.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often `take_in` looks again while a job waits to be recorded.
const TAKE_IN_RECHECK: Duration = Duration::from_millis(200);

pub struct Scheduler;

type Tasks = Arc<Mutex<JoinSet<()>>>;

impl Scheduler {
    /// Start a scheduler that leads alone. `backends` maps the names fleets use in
    /// `backend = "…"` to implementations. Fails (without starting anything) on a fleet naming
    /// a backend not given, a listener that cannot bind, an unreadable ledger, or Buildkite
    /// refusing the agent token.
    pub async fn start(
        config: Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
    ) -> anyhow::Result<SchedulerHandle> {
        Scheduler::start_with(config, backends, None).await
    }

    /// Start a scheduler; with `leader`, it serves at once but schedules only while it leads.
    pub async fn start_with(
        config: Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
        leader: Option<Arc<dyn LeaderElection>>,
    ) -> anyhow::Result<SchedulerHandle> {
        Scheduler::start_with_pools(config, backends, BTreeMap::new(), leader).await
    }

    /// Start a scheduler whose pool fleets (`mode = "pool"`) keep their members on `pools`,
    /// by the name fleets use in `backend = "…"`.
    pub async fn start_with_pools(
        config: Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
        pools: BTreeMap<String, Arc<dyn PoolBackend>>,
        leader: Option<Arc<dyn LeaderElection>>,
    ) -> anyhow::Result<SchedulerHandle> {
        if let Some(from) = &config.buildkite.agent_token_from {
            anyhow::ensure!(
                !config.buildkite.agent_token.is_empty(),
                "buildkite.agent_token_from = {from:?} was not read: the caller must read secret references before starting"
            );
        }
        let (fleet_backends, pool_backends) = fleet_platforms(&config, &backends, &pools)?;
        let stacks = StackSet::new(&config)?;
        let ledger_path = config.ledger.path.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
        let ledger =
            tokio::task::spawn_blocking(move || Ledger::open_with_clock(&ledger_path, clock))
                .await??;

        let http_listener = BoundedListener::bind(config.http.listen)
            .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
        let http_addr = http_listener.local_addr()?;
        let push_listener = match config.push.listen {
            Some(addr) => Some(
                BoundedListener::bind(addr)
                    .with_context(|| format!("push.listen: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let push_addr = match &push_listener {
            Some(listener) => listener.local_addr()?,
            None => http_addr,
        };

        let (core, inboxes) = Core::new(Parts {
            config,
            buildkite: Arc::new(stacks.clone()),
            ledger: Arc::new(ledger),
            backends,
            fleet_backends,
            pool_backends,
            ledger_inline: false,
        });
        let core = Arc::new(core);
        *core.leading.lock().unwrap_or_else(|e| e.into_inner()) = leader.as_ref().map(|_| false);
        let tasks: Tasks = Arc::default();
        {
            let mut set = tasks.lock().unwrap_or_else(|e| e.into_inner());
            let app = http::routes(core.clone(), push_listener.is_none());
            set.spawn(serve(http_listener, app, core.clone()));
            if let Some(listener) = push_listener {
                set.spawn(serve(listener, push::routes(core.clone()), core.clone()));
            }
        }
        match leader {
            None => lead(&core, stacks, inboxes, &tasks).await?,
            Some(leader) => {
                let (core, tasks_for_lead) = (core.clone(), tasks.clone());
                tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spawn(async move {
                        follow_then_lead(core, leader, stacks, inboxes, tasks_for_lead).await
                    });
            }
        }
        Ok(SchedulerHandle {
            core,
            tasks,
            http_addr,
            push_addr,
        })
    }
}

/// Each fleet's backend by fleet index: a one-shot fleet's `Backend`, a pool fleet's
/// `PoolBackend`; a fleet naming one this build does not have is an error.
#[allow(clippy::type_complexity)]
fn fleet_platforms(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Backend>>,
    pools: &BTreeMap<String, Arc<dyn PoolBackend>>,
) -> anyhow::Result<(
    Vec<Option<Arc<dyn Backend>>>,
    Vec<Option<Arc<dyn PoolBackend>>>,
)> {
    let (mut fleet_backends, mut pool_backends) = (Vec::new(), Vec::new());
    for (i, fleet) in config.fleets.iter().enumerate() {
        if fleet.is_pool() {
            let pool = pools.get(&fleet.backend).with_context(|| {
                format!(
                    "fleet[{i}].backend: no backend named {:?} keeps pools (backends with pools: {})",
                    fleet.backend,
                    pools.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            fleet_backends.push(None);
            pool_backends.push(Some(pool.clone()));
        } else {
            let backend = backends.get(&fleet.backend).with_context(|| {
                format!(
                    "fleet[{i}].backend: no backend named {:?} is available (available: {})",
                    fleet.backend,
                    backends.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            fleet_backends.push(Some(backend.clone()));
            pool_backends.push(None);
        }
    }
    Ok((fleet_backends, pool_backends))
}

/// Wait for the lease, lead, and stop at once when the lease is lost.
async fn follow_then_lead(
    core: Arc<Core>,
    leader: Arc<dyn LeaderElection>,
    stacks: StackSet,
    inboxes: Inboxes,
    tasks: Tasks,
) {
    tracing::info!(identity = leader.identity(), "following; waiting to lead");
    tokio::select! {
        acquired = leader.acquire() => {
            if let Err(error) = acquired {
                return core.fail(format!("leader election: {error}"));
            }
        }
        _ = core.stopped() => return,
    }
    tracing::info!(identity = leader.identity(), "leading");
    *core.leading.lock().unwrap_or_else(|e| e.into_inner()) = Some(true);
    if let Err(error) = lead(&core, stacks, inboxes, &tasks).await {
        leader.release().await;
        return core.fail(format!("{error:#}"));
    }
    tokio::select! {
        _ = leader.lost() => core.fail(format!(
            "lost leadership (lease held by {}); stopping so another replica schedules",
            leader.leader().unwrap_or_else(|| "nobody".into())
        )),
        _ = core.stopped() => leader.release().await,
    }
}

/// Everything a leading scheduler does: register the stacks, take up the ledger's open jobs,
/// start the pipeline, reconcile and poll once, then start the periodic tasks.
async fn lead(
    core: &Arc<Core>,
    stacks: StackSet,
    inboxes: Inboxes,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    stacks.register_all().await.map_err(|(key, error)| match error.status().map(|s| s.as_u16()) {
        Some(401) => anyhow::anyhow!(
            "Buildkite refused the agent token (401 Unauthorized) when registering stack {key:?}; check [buildkite] agent_token: {error}"
        ),
        _ => anyhow::anyhow!("registering stack {key:?}: {error}"),
    })?;
    let open = core
        .ledger(|ledger| ledger.open_jobs_to_resume())
        .await
        .context("reading the ledger's open jobs")?;
    if !open.is_empty() {
        tracing::info!(jobs = open.len(), "resuming jobs the ledger holds open");
    }
    core.adopt_ledger_jobs(&open);
    {
        let mut set = tasks.lock().unwrap_or_else(|e| e.into_inner());
        set.spawn(pipeline::dispatcher(core.clone()));
        set.spawn(pipeline::reserver(core.clone(), inboxes.to_reserve));
        set.spawn(pipeline::launcher(core.clone(), inboxes.to_launch));
        set.spawn(pipeline::ledger_writer(core.clone(), inboxes.to_commit));
        set.spawn(pipeline::notifier(core.clone(), inboxes.to_notify));
    }
    if let Err(error) = reconciler::pass(core).await {
        tracing::warn!("start-up reconcile pass did not complete: {error}");
    }
    pull::poll_all(core, &stacks).await;
    if let Some(message) = core.fatal.borrow().clone() {
        anyhow::bail!(message);
    }
    {
        let mut set = tasks.lock().unwrap_or_else(|e| e.into_inner());
        set.spawn(reconciler::run(core.clone()));
        set.spawn(pull::poller(core.clone(), stacks));
        set.spawn(queue_metrics::poller(core.clone()));
        set.spawn(pool::cost::charge_launches(core.clone()));
        for (index, fleet) in core.config.fleets.iter().enumerate() {
            if fleet.is_pool() {
                set.spawn(pool::run(core.clone(), index));
            }
        }
    }
    let _ = core.ready.send(true);
    tracing::info!(fleets = core.config.fleets.len(), "scheduler started");
    Ok(())
}

async fn serve(listener: BoundedListener, app: axum::Router, core: Arc<Core>) {
    let stopping = core.clone();
    // One router for every connection (a bare `Router` would be rebuilt for each).
    let result = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { stopping.stopped().await })
        .await;
    if let Err(error) = result {
        core.fail(format!("HTTP server stopped: {error}"));
    }
}

/// What became of a job handed to `SchedulerHandle::take_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeIn {
    /// Reserved and in the ledger: it will be launched even if this process dies now. Also a
    /// job left to a pool's agents, which take it from Buildkite whatever happens here.
    Recorded,
    /// Known already (another delivery of the same event, or a poll).
    Duplicate,
    /// No fleet serves it; the reason was posted to the build.
    NotOurs(String),
    /// Gone before it was recorded (taken elsewhere, canceled): nothing more to do.
    Gone,
    /// Not a job-scheduled event with a readable job id.
    Ignored,
    /// This replica does not lead; another one takes the job in.
    NotLeading,
}

/// A running scheduler.
pub struct SchedulerHandle {
    core: Arc<Core>,
    tasks: Tasks,
    http_addr: SocketAddr,
    push_addr: SocketAddr,
}

impl SchedulerHandle {
    /// Where `/metrics`, `/status`, `/healthz` and `/readyz` are served (and the push
    /// routes, unless `[push] listen` gives them their own address).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `POST /webhooks/buildkite` and `POST /events/eventbridge` are served.
    pub fn push_addr(&self) -> SocketAddr {
        self.push_addr
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats.snapshot()
    }

    /// Each pool's last step: its decision, members, boot times and recent actions.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        self.core.pools.snapshots()
    }

    /// Compute and cost so far, by fleet, queue, pipeline and kind (since this process
    /// started).
    pub fn costs(&self) -> Vec<CostLine> {
        self.core.pools.cost_lines()
    }

    /// The most recent jobs' compute and cost, newest first.
    pub fn job_costs(&self, limit: usize) -> Vec<JobCost> {
        self.core.pools.recent_job_costs(limit)
    }

    /// Serve a backend's own metrics (a registry whose series it keeps) on `/metrics`,
    /// after the scheduler's.
    pub fn serve_metrics(&self, registry: prometheus_client::registry::Registry) {
        self.core.telemetry.add_registry(registry);
    }

    /// Ask for a reconcile pass now rather than at the next interval.
    pub fn reconcile_now(&self) {
        self.core.wake_reconcile.notify_one();
    }

    /// Take in a push event from a source outside this crate (e.g. an SQS queue) and resolve
    /// once the job is durably handled, so the source may acknowledge the event only then:
    /// an event acknowledged before its job is recorded would be lost if this process died.
    pub async fn take_in(&self, event: PushEvent) -> TakeIn {
        let core = &self.core;
        if !core.is_leading() {
            return TakeIn::NotLeading;
        }
        let Some(candidate) = push::candidate(core, &event) else {
            return TakeIn::Ignored;
        };
        let job = candidate.id;
        if core.intake(vec![candidate]) == 0 {
            return TakeIn::Duplicate;
        }
        loop {
            match self.settled(job).await {
                Some(outcome) => return outcome,
                None => tokio::select! {
                    _ = tokio::time::sleep(TAKE_IN_RECHECK) => {}
                    _ = core.stopped() => return TakeIn::NotLeading,
                },
            }
        }
    }

    /// Where `job` stands; `None` while it still waits to be reserved.
    async fn settled(&self, job: Uuid) -> Option<TakeIn> {
        let phase = {
            let state = self.core.state();
            state
                .jobs
                .get(&job)
                .map(|t| (t.phase.clone(), t.reason.clone()))
        };
        match phase {
            None => Some(TakeIn::Gone),
            Some((Phase::Unserved, reason)) => Some(TakeIn::NotOurs(reason.unwrap_or_default())),
            Some((Phase::Waiting, _)) => None,
            // A pool's agents take it from Buildkite, and a restart finds it there again.
            Some((Phase::Pooled, _)) => Some(TakeIn::Recorded),
            Some((Phase::Owned, _)) => {
                let row = self.core.ledger(move |ledger| ledger.job(job)).await?;
                row.map(|_| TakeIn::Recorded)
            }
        }
    }

    /// Resolves when the scheduler stops by itself, with the reason (e.g. a revoked token,
    /// lost leadership).
    pub async fn stopped(&self) -> String {
        let mut fatal = self.core.fatal.subscribe();
        let message = match fatal.wait_for(|f| f.is_some()).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => "the scheduler stopped".to_string(),
        };
        message
    }

    /// Stop every task (launches keep running: the next start finds them again). Returns
    /// the fatal error if the scheduler had already stopped on one.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.core.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.shutdown().await;
        }
        match self.core.fatal.borrow().clone() {
            Some(message) => Err(anyhow::anyhow!(message)),
            None => Ok(()),
        }
    }
}
