//! What a build runs with, gathered during PROVISIONING and DOWNLOAD_SOURCE: the buildspec,
//! the environment (CodeBuild's own variables, then buildspec, project and StartBuild
//! variables with PARAMETER_STORE and SECRETS_MANAGER ones read from moto) and the
//! directories; and what it leaves behind (the exported variables).

use std::path::{Path, PathBuf};

use super::buildspec::{self, Buildspec};
use super::model::{Build, PhaseContext};
use crate::sdk::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use crate::secrets::{SecretRef, SecretResolver};

/// The build's resolved session: its environment, buildspec and directories.
pub struct Session {
    pub buildspec: Buildspec,
    pub env: Vec<(String, String)>,
    pub src_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// The variables CodeBuild itself sets, plus what the stand-in adds so that commands can
/// reach moto (`AWS_ENDPOINT_URL` and dummy credentials).
pub fn base_env(
    build: &Build,
    moto_endpoint: &str,
    root: &Path,
    src_dir: &Path,
) -> Vec<(String, String)> {
    let start_ms = build
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let mut env = vec![
        (
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOME", root.join("home").display().to_string()),
        ("AWS_REGION", REGION.into()),
        ("AWS_DEFAULT_REGION", REGION.into()),
        ("AWS_ENDPOINT_URL", moto_endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
        ("CODEBUILD_BUILD_ID", build.id.clone()),
        ("CODEBUILD_BUILD_ARN", build.arn()),
        ("CODEBUILD_BUILD_NUMBER", build.number.to_string()),
        (
            "CODEBUILD_BUILD_IMAGE",
            build.environment["image"]
                .as_str()
                .unwrap_or_default()
                .into(),
        ),
        ("CODEBUILD_INITIATOR", "root".into()),
        ("CODEBUILD_KMS_KEY_ID", build.encryption_key.clone()),
        ("CODEBUILD_SRC_DIR", src_dir.display().to_string()),
        ("CODEBUILD_START_TIME", start_ms.to_string()),
        ("CODEBUILD_BUILD_SUCCEEDING", "1".into()),
    ];
    if let Some(target) = &build.logs {
        env.push(("CODEBUILD_LOG_PATH", target.stream.clone()));
    }
    if let Some(version) = &build.source_version {
        env.push(("CODEBUILD_SOURCE_VERSION", version.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The buildspec the build runs: inline YAML, or a file under the source directory.
pub fn read_buildspec(build: &Build, src_dir: &Path) -> Result<Buildspec, String> {
    let declared = build.source["buildspec"].as_str().unwrap_or_default();
    let looks_inline = declared.contains('\n') || declared.contains(": ");
    if looks_inline {
        return buildspec::parse(declared);
    }
    let path = src_dir.join(if declared.is_empty() {
        "buildspec.yml"
    } else {
        declared
    });
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("stat {}: {error}", path.display()))?;
    buildspec::parse(&text)
}

/// The project's and StartBuild's variables, PARAMETER_STORE and SECRETS_MANAGER ones read
/// from moto, in precedence order (later wins).
pub async fn resolve_project_variables(
    resolver: &SecretResolver,
    build: &Build,
) -> Result<Vec<(String, String)>, PhaseContext> {
    let mut resolved = Vec::new();
    for variable in build.environment["environmentVariables"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        let value = variable["value"].as_str().unwrap_or_default();
        let value = match variable["type"].as_str().unwrap_or("PLAINTEXT") {
            "PARAMETER_STORE" => resolver.parameter(value).await.map_err(parameter_error)?,
            "SECRETS_MANAGER" => resolver
                .secret(&SecretRef::parse(value))
                .await
                .map_err(secret_error)?,
            _ => value.to_owned(),
        };
        resolved.push((name, value));
    }
    Ok(resolved)
}

pub async fn resolve_buildspec_variables(
    resolver: &SecretResolver,
    buildspec: &Buildspec,
) -> Result<Vec<(String, String)>, PhaseContext> {
    let mut resolved = buildspec.variables.clone();
    for (name, parameter) in &buildspec.parameter_store {
        let value = resolver
            .parameter(parameter)
            .await
            .map_err(parameter_error)?;
        resolved.push((name.clone(), value));
    }
    for (name, reference) in &buildspec.secrets_manager {
        let value = resolver
            .secret(&SecretRef::parse(reference))
            .await
            .map_err(secret_error)?;
        resolved.push((name.clone(), value));
    }
    Ok(resolved)
}

fn parameter_error(message: String) -> PhaseContext {
    PhaseContext::new("Decrypted Variables Error", message)
}

fn secret_error(message: String) -> PhaseContext {
    PhaseContext::new("Secrets Manager Error", message)
}

pub fn read_exported(dir: &Path, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let value = std::fs::read(dir.join(name)).ok()?;
            Some((name.clone(), String::from_utf8_lossy(&value).into_owned()))
        })
        .collect()
}
