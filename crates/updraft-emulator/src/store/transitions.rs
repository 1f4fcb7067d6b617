//! How jobs and builds move: a job's state change with its timeline, indexes, deadlines and
//! push events; dependency resolution that moves waiting jobs on; and the build state that
//! follows from its jobs.

use super::model::*;
use super::{DeadlineKind, State};
use updraft_model::JobState;
use uuid::Uuid;

/// Where a job's dependencies stand.
struct DepsStatus {
    all_done: bool,
    any_failed: bool,
}

fn failed_state(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed
            | JobState::Canceled
            | JobState::TimedOut
            | JobState::Expired
            | JobState::WaitingFailed
            | JobState::BlockedFailed
            | JobState::UnblockedFailed
    )
}

fn satisfied_state(state: JobState) -> bool {
    matches!(
        state,
        JobState::Passed
            | JobState::Finished
            | JobState::Unblocked
            | JobState::Skipped
            | JobState::Broken
    )
}

impl State {
    /// Follow retries to the job that currently stands for this one.
    fn latest(&self, mut id: Uuid) -> Uuid {
        while let Some(next) = self.jobs.get(&id).and_then(|j| j.retried_in) {
            id = next;
        }
        id
    }

    fn deps_status(&self, job: &Job) -> DepsStatus {
        let mut status = DepsStatus {
            all_done: true,
            any_failed: false,
        };
        for dep in &job.depends_on {
            let Some(state) = self.job_state(self.latest(*dep)) else {
                continue;
            };
            if failed_state(state) {
                status.any_failed = true;
            } else if !satisfied_state(state) {
                status.all_done = false;
            }
        }
        status
    }

