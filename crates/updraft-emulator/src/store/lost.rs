//! Lost agents (reference §3.6 `connection_state: lost`, §6 `agent.lost` / "Agent Lost"): an
//! agent that neither heartbeats nor pings for `agent_lost_after` is marked `lost`, leaves
//! the REST agents list, and the job it held is handed back or ended. Each connected agent
//! has one pending deadline that, when it fires early, moves itself to `last_seen_at +
//! agent_lost_after`, so heartbeats and pings never touch the deadline set.

use super::model::*;
use super::{DeadlineKind, State};
use std::time::Duration;
use updraft_model::JobState;
use uuid::Uuid;

/// `signal_reason` of a job whose agent was lost. Buildkite documents no `agent_lost`
/// value; `agent_stop` ("the agent stopped while running the job") is the closest, and the
/// exit status is −1, the status Buildkite's retry rules use for a lost agent.
pub const LOST_SIGNAL_REASON: &str = "agent_stop";

fn lost_after(settings_value: Duration) -> chrono::Duration {
    chrono::Duration::from_std(settings_value).unwrap_or(chrono::Duration::MAX)
}

impl State {
    /// Start watching a newly connected agent.
    pub(super) fn watch_for_lost(&mut self, agent_id: Uuid, last_seen_at: Time) {
        let at = last_seen_at + lost_after(self.settings.agent_lost_after);
        self.add_deadline(at, agent_id, DeadlineKind::AgentLost);
    }

    /// Change how long an agent may stay silent; agents already connected are judged by
    /// the new length from their last contact.
    pub fn set_agent_lost_after(&mut self, after: Duration) {
        self.settings.agent_lost_after = after;
        let watched: Vec<(Uuid, Time)> = self
            .agents
            .values()
            .filter(|a| is_watched(a.connection_state))
            .map(|a| (a.id, a.last_seen_at))
            .collect();
        for (id, last_seen_at) in watched {
            self.watch_for_lost(id, last_seen_at);
        }
    }

    /// The agent's lost deadline is due: mark it lost if it stayed silent, else look again
    /// when it would next be due.
    pub(super) fn check_lost(&mut self, agent_id: Uuid, now: Time) {
        let Some(agent) = self.agents.get(&agent_id) else {
            return;
        };
        if !is_watched(agent.connection_state) {
            return;
        }
        let due = agent.last_seen_at + lost_after(self.settings.agent_lost_after);
        if due > now {
            self.add_deadline(due, agent_id, DeadlineKind::AgentLost);
            return;
        }
        self.lose_agent(agent_id, now);
    }

    fn lose_agent(&mut self, agent_id: Uuid, now: Time) {
        let Some(agent) = self.agents.get_mut(&agent_id) else {
            return;
        };
        agent.connection_state = ConnectionState::Lost;
        agent.lost_at = Some(now);
        let held = agent.job_id.take();
        self.emit_agent_event("agent.lost", agent_id);
        self.gone_agents.push_back(agent_id);
        self.forget_gone_agents();
        if let Some(job_id) = held {
            self.end_job_of_lost_agent(job_id);
        }
    }

    /// An assigned job goes back to the queue (nothing ran yet); a job the agent had
    /// accepted or was running ends with exit status −1: `failed`, or `canceled` /
    /// `timed_out` if it was already on its way there.
    fn end_job_of_lost_agent(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let build_id = job.build_id;
        let next = match job.state {
            JobState::Assigned => JobState::Scheduled,
            JobState::Accepted | JobState::Running => JobState::Failed,
            JobState::Canceling => JobState::Canceled,
            JobState::TimingOut => JobState::TimedOut,
            _ => return,
        };
        if next == JobState::Scheduled {
            job.agent_id = None;
        } else {
            job.exit_status = Some(-1);
            job.signal_reason = Some(LOST_SIGNAL_REASON.to_string());
        }
        self.set_state(job_id, next, Some("agent lost".to_string()));
        self.settle(build_id);
    }
}

/// Agents that can become lost: those the server believes are still there.
fn is_watched(state: ConnectionState) -> bool {
    matches!(
        state,
        ConnectionState::Connected | ConnectionState::Stopping
    )
}
