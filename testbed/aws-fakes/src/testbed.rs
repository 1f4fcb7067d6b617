//! The AWS test bed in one value: moto for every service it emulates, the execution stand-in
//! for CodeBuild and ECS, and the SDK configuration that routes each service to the right one.

use std::net::{Ipv4Addr, SocketAddr};

use aws_config::SdkConfig;
use serde_json::Value;

use crate::codebuild::{CodeBuild, CodeBuildSettings};
use crate::ecs::{Ecs, EcsSettings};
use crate::moto::{Moto, MotoError};
use crate::protocol::RecordedRequest;
use crate::sdk::{sdk_config, Service};
use crate::standin::StandIn;

#[derive(Debug, thiserror::Error)]
pub enum TestBedError {
    #[error(transparent)]
    Moto(#[from] MotoError),
    #[error("cannot start the CodeBuild/ECS stand-in: {0}")]
    StandIn(#[from] std::io::Error),
}

/// moto plus the stand-in. Shut down with [`AwsTestBed::shutdown`]; dropping it does the same.
pub struct AwsTestBed {
    moto: Moto,
    standin: StandIn,
}

impl AwsTestBed {
    /// Starts moto and the stand-in with default settings, both on free loopback ports.
    pub async fn start() -> Result<AwsTestBed, TestBedError> {
        AwsTestBed::start_with(CodeBuildSettings::default(), EcsSettings::default()).await
    }

    pub async fn start_with(
        codebuild: CodeBuildSettings,
        ecs: EcsSettings,
    ) -> Result<AwsTestBed, TestBedError> {
        let moto = Moto::start().await?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let standin = StandIn::start(listen, moto.endpoint(), codebuild, ecs).await?;
        Ok(AwsTestBed { moto, standin })
    }

    pub fn moto(&self) -> &Moto {
        &self.moto
    }

    pub fn moto_endpoint(&self) -> &str {
        self.moto.endpoint()
    }

    pub fn standin_endpoint(&self) -> &str {
        self.standin.endpoint()
    }

    /// SDK configuration for `service`: the stand-in for CodeBuild and ECS, moto otherwise.
    pub fn sdk_config_for(&self, service: Service) -> SdkConfig {
        if service.served_by_standin() {
            sdk_config(self.standin.endpoint())
        } else {
            sdk_config(self.moto.endpoint())
        }
    }

    pub fn codebuild(&self) -> &CodeBuild {
        self.standin.codebuild()
    }

    pub fn ecs(&self) -> &Ecs {
        self.standin.ecs()
    }

    /// Every CodeBuild request, verbatim, in arrival order.
    pub fn codebuild_requests(&self) -> Vec<RecordedRequest> {
        self.codebuild().gate().requests()
    }

    /// Every ECS request, verbatim, in arrival order.
    pub fn ecs_requests(&self) -> Vec<RecordedRequest> {
        self.ecs().gate().requests()
    }

    /// Every build as BatchGetBuilds shows it now, oldest first.
    pub fn builds(&self) -> Vec<Value> {
        self.codebuild().builds()
    }

    /// Every task as DescribeTasks (with tags) shows it now, oldest first.
    pub fn tasks(&self) -> Vec<Value> {
        self.ecs().tasks()
    }

    /// How many build and task process groups are alive.
    pub fn live_process_groups(&self) -> usize {
        self.standin.live_process_groups()
    }

    /// Kills every process the stand-in started, stops its server, then stops moto.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.standin.shut_down();
        self.moto.shutdown();
    }
}

impl Drop for AwsTestBed {
    fn drop(&mut self) {
        self.stop();
    }
}
