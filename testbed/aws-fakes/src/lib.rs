//! Test bed only: moto server control and execution stand-ins for CodeBuild and ECS.
//!
//! moto emulates SSM, Secrets Manager, S3, KMS, SQS, EventBridge, CloudWatch Logs, IAM, STS,
//! EC2 and Auto Scaling well, but its CodeBuild and ECS run nothing. [`AwsTestBed`] starts
//! moto and a stand-in that speaks CodeBuild's and ECS's real JSON 1.1 APIs and runs builds
//! and tasks as local processes, writing their output to moto's CloudWatch Logs and reading
//! their secrets from moto. Point the CodeBuild and ECS SDK clients at
//! [`AwsTestBed::standin_endpoint`] and everything else at [`AwsTestBed::moto_endpoint`]
//! ([`AwsTestBed::sdk_config_for`] does this). Never linked into the `updraft` binary.

pub mod codebuild;
pub mod ecs;
mod logs;
pub mod moto;
mod process;
pub mod protocol;
pub mod sdk;
mod secrets;
pub mod standin;
mod testbed;

pub use codebuild::{CodeBuild, CodeBuildSettings};
pub use ecs::{Ecs, EcsSettings, StartFault, StopRequest};
pub use moto::{Moto, MotoError};
pub use protocol::{AwsError, RecordedRequest, RequestGate};
pub use sdk::{s3_client, s3_config, sdk_config, Service};
pub use standin::StandIn;
pub use testbed::{AwsTestBed, TestBedError};
