//! The AWS backends against moto and the CodeBuild/ECS execution stand-in (the test bed),
//! through the real `aws-sdk-*` clients, with the emulator as Buildkite. One test binary, so
//! the AWS SDK is linked once.

mod codebuild;
mod contract;
mod ecs;
mod relay;
mod secrets;
mod sqs_push;
mod support;
