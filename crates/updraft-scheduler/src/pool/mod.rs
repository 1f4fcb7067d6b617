//! Warm pools (`mode = "pool"` fleets): long-lived agents on a `PoolBackend`, as many as the
//! fleet's scaling policy decides every `pool.interval`. One task per pool fleet runs while
//! this replica leads.
//!
//! Each step: list the members (backend), see their agents (Buildkite's REST agents list,
//! matched by `<member>-<n>` names; without a REST token, the queue's metrics counts), count
//! the jobs waiting for the pool (the scheduler's own intake, less the jobs the pool's agents
//! already hold), build the `Observation` the simulator builds, call `ScalingPolicy::decide`,
//! and act on it with the busy-safe protocol of `plan`: add members, drain idle ones (one
//! SIGTERM per agent: finish the job, then disconnect), and remove a member's compute only
//! once its agents are gone. The decision and its reason are logged, shown on `/status` and
//! counted on `/metrics`, and the step's member time is charged to the jobs that used it.
//!
//! - `intake`: how jobs reach a pool, and overflow to a one-shot fleet behind it;
//! - `observe`: members and agents at one step, and the policy's counts;
//! - `plan`: the scale-in protocol as a pure function;
//! - `cost`: per-job compute and cost (pools and one-shot launches);
//! - `board`, `status`, `metrics`: what `/status`, `SchedulerHandle::pools` and `/metrics`
//!   show.

pub(crate) mod board;
pub(crate) mod cost;
pub(crate) mod intake;
pub(crate) mod metrics;
mod observe;
mod plan;
pub(crate) mod status;

pub use board::{MemberSnapshot, PoolSnapshot};
pub use cost::{CostLine, JobCost, Spent};

use crate::config::{Config, FleetConfig};
use crate::core::{Core, Phase, State};
use metrics::{ActionLabel, FleetLabel, StateLabel};
use observe::{AgentSeen, MemberView, QueueAgents, Tracker};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use updraft_backends::{BackendError, MemberSpec, PoolBackend};
use updraft_buildkite::rest::RestClient;
use updraft_buildkite::ClientOptions;
use updraft_model::scaling::{PoolSettings, ScalingPolicy};
use uuid::Uuid;

/// How often queue metrics must be read for the pools: as often as the most frequent pool
/// steps, and at least as often as `[buildkite] metrics_interval` asks.
pub(crate) fn metrics_interval(config: &Config) -> Duration {
    config
        .fleets
        .iter()
        .filter_map(|f| f.pool.as_ref())
        .map(|p| p.interval)
        .fold(config.buildkite.metrics_interval, Duration::min)
}

/// Run pool fleet `fleet` until the scheduler stops.
pub(crate) async fn run(core: Arc<Core>, fleet: usize) {
    let Some(mut manager) = Manager::new(core.clone(), fleet) else {
        return;
    };
    let mut ticker = tokio::time::interval(manager.settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = core.stopped() => return,
        }
        manager.step().await;
    }
}

/// The agents' environment and secrets for every member of a pool fleet. The cluster agent
/// token goes to the members as a secret (they register with it, as the Elastic CI Stack's
/// agents do); one-shot launches keep the stronger model of one job acquisition token each.
fn member_spec(core: &Core, fleet: &FleetConfig, settings: &PoolSettings) -> MemberSpec {
    let mut env = fleet.template.env.clone();
    env.insert(
        "BUILDKITE_AGENT_ENDPOINT".into(),
        core.config.buildkite.endpoint.clone(),
    );
    env.insert(
        "BUILDKITE_AGENT_TAGS".into(),
        fleet.tags.to_strings().join(","),
    );
    env.insert("UPDRAFT_FLEET".into(), fleet.name.clone());
    MemberSpec {
        fleet: fleet.name.clone(),
        agents: settings.agents_per_instance,
        command: fleet.template.command.clone(),
        env,
        secrets: BTreeMap::from([(
            "BUILDKITE_AGENT_TOKEN".to_string(),
            core.config.buildkite.agent_token.clone(),
        )]),
    }
}

struct Manager {
    core: Arc<Core>,
    fleet: usize,
    name: String,
    queue: String,
    settings: PoolSettings,
    backend: Arc<dyn PoolBackend>,
    policy: ScalingPolicy,
    tracker: Tracker,
    meter: cost::PoolMeter,
    spec: MemberSpec,
    /// The last decision; before the first, the members found live.
    desired: Option<u32>,
    rest: Option<RestClient>,
}

