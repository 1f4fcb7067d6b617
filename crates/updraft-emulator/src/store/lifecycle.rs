//! How builds and jobs move: creating builds from steps (waits, blocks, `depends_on`,
//! parallelism), job state changes with their timeline and push events, dependency
//! resolution, the build state that follows from its jobs, cancel / retry / unblock /
//! rebuild, deadlines (expiry, reservation lapse, timeout) and the finished-build cap.

use super::model::*;
use super::{DeadlineKind, State};
use crate::error::{ApiError, ApiResult};
use crate::log::JobLog;
use crate::steps::{PipelineDef, StepKind, StepSpec};
use std::collections::{BTreeMap, HashMap, HashSet};
use updraft_model::JobState;
use uuid::Uuid;

pub struct CreatePipeline {
    pub name: String,
    pub slug: Option<String>,
    pub repository: String,
    pub default_branch: Option<String>,
    pub configuration: String,
    pub def: PipelineDef,
}

#[derive(Debug, Clone, Default)]
pub struct CreateBuild {
    pub commit: String,
    pub branch: String,
    pub message: String,
    pub env: BTreeMap<String, String>,
    pub meta_data: BTreeMap<String, String>,
    pub source: String,
}

/// Where a job's dependencies stand.
struct DepsStatus {
    all_done: bool,
    any_failed: bool,
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
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
    pub fn create_pipeline(&mut self, req: CreatePipeline) -> ApiResult<String> {
        let slug = req
            .slug
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| slugify(&req.name));
        if slug.is_empty() || req.name.trim().is_empty() {
            return Err(ApiError::unprocessable(
                "Validation failed: name can't be blank",
            ));
        }
        if self.pipelines.contains_key(&slug) {
            return Err(ApiError::unprocessable(format!(
                "Validation failed: slug {slug:?} has already been taken"
            )));
        }
        let pipeline = Pipeline {
            id: Uuid::new_v4(),
            slug: slug.clone(),
            name: req.name,
            repository: req.repository,
            default_branch: req.default_branch.unwrap_or_else(|| "main".to_string()),
            configuration: req.configuration,
            steps: req.def.steps,
            env: req.def.env,
            created_at: Self::now(),
            next_build_number: 1,
        };
        self.pipelines.insert(slug.clone(), pipeline);
        Ok(slug)
    }

    pub fn create_build(&mut self, slug: &str, req: CreateBuild) -> ApiResult<Uuid> {
        let pipeline = self
            .pipelines
            .get_mut(slug)
            .ok_or_else(|| ApiError::not_found(format!("No pipeline found with slug {slug:?}")))?;
        let number = pipeline.next_build_number;
        let steps = pipeline.steps.clone();
        let default_branch = pipeline.default_branch.clone();
        let build_id = Uuid::new_v4();
        let jobs = self.plan_jobs(build_id, &steps, &[])?;
        if let Some(p) = self.pipelines.get_mut(slug) {
            p.next_build_number += 1;
        }
        let now = Self::now();
        let build = Build {
            id: build_id,
            pipeline: slug.to_string(),
            number,
            state: BuildState::Scheduled,
            branch: if req.branch.is_empty() {
                default_branch
            } else {
                req.branch
            },
            commit: if req.commit.is_empty() {
                "HEAD".to_string()
            } else {
                req.commit
            },
            message: req.message,
            source: if req.source.is_empty() {
                "api".to_string()
            } else {
                req.source
            },
            env: req.env,
            meta_data: req.meta_data,
            jobs: jobs.iter().map(|j| j.id).collect(),
            created_at: now,
            started_at: None,
            finished_at: None,
            cancel_requested: false,
            rebuilt_from: None,
            annotations: BTreeMap::new(),
            uploads: Vec::new(),
        };
        self.builds.insert(build_id, build);
        self.builds_by_number
            .insert((slug.to_string(), number), build_id);
        self.build_order.push_back(build_id);
        self.counters.builds_created += 1;
        self.counters.jobs_created += jobs.len() as u64;
        for job in jobs {
            self.jobs.insert(job.id, job);
        }
        self.emit_build_event("build.scheduled", build_id);
        self.settle(build_id);
        Ok(build_id)
    }

    /// Turn steps into jobs for a build. `existing` are the build's jobs already there (a
    /// pipeline upload): their keys can be depended on. Nothing is changed on error.
    fn plan_jobs(
        &self,
        build_id: Uuid,
        steps: &[StepSpec],
        existing: &[Uuid],
    ) -> ApiResult<Vec<Job>> {
        let mut keys: HashMap<String, Vec<Uuid>> = HashMap::new();
        for id in existing {
            if let Some(key) = self.jobs.get(id).and_then(|j| j.step.key.clone()) {
                keys.entry(key).or_default().push(*id);
            }
        }
        let mut ids: Vec<Vec<Uuid>> = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let count = if step.kind == StepKind::Command {
                step.parallelism.max(1)
            } else {
                1
            };
            let step_ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
            if let Some(key) = &step.key {
                if keys.contains_key(key) {
                    return Err(ApiError::unprocessable(format!(
                        "steps[{i}].key: {key:?} is used by another step in this build"
                    )));
                }
                keys.insert(key.clone(), step_ids.clone());
            }
            ids.push(step_ids);
        }
        let now = Self::now();
        let mut previous: Vec<Uuid> = existing.to_vec();
        let mut barrier: Option<Uuid> = None;
        let mut jobs = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let mut explicit = Vec::new();
            for key in &step.depends_on {
                let targets = keys.get(key).ok_or_else(|| {
                    ApiError::unprocessable(format!(
                        "steps[{i}].depends_on: no step has the key {key:?}"
                    ))
                })?;
                explicit.extend(targets.iter().copied());
            }
            let mut deps: Vec<Uuid> = match step.kind {
                StepKind::Wait | StepKind::Block => previous.clone(),
                StepKind::Command => barrier.into_iter().collect(),
            };
            deps.extend(explicit);
            let kind = match step.kind {
                StepKind::Command => JobKind::Script,
                StepKind::Wait => JobKind::Waiter,
                StepKind::Block => JobKind::Manual,
            };
            let step_id = Uuid::new_v4();
            let total = ids[i].len() as u32;
            for (index, id) in ids[i].iter().enumerate() {
                let parallel = (step.kind == StepKind::Command && step.parallelism > 1)
                    .then_some((index as u32, total));
                jobs.push(new_job(
                    *id,
                    build_id,
                    kind,
                    step.clone(),
                    step_id,
                    parallel,
                    deps.clone(),
                    now,
                ));
            }
            previous.extend(ids[i].iter().copied());
            if step.kind != StepKind::Command {
                barrier = ids[i].first().copied();
            }
        }
        Ok(jobs)
    }

    /// Add uploaded steps to a running build (reference §1.6.13). Waits already in the build
    /// that have not resolved now also wait for the new jobs.
    pub fn upload_steps(&mut self, build_id: Uuid, steps: &[StepSpec]) -> ApiResult<Vec<Uuid>> {
        let existing = self
            .builds
            .get(&build_id)
            .map(|b| b.jobs.clone())
            .unwrap_or_default();
        let jobs = self.plan_jobs(build_id, steps, &existing)?;
        let new_ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        for id in &existing {
            if let Some(job) = self.jobs.get_mut(id) {
                if job.kind != JobKind::Script
                    && matches!(job.state, JobState::Pending | JobState::Waiting)
                {
                    job.depends_on.extend(new_ids.iter().copied());
                }
            }
        }
        self.counters.jobs_created += jobs.len() as u64;
        for job in jobs {
            self.jobs.insert(job.id, job);
        }
        if let Some(build) = self.builds.get_mut(&build_id) {
            build.jobs.extend(new_ids.iter().copied());
        }
        self.settle(build_id);
        Ok(new_ids)
    }

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
                self.set_state(id, target, None);
            }
        }
        self.recompute_build_state(build_id);
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

    /// Agent (or stack) reports the end of a job (reference §1.6.11).
    pub fn finish_job(
        &mut self,
        job_id: Uuid,
        exit_status: i64,
        signal: Option<String>,
        signal_reason: Option<String>,
    ) -> ApiResult<JobState> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        let final_state = match job.state {
            JobState::Canceling => JobState::Canceled,
            JobState::TimingOut => JobState::TimedOut,
            JobState::Accepted | JobState::Running if exit_status == 0 => JobState::Passed,
            JobState::Accepted | JobState::Running => JobState::Failed,
            other => {
                return Err(ApiError::unprocessable(format!(
                    "This job can't be finished because it is {other}"
                )))
            }
        };
        let build_id = job.build_id;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.exit_status = Some(exit_status);
            job.signal = signal;
            job.signal_reason = signal_reason;
        }
        self.set_state(job_id, final_state, None);
        self.settle(build_id);
        Ok(final_state)
    }

    /// Cancel one job: jobs no agent runs yet end at once, running ones go to `canceling`
    /// and end when their agent finishes them.
    pub fn cancel_job(&mut self, job_id: Uuid, reason: &str) -> ApiResult<JobState> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        let build_id = job.build_id;
        let target = match job.state {
            JobState::Pending
            | JobState::Waiting
            | JobState::Scheduled
            | JobState::Reserved
            | JobState::Assigned
            | JobState::Blocked
            | JobState::Limiting
            | JobState::Limited => JobState::Canceled,
            JobState::Accepted | JobState::Running => JobState::Canceling,
            other => {
                return Err(ApiError::unprocessable(format!(
                    "This job can't be canceled because it is {other}"
                )))
            }
        };
        self.set_state(job_id, target, Some(reason.to_string()));
        self.settle(build_id);
        Ok(target)
    }

    pub fn cancel_build(&mut self, build_id: Uuid) -> ApiResult<()> {
        let build = self
            .builds
            .get_mut(&build_id)
            .ok_or_else(|| ApiError::not_found("Build not found"))?;
        if !matches!(
            build.state,
            BuildState::Scheduled | BuildState::Running | BuildState::Failing | BuildState::Blocked
        ) {
            return Err(ApiError::unprocessable(format!(
                "Build can't be canceled because it is {}",
                build.state.as_str()
            )));
        }
        build.cancel_requested = true;
        let jobs = build.jobs.clone();
        for id in jobs {
            let cancelable = self.jobs.get(&id).is_some_and(|j| {
                j.retried_in.is_none()
                    && !j.state.is_terminal()
                    && !j.state.is_stopping()
                    && j.state != JobState::Unblocked
            });
            if cancelable {
                // Each job was checked just above; a state the rules refuse is simply left as is.
                let _ = self.cancel_job(id, "build canceled");
            }
        }
        self.settle(build_id);
        Ok(())
    }

    /// REST retry (reference §3.4): only failed or timed-out jobs, each once.
    pub fn retry_job(&mut self, job_id: Uuid) -> ApiResult<Uuid> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        if job.retried_in.is_some() {
            return Err(ApiError::unprocessable("This job has already been retried"));
        }
        if job.kind != JobKind::Script
            || !matches!(job.state, JobState::Failed | JobState::TimedOut)
        {
            return Err(ApiError::unprocessable(format!(
                "Only failed or timed out jobs can be retried; this job is {}",
                job.state
            )));
        }
        let now = Self::now();
        let new_id = Uuid::new_v4();
        let mut retry = new_job(
            new_id,
            job.build_id,
            job.kind,
            job.step.clone(),
            job.step_id,
            job.parallel,
            job.depends_on.clone(),
            now,
        );
        retry.retries_count = job.retries_count + 1;
        let build_id = job.build_id;
        self.jobs.insert(new_id, retry);
        if let Some(old) = self.jobs.get_mut(&job_id) {
            old.retried_in = Some(new_id);
        }
        let waiting_failed: Vec<Uuid> = match self.builds.get_mut(&build_id) {
            Some(build) => {
                build.cancel_requested = false;
                let at = build
                    .jobs
                    .iter()
                    .position(|id| *id == job_id)
                    .map_or(build.jobs.len(), |p| p + 1);
                build.jobs.insert(at, new_id);
                build.jobs.clone()
            }
            None => Vec::new(),
        };
        self.counters.jobs_created += 1;
        for id in waiting_failed {
            let state = self.job_state(id);
            if matches!(
                state,
                Some(JobState::WaitingFailed) | Some(JobState::BlockedFailed)
            ) {
                self.set_state(
                    id,
                    JobState::Waiting,
                    Some("dependency retried".to_string()),
                );
            }
        }
        self.settle(build_id);
        Ok(new_id)
    }

    pub fn unblock_job(&mut self, job_id: Uuid, by: &str) -> ApiResult<()> {
        let job = self
            .jobs
            .get_mut(&job_id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        if job.kind != JobKind::Manual || job.state != JobState::Blocked {
            return Err(ApiError::unprocessable(format!(
                "This job can't be unblocked because it is {}",
                job.state
            )));
        }
        job.unblocked_by = Some(by.to_string());
        let build_id = job.build_id;
        self.set_state(
            job_id,
            JobState::Unblocked,
            Some(format!("unblocked by {by}")),
        );
        self.settle(build_id);
        Ok(())
    }

    pub fn rebuild(&mut self, build_id: Uuid) -> ApiResult<Uuid> {
        let build = self
            .builds
            .get(&build_id)
            .ok_or_else(|| ApiError::not_found("Build not found"))?;
        let (slug, number) = (build.pipeline.clone(), build.number);
        let req = CreateBuild {
            commit: build.commit.clone(),
            branch: build.branch.clone(),
            message: build.message.clone(),
            env: build.env.clone(),
            meta_data: build.meta_data.clone(),
            source: "api".to_string(),
        };
        let new_id = self.create_build(&slug, req)?;
        if let Some(new) = self.builds.get_mut(&new_id) {
            new.rebuilt_from = Some((build_id, number));
        }
        Ok(new_id)
    }

    /// Fire every deadline due at `now`; return when the next one is due.
    pub fn sweep(&mut self, now: Time) -> Option<Time> {
        while let Some(&(at, job_id, kind)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.fire_deadline(job_id, kind, now);
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
    fn evict_finished_builds(&mut self) {
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

    fn emit_job_event(&mut self, name: &'static str, job_id: Uuid) {
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

    fn emit_build_event(&mut self, name: &'static str, build_id: Uuid) {
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

#[allow(clippy::too_many_arguments)]
fn new_job(
    id: Uuid,
    build_id: Uuid,
    kind: JobKind,
    step: StepSpec,
    step_id: Uuid,
    parallel: Option<(u32, u32)>,
    depends_on: Vec<Uuid>,
    now: Time,
) -> Job {
    Job {
        id,
        build_id,
        kind,
        step,
        step_id,
        parallel,
        depends_on,
        state: JobState::Pending,
        history: vec![Transition {
            state: JobState::Pending,
            at: now,
            reason: None,
        }],
        attempts: Vec::new(),
        notifications: Vec::new(),
        agent_id: None,
        token: None,
        reservation: None,
        seq: 0,
        created_at: now,
        scheduled_at: None,
        runnable_at: None,
        started_at: None,
        finished_at: None,
        expired_at: None,
        exit_status: None,
        signal: None,
        signal_reason: None,
        chunks_failed_count: 0,
        log: JobLog::default(),
        retried_in: None,
        retries_count: 0,
        unblocked_by: None,
        stack_finish_detail: None,
        broken_reason: None,
    }
}
