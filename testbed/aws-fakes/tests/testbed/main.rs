//! The AWS test bed's own tests, through the real `aws-sdk-*` clients: moto and its control
//! API, the CodeBuild stand-in, the ECS stand-in, and clean shutdown.

mod codebuild;
mod ecs;
mod helpers;
mod moto;
