//! The emulator's whole world behind one mutex: `Store` hands a `&mut State` to a closure and,
//! once the lock is released, forwards the push events the change produced and wakes the
//! deadline timer. The lock is never held across an `.await`.

mod actions;
mod agents;
mod deadlines;
mod groups;
pub mod json;
mod lifecycle;
mod lost;
pub mod model;
mod running;
pub mod stacks;
mod transitions;

use crate::config::EmulatorConfig;
use chrono::Utc;
use model::*;
use rand::distr::Alphanumeric;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use updraft_model::JobState;
use uuid::Uuid;

pub use agents::{Caller, RegisterCredential, RegisterRequest};
pub use lifecycle::{CreateBuild, CreatePipeline};

/// Fixed facts of this emulator instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub org: String,
    pub org_id: Uuid,
    pub cluster_id: Uuid,
    pub base_url: String,
    pub ping_interval_seconds: u64,
    pub heartbeat_interval_seconds: u64,
    pub job_status_interval_seconds: u64,
    pub minute: Duration,
    pub scheduled_job_expiry: Duration,
    pub chunks_max_size_bytes: usize,
    pub max_finished_builds: usize,
    /// An agent silent (no heartbeat, no ping) this long becomes `lost`.
    pub agent_lost_after: Duration,
}

impl Settings {
    pub fn new(config: &EmulatorConfig, base_url: String) -> Self {
        Settings {
            org: config.org.clone(),
            org_id: Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("updraft-emulator/org/{}", config.org).as_bytes(),
            ),
            cluster_id: Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("updraft-emulator/cluster/{}", config.org).as_bytes(),
            ),
            base_url,
            ping_interval_seconds: config.ping_interval_seconds.max(1),
            heartbeat_interval_seconds: config.heartbeat_interval_seconds.max(1),
            job_status_interval_seconds: config.job_status_interval_seconds.max(1),
            minute: config.minute,
            scheduled_job_expiry: config.scheduled_job_expiry,
            chunks_max_size_bytes: config.chunks_max_size_bytes.max(1),
            max_finished_builds: config.max_finished_builds.max(1),
            agent_lost_after: default_agent_lost_after(config),
        }
    }
}

/// Heartbeats missed before an agent counts as lost.
const MISSED_HEARTBEATS_BEFORE_LOST: u64 = 3;

