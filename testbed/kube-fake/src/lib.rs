//! Test bed only: a thin, faithful fake of the Kubernetes API server and a fake kubelet.
//!
//! [`KubeFake::start`] serves the Kubernetes API for Jobs, Pods, Secrets, PodTemplates,
//! Events, Leases and Namespaces over plain HTTP, with a job controller, a garbage collector,
//! a one-node scheduler and a kubelet that runs each container as a local process. Real
//! clients (`kube`, the Python `kubernetes` package) talk to it as to a real cluster; the
//! returned [`KubeFakeHandle`] lets tests inspect state and inject faults. See README.md.

mod api;
mod cluster;
mod controllers;
mod error;
mod handle;
mod history;
mod kubelet;
mod meta;
mod options;
mod quantity;
mod registry;
mod resource;
mod selector;
mod store;
mod validation;

pub use error::ApiError;
pub use handle::{KubeFake, KubeFakeError, KubeFakeHandle};
pub use kubelet::process::ProcessInfo;
pub use options::{BadImageRule, KubeFakeOptions, NodeOptions, Taint};
pub use resource::Resource;
