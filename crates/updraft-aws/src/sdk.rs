//! One place that builds AWS SDK clients: the shared `SdkConfig` (region, credentials,
//! retries, timeouts) with `[aws] endpoint_url` and the per-service `[aws] endpoints` applied
//! on top, so every client of every backend talks to the same account the same way.

use crate::settings::AwsSettings;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest single attempt of any AWS call (a GetLogEvents page of 1 MB included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients for every service this crate uses, sharing one configuration.
#[derive(Clone, Debug)]
pub struct AwsClients {
    sdk: SdkConfig,
    endpoints: BTreeMap<String, String>,
}

impl AwsClients {
    /// The AWS SDK's default chain (environment, profile, container or instance role), with
    /// the settings' region, endpoints and attempts.
    pub async fn load(settings: &AwsSettings) -> AwsClients {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        AwsClients::new(loader.load().await, settings)
    }

    /// Clients for a local AWS emulator (moto) at `endpoint`, which takes any signature:
    /// dummy credentials, `us-east-1`, one attempt per call.
    pub fn for_emulator(endpoint: &str) -> AwsClients {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "updraft-emulator",
            )))
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        AwsClients {
            sdk,
            endpoints: BTreeMap::new(),
        }
    }

    /// Clients on an already-built configuration (tests pass one with fixed credentials),
    /// with the settings' per-service endpoints on top.
    pub fn new(sdk: SdkConfig, settings: &AwsSettings) -> AwsClients {
        AwsClients {
            sdk,
            endpoints: settings.endpoints.clone(),
        }
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    pub fn codebuild(&self) -> aws_sdk_codebuild::Client {
        let mut config = aws_sdk_codebuild::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("codebuild") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_codebuild::Client::from_conf(config.build())
    }

    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        let mut config = aws_sdk_ecs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("ecs") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_ecs::Client::from_conf(config.build())
    }

    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        let mut config = aws_sdk_cloudwatchlogs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("logs") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_cloudwatchlogs::Client::from_conf(config.build())
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        let mut config = aws_sdk_ssm::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("ssm") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_ssm::Client::from_conf(config.build())
    }

    pub fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        let mut config = aws_sdk_secretsmanager::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("secretsmanager") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_secretsmanager::Client::from_conf(config.build())
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let mut config = aws_sdk_sqs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoints.get("sqs") {
            config.set_endpoint_url(Some(url.clone()));
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }

    /// S3 with path-style addressing whenever the endpoint is not AWS's own: against a bare
    /// `host:port`, virtual-host style would look up `bucket.host`.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let mut config = aws_sdk_s3::config::Builder::from(&self.sdk);
        let own = self.endpoints.get("s3");
        if let Some(url) = own {
            config.set_endpoint_url(Some(url.clone()));
        }
        config.set_force_path_style(Some(own.is_some() || self.sdk.endpoint_url().is_some()));
        aws_sdk_s3::Client::from_conf(config.build())
    }
}
