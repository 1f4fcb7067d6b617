//! The Stacks API's view of the state (reference §1.7): stacks, the scheduled-jobs list per
//! queue, reservations, job acquisition tokens, stack finish and notifications.

use super::json::queue_id;
use super::model::*;
use super::{random_token, DeadlineKind, State};
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::time::Duration;
use updraft_model::JobState;
use uuid::Uuid;

/// Every spelling of "the default queue" clients use for `queue_key` (reference §1.7).
pub fn normalize_queue(key: &str) -> &str {
    match key {
        "" | "_default" | "__default__" | "~" | "-" => updraft_model::rules::DEFAULT_QUEUE,
        other => other,
    }
}

pub struct ScheduledPage {
    /// The `jobs` array, already serialized (each job's JSON is cached while it is scheduled,
    /// so polling is cheap).
    pub jobs_json: String,
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
    pub queue: String,
    pub paused: bool,
}

impl State {
    /// Register or re-register; `true` when the stack is new.
    pub fn register_stack(
        &mut self,
        key: String,
        kind: String,
        queue_key: String,
        metadata: Value,
    ) -> (bool, Value) {
        let now = Self::now();
        let queue = normalize_queue(&queue_key).to_string();
        let created = !self.stacks.contains_key(&key);
        let stack = self.stacks.entry(key.clone()).or_insert_with(|| Stack {
            id: Uuid::new_v4(),
            key: key.clone(),
            kind: kind.clone(),
            queue_key: queue.clone(),
            metadata: metadata.clone(),
            registered_at: now,
            last_polled_at: None,
            state: "connected",
        });
        stack.kind = kind;
        stack.queue_key = queue;
        stack.metadata = metadata;
        stack.state = "connected";
        let stack = stack.clone();
        (created, self.stack_json(&stack))
    }

    pub fn stack_json(&self, stack: &Stack) -> Value {
        json!({
            "id": stack.id,
            "organization_uuid": self.settings.org_id,
            "key": stack.key,
            "type": stack.kind,
            "cluster_queue_key": stack.queue_key,
            "metadata": stack.metadata,
            "last_connected_on": super::json::time(stack.last_polled_at.or(Some(stack.registered_at))),
            "state": stack.state,
        })
    }

    pub fn stack(&self, key: &str) -> ApiResult<&Stack> {
        self.stacks
            .get(key)
            .ok_or_else(|| ApiError::not_found(format!("No stack registered with key {key:?}")))
    }

    pub fn deregister_stack(&mut self, key: &str) -> ApiResult<()> {
        let stack = self
            .stacks
            .get_mut(key)
            .ok_or_else(|| ApiError::not_found(format!("No stack registered with key {key:?}")))?;
        stack.state = "disconnected";
        Ok(())
    }

    pub fn scheduled_jobs(
        &mut self,
        key: &str,
        queue: Option<&str>,
        limit: usize,
        after: Option<u64>,
    ) -> ApiResult<ScheduledPage> {
        let now = Self::now();
        self.sweep(now);
        let stack = self
            .stacks
            .get_mut(key)
            .ok_or_else(|| ApiError::not_found(format!("No stack registered with key {key:?}")))?;
        stack.last_polled_at = Some(now);
        let queue = normalize_queue(queue.unwrap_or(&stack.queue_key)).to_string();
        let mut page: Vec<(u64, Uuid)> = Vec::new();
        let mut has_next_page = false;
        let start = after.map_or(0, |a| a + 1);
        for (&seq, job_id) in self.scheduled.range(start..) {
            let Some(job) = self.jobs.get(job_id) else {
                continue;
            };
            if job.step.agents.queue() != queue {
                continue;
            }
            if page.len() == limit {
                has_next_page = true;
                break;
            }
            page.push((seq, *job_id));
        }
        let mut fragments: Vec<std::sync::Arc<str>> = Vec::with_capacity(page.len());
        for (_, job_id) in &page {
            let Some(job) = self.jobs.get(job_id) else {
                continue;
            };
            let fragment = match &job.scheduled_json {
                Some(fragment) => fragment.clone(),
                None => {
                    let fragment: std::sync::Arc<str> =
                        self.scheduled_job_json(job).to_string().into();
                    if let Some(job) = self.jobs.get_mut(job_id) {
                        job.scheduled_json = Some(fragment.clone());
                    }
                    fragment
                }
            };
            fragments.push(fragment);
        }
        let jobs_json = format!("[{}]", fragments.join(","));
        let last_seq = page.last().map(|(seq, _)| *seq);
        Ok(ScheduledPage {
            jobs_json,
            end_cursor: last_seq.map(|s| s.to_string()),
            has_next_page,
            paused: self.paused_queues.contains(&queue),
            queue,
        })
    }

    fn scheduled_job_json(&self, job: &Job) -> Value {
        let build = self.builds.get(&job.build_id);
        let pipeline = build.and_then(|b| self.pipelines.get(&b.pipeline));
        json!({
            "id": job.id,
            "priority": job.step.priority,
            "agent_query_rules": job.step.agents.to_strings(),
            "scheduled_at": super::json::time(job.scheduled_at),
            "pipeline": {"slug": pipeline.map(|p| p.slug.clone()), "uuid": pipeline.map(|p| p.id)},
            "build": {"number": build.map(|b| b.number), "branch": build.map(|b| b.branch.clone()), "uuid": build.map(|b| b.id)},
            "step": {"key": job.step.key},
        })
    }

