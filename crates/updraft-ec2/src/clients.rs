//! The SDK clients EC2 pools use (Auto Scaling, EC2, SSM, SQS), built from one `SdkConfig`
//! with `[ec2] endpoint_url` and the per-service `[ec2] endpoints` on top.

use crate::settings::Ec2Settings;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest single attempt of any call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients for every service an EC2 pool uses, sharing one configuration.
#[derive(Clone, Debug)]
pub struct Ec2Clients {
    sdk: SdkConfig,
    endpoints: BTreeMap<String, String>,
}

impl Ec2Clients {
    /// The AWS SDK's default chain (environment, profile, container or instance role), with
    /// the settings' region, endpoints and attempts.
    pub async fn load(settings: &Ec2Settings) -> Ec2Clients {
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
        Ec2Clients::new(loader.load().await, settings)
    }

    /// Clients on an already-built configuration (tests pass one with fixed credentials),
    /// with the settings' per-service endpoints on top.
    pub fn new(sdk: SdkConfig, settings: &Ec2Settings) -> Ec2Clients {
        Ec2Clients {
            sdk,
            endpoints: settings.endpoints.clone(),
        }
    }

    fn endpoint(&self, service: &str) -> Option<String> {
        self.endpoints.get(service).cloned()
    }

    pub fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        let mut config = aws_sdk_autoscaling::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("autoscaling") {
            config.set_endpoint_url(Some(url));
        }
        aws_sdk_autoscaling::Client::from_conf(config.build())
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        let mut config = aws_sdk_ec2::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("ec2") {
            config.set_endpoint_url(Some(url));
        }
        aws_sdk_ec2::Client::from_conf(config.build())
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        let mut config = aws_sdk_ssm::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("ssm") {
            config.set_endpoint_url(Some(url));
        }
        aws_sdk_ssm::Client::from_conf(config.build())
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let mut config = aws_sdk_sqs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("sqs") {
            config.set_endpoint_url(Some(url));
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }
}
