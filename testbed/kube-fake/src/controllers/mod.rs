//! The in-process control plane besides the API server: the job controller, the garbage
//! collector and the scheduler, each fed by the store's change feed, and the event recorder
//! they (and the kubelet) share.

pub mod events;
pub mod gc;
pub mod job;
pub mod scheduler;
