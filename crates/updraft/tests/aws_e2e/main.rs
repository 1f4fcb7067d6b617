//! The AWS acceptance tests, end to end through the real `updraft` binary: moto and the
//! CodeBuild/ECS execution stand-in (in this process) are AWS, the emulator is Buildkite.
//! One test binary, so the AWS SDK is linked once; the tests run one at a time (they share
//! two cores with many build processes).

mod codebuild_acquire;
mod codebuild_relay;
mod ecs;
#[path = "../scheduler_process/mod.rs"]
mod scheduler_process;
mod secrets;
mod sqs_push;
mod support;
