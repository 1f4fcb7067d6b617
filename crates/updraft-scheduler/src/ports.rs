//! What the scheduler asks of Buildkite about jobs it owns — reserve, issue job acquisition
//! tokens, read details and states, finish, notify — as one trait. The scheduler runs on the
//! Stacks API (`StackSet`, one stack per queue); the reconciler's simulation test runs the
//! same pipeline and reconciler against a simulated Buildkite through this seam.

use crate::stackset::StackSet;
use async_trait::async_trait;
use std::time::Duration;
use updraft_buildkite::stacks::{
    IssuedTokens, JobStates, Notification, NotificationResult, Reservation, StackJob,
};
use updraft_buildkite::ApiError;
use uuid::Uuid;

#[async_trait]
pub trait Buildkite: Send + Sync {
    /// Reserve `queue`'s jobs for this scheduler.
    async fn reserve(
        &self,
        queue: &str,
        jobs: &[Uuid],
        expiry: Duration,
    ) -> Result<Reservation, ApiError>;

    /// One job acquisition token per reserved job, right before its launch.
    async fn issue_tokens(
        &self,
        queue: &str,
        jobs: &[Uuid],
        lifetime: Duration,
    ) -> Result<IssuedTokens, ApiError>;

    /// The job's environment and command.
    async fn job_details(&self, queue: &str, job: Uuid) -> Result<StackJob, ApiError>;

    /// The states of up to 1000 jobs.
    async fn job_states(&self, jobs: &[Uuid]) -> Result<JobStates, ApiError>;

    /// Fail a job no agent has taken, with `detail` shown in the build.
    async fn finish(
        &self,
        queue: &str,
        job: Uuid,
        exit_status: i32,
        detail: &str,
    ) -> Result<(), ApiError>;

    /// Tell the builds why their jobs wait.
    async fn notify(
        &self,
        queue: &str,
        notes: &[Notification],
    ) -> Result<NotificationResult, ApiError>;
}

#[async_trait]
impl Buildkite for StackSet {
    async fn reserve(
        &self,
        queue: &str,
        jobs: &[Uuid],
        expiry: Duration,
    ) -> Result<Reservation, ApiError> {
        self.for_queue(queue)
            .batch_reserve(jobs, Some(expiry))
            .await
    }

    async fn issue_tokens(
        &self,
        queue: &str,
        jobs: &[Uuid],
        lifetime: Duration,
    ) -> Result<IssuedTokens, ApiError> {
        self.for_queue(queue)
            .issue_job_acquisition_tokens(jobs, lifetime)
            .await
    }

    async fn job_details(&self, queue: &str, job: Uuid) -> Result<StackJob, ApiError> {
        self.for_queue(queue).job(job).await
    }

    async fn job_states(&self, jobs: &[Uuid]) -> Result<JobStates, ApiError> {
        self.any().job_states(jobs).await
    }

    async fn finish(
        &self,
        queue: &str,
        job: Uuid,
        exit_status: i32,
        detail: &str,
    ) -> Result<(), ApiError> {
        self.for_queue(queue)
            .finish_job(job, exit_status, detail)
            .await
    }

    async fn notify(
        &self,
        queue: &str,
        notes: &[Notification],
    ) -> Result<NotificationResult, ApiError> {
        self.for_queue(queue).notify(notes).await
    }
}
