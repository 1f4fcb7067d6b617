//! Where launches run. `Backend` is the one trait every platform implements (local processes
//! now; Kubernetes, CodeBuild, ECS and EC2 later behind cargo features). Launch is idempotent
//! on the launch name, which derives from the job uuid, so asking twice starts one launch.

pub mod launch;
pub mod local;

pub use launch::{LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is full for now (e.g. the local concurrency cap); try again later.
    #[error("{backend}: at capacity ({detail})")]
    AtCapacity {
        backend: &'static str,
        detail: String,
    },
    /// The spec cannot be launched as given; retrying will not help.
    #[error("{backend}: invalid launch {name}: {detail}")]
    Invalid {
        backend: &'static str,
        name: String,
        detail: String,
    },
    /// A passing failure talking to the platform.
    #[error("{backend}: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BackendError::Invalid { .. })
    }
}

/// One platform that runs launches.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A short name for logs, metrics and the status page ("local", "kubernetes", …).
    fn kind(&self) -> &'static str;

    /// Start the launch, or report that a launch of that name already exists.
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError>;

    /// Ask a running launch to stop (graceful first, forced after the backend's grace).
    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError>;

    /// Every launch this backend knows that Updraft started, running or finished but not yet
    /// deleted, so the reconciler can find them again after a restart.
    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError>;

    /// Forget a finished launch and free what it held (work dir, Kubernetes Job, …). Deleting
    /// a launch that does not exist is not an error.
    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError>;
}
