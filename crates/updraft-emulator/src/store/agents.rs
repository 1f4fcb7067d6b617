//! Agents as the agent API sees them (reference §1.5–1.6): register with the agent token or
//! a job acquisition token, connect, heartbeat, ping (dispatch by query rules), accept,
//! acquire, disconnect; and the REST stop / pause / resume.

use super::model::*;
use super::{random_token, State};
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use updraft_model::{AgentTags, JobState};
use uuid::Uuid;

/// `POST /v3/register` body (reference §1.6.1). Unknown fields are ignored, as the real
/// server must accept newer agents.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterRequest {
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub build: String,
    pub meta_data: Vec<String>,
    pub priority: Option<String>,
    pub ignore_in_dispatches: bool,
}

/// What the register call authenticated with.
pub enum RegisterCredential {
    AgentToken,
    AcquisitionToken(Uuid),
}

/// Who called (for the attempt log and REST `user_agent` / `ip_address`).
pub struct Caller {
    pub user_agent: String,
    pub ip: String,
}

/// Disconnected agents kept for REST `GET agents/{id}`; older ones are forgotten, so a
/// stream of one-job agents does not grow memory without bound.
const MAX_GONE_AGENTS: usize = 10_000;

/// How many jobs at the head of the scheduled list a ping looks at.
const PING_SCAN_LIMIT: usize = 1000;

impl State {
    pub fn register_agent(
        &mut self,
        credential: RegisterCredential,
        req: RegisterRequest,
        caller: Caller,
    ) -> ApiResult<Value> {
        let tags = AgentTags::parse("meta_data", &req.meta_data)
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let id = Uuid::new_v4();
        let name = if req.name.trim().is_empty() {
            format!("emulated-agent-{}", &id.simple().to_string()[..8])
        } else {
            req.name.replace("%spawn", "1")
        };
        let token = random_token("bkaa_");
        let now = Self::now();
        let restricted_to = match credential {
            RegisterCredential::AgentToken => None,
            RegisterCredential::AcquisitionToken(job) => Some(job),
        };
        let agent = Agent {
            id,
            name: name.clone(),
            hostname: req.hostname,
            version: req.version,
            os: req.os,
            arch: req.arch,
            user_agent: caller.user_agent,
            ip_address: caller.ip,
            tags: tags.clone(),
            priority: req.priority,
            ignore_in_dispatches: req.ignore_in_dispatches || restricted_to.is_some(),
            restricted_to,
            connection_state: ConnectionState::NeverConnected,
            created_at: now,
            connected_at: None,
            disconnected_at: None,
            stopped_at: None,
            lost_at: None,
            last_seen_at: now,
            last_job_finished_at: None,
            job_id: None,
            paused: false,
            heartbeats: 0,
            pings: 0,
            session_token: token.clone(),
        };
        self.agents.insert(id, agent);
        self.agent_order.push(id);
        self.sessions.insert(token.clone(), id);
        Ok(json!({
            "id": id,
            "name": name,
            "access_token": token,
            "endpoint": "",
            "request_headers": {},
            "ping_interval": self.settings.ping_interval_seconds,
            "job_status_interval": self.settings.job_status_interval_seconds,
            "heartbeat_interval": self.settings.heartbeat_interval_seconds,
            "meta_data": tags.to_strings(),
        }))
    }

    /// `agent.connected` / `lost` / `disconnected` / `stopping` / `stopped` for webhooks and
    /// EventBridge.
    pub(super) fn emit_agent_event(&mut self, name: &'static str, id: Uuid) {
        if !self.push_enabled {
            return;
        }
        let Some(agent) = self.agents.get(&id).map(|a| self.rest_agent(a)) else {
            return;
        };
        self.emit(super::Event {
            name,
            job: None,
            build: Value::Null,
            pipeline: Value::Null,
            agent: Some(agent),
        });
    }

    fn agent_mut(&mut self, id: Uuid) -> ApiResult<&mut Agent> {
        self.agents
            .get_mut(&id)
            .ok_or_else(|| ApiError::unauthorized("Agent not found for this access token"))
    }

    pub fn connect_agent(&mut self, id: Uuid) -> ApiResult<()> {
        let now = Self::now();
        let agent = self.agent_mut(id)?;
        if matches!(
            agent.connection_state,
            ConnectionState::Stopped | ConnectionState::Disconnected | ConnectionState::Lost
        ) {
            return Err(ApiError::unprocessable(format!(
                "This agent is {} and can't connect again; register a new one",
                agent.connection_state.as_str()
            )));
        }
        let newly = agent.connection_state != ConnectionState::Connected;
        agent.connection_state = ConnectionState::Connected;
        agent.connected_at = Some(now);
        agent.last_seen_at = now;
        if newly {
            self.emit_agent_event("agent.connected", id);
            self.watch_for_lost(id, now);
        }
        Ok(())
    }