    pub fn cluster_queue_json(queue: &str, paused: bool) -> Value {
        json!({"id": queue_id(queue), "key": queue, "paused": paused, "dispatch_paused": paused})
    }

    /// Reserve scheduled jobs of the stack's queue. Re-reserving a job this stack already
    /// holds extends the reservation (a retried request gets the same answer).
    pub fn reserve(
        &mut self,
        key: &str,
        ids: &[Uuid],
        expiry: Duration,
    ) -> ApiResult<(Vec<Uuid>, Vec<Uuid>)> {
        let now = Self::now();
        self.sweep(now);
        let queue = self.stack(key)?.queue_key.clone();
        let expires_at = now + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::MAX);
        let (mut reserved, mut not_reserved) = (Vec::new(), Vec::new());
        for &id in ids {
            let ok = self.jobs.get(&id).is_some_and(|j| {
                j.step.agents.queue() == queue
                    && (j.state == JobState::Scheduled
                        || (j.state == JobState::Reserved
                            && j.reservation.as_ref().is_some_and(|r| r.stack == key)))
            });
            if !ok {
                not_reserved.push(id);
                continue;
            }
            let was = self.job_state(id);
            if let Some(job) = self.jobs.get_mut(&id) {
                job.reservation = Some(Reservation {
                    stack: key.to_string(),
                    expires_at,
                });
            }
            if was == Some(JobState::Reserved) {
                self.add_deadline(expires_at, id, DeadlineKind::ReservationLapse);
            } else {
                self.set_state(
                    id,
                    JobState::Reserved,
                    Some(format!("reserved by stack {key}")),
                );
            }
            reserved.push(id);
        }
        Ok((reserved, not_reserved))
    }

    /// Issue job acquisition tokens for jobs this stack reserved (reference §1.7, JAT).
    pub fn issue_acquisition_tokens(
        &mut self,
        key: &str,
        ids: &[Uuid],
        lifetime: Duration,
    ) -> ApiResult<(Vec<Value>, Vec<Uuid>)> {
        let now = Self::now();
        self.sweep(now);
        let queue = self.stack(key)?.queue_key.clone();
        if let Some(foreign) = ids.iter().find(|id| {
            self.jobs
                .get(id)
                .is_some_and(|j| j.step.agents.queue() != queue)
        }) {
            return Err(ApiError::forbidden(format!(
                "Job {foreign} is not in this stack's queue {queue:?}"
            )));
        }
        let expires_at =
            now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX);
        let (mut issued, mut not_issued) = (Vec::new(), Vec::new());
        for &id in ids {
            let held = self.jobs.get(&id).is_some_and(|j| {
                j.state == JobState::Reserved
                    && j.reservation.as_ref().is_some_and(|r| r.stack == key)
            });
            if !held {
                not_issued.push(id);
                continue;
            }
            let token = random_token("bkjat_");
            self.acquisition_tokens.insert(
                token.clone(),
                AcquisitionToken {
                    job_id: id,
                    expires_at,
                },
            );
            issued.push(json!({"job_uuid": id, "job_acquisition_token": token, "expires_at": super::json::time(Some(expires_at))}));
        }
        Ok((issued, not_issued))
    }

    /// The job a valid, unexpired acquisition token is for.
    pub fn acquisition_token_job(&self, token: &str) -> Option<Uuid> {
        self.acquisition_tokens
            .get(token)
            .filter(|t| t.expires_at > Self::now())
            .map(|t| t.job_id)
    }

    pub fn stack_job(&self, id: Uuid) -> ApiResult<Value> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("No job found with id {id}")))?;
        Ok(
            json!({"id": job.id, "state": job.state.as_str(), "env": self.job_env(job, None), "command": job.step.command.clone().unwrap_or_default()}),
        )
    }

    /// The stack could not run the job: it fails with `signal_reason: stack_error`.
    pub fn stack_finish(
        &mut self,
        key: &str,
        id: Uuid,
        exit_status: i64,
        detail: String,
    ) -> ApiResult<()> {
        self.stack(key)?;
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("No job found with id {id}")))?;
        if matches!(
            job.state,
            JobState::Assigned
                | JobState::Accepted
                | JobState::Running
                | JobState::Canceling
                | JobState::TimingOut
        ) {
            self.counters.stack_finishes_of_held_jobs += 1;
        }
        if !matches!(
            job.state,
            JobState::Scheduled | JobState::Reserved | JobState::Assigned | JobState::Accepted
        ) {
            return Err(ApiError::unprocessable(format!(
                "Job {id} can't be finished by a stack because it is {}",
                job.state
            )));
        }
        let build_id = job.build_id;
        if let Some(job) = self.jobs.get_mut(&id) {
            job.exit_status = Some(exit_status);
            job.signal_reason = Some("stack_error".to_string());
            job.stack_finish_detail = Some(detail.clone());
        }
        self.set_state(
            id,
            JobState::Failed,
            Some(format!("finished by stack {key}: {detail}")),
        );
        self.settle(build_id);
        Ok(())
    }
}
