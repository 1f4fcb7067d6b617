//! What clients do to jobs and builds: finish, cancel (a job or a whole build), retry,
//! unblock and rebuild.

use super::lifecycle::{new_job, CreateBuild};
use super::model::*;
use super::State;
use crate::error::{ApiError, ApiResult};
use updraft_model::JobState;
use uuid::Uuid;

impl State {
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
}
