//! The scheduler's ports, answered by the simulated world: each call registers itself and
//! waits until the driver lets it land, so the driver decides every interleaving. The clock is
//! the world's virtual one.

use super::world::{Call, Reply, World};
use crate::clock::Clock;
use crate::ports::Buildkite;
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use updraft_backends::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchSpec, LaunchStatus,
};
use updraft_buildkite::stacks::{
    IssuedTokens, JobStates, Notification, NotificationResult, Reservation, StackJob,
};
use updraft_buildkite::ApiError;
use uuid::Uuid;

pub type Shared = Arc<Mutex<World>>;

fn world(shared: &Shared) -> std::sync::MutexGuard<'_, World> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One outside call: registered on first poll, ready once the driver has landed it.
struct SimCall {
    world: Shared,
    call: Option<Call>,
    id: Option<u64>,
}

impl Future for SimCall {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Reply> {
        let this = &mut *self;
        let mut world = world(&this.world);
        match this.id {
            None => {
                let call = this.call.take().expect("a call is registered once");
                this.id = Some(world.register(call));
                Poll::Pending
            }
            Some(id) => match world.take_reply(id) {
                Some(reply) => Poll::Ready(reply),
                None => Poll::Pending,
            },
        }
    }
}

async fn call(world: &Shared, call: Call) -> Reply {
    SimCall {
        world: world.clone(),
        call: Some(call),
        id: None,
    }
    .await
}

#[derive(Debug)]
pub struct SimClock(pub Shared);

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        world(&self.0).now_ms
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

pub struct SimBuildkite(pub Shared);

#[async_trait]
impl Buildkite for SimBuildkite {
    async fn reserve(
        &self,
        _queue: &str,
        jobs: &[Uuid],
        _expiry: Duration,
    ) -> Result<Reservation, ApiError> {
        match call(&self.0, Call::Reserve(jobs.to_vec())).await {
            Reply::Reserve(result) => result,
            other => panic!("reserve answered with {other:?}"),
        }
    }

    async fn issue_tokens(
        &self,
        _queue: &str,
        jobs: &[Uuid],
        _lifetime: Duration,
    ) -> Result<IssuedTokens, ApiError> {
        match call(&self.0, Call::IssueTokens(jobs.to_vec())).await {
            Reply::Tokens(result) => result,
            other => panic!("issue_tokens answered with {other:?}"),
        }
    }

    async fn job_details(&self, _queue: &str, job: Uuid) -> Result<StackJob, ApiError> {
        match call(&self.0, Call::JobDetails(job)).await {
            Reply::Details(result) => result,
            other => panic!("job_details answered with {other:?}"),
        }
    }

    async fn job_states(&self, jobs: &[Uuid]) -> Result<JobStates, ApiError> {
        match call(&self.0, Call::JobStates(jobs.to_vec())).await {
            Reply::States(result) => result,
            other => panic!("job_states answered with {other:?}"),
        }
    }

    async fn finish(
        &self,
        _queue: &str,
        job: Uuid,
        _exit_status: i32,
        detail: &str,
    ) -> Result<(), ApiError> {
        match call(&self.0, Call::Finish(job, detail.to_string())).await {
            Reply::Finished(result) => result,
            other => panic!("finish answered with {other:?}"),
        }
    }

    async fn notify(
        &self,
        _queue: &str,
        _notes: &[Notification],
    ) -> Result<NotificationResult, ApiError> {
        match call(&self.0, Call::Notify).await {
            Reply::Notified(result) => result,
            other => panic!("notify answered with {other:?}"),
        }
    }
}

pub struct SimBackend(pub Shared);

#[async_trait]
impl Backend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn needs_job_details(&self) -> bool {
        true
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let launch = Call::Launch {
            job: spec.job_id,
            fleet: spec.fleet.clone(),
        };
        match call(&self.0, launch).await {
            Reply::Launched(result) => result,
            other => panic!("launch answered with {other:?}"),
        }
    }

    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        match call(&self.0, Call::Stop(name.job_id())).await {
            Reply::Done(result) => result,
            other => panic!("stop answered with {other:?}"),
        }
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        match call(&self.0, Call::List).await {
            Reply::Listed(result) => result,
            other => panic!("list answered with {other:?}"),
        }
    }

    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        match call(&self.0, Call::Delete(name.job_id())).await {
            Reply::Done(result) => result,
            other => panic!("delete answered with {other:?}"),
        }
    }
}
