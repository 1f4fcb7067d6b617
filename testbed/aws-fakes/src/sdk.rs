//! SDK configuration for tests: every client built from these talks to a local endpoint with
//! dummy credentials, one attempt per call (moto answers unimplemented calls with HTTP 500,
//! which the SDK would otherwise retry three times) and no environment or IMDS look-ups.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

/// The region every test-bed resource lives in (moto's default account is 123456789012).
pub const REGION: &str = "us-east-1";
/// The account moto and the stand-ins put in every ARN.
pub const ACCOUNT_ID: &str = "123456789012";
/// Dummy credentials: moto and the stand-ins accept any signature.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// An AWS service a test talks to, so the test bed can say which endpoint serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    CodeBuild,
    Ecs,
    Ssm,
    SecretsManager,
    S3,
    Kms,
    Sqs,
    EventBridge,
    CloudWatchLogs,
    Iam,
    Sts,
    Ec2,
    AutoScaling,
}

impl Service {
    /// CodeBuild and ECS are served by the execution stand-in; moto serves everything else.
    pub fn served_by_standin(self) -> bool {
        matches!(self, Service::CodeBuild | Service::Ecs)
    }
}

/// An `SdkConfig` for clients talking to `endpoint_url` (e.g. `http://127.0.0.1:5000`).
/// Built directly rather than through `aws_config::defaults`, so nothing is read from the
/// environment, profile files or instance metadata.
pub fn sdk_config(endpoint_url: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "updraft-aws-fakes",
        )))
        .endpoint_url(endpoint_url)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build()
}

/// An S3 client configuration with path-style addressing: against a bare `host:port`
/// endpoint, virtual-host style would resolve `bucket.127.0.0.1`.
pub fn s3_config(sdk: &SdkConfig) -> aws_sdk_s3::Config {
    aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(true)
        .build()
}

/// An S3 client for `sdk` with path-style addressing.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3_config(sdk))
}
