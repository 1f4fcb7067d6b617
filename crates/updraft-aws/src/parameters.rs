//! Per-launch secrets in SSM Parameter Store: each secret a launch needs (its job acquisition
//! token) becomes a SecureString `<prefix>/<launch name>/<variable>` that the build or task
//! reads by name at start (CodeBuild `PARAMETER_STORE` variables, ECS `secrets`), so no
//! request ever carries the value. They are deleted with the launch.

use crate::errors::{classify, AwsError};
use aws_sdk_ssm::types::ParameterType;
use std::collections::BTreeMap;
use updraft_backends::LaunchName;
use updraft_model::Secret;

#[derive(Clone, Debug)]
pub struct Parameters {
    ssm: aws_sdk_ssm::Client,
    prefix: String,
    kms_key: Option<String>,
}

impl Parameters {
    pub fn new(ssm: aws_sdk_ssm::Client, prefix: &str, kms_key: Option<String>) -> Parameters {
        Parameters {
            ssm,
            prefix: prefix.trim_end_matches('/').to_string(),
            kms_key,
        }
    }

    /// The parameter name for one of a launch's secrets.
    pub fn name_for(&self, launch: &LaunchName, variable: &str) -> String {
        format!("{}/{launch}/{variable}", self.prefix)
    }

    /// The names `secrets` will be kept under, by variable.
    pub fn names(
        &self,
        launch: &LaunchName,
        secrets: &BTreeMap<String, Secret>,
    ) -> BTreeMap<String, String> {
        secrets
            .keys()
            .map(|variable| (variable.clone(), self.name_for(launch, variable)))
            .collect()
    }

    /// Write every secret (overwriting: a repeat after a crash writes the same names).
    pub async fn put_all(
        &self,
        launch: &LaunchName,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<(), AwsError> {
        for (variable, value) in secrets {
            let name = self.name_for(launch, variable);
            self.ssm
                .put_parameter()
                .name(&name)
                .description(format!(
                    "{variable} for Updraft launch {launch}; deleted with the launch"
                ))
                .value(value.expose())
                .r#type(ParameterType::SecureString)
                .set_key_id(self.kms_key.clone())
                .overwrite(true)
                .send()
                .await
                .map_err(|error| classify("PutParameter", &error))?;
        }
        Ok(())
    }

    /// Delete parameters; ones already gone are fine.
    pub async fn delete_all(&self, names: &[String]) -> Result<(), AwsError> {
        for name in names {
            match self.ssm.delete_parameter().name(name).send().await {
                Ok(_) => {}
                Err(error) => {
                    let error = classify("DeleteParameter", &error);
                    if !error.is_not_found() {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }
}
