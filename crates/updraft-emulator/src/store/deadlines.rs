//! Time-driven changes: scheduled jobs expiring, reservations lapsing, `timeout_in_minutes`,
//! silent agents becoming lost, and forgetting finished builds beyond the cap.

use super::model::*;
use super::{DeadlineKind, State};
use std::collections::HashSet;
use updraft_model::JobState;
use uuid::Uuid;

impl State {
    /// Fire every deadline due at `now`; return when the next one is due.
    pub fn sweep(&mut self, now: Time) -> Option<Time> {
        while let Some(&(at, id, kind)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if kind == DeadlineKind::AgentLost {
                self.check_lost(id, now);
            } else {
                self.fire_deadline(id, kind, now);
            }
        }
        self.deadlines.first().map(|d| d.0)
    }

    fn fire_deadline(&mut self, job_id: Uuid, kind: DeadlineKind, now: Time) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let build_id = job.build_id;
        let minute =
            chrono::Duration::from_std(self.settings.minute).unwrap_or(chrono::Duration::MAX);
        match kind {
            DeadlineKind::Expiry
                if matches!(job.state, JobState::Scheduled | JobState::Reserved) =>
            {
                self.set_state(
                    job_id,
                    JobState::Expired,
                    Some("no agent picked the job up before it expired".to_string()),
                );
            }
            DeadlineKind::ReservationLapse
                if job.state == JobState::Reserved
                    && job
                        .reservation
                        .as_ref()
                        .is_some_and(|r| r.expires_at <= now) =>
            {
                self.set_state(
                    job_id,
                    JobState::Scheduled,
                    Some("reservation lapsed".to_string()),
                );
            }
            DeadlineKind::Timeout
                if matches!(job.state, JobState::Accepted | JobState::Running)
                    && job
                        .started_at
                        .zip(job.step.timeout_in_minutes)
                        .is_some_and(|(s, m)| s + minute * m as i32 <= now) =>
            {
                self.set_state(
                    job_id,
                    JobState::TimingOut,
                    Some("timeout_in_minutes exceeded".to_string()),
                );
            }
            _ => return,
        }
        self.settle(build_id);
    }

    /// Forget the oldest finished builds beyond the cap, with their jobs, logs and tokens.
    pub(super) fn evict_finished_builds(&mut self) {
        let mut evicted_jobs = HashSet::new();
        while self.finished_builds.len() > self.settings.max_finished_builds {
            let Some(build_id) = self.finished_builds.pop_front() else {
                break;
            };
            let Some(build) = self.builds.remove(&build_id) else {
                continue;
            };
            self.builds_by_number
                .remove(&(build.pipeline.clone(), build.number));
            for id in &build.jobs {
                if let Some(job) = self.jobs.remove(id) {
                    if let Some(token) = &job.token {
                        self.job_tokens.remove(token);
                    }
                    evicted_jobs.insert(*id);
                }
            }
            self.counters.builds_evicted += 1;
        }
        if evicted_jobs.is_empty() {
            return;
        }
        self.build_order.retain(|id| self.builds.contains_key(id));
        self.deadlines
            .retain(|(_, id, _)| !evicted_jobs.contains(id));
        self.acquisition_tokens
            .retain(|_, t| !evicted_jobs.contains(&t.job_id));
        for id in &evicted_jobs {
            self.counters.acquires_by_job.remove(id);
            self.counters.accepts_by_job.remove(id);
        }
    }
}