    /// Move waiting jobs whose dependencies resolved, then recompute the build's state.
    pub fn settle(&mut self, build_id: Uuid) {
        loop {
            let Some(build) = self.builds.get(&build_id) else {
                return;
            };
            let branch = build.branch.as_str();
            let mut moves = Vec::new();
            for id in &build.jobs {
                let Some(job) = self.jobs.get(id) else {
                    continue;
                };
                if !matches!(job.state, JobState::Pending | JobState::Waiting) {
                    continue;
                }
                let deps = self.deps_status(job);
                let tolerant = job.step.allow_dependency_failure
                    || (job.kind == JobKind::Waiter && job.step.continue_on_failure);
                let target = if deps.any_failed && !tolerant {
                    Some(if job.kind == JobKind::Manual {
                        JobState::BlockedFailed
                    } else {
                        JobState::WaitingFailed
                    })
                } else if deps.all_done {
                    Some(match job.kind {
                        JobKind::Script if job.step.skip => JobState::Skipped,
                        JobKind::Script if !job.step.runs_on_branch(branch) => JobState::Broken,
                        JobKind::Script => JobState::Scheduled,
                        JobKind::Waiter => JobState::Passed,
                        JobKind::Manual => JobState::Blocked,
                    })
                } else if job.state == JobState::Pending {
                    Some(JobState::Waiting)
                } else {
                    None
                };
                if let Some(target) = target {
                    moves.push((*id, target));
                }
            }
            if moves.is_empty() {
                break;
            }
            for (id, target) in moves {
                if target == JobState::Broken {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.broken_reason = Some("branch_mismatch");
                    }
                }
                let target = if target == JobState::Scheduled {
                    self.admit_to_group(id)
                } else {
                    target
                };
                self.set_state(id, target, None);
            }
        }
        self.recompute_build_state(build_id);
        self.release_groups();
    }

    fn recompute_build_state(&mut self, build_id: Uuid) {
        let Some(build) = self.builds.get(&build_id) else {
            return;
        };
        let mut busy = false;
        let mut queued = false;
        let mut blocked = false;
        let mut failed = false;
        let mut all_skipped = true;
        for id in &build.jobs {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            if job.retried_in.is_some() {
                continue;
            }
            let s = job.state;
            busy |= matches!(
                s,
                JobState::Assigned
                    | JobState::Accepted
                    | JobState::Running
                    | JobState::Canceling
                    | JobState::TimingOut
            );
            queued |= matches!(
                s,
                JobState::Pending
                    | JobState::Scheduled
                    | JobState::Reserved
                    | JobState::Limiting
                    | JobState::Limited
            );
            blocked |= s == JobState::Blocked;
            failed |=
                job.kind == JobKind::Script && failed_state(s) && s != JobState::WaitingFailed;
            all_skipped &=
                matches!(s, JobState::Skipped | JobState::Broken) || job.kind != JobKind::Script;
        }
        let waiting = build
            .jobs
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .any(|j| j.retried_in.is_none() && j.state == JobState::Waiting);
        let new = if build.cancel_requested {
            if busy {
                BuildState::Canceling
            } else {
                BuildState::Canceled
            }
        } else if busy || queued || (waiting && !blocked) {
            if failed {
                BuildState::Failing
            } else if build.started_at.is_some() {
                BuildState::Running
            } else {
                BuildState::Scheduled
            }
        } else if failed {
            BuildState::Failed
        } else if blocked {
            BuildState::Blocked
        } else if all_skipped && !build.jobs.is_empty() {
            BuildState::Skipped
        } else {
            BuildState::Passed
        };
        self.set_build_state(build_id, new);
    }

    fn set_build_state(&mut self, build_id: Uuid, new: BuildState) {
        let now = Self::now();
        let Some(build) = self.builds.get_mut(&build_id) else {
            return;
        };
        let old = build.state;
        if old == new {
            return;
        }
        build.state = new;
        if new.is_finished() {
            build.finished_at = Some(now);
            self.finished_builds.push_back(build_id);
        } else if old.is_finished() {
            build.finished_at = None;
            self.finished_builds.retain(|id| *id != build_id);
        }
        let event = match new {
            BuildState::Running if old == BuildState::Scheduled => Some("build.running"),
            BuildState::Failing => Some("build.failing"),
            s if s.is_finished() => Some("build.finished"),
            _ => None,
        };
        if let Some(name) = event {
            self.emit_build_event(name, build_id);
        }
        if new.is_finished() {
            self.evict_finished_builds();
        }
    }

    /// Change a job's state, keeping indexes, timestamps, deadlines and the timeline right.
    pub fn set_state(&mut self, job_id: Uuid, new: JobState, reason: Option<String>) {
        let now = Self::now();
        let expiry = chrono::Duration::from_std(self.settings.scheduled_job_expiry)
            .unwrap_or(chrono::Duration::MAX);
        let minute =
            chrono::Duration::from_std(self.settings.minute).unwrap_or(chrono::Duration::MAX);
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let old = job.state;
        if old == new {
            return;
        }
        job.state = new;
        job.history.push(Transition {
            state: new,
            at: now,
            reason,
        });
        if old == JobState::Scheduled {
            self.scheduled.remove(&job.seq);
        }
        let build_id = job.build_id;
        let is_script = job.kind == JobKind::Script;
        let mut deadlines = Vec::new();
        let mut event = None;
        let mut release_agent = None;
        let mut freed_group = None;
        match new {
            JobState::Scheduled => {
                if job.seq == 0 {
                    job.seq = self.next_seq;
                    self.next_seq += 1;
                }
                let scheduled_at = *job.scheduled_at.get_or_insert(now);
                job.runnable_at.get_or_insert(now);
                job.reservation = None;
                self.scheduled.insert(job.seq, job_id);
                deadlines.push((scheduled_at + expiry, DeadlineKind::Expiry));
                event = Some("job.scheduled");
            }
            JobState::Reserved => {
                if let Some(r) = &job.reservation {
                    deadlines.push((r.expires_at, DeadlineKind::ReservationLapse));
                }
            }
            JobState::Running => {
                job.started_at = Some(now);
                if let Some(minutes) = job.step.timeout_in_minutes {
                    deadlines.push((now + minute * minutes as i32, DeadlineKind::Timeout));
                }
                event = Some("job.started");
            }
            s if s.is_terminal() => {
                job.finished_at = Some(now);
                if s == JobState::Expired {
                    job.expired_at = Some(now);
                }
                job.reservation = None;
                release_agent = job.agent_id;
                freed_group = job
                    .step
                    .concurrency
                    .as_ref()
                    .map(|(group, _)| group.clone());
                self.counters.jobs_finished += 1;
                event = Some("job.finished");
            }
            _ => {}
        }
        if new == JobState::Accepted {
            if let Some(build) = self.builds.get_mut(&build_id) {
                build.started_at.get_or_insert(now);
            }
        }
        if let Some(group) = freed_group {
            self.release_group_later(group);
        }
        if let Some(agent) = release_agent.and_then(|id| self.agents.get_mut(&id)) {
            if agent.job_id == Some(job_id) {
                agent.job_id = None;
                agent.last_job_finished_at = Some(now);
            }
        }
        for (at, kind) in deadlines {
            self.add_deadline(at, job_id, kind);
        }
        if let Some(name) = event.filter(|_| is_script) {
            self.emit_job_event(name, job_id);
        }
    }

    pub(super) fn emit_job_event(&mut self, name: &'static str, job_id: Uuid) {
        if !self.push_enabled {
            return;
        }
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let Some(build) = self.builds.get(&job.build_id) else {
            return;
        };
        let event = super::Event {
            name,
            job: Some(self.rest_job(job)),
            build: self.rest_build(build, false),
            pipeline: self
                .pipelines
                .get(&build.pipeline)
                .map(|p| self.rest_pipeline(p))
                .unwrap_or_default(),
            agent: job
                .agent_id
                .and_then(|id| self.agents.get(&id))
                .map(|a| self.rest_agent(a)),
        };
        self.emit(event);
    }

    pub(super) fn emit_build_event(&mut self, name: &'static str, build_id: Uuid) {
        if !self.push_enabled {
            return;
        }
        let Some(build) = self.builds.get(&build_id) else {
            return;
        };
        let event = super::Event {
            name,
            job: None,
            build: self.rest_build(build, false),
            pipeline: self
                .pipelines
                .get(&build.pipeline)
                .map(|p| self.rest_pipeline(p))
                .unwrap_or_default(),
            agent: None,
        };
        self.emit(event);
    }
}
