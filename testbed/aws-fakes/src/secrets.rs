//! Resolves secret references the way CodeBuild and ECS do at run time: SSM parameters (with
//! decryption) by name or ARN, and Secrets Manager secrets by name or ARN with the optional
//! `:json-key:version-stage:version-id` suffix, all read from moto through the SDK.

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use serde_json::Value;

/// A Secrets Manager reference: `secret-id[:json-key[:version-stage[:version-id]]]`, where
/// `secret-id` is a name or a full ARN (which itself contains six colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub secret_id: String,
    pub json_key: Option<String>,
    pub version_stage: Option<String>,
    pub version_id: Option<String>,
}

impl SecretRef {
    pub fn parse(reference: &str) -> SecretRef {
        let parts: Vec<&str> = reference.split(':').collect();
        let id_parts = if reference.starts_with("arn:") {
            parts.len().min(7)
        } else {
            1
        };
        let field = |index: usize| {
            parts
                .get(id_parts + index)
                .filter(|part| !part.is_empty())
                .map(|part| part.to_string())
        };
        SecretRef {
            secret_id: parts[..id_parts].join(":"),
            json_key: field(0),
            version_stage: field(1),
            version_id: field(2),
        }
    }
}

/// Reads secrets from moto.
#[derive(Clone)]
pub struct SecretResolver {
    ssm: aws_sdk_ssm::Client,
    secrets: aws_sdk_secretsmanager::Client,
}

impl SecretResolver {
    pub fn new(moto: &SdkConfig) -> SecretResolver {
        SecretResolver {
            ssm: aws_sdk_ssm::Client::new(moto),
            secrets: aws_sdk_secretsmanager::Client::new(moto),
        }
    }

    /// An SSM parameter's decrypted value; `name` may be a name or a parameter ARN.
    pub async fn parameter(&self, name: &str) -> Result<String, String> {
        let answer = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|error| {
                let error = error.into_service_error();
                if error.is_parameter_not_found() {
                    format!("parameter does not exist: {name}")
                } else {
                    format!("cannot read parameter {name}: {}", describe(&error))
                }
            })?;
        answer
            .parameter
            .and_then(|parameter| parameter.value)
            .ok_or_else(|| format!("parameter {name} has no value"))
    }

    /// A Secrets Manager secret's string, or one JSON key of it.
    pub async fn secret(&self, reference: &SecretRef) -> Result<String, String> {
        let answer = self
            .secrets
            .get_secret_value()
            .secret_id(&reference.secret_id)
            .set_version_stage(reference.version_stage.clone())
            .set_version_id(reference.version_id.clone())
            .send()
            .await
            .map_err(|error| {
                let error = error.into_service_error();
                format!("{}: {}", error.code().unwrap_or("error"), message(&error))
            })?;
        let text = answer
            .secret_string
            .ok_or_else(|| format!("secret {} has no string value", reference.secret_id))?;
        let Some(key) = &reference.json_key else {
            return Ok(text);
        };
        let json: Value = serde_json::from_str(&text).map_err(|_| {
            format!(
                "secret {} is not JSON, so it has no key {key}",
                reference.secret_id
            )
        })?;
        match json.get(key) {
            Some(Value::String(value)) => Ok(value.clone()),
            Some(value) => Ok(value.to_string()),
            None => Err(format!(
                "secret {} has no JSON key {key}",
                reference.secret_id
            )),
        }
    }

    /// An ECS `secrets[].valueFrom`: a Secrets Manager ARN, else an SSM parameter name or ARN.
    pub async fn value_from(&self, value_from: &str) -> Result<String, String> {
        if value_from.starts_with("arn:aws:secretsmanager:") {
            self.secret(&SecretRef::parse(value_from)).await
        } else {
            self.parameter(value_from).await
        }
    }
}

fn describe(error: &impl ProvideErrorMetadata) -> String {
    format!("{}: {}", error.code().unwrap_or("error"), message(error))
}

fn message(error: &impl ProvideErrorMetadata) -> String {
    error.message().unwrap_or("no message").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_takes_the_rest_as_key_stage_and_version() {
        let reference = SecretRef::parse("tok:password::v1");
        assert_eq!(reference.secret_id, "tok");
        assert_eq!(reference.json_key.as_deref(), Some("password"));
        assert_eq!(reference.version_stage, None);
        assert_eq!(reference.version_id.as_deref(), Some("v1"));
    }

    #[test]
    fn an_arn_keeps_its_own_colons() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tok-AbCdEf";
        assert_eq!(SecretRef::parse(arn).secret_id, arn);
        let with_key = SecretRef::parse(&format!("{arn}:password:AWSCURRENT"));
        assert_eq!(with_key.secret_id, arn);
        assert_eq!(with_key.json_key.as_deref(), Some("password"));
        assert_eq!(with_key.version_stage.as_deref(), Some("AWSCURRENT"));
    }
}