impl Manager {
    fn new(core: Arc<Core>, fleet: usize) -> Option<Manager> {
        let config = core.fleet(fleet).clone();
        let settings = config.pool.clone()?;
        let Some(backend) = core.pool_backends.get(fleet).cloned().flatten() else {
            core.fail(format!(
                "fleet {} is a pool, but backend {:?} keeps no pools",
                config.name, config.backend
            ));
            return None;
        };
        let tracker = Tracker::new(backend.typical_boot_time().as_millis() as i64);
        Some(Manager {
            spec: member_spec(&core, &config, &settings),
            core,
            fleet,
            name: config.name.clone(),
            queue: config.queue.clone(),
            policy: ScalingPolicy::new(settings.clone()),
            settings,
            backend,
            tracker,
            meter: cost::PoolMeter::default(),
            desired: None,
            rest: None,
        })
    }

    /// Buildkite's view of the pool's agents, when a REST token is configured; `None` (the
    /// step goes by the metrics' counts) without one or when the list cannot be read.
    async fn agents(
        &mut self,
        members: &[updraft_backends::MemberStatus],
    ) -> Result<Option<Vec<AgentSeen>>, String> {
        let Some(token) = &self.core.config.buildkite.api_token else {
            return Ok(None);
        };
        if self.rest.is_none() {
            let reading = self.core.metrics_reading.borrow().clone();
            let Some(reading) = reading else {
                return Ok(None);
            };
            let client = RestClient::new(
                &self.core.config.buildkite.rest_endpoint,
                token,
                &reading.organization.slug,
                ClientOptions::default(),
            )
            .map_err(|e| format!("building the REST client: {e}"))?;
            self.rest = Some(client);
        }
        let rest = self.rest.as_ref().expect("set above");
        match rest.list_agents().await {
            Ok(listed) => Ok(Some(observe::agents_of(&listed, members))),
            Err(error) => {
                self.core.check_fatal("listing agents", &error);
                Err(format!("listing agents: {error}"))
            }
        }
    }

    /// The queue's agents and wait-step jobs by the latest metrics reading.
    fn queue_metrics(&self) -> (QueueAgents, u32) {
        let reading = self.core.metrics_reading.borrow().clone();
        let Some(reading) = reading else {
            return (QueueAgents::default(), 0);
        };
        let agents = reading.agents.queues.get(&self.queue);
        let jobs = reading.jobs.queues.get(&self.queue);
        (
            QueueAgents {
                busy: agents.map_or(0, |a| a.busy as u32),
                idle: agents.map_or(0, |a| a.idle as u32),
            },
            jobs.map_or(0, |j| j.waiting as u32),
        )
    }

    /// Jobs waiting for this pool (taken in, not overflowed, not held by one of its agents),
    /// and every arrival so far.
    fn intake_counts(&self, views: &[MemberView]) -> (u32, u64) {
        let held: HashSet<Uuid> = views
            .iter()
            .flat_map(|v| v.jobs.iter().map(|(job, _)| *job))
            .collect();
        let mut state = self.core.state();
        let State { pools, jobs, .. } = &mut *state;
        pools.retain(|job| jobs.get(&job).is_some_and(|t| t.phase == Phase::Pooled));
        let waiting = pools
            .waiting(self.fleet)
            .filter(|job| !held.contains(job))
            .count() as u32;
        (waiting, pools.arrivals(self.fleet))
    }

    async fn step(&mut self) {
        let now = self.core.now_ms();
        let members = match self.backend.members(&self.name).await {
            Ok(members) => members,
            Err(error) => return self.failed("listing members", error),
        };
        let mut error = None;
        let agents = self.agents(&members).await.unwrap_or_else(|e| {
            error = Some(e);
            None
        });
        let (queue_agents, waiting) = self.queue_metrics();
        let confirms = agents.is_some();
        let views = match &agents {
            Some(agents) => {
                let (views, boots) = self.tracker.step_with_agents(now, &members, agents);
                for boot in boots {
                    self.core
                        .telemetry
                        .pools
                        .boot_seconds
                        .get_or_create(&FleetLabel::new(&self.name))
                        .observe(boot as f64 / 1000.0);
                }
                views
            }
            None => self.tracker.step_with_counts(now, &members, queue_agents),
        };
        let (scheduled, arrivals) = self.intake_counts(&views);
        let live = views.iter().filter(|v| v.is_live()).count() as u32;
        let counts = observe::counts(&views, scheduled, waiting, self.desired.unwrap_or(live));
        let decision =
            self.policy
                .decide(&counts.observation(now, arrivals, self.tracker.boot_estimate_ms()));
        let changed = self.desired != Some(decision.desired);
        self.desired = Some(decision.desired);
        let plan = plan::plan(decision.desired, &views, confirms);
        let actions = self.act(&plan, &mut error).await;
        if changed || !actions.is_empty() {
            tracing::info!(pool = %self.name, desired = decision.desired, live, reason = %decision.reason, ?actions, "pool decision");
        } else {
            tracing::debug!(pool = %self.name, desired = decision.desired, live, reason = %decision.reason, "pool decision");
        }
        self.charge(now, &views);
        self.publish(
            now,
            decision.desired,
            decision.reason,
            &views,
            actions,
            error,
        );
    }

