//! Updraft on AWS: the CodeBuild and ECS backends, secrets from SSM Parameter Store, Secrets
//! Manager and the Elastic CI Stack's S3 layout, and push through SQS. Every AWS SDK
//! dependency of Updraft lives in this crate.
//!
//! # Layout
//!
//! - [`settings`]: `[aws]`, `[fleet.codebuild]` and `[fleet.ecs]`, read with `updraft_config`.
//! - [`AwsClients`] (`sdk`): one SDK configuration, every client built from it.
//! - [`backend`]: the `Backend` both platforms share over their `platform::Platform`
//!   ([`codebuild`], [`ecs`]): state file (`store`), per-launch SSM parameters
//!   (`parameters`), batched status, deadlines, and relay mode (`relay`), which acquires the
//!   job in this process and relays the build's or task's CloudWatch Logs into its log.
//! - [`secrets`]: `ssm:` and `secretsmanager:` references (the agent token, the webhook token).
//! - [`s3_secrets`]: the Elastic CI Stack's S3 secrets for `updraft agent`.
//! - [`sqs_push`]: the SQS long-poll loop for EventBridge "Job Scheduled" events.
//! - [`replay`]: a platform that runs nothing and relays existing streams (benchmarks).
//! - `errors`, [`metrics`]: AWS errors in the scheduler's classes, and their counts.

pub mod backend;
pub mod codebuild;
pub mod ecs;
mod errors;
pub mod metrics;
mod parameters;
mod platform;
mod relay;
pub mod replay;
pub mod s3_secrets;
mod sdk;
pub mod secrets;
pub mod settings;
pub mod sqs_push;
mod store;

pub use backend::{AwsBackend, BackendOptions};
pub use errors::{AwsError, ErrorClass};
pub use platform::LogLocation;
pub use sdk::AwsClients;

/// The CodeBuild backend.
pub type CodeBuildBackend = AwsBackend<codebuild::CodeBuild>;
/// The ECS backend.
pub type EcsBackend = AwsBackend<ecs::Ecs>;
