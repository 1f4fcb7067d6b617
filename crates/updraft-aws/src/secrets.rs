//! Secrets named by reference in the configuration instead of written there:
//! `ssm:/path/to/parameter` (read with decryption) or `secretsmanager:name-or-arn` (its
//! string; `secretsmanager:name#key` takes one key of a JSON secret). The binary resolves
//! `[buildkite] agent_token_from` and `[push] webhook_token_from` with these before the
//! configuration is read.

use crate::errors::classify;
use crate::AwsClients;
use std::fmt;
use std::str::FromStr;
use updraft_model::Secret;

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Ssm(String),
    SecretsManager { id: String, key: Option<String> },
}

/// What a reference looks like, for error messages.
pub const EXPECTED: &str =
    "\"ssm:/path/to/parameter\" or \"secretsmanager:name\" (or \"secretsmanager:name#json-key\")";

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if let Some(name) = raw.strip_prefix("ssm:").filter(|n| !n.is_empty()) {
            return Ok(SecretRef::Ssm(name.to_string()));
        }
        if let Some(rest) = raw
            .strip_prefix("secretsmanager:")
            .filter(|n| !n.is_empty())
        {
            let (id, key) = match rest.rsplit_once('#') {
                Some((id, key)) if !id.is_empty() && !key.is_empty() => (id, Some(key.to_string())),
                _ => (rest, None),
            };
            return Ok(SecretRef::SecretsManager {
                id: id.to_string(),
                key,
            });
        }
        Err(format!("expected {EXPECTED}, got {raw:?}"))
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Ssm(name) => write!(f, "ssm:{name}"),
            SecretRef::SecretsManager { id, key: None } => write!(f, "secretsmanager:{id}"),
            SecretRef::SecretsManager { id, key: Some(key) } => {
                write!(f, "secretsmanager:{id}#{key}")
            }
        }
    }
}

impl SecretRef {
    /// The secret's value. The error names the reference and AWS's answer, never a value.
    pub async fn resolve(&self, clients: &AwsClients) -> Result<Secret, String> {
        match self {
            SecretRef::Ssm(name) => {
                let answer = clients
                    .ssm()
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|error| format!("{self}: {}", classify("GetParameter", &error)))?;
                answer
                    .parameter()
                    .and_then(|p| p.value())
                    .filter(|v| !v.is_empty())
                    .map(Secret::new)
                    .ok_or_else(|| format!("{self}: the parameter has no value"))
            }
            SecretRef::SecretsManager { id, key } => {
                let answer = clients
                    .secrets_manager()
                    .get_secret_value()
                    .secret_id(id)
                    .send()
                    .await
                    .map_err(|error| format!("{self}: {}", classify("GetSecretValue", &error)))?;
                let text = answer.secret_string().ok_or_else(|| {
                    format!(
                        "{self}: the secret has no string value (binary secrets are not supported)"
                    )
                })?;
                match key {
                    None => Ok(Secret::new(text)),
                    Some(key) => {
                        let json: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                            format!(
                                "{self}: the secret is not a JSON object, so it has no key {key:?}"
                            )
                        })?;
                        json.get(key)
                            .and_then(serde_json::Value::as_str)
                            .map(Secret::new)
                            .ok_or_else(|| format!("{self}: the secret has no string key {key:?}"))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_say_what_they_expect() {
        assert_eq!(
            "ssm:/ci/agent-token".parse(),
            Ok(SecretRef::Ssm("/ci/agent-token".into()))
        );
        assert_eq!(
            "secretsmanager:ci/tokens#agent".parse(),
            Ok(SecretRef::SecretsManager {
                id: "ci/tokens".into(),
                key: Some("agent".into())
            })
        );
        assert_eq!(
            "secretsmanager:arn:aws:secretsmanager:us-east-1:1:secret:x"
                .parse::<SecretRef>()
                .unwrap()
                .to_string(),
            "secretsmanager:arn:aws:secretsmanager:us-east-1:1:secret:x"
        );
        let error = "vault:x".parse::<SecretRef>().unwrap_err();
        assert!(
            error.starts_with("expected \"ssm:/path/to/parameter\""),
            "{error}"
        );
    }
}