    /// Carry out a plan: remove, then drain, then add. Each action that fails is reported and
    /// tried again at the next step (every one of them is safe to repeat).
    async fn act(&self, plan: &plan::Plan, error: &mut Option<String>) -> Vec<String> {
        let mut actions = Vec::new();
        for member in &plan.remove {
            match self.backend.remove(member).await {
                Ok(()) => {
                    self.count("remove", 1);
                    actions.push(format!("removed {member}: its agents are gone"));
                }
                Err(e) => *error = Some(self.backend_error("removing", e)),
            }
        }
        for (member, reason) in &plan.drain {
            match self.backend.drain(member).await {
                Ok(()) => {
                    self.count("drain", 1);
                    actions.push(format!("drained {member}: {}", reason.as_str()));
                }
                Err(e) => *error = Some(self.backend_error("draining", e)),
            }
        }
        if plan.add > 0 {
            match self.backend.add(&self.spec, plan.add).await {
                Ok(()) => {
                    self.count("add", plan.add);
                    actions.push(format!("added {}", plan.add));
                }
                Err(e) => *error = Some(self.backend_error("adding members", e)),
            }
        }
        actions
    }

    fn count(&self, action: &str, n: u32) {
        self.core
            .telemetry
            .pools
            .actions
            .get_or_create(&ActionLabel {
                fleet: self.name.clone(),
                action: action.to_string(),
            })
            .inc_by(n as u64);
    }

    fn backend_error(&self, what: &str, error: BackendError) -> String {
        let message = format!("{what}: {error}");
        self.core
            .telemetry
            .backend_failures
            .get_or_create(&crate::telemetry::labels(&[
                ("backend", self.backend.kind()),
                ("call", "pool"),
                ("kind", error.metric_label()),
            ]))
            .inc();
        if let BackendError::Fatal { .. } = error {
            self.core.fail(format!("pool {}: {message}", self.name));
        } else {
            tracing::warn!(pool = %self.name, "{message}; trying again at the next step");
        }
        message
    }

    fn failed(&self, what: &str, error: BackendError) {
        let message = self.backend_error(what, error);
        self.core.pools.error(&self.name, message);
    }

    /// Charge the time since the last step to the jobs that used it, the rest as idle.
    fn charge(&mut self, now: i64, views: &[MemberView]) {
        let charges = {
            let state = self.core.state();
            self.meter.step(now, views, &self.queue, |job| {
                state.pools.label(job).cloned()
            })
        };
        let price = self.core.fleet(self.fleet).price_per_second.unwrap_or(0.0)
            / f64::from(self.settings.agents_per_instance.max(1));
        self.core.pools.costs().charge(
            &self.core.telemetry.pools,
            &self.name,
            price,
            &charges,
            now,
        );
    }

    fn publish(
        &self,
        now: i64,
        desired: u32,
        reason: String,
        views: &[MemberView],
        actions: Vec<String>,
        error: Option<String>,
    ) {
        let metrics = &self.core.telemetry.pools;
        metrics
            .desired
            .get_or_create(&FleetLabel::new(&self.name))
            .set(desired as i64);
        let state_label = |state: &str| StateLabel {
            fleet: self.name.clone(),
            state: state.to_string(),
        };
        for state in ["booting", "ready", "draining", "exited"] {
            let n = views
                .iter()
                .filter(|v| board::member_state(v) == state)
                .count();
            metrics
                .members
                .get_or_create(&state_label(state))
                .set(n as i64);
        }
        let live: Vec<&MemberView> = views.iter().filter(|v| v.is_live()).collect();
        let busy: u32 = live.iter().map(|v| v.busy).sum();
        let connected: u32 = live.iter().map(|v| v.registered).sum();
        let all: u32 = live.iter().map(|v| v.agents).sum();
        for (state, n) in [
            ("busy", busy),
            ("idle", connected.saturating_sub(busy)),
            ("booting", all.saturating_sub(connected)),
        ] {
            metrics
                .agents
                .get_or_create(&state_label(state))
                .set(n as i64);
        }
        let snapshot = PoolSnapshot {
            fleet: self.name.clone(),
            policy: self.settings.policy.kind(),
            desired,
            reason,
            decided_at_ms: now,
            members: views.iter().map(MemberSnapshot::of).collect(),
            boot_estimate: Duration::from_millis(self.tracker.boot_estimate_ms().max(0) as u64),
            boots: self
                .tracker
                .boot_samples_ms()
                .into_iter()
                .map(|ms| Duration::from_millis(ms.max(0) as u64))
                .collect(),
            actions: Vec::new(),
            error,
        };
        self.core.pools.publish(snapshot, actions);
    }
}

#[cfg(test)]
mod tests;
