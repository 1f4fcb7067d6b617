//! What a running job does through its job token (reference §1.6.8–1.6.14): start, log
//! chunks, meta-data, pipeline upload and annotations.

use super::model::*;
use super::State;
use crate::error::{ApiError, ApiResult};
use crate::steps::StepSpec;
use std::collections::BTreeMap;
use updraft_model::JobState;
use uuid::Uuid;

/// States in which an agent holds the job and may stream logs or change the build.
fn held(state: JobState) -> bool {
    matches!(
        state,
        JobState::Accepted | JobState::Running | JobState::Canceling | JobState::TimingOut
    )
}

impl State {
    fn job(&self, id: Uuid) -> ApiResult<&Job> {
        self.jobs
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("No job found with id {id}")))
    }

    pub fn start_job(&mut self, id: Uuid) -> ApiResult<()> {
        let job = self.job(id)?;
        match job.state {
            JobState::Accepted => {
                let build_id = job.build_id;
                self.set_state(id, JobState::Running, None);
                self.settle(build_id);
                Ok(())
            }
            // Cancelled between acquire and start: the agent starts, sees `canceling` and stops.
            JobState::Canceling | JobState::TimingOut => Ok(()),
            other => Err(ApiError::unprocessable(format!(
                "This job can't be started because it is {other}"
            ))),
        }
    }

    pub fn add_chunk(&mut self, id: Uuid, offset: u64, data: Vec<u8>) -> ApiResult<()> {
        let job = self.job(id)?;
        if !held(job.state) {
            return Err(ApiError::bad_request(format!(
                "Job can't have chunks: it is {}",
                job.state
            )));
        }
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        job.log
            .add(offset, data)
            .map_err(|e| ApiError::new(axum::http::StatusCode::CONFLICT, e.to_string()))
    }

    /// Meta-data lives on the build; `jobs/{id}` and `builds/{id}` scopes reach the same map.
    pub fn meta_data(&mut self, build_id: Uuid) -> ApiResult<&mut BTreeMap<String, String>> {
        self.builds
            .get_mut(&build_id)
            .map(|b| &mut b.meta_data)
            .ok_or_else(|| ApiError::not_found(format!("No build found with id {build_id}")))
    }

    /// Apply an uploaded pipeline once per upload uuid.
    pub fn upload_pipeline(
        &mut self,
        job_id: Uuid,
        upload: &str,
        steps: &[StepSpec],
    ) -> ApiResult<()> {
        let job = self.job(job_id)?;
        if !held(job.state) {
            return Err(ApiError::unprocessable(format!(
                "Pipelines can't be uploaded from a job that is {}",
                job.state
            )));
        }
        let build_id = job.build_id;
        let already = self
            .builds
            .get(&build_id)
            .is_some_and(|b| b.uploads.iter().any(|u| u == upload));
        if already {
            return Ok(());
        }
        self.upload_steps(build_id, steps)?;
        if let Some(build) = self.builds.get_mut(&build_id) {
            build.uploads.push(upload.to_string());
        }
        Ok(())
    }

    pub fn upload_applied(&self, job_id: Uuid, upload: &str) -> bool {
        self.jobs
            .get(&job_id)
            .and_then(|j| self.builds.get(&j.build_id))
            .is_some_and(|b| b.uploads.iter().any(|u| u == upload))
    }

    pub fn annotate(
        &mut self,
        job_id: Uuid,
        mut annotation: Annotation,
        append: bool,
    ) -> ApiResult<()> {
        let build_id = self.job(job_id)?.build_id;
        let build = self
            .builds
            .get_mut(&build_id)
            .ok_or_else(|| ApiError::not_found("Build not found"))?;
        let key = annotation_key(&annotation.scope, &annotation.context, job_id);
        if let Some(existing) = build.annotations.get(&key).filter(|_| append) {
            annotation.body = format!("{}{}", existing.body, annotation.body);
        }
        build.annotations.insert(key, annotation);
        Ok(())
    }

    pub fn remove_annotation(&mut self, job_id: Uuid, scope: &str, context: &str) -> ApiResult<()> {
        let build_id = self.job(job_id)?.build_id;
        let build = self
            .builds
            .get_mut(&build_id)
            .ok_or_else(|| ApiError::not_found("Build not found"))?;
        build
            .annotations
            .remove(&annotation_key(scope, context, job_id))
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found(format!("No annotation with context {context:?}")))
    }
}

fn annotation_key(scope: &str, context: &str, job_id: Uuid) -> String {
    if scope == "job" {
        format!("job:{job_id}:{context}")
    } else {
        format!("build:{context}")
    }
}
