//! The records the emulator keeps: pipelines, builds, jobs (with their timelines), agents,
//! stacks and tokens. Plain data; the rules that change them live in the sibling modules.

use crate::log::JobLog;
use crate::steps::StepSpec;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use updraft_model::{AgentTags, JobState};
use uuid::Uuid;

pub type Time = DateTime<Utc>;

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub repository: String,
    pub default_branch: String,
    pub configuration: String,
    pub steps: Vec<StepSpec>,
    pub env: BTreeMap<String, String>,
    pub created_at: Time,
    pub next_build_number: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Scheduled,
    Running,
    Failing,
    Blocked,
    Passed,
    Failed,
    Canceling,
    Canceled,
    Skipped,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Scheduled => "scheduled",
            BuildState::Running => "running",
            BuildState::Failing => "failing",
            BuildState::Blocked => "blocked",
            BuildState::Passed => "passed",
            BuildState::Failed => "failed",
            BuildState::Canceling => "canceling",
            BuildState::Canceled => "canceled",
            BuildState::Skipped => "skipped",
        }
    }

    /// `finished` in REST filters: passed, failed, blocked and canceled (reference §3.4).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BuildState::Passed
                | BuildState::Failed
                | BuildState::Blocked
                | BuildState::Canceled
                | BuildState::Skipped
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Annotation {
    pub context: String,
    pub body: String,
    pub style: String,
    pub priority: u8,
    pub scope: String,
    pub job_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Build {
    pub id: Uuid,
    pub pipeline: String,
    pub number: u64,
    pub state: BuildState,
    pub branch: String,
    pub commit: String,
    pub message: String,
    pub source: String,
    pub env: BTreeMap<String, String>,
    pub meta_data: BTreeMap<String, String>,
    pub jobs: Vec<Uuid>,
    pub created_at: Time,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    pub cancel_requested: bool,
    pub rebuilt_from: Option<(Uuid, u64)>,
    pub annotations: BTreeMap<String, Annotation>,
    /// Pipeline uploads applied, by the client's upload uuid (so a retried upload is not applied twice).
    pub uploads: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Script,
    Waiter,
    Manual,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Script => "script",
            JobKind::Waiter => "waiter",
            JobKind::Manual => "manual",
        }
    }
}

/// One entry of a job's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub state: JobState,
    pub at: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One accept or acquire call on a job, whatever its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub action: &'static str,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub at: Time,
    /// HTTP status answered.
    pub status: u16,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub stack: String,
    pub detail: String,
    pub timestamp: Option<String>,
    pub received_at: Time,
}

#[derive(Debug, Clone)]
pub struct Reservation {
    pub stack: String,
    pub expires_at: Time,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub build_id: Uuid,
    pub kind: JobKind,
    pub step: StepSpec,
    pub step_id: Uuid,
    /// `(index, total)` for a step with `parallelism`.
    pub parallel: Option<(u32, u32)>,
    pub depends_on: Vec<Uuid>,
    pub state: JobState,
    pub history: Vec<Transition>,
    pub attempts: Vec<Attempt>,
    pub notifications: Vec<Notification>,
    pub agent_id: Option<Uuid>,
    pub token: Option<String>,
    pub reservation: Option<Reservation>,
    /// Order among scheduled jobs (oldest first); also the Stacks API cursor.
    pub seq: u64,
    pub created_at: Time,
    pub scheduled_at: Option<Time>,
    pub runnable_at: Option<Time>,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    pub expired_at: Option<Time>,
    pub exit_status: Option<i64>,
    pub signal: Option<String>,
    pub signal_reason: Option<String>,
    pub chunks_failed_count: u64,
    pub log: JobLog,
    pub retried_in: Option<Uuid>,
    pub retries_count: u32,
    pub unblocked_by: Option<String>,
    pub stack_finish_detail: Option<String>,
    /// Why a `broken` job cannot run, e.g. `branch_mismatch`.
    pub broken_reason: Option<&'static str>,
    /// This job's entry in Stacks `scheduled-jobs`, serialized once (its fields do not change
    /// while it is scheduled).
    pub scheduled_json: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    NeverConnected,
    Connected,
    Disconnected,
    Stopping,
    Stopped,
    /// Stopped heartbeating and pinging without disconnecting (reference §3.6).
    Lost,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::NeverConnected => "never_connected",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Stopping => "stopping",
            ConnectionState::Stopped => "stopped",
            ConnectionState::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub os: String,
    pub arch: String,
    pub user_agent: String,
    pub ip_address: String,
    pub tags: AgentTags,
    pub priority: Option<String>,
    pub ignore_in_dispatches: bool,
    /// Registered with a job acquisition token: may only acquire this job.
    pub restricted_to: Option<Uuid>,
    pub connection_state: ConnectionState,
    pub created_at: Time,
    pub connected_at: Option<Time>,
    pub disconnected_at: Option<Time>,
    pub stopped_at: Option<Time>,
    pub lost_at: Option<Time>,
    pub last_seen_at: Time,
    pub last_job_finished_at: Option<Time>,
    pub job_id: Option<Uuid>,
    pub paused: bool,
    pub heartbeats: u64,
    pub pings: u64,
    pub session_token: String,
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub id: Uuid,
    pub key: String,
    pub kind: String,
    pub queue_key: String,
    pub metadata: serde_json::Value,
    pub registered_at: Time,
    pub last_polled_at: Option<Time>,
    pub state: &'static str,
}

#[derive(Debug, Clone)]
pub struct AcquisitionToken {
    pub job_id: Uuid,
    pub expires_at: Time,
}

/// Requests and outcomes counted since start, served by `/_emulator/counters`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub requests_by_route: BTreeMap<String, u64>,
    pub responses_by_status: BTreeMap<u16, u64>,
    pub api_faults_injected: u64,
    pub rate_limited: u64,
    pub acquires_by_job: HashMap<Uuid, u64>,
    pub accepts_by_job: HashMap<Uuid, u64>,
    pub jobs_created: u64,
    pub jobs_finished: u64,
    pub builds_created: u64,
    pub builds_evicted: u64,
    pub push_sent: u64,
    pub push_failed: u64,
    pub push_dropped: u64,
    pub push_duplicated: u64,
    pub push_delayed: u64,
    /// Stack `finish` calls for a job an agent held (assigned, accepted, running, canceling,
    /// timing out): a scheduler must never send one, so tests assert this stays 0.
    pub stack_finishes_of_held_jobs: u64,
}
