//! The Kubernetes backend: each Buildkite job runs as one `batch/v1` Job whose pod runs an
//! agent bound to that job, holding only a job acquisition token from a Secret the Job owns.
//! Pool fleets keep warm agent pods instead ([`KubernetesPool`]).
//!
//! # Layout
//!
//! - Settings: [`settings`] (`[kubernetes]`), [`fleet_settings`] (`[fleet.kubernetes]`),
//!   [`resources`] (quantities, resource classes), [`pod_template`] (a fleet's pod shape),
//!   [`config`] (reading them all, with the checks that span them), [`strict`] (reading
//!   Kubernetes objects with unknown fields reported).
//! - Building a launch: [`builder`] (the Job, its pod and its Secret), [`plugin`] (the
//!   agent-stack-k8s `kubernetes` plugin), [`strategic_merge`] (`podSpecPatch`),
//!   [`labels`] (labels and annotations for selection and cost attribution).
//! - Running: [`context`] (client, preflight checks, watches — built once), [`slim`] and
//!   [`cache`] (the stripped watch cache), [`phase`] (failure detection), [`backend`] (the
//!   `Backend` trait), [`errors`] (API errors as backend error classes), [`client_layers`]
//!   (rate limit, request metrics), [`metrics`].
//! - Warm pools: [`pool`] (the `PoolBackend` trait: members as Pods of agent containers).
//! - High availability: [`lease`] (leader election with a Lease).

pub mod backend;
pub mod builder;
pub mod cache;
pub mod client_layers;
pub mod config;
pub mod context;
pub mod errors;
pub mod fleet_settings;
pub mod labels;
pub mod lease;
pub mod metrics;
pub mod phase;
pub mod plugin;
pub mod pod_template;
pub mod pool;
pub mod resources;
pub mod settings;
pub mod slim;
pub mod strategic_merge;
pub mod strict;

pub use backend::KubernetesBackend;
pub use config::{read_config, FleetTable, KubernetesConfig};
pub use fleet_settings::FleetSettings;
pub use lease::{default_identity, LeaseElection, LeaseOptions};
pub use metrics::Metrics;
pub use pool::KubernetesPool;
pub use prometheus_client::registry::Registry;
pub use settings::KubernetesSettings;