    pub fn disconnect_agent(&mut self, id: Uuid) -> ApiResult<()> {
        let now = Self::now();
        let agent = self.agent_mut(id)?;
        // Disconnecting twice (or after being lost) changes nothing.
        if matches!(
            agent.connection_state,
            ConnectionState::Disconnected | ConnectionState::Stopped | ConnectionState::Lost
        ) {
            return Ok(());
        }
        agent.connection_state = if agent.connection_state == ConnectionState::Stopping {
            ConnectionState::Stopped
        } else {
            ConnectionState::Disconnected
        };
        agent.disconnected_at = Some(now);
        if agent.connection_state == ConnectionState::Stopped {
            agent.stopped_at = Some(now);
        }
        let stopped = agent.connection_state == ConnectionState::Stopped;
        let held = agent.job_id.take();
        self.emit_agent_event(
            if stopped {
                "agent.stopped"
            } else {
                "agent.disconnected"
            },
            id,
        );
        self.gone_agents.push_back(id);
        self.forget_gone_agents();
        // A job handed out by ping but never accepted goes back to the queue.
        if let Some(job_id) = held.filter(|j| self.job_state(*j) == Some(JobState::Assigned)) {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.agent_id = None;
            }
            self.set_state(
                job_id,
                JobState::Scheduled,
                Some("assigned agent disconnected".to_string()),
            );
        }
        Ok(())
    }

    pub(super) fn forget_gone_agents(&mut self) {
        if self.gone_agents.len() <= MAX_GONE_AGENTS {
            return;
        }
        // Forget a tenth at once so the O(n) clean-up of `agent_order` runs rarely.
        let mut forgotten = std::collections::HashSet::new();
        while self.gone_agents.len() > MAX_GONE_AGENTS * 9 / 10 {
            let Some(id) = self.gone_agents.pop_front() else {
                break;
            };
            if let Some(agent) = self.agents.remove(&id) {
                self.sessions.remove(&agent.session_token);
                forgotten.insert(id);
            }
        }
        self.agent_order.retain(|id| !forgotten.contains(id));
    }

    pub fn heartbeat(&mut self, id: Uuid, sent_at: Option<String>) -> ApiResult<Value> {
        let now = Self::now();
        let agent = self.agent_mut(id)?;
        agent.heartbeats += 1;
        agent.last_seen_at = now;
        Ok(
            json!({"sent_at": sent_at, "received_at": now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)}),
        )
    }

    /// `GET /v3/ping`: the order of the agent's own fake server (reference §1.6.3).
    pub fn ping(&mut self, id: Uuid) -> ApiResult<Value> {
        let now = Self::now();
        self.sweep(now);
        let agent = self.agent_mut(id)?;
        agent.pings += 1;
        agent.last_seen_at = now;
        let first_contact = agent.connection_state == ConnectionState::NeverConnected;
        if first_contact {
            agent.connection_state = ConnectionState::Connected;
            agent.connected_at = Some(now);
        }
        let held = agent.job_id;
        if first_contact {
            self.emit_agent_event("agent.connected", id);
            self.watch_for_lost(id, now);
        }
        if let Some(job_id) = held {
            if let Some(job) = self
                .jobs
                .get(&job_id)
                .filter(|j| j.state == JobState::Assigned)
            {
                let agent = self.agents.get(&id);
                return Ok(json!({"job": self.agent_job(job, agent, false)}));
            }
        }
        let agent = self.agent_mut(id)?;
        // A lost agent that comes back is told to go (even if paused); its job was ended.
        if agent.connection_state == ConnectionState::Lost {
            return Ok(json!({"action": "disconnect"}));
        }
        if agent.paused {
            return Ok(json!({"action": "pause"}));
        }
        if agent.connection_state == ConnectionState::Stopping {
            return Ok(json!({"action": "disconnect"}));
        }
        if agent.ignore_in_dispatches || agent.job_id.is_some() {
            return Ok(json!({}));
        }
        let Some(job_id) = self.pick_job_for(id) else {
            return Ok(json!({}));
        };
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.agent_id = Some(id);
        }
        if let Some(agent) = self.agents.get_mut(&id) {
            agent.job_id = Some(job_id);
        }
        self.set_state(job_id, JobState::Assigned, None);
        let job = self.jobs.get(&job_id).ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "assigned job vanished")
        })?;
        Ok(json!({"job": self.agent_job(job, self.agents.get(&id), false)}))
    }

    /// The scheduled job this agent should get: highest priority first, then oldest.
    fn pick_job_for(&self, agent_id: Uuid) -> Option<Uuid> {
        let agent = self.agents.get(&agent_id)?;
        let mut best: Option<(i64, Uuid)> = None;
        for job_id in self.scheduled.values().take(PING_SCAN_LIMIT) {
            let Some(job) = self.jobs.get(job_id) else {
                continue;
            };
            if self.paused_queues.contains(job.step.agents.queue())
                || !job.step.agents.matched_by(&agent.tags)
            {
                continue;
            }
            if best.is_none_or(|(priority, _)| job.step.priority > priority) {
                best = Some((job.step.priority, *job_id));
            }
        }
        best.map(|(_, id)| id)
    }

    fn record_attempt(
        &mut self,
        job_id: Uuid,
        agent_id: Uuid,
        action: &'static str,
        status: u16,
        outcome: String,
    ) {
        let agent_name = self
            .agents
            .get(&agent_id)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let counter = if action == "acquire" {
            &mut self.counters.acquires_by_job
        } else {
            &mut self.counters.accepts_by_job
        };
        *counter.entry(job_id).or_default() += 1;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.attempts.push(Attempt {
                action,
                agent_id,
                agent_name,
                at: Self::now(),
                status,
                outcome,
            });
        }
    }

    /// Give the job to the agent: `accepted`, a fresh job token, and the Job JSON.
    fn hand_over(&mut self, job_id: Uuid, agent_id: Uuid) -> ApiResult<Value> {
        let token = random_token("bkaj_");
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.agent_id = Some(agent_id);
            job.reservation = None;
            job.token = Some(token.clone());
        }
        self.job_tokens.insert(token, job_id);
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.job_id = Some(job_id);
        }
        self.set_state(job_id, JobState::Accepted, None);
        let build_id = self.jobs.get(&job_id).map(|j| j.build_id);
        if let Some(build_id) = build_id {
            self.settle(build_id);
        }
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        Ok(self.agent_job(job, self.agents.get(&agent_id), true))
    }

    pub fn accept_job(&mut self, agent_id: Uuid, job_id: Uuid) -> ApiResult<Value> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found(format!("No job found with id {job_id}")))?;
        let result = if job.state == JobState::Assigned && job.agent_id == Some(agent_id) {
            self.hand_over(job_id, agent_id)
        } else if job.state == JobState::Assigned {
            Err(ApiError::unprocessable(
                "This job is assigned to another agent",
            ))
        } else {
            Err(ApiError::unprocessable(format!(
                "This job can't be accepted because it is {}",
                job.state
            )))
        };
        let (status, outcome) = match &result {
            Ok(_) => (200, "accepted".to_string()),
            Err(e) => (e.status.as_u16(), e.message.clone()),
        };
        self.record_attempt(job_id, agent_id, "accept", status, outcome);
        result
    }

    /// `PUT /v3/jobs/{id}/acquire` (reference §1.6.7).
    pub fn acquire_job(
        &mut self,
        agent_id: Uuid,
        job_id: Uuid,
        lock_header: bool,
    ) -> ApiResult<Value> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found(format!("No job found with id {job_id}")))?;
        let agent = self
            .agents
            .get(&agent_id)
            .ok_or_else(|| ApiError::unauthorized("Agent not found for this access token"))?;
        let result = if !lock_header {
            Err(ApiError::unprocessable(
                "Acquiring a job needs the X-Buildkite-Lock-Acquire-Job: 1 header",
            ))
        } else if agent.restricted_to.is_some_and(|allowed| allowed != job_id) {
            Err(ApiError::forbidden(
                "This agent registered with a job acquisition token for another job",
            ))
        } else if job.kind != JobKind::Script {
            Err(ApiError::unprocessable(format!(
                "Job {job_id} is a {} job; only command jobs can be acquired",
                job.kind.as_str()
            )))
        } else {
            match job.state {
                JobState::Scheduled | JobState::Reserved => self.hand_over(job_id, agent_id),
                JobState::Assigned if job.agent_id == Some(agent_id) => {
                    self.hand_over(job_id, agent_id)
                }
                JobState::Pending
                | JobState::Waiting
                | JobState::Blocked
                | JobState::Limiting
                | JobState::Limited => Err(ApiError::locked(
                    format!("Job {job_id} is {} and not runnable yet", job.state),
                    1,
                )),
                other => Err(ApiError::unprocessable(format!(
                    "Job {job_id} can't be acquired because it is {other}"
                ))),
            }
        };
        let (status, outcome) = match &result {
            Ok(_) => (200, "acquired".to_string()),
            Err(e) => (e.status.as_u16(), e.message.clone()),
        };
        self.record_attempt(job_id, agent_id, "acquire", status, outcome);
        result
    }

    /// REST `PUT agents/{id}/stop`: the next ping says disconnect; `force` cancels its job.
    pub fn stop_agent(&mut self, id: Uuid, force: bool) -> ApiResult<()> {
        let agent = self
            .agents
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("No agent found"))?;
        if agent.connection_state != ConnectionState::Connected {
            return Err(ApiError::bad_request("Can only stop connected agents"));
        }
        agent.connection_state = ConnectionState::Stopping;
        let job = agent.job_id;
        self.emit_agent_event("agent.stopping", id);
        if let Some(job_id) = job.filter(|_| force) {
            // A job already past the point of cancelling needs nothing more.
            let _ = self.cancel_job(job_id, "agent stopped");
        }
        Ok(())
    }

    pub fn pause_agent(&mut self, id: Uuid, paused: bool) -> ApiResult<()> {
        let agent = self
            .agents
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("No agent found"))?;
        if agent.connection_state != ConnectionState::Connected {
            return Err(ApiError::unprocessable(
                "Can only pause or resume connected agents",
            ));
        }
        if paused && agent.paused {
            return Err(ApiError::unprocessable("This agent is already paused"));
        }
        agent.paused = paused;
        Ok(())
    }
}
