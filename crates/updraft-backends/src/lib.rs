//! Where launches run. `Backend` is the one trait every platform implements (local processes
//! here; Kubernetes and AWS in crates of their own, so their SDKs stay out of this one). Launch is idempotent
//! on the launch name, which derives from the job uuid, so asking twice starts one launch.
//! `PoolBackend` (`pool`) is what a platform offers a warm pool of long-lived agents.

pub mod launch;
pub mod leader;
pub mod local;
pub mod pool;

pub use launch::{JobContext, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus};
pub use leader::LeaderElection;
pub use pool::{member_of_agent, MemberName, MemberPhase, MemberSpec, MemberStatus, PoolBackend};

use async_trait::async_trait;

/// Why a backend call failed, by what the scheduler should do about it. Every backend maps its
/// platform's errors into these classes (keeping the platform's message, never a secret).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The platform is full for now (a concurrency cap, a quota): the scheduler holds the
    /// fleet back for a while and says so on `/status`.
    #[error("{backend}: at capacity ({detail})")]
    AtCapacity {
        backend: &'static str,
        detail: String,
    },
    /// This launch cannot run as specified (a bad override, a spec the platform rejects):
    /// retrying will not help, so the job is failed with `detail` shown in the build.
    #[error("{backend}: invalid launch {name}: {detail}")]
    Invalid {
        backend: &'static str,
        name: String,
        detail: String,
    },
    /// A passing failure talking to the platform (throttling, 5xx, a timeout): retried with
    /// backoff.
    #[error("{backend}: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// Nothing will work until a person fixes something (missing permissions, a namespace
    /// that does not exist): the scheduler stops with this message.
    #[error("{backend}: {detail}")]
    Fatal {
        backend: &'static str,
        detail: String,
    },
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::AtCapacity { .. } | BackendError::Unavailable { .. }
        )
    }

    /// The class as a metric label: `at_capacity`, `invalid`, `unavailable`, `fatal`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackendError::AtCapacity { .. } => "at_capacity",
            BackendError::Invalid { .. } => "invalid",
            BackendError::Unavailable { .. } => "unavailable",
            BackendError::Fatal { .. } => "fatal",
        }
    }
}

/// One platform that runs launches.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A short name for logs, metrics and the status page ("local", "kubernetes", …).
    fn kind(&self) -> &'static str;

    /// Whether launch specs must carry the job's environment and command from Buildkite
    /// (`JobContext::env`, `command`): one extra Stacks API call per launch, so only backends
    /// that read per-step settings ask.
    fn needs_job_details(&self) -> bool {
        false
    }

    /// Start the launch, or report that a launch of that name already exists.
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError>;

    /// Ask a running launch to stop (graceful first, forced after the backend's grace).
    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError>;

    /// Every launch this backend knows that Updraft started, running or finished but not yet
    /// deleted, so the reconciler can find them again after a restart. It must include every
    /// launch whose `launch` call returned before `list` was called (a backend serving `list`
    /// from a watch cache adds the launches it created that the cache has not seen yet): the
    /// reconciler takes a launch missing from a listing as proof that it is gone.
    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError>;

    /// Forget a finished launch and free what it held (work dir, Kubernetes Job, …). Deleting
    /// a launch that does not exist is not an error.
    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError>;
}
