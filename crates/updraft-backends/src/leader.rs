//! Leader election: when several schedulers run for high availability, only the leader
//! schedules; the others serve `/healthz` and `/metrics` and wait to take over. A platform
//! crate implements it with what its platform offers (a Kubernetes `Lease`); a scheduler
//! without one leads alone.

use async_trait::async_trait;

use crate::BackendError;

#[async_trait]
pub trait LeaderElection: Send + Sync {
    /// Who this process is, as shown on `/status` and recorded by the platform.
    fn identity(&self) -> &str;

    /// Wait until this process leads. Returns an error only when election cannot work at all
    /// (e.g. no permission to read the lease).
    async fn acquire(&self) -> Result<(), BackendError>;

    /// Resolves once leadership is lost (the lease was not renewed in time or another took
    /// it): the scheduler stops scheduling at once.
    async fn lost(&self);

    /// Give leadership up (on shutdown) so another replica takes over without waiting for
    /// the lease to expire.
    async fn release(&self);

    /// The current leader's identity, if any is known.
    fn leader(&self) -> Option<String>;
}