/// Three heartbeat (or ping, if longer) intervals: a live agent sends at least two
/// heartbeats in that time even when a request is slow.
fn default_agent_lost_after(config: &EmulatorConfig) -> Duration {
    let interval = config
        .heartbeat_interval_seconds
        .max(config.ping_interval_seconds)
        .max(1);
    Duration::from_secs(interval.saturating_mul(MISSED_HEARTBEATS_BEFORE_LOST))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadlineKind {
    /// A scheduled job nobody picked up expires.
    Expiry,
    /// A stack's reservation lapses and the job is listed again.
    ReservationLapse,
    /// A running job passed `timeout_in_minutes`.
    Timeout,
    /// A connected agent may have gone silent; the deadline's id is the agent's.
    AgentLost,
}

/// Something that happened, for webhooks and EventBridge (`push`).
#[derive(Debug, Clone)]
pub struct Event {
    /// Webhook event name, e.g. `job.scheduled`.
    pub name: &'static str,
    pub job: Option<serde_json::Value>,
    pub build: serde_json::Value,
    pub pipeline: serde_json::Value,
    pub agent: Option<serde_json::Value>,
}

pub struct State {
    pub settings: Settings,
    pub pipelines: BTreeMap<String, Pipeline>,
    pub builds: HashMap<Uuid, Build>,
    pub builds_by_number: HashMap<(String, u64), Uuid>,
    /// Every build, oldest first (listing and eviction).
    pub build_order: VecDeque<Uuid>,
    pub finished_builds: VecDeque<Uuid>,
    pub jobs: HashMap<Uuid, Job>,
    /// Jobs in state `scheduled`, by `seq` (oldest first).
    pub scheduled: BTreeMap<u64, Uuid>,
    pub next_seq: u64,
    /// Due time, job id (agent id for `AgentLost`), kind.
    pub deadlines: BTreeSet<(Time, Uuid, DeadlineKind)>,
    pub agents: HashMap<Uuid, Agent>,
    pub agent_order: Vec<Uuid>,
    /// Disconnected or stopped agents, oldest first; forgotten beyond a cap.
    pub gone_agents: VecDeque<Uuid>,
    pub sessions: HashMap<String, Uuid>,
    pub job_tokens: HashMap<String, Uuid>,
    pub acquisition_tokens: HashMap<String, AcquisitionToken>,
    pub stacks: BTreeMap<String, Stack>,
    /// Queues whose dispatch is paused (`/_emulator/queues/{key}/pause`).
    pub paused_queues: BTreeSet<String>,
    /// Jobs waiting for a concurrency-group slot, oldest first, by group.
    pub limited: HashMap<String, VecDeque<Uuid>>,
    /// Groups where a job just ended, so a `limited` job may take its slot.
    groups_to_release: Vec<String>,
    pub counters: Counters,
    pub push_enabled: bool,
    outbox: Vec<Event>,
    deadlines_changed: bool,
}

pub fn random_token(prefix: &str) -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

impl State {
    pub fn new(settings: Settings) -> Self {
        State {
            settings,
            pipelines: BTreeMap::new(),
            builds: HashMap::new(),
            builds_by_number: HashMap::new(),
            build_order: VecDeque::new(),
            finished_builds: VecDeque::new(),
            jobs: HashMap::new(),
            scheduled: BTreeMap::new(),
            next_seq: 1,
            deadlines: BTreeSet::new(),
            agents: HashMap::new(),
            agent_order: Vec::new(),
            gone_agents: VecDeque::new(),
            sessions: HashMap::new(),
            job_tokens: HashMap::new(),
            acquisition_tokens: HashMap::new(),
            stacks: BTreeMap::new(),
            paused_queues: BTreeSet::new(),
            limited: HashMap::new(),
            groups_to_release: Vec::new(),
            counters: Counters::default(),
            push_enabled: false,
            outbox: Vec::new(),
            deadlines_changed: false,
        }
    }

    pub fn now() -> Time {
        Utc::now()
    }

    pub(crate) fn release_group_later(&mut self, group: String) {
        self.groups_to_release.push(group);
    }

    pub(crate) fn next_group_to_release(&mut self) -> Option<String> {
        self.groups_to_release.pop()
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.outbox.push(event);
    }

    pub(crate) fn add_deadline(&mut self, at: Time, id: Uuid, kind: DeadlineKind) {
        self.deadlines.insert((at, id, kind));
        self.deadlines_changed = true;
    }

    pub fn job_by_token(&self, token: &str) -> Option<&Job> {
        self.job_tokens.get(token).and_then(|id| self.jobs.get(id))
    }

    pub fn job_state(&self, id: Uuid) -> Option<JobState> {
        self.jobs.get(&id).map(|j| j.state)
    }
}

pub struct Store {
    state: Mutex<State>,
    events: mpsc::UnboundedSender<Event>,
    /// Wakes the deadline timer when an earlier deadline may exist.
    pub deadline_wake: Notify,
}

impl Store {
    pub fn new(settings: Settings, events: mpsc::UnboundedSender<Event>) -> Self {
        Store {
            state: Mutex::new(State::new(settings)),
            events,
            deadline_wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run `f` on the state; afterwards send the events it produced and wake the timer.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, events, woke) = {
            let mut state = self.lock();
            let result = f(&mut state);
            let events = std::mem::take(&mut state.outbox);
            let woke = std::mem::replace(&mut state.deadlines_changed, false);
            (result, events, woke)
        };
        for event in events {
            // The push task ends only at shutdown; an event produced after that has no audience.
            let _ = self.events.send(event);
        }
        if woke {
            self.deadline_wake.notify_one();
        }
        result
    }

    /// Read-only access (no events, no timer wake-up).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }
}
