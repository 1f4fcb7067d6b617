//! CodeBuild projects, kept by the stand-in itself rather than forwarded to moto: moto's
//! CreateProject demands `source.location` even for NO_SOURCE and rejects Lambda and fleet
//! compute types, which real CodeBuild accepts.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::{Inner, INVALID_INPUT, NOT_FOUND};
use crate::protocol::{epoch_seconds, opt_str, req_str, AwsError};
use crate::sdk::{ACCOUNT_ID, REGION};

const SOURCE_TYPES: [&str; 11] = [
    "CODECOMMIT",
    "CODEPIPELINE",
    "GITHUB",
    "GITLAB",
    "GITLAB_SELF_MANAGED",
    "S3",
    "BITBUCKET",
    "GITHUB_ENTERPRISE",
    "NO_SOURCE",
    "AIR_GAP",
    "LOCAL",
];
const ARTIFACT_TYPES: [&str; 3] = ["CODEPIPELINE", "S3", "NO_ARTIFACTS"];
/// Minutes, as CodeBuild defaults them.
const DEFAULT_TIMEOUT: i64 = 60;
const DEFAULT_QUEUED_TIMEOUT: i64 = 480;

pub fn project_arn(name: &str) -> String {
    format!("arn:aws:codebuild:{REGION}:{ACCOUNT_ID}:project/{name}")
}

/// A project name, or the name inside a project ARN.
pub fn project_name(name_or_arn: &str) -> &str {
    name_or_arn
        .strip_prefix(&format!("arn:aws:codebuild:{REGION}:{ACCOUNT_ID}:project/"))
        .unwrap_or(name_or_arn)
}

pub fn create_project(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "name", INVALID_INPUT)?;
    validate_name(name)?;
    let source_type = body
        .pointer("/source/type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("source.type is required"))?;
    if !SOURCE_TYPES.contains(&source_type) {
        return Err(invalid(format!("Invalid source type: {source_type}")));
    }
    let artifacts_type = body
        .pointer("/artifacts/type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("artifacts.type is required"))?;
    if !ARTIFACT_TYPES.contains(&artifacts_type) {
        return Err(invalid(format!("Invalid artifacts type: {artifacts_type}")));
    }
    for key in ["type", "image", "computeType"] {
        if body.pointer(&format!("/environment/{key}")).is_none() {
            return Err(invalid(format!("environment.{key} is required")));
        }
    }
    if opt_str(body, "serviceRole").is_none_or(str::is_empty) {
        return Err(invalid("serviceRole is required"));
    }
    let now = json!(epoch_seconds(SystemTime::now()));
    let mut project = body.clone();
    project["arn"] = json!(project_arn(name));
    project["created"] = now.clone();
    project["lastModified"] = now;
    project["badge"] = json!({ "badgeEnabled": false });
    for (key, default) in [
        ("timeoutInMinutes", DEFAULT_TIMEOUT),
        ("queuedTimeoutInMinutes", DEFAULT_QUEUED_TIMEOUT),
    ] {
        if project.get(key).is_none() {
            project[key] = json!(default);
        }
    }
    if project.get("encryptionKey").is_none() {
        project["encryptionKey"] = json!(format!("arn:aws:kms:{REGION}:{ACCOUNT_ID}:alias/aws/s3"));
    }
    let mut state = inner.state.lock().unwrap();
    if state.projects.contains_key(name) {
        return Err(AwsError::client(
            "ResourceAlreadyExistsException",
            format!("Project already exists: {}", project_arn(name)),
        ));
    }
    state.projects.insert(name.to_owned(), project.clone());
    Ok(json!({ "project": project }))
}

pub fn batch_get_projects(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let names = string_list(body, "names")?;
    let state = inner.state.lock().unwrap();
    let (mut projects, mut not_found) = (Vec::new(), Vec::new());
    for name in names {
        match state.projects.get(project_name(&name)) {
            Some(project) => projects.push(project.clone()),
            None => not_found.push(name),
        }
    }
    Ok(json!({ "projects": projects, "projectsNotFound": not_found }))
}

pub fn delete_project(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "name", INVALID_INPUT)?;
    inner
        .state
        .lock()
        .unwrap()
        .projects
        .remove(project_name(name));
    Ok(json!({}))
}

pub fn list_projects(inner: &Inner) -> Result<Value, AwsError> {
    let state = inner.state.lock().unwrap();
    let names: Vec<&String> = state.projects.keys().collect();
    Ok(json!({ "projects": names }))
}

/// A project by name or ARN, or CodeBuild's not-found error.
pub fn project(inner: &Inner, name_or_arn: &str) -> Result<Value, AwsError> {
    let name = project_name(name_or_arn);
    inner
        .state
        .lock()
        .unwrap()
        .projects
        .get(name)
        .cloned()
        .ok_or_else(|| {
            AwsError::client(
                NOT_FOUND,
                format!("Project cannot be found: {}", project_arn(name)),
            )
        })
}

fn validate_name(name: &str) -> Result<(), AwsError> {
    let mut chars = name.chars();
    let valid = (2..=255).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [A-Za-z0-9][A-Za-z0-9\\-_]{{1,254}}"
        )))
    }
}

/// A required list of strings with 1–100 members, as BatchGet* operations take.
pub fn string_list(body: &Value, key: &str) -> Result<Vec<String>, AwsError> {
    let items = body
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{key} is required")))?;
    if items.is_empty() || items.len() > 100 {
        return Err(invalid(format!(
            "1 validation error detected: Value at '{key}' failed to satisfy constraint: \
             Member must have length between 1 and 100"
        )));
    }
    Ok(items
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect())
}

pub fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client(INVALID_INPUT, message)
}
