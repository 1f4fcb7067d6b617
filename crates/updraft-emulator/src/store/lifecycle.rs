//! Builds from steps: pipelines, builds, and the jobs a build's steps become (waits,
//! blocks, `depends_on`, parallelism), including steps uploaded while a build runs.

use super::model::*;
use super::State;
use crate::error::{ApiError, ApiResult};
use crate::log::JobLog;
use crate::steps::{PipelineDef, StepKind, StepSpec};
use std::collections::{BTreeMap, HashMap};
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
}

#[allow(clippy::too_many_arguments)]
pub(super) fn new_job(
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
        scheduled_json: None,
    }
}
