//! StartBuild (validation, overrides, the 5-minute idempotency token), BatchGetBuilds,
//! StopBuild and the build listings.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::model::{Build, LogTarget, Phase, PhaseContext, PhaseType, IN_PROGRESS, SUCCEEDED};
use super::projects::{self, invalid, string_list};
use super::{runner, Inner, TokenUse, INVALID_INPUT, NOT_FOUND};
use crate::protocol::{opt_str, req_str, AwsError};

/// "The idempotencyToken is valid for 5 minutes."
const TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);
const COMPUTE_TYPES: [&str; 14] = [
    "BUILD_GENERAL1_SMALL",
    "BUILD_GENERAL1_MEDIUM",
    "BUILD_GENERAL1_LARGE",
    "BUILD_GENERAL1_XLARGE",
    "BUILD_GENERAL1_2XLARGE",
    "BUILD_LAMBDA_1GB",
    "BUILD_LAMBDA_2GB",
    "BUILD_LAMBDA_4GB",
    "BUILD_LAMBDA_8GB",
    "BUILD_LAMBDA_10GB",
    "ATTRIBUTE_BASED_COMPUTE",
    "CUSTOM_INSTANCE_TYPE",
    "BUILD_GENERAL1_XSMALL",
    "BUILD_EC2",
];
const VARIABLE_TYPES: [&str; 3] = ["PLAINTEXT", "PARAMETER_STORE", "SECRETS_MANAGER"];
const PAGE_SIZE: usize = 100;

pub fn start_build(inner: &Arc<Inner>, body: &Value) -> Result<Value, AwsError> {
    let project = projects::project(inner, req_str(body, "projectName", INVALID_INPUT)?)?;
    validate_overrides(body)?;
    let project_name = project["name"].as_str().unwrap_or_default().to_owned();
    let token = opt_str(body, "idempotencyToken").map(str::to_owned);

    let mut state = inner.state.lock().unwrap();
    if let Some(token) = &token {
        let earlier = state
            .tokens
            .get(token)
            .filter(|earlier| earlier.at.elapsed() < TOKEN_LIFETIME);
        if let Some(earlier) = earlier {
            if earlier.request != *body {
                return Err(AwsError::client(
                    "IdempotentParameterMismatchException",
                    format!(
                        "The idempotency token {token} was used within the last 5 minutes \
                         with different StartBuild parameters"
                    ),
                ));
            }
            let build = &state.builds[&earlier.build_id];
            return Ok(json!({ "build": build.to_json() }));
        }
    }

    let number = {
        let number = state.numbers.entry(project_name.clone()).or_insert(0);
        *number += 1;
        *number
    };
    let build = new_build(&project, &project_name, number, body);
    let id = build.id.clone();
    let reply = json!({ "build": build.to_json() });
    let (stop_sender, stop) = watch::channel(false);
    state.builds.insert(id.clone(), build);
    state.order.push(id.clone());
    state.stops.insert(id.clone(), stop_sender);
    state.waiting.push_back(id.clone());
    if let Some(token) = token {
        state.tokens.insert(
            token,
            TokenUse {
                request: body.clone(),
                build_id: id.clone(),
                at: Instant::now(),
            },
        );
    }
    drop(state);
    inner
        .supervisor
        .spawn_task(runner::run(inner.clone(), id, stop));
    Ok(reply)
}

fn new_build(project: &Value, project_name: &str, number: i64, body: &Value) -> Build {
    let id = format!("{project_name}:{}", uuid::Uuid::new_v4());
    let uuid = id.rsplit(':').next().unwrap_or_default().to_owned();
    let mut source = project["source"].clone();
    if let Some(buildspec) = opt_str(body, "buildspecOverride") {
        source["buildspec"] = json!(buildspec);
    }
    let minutes = |override_key: &str, project_key: &str| {
        body.get(override_key)
            .or_else(|| project.get(project_key))
            .and_then(Value::as_i64)
            .unwrap_or_default()
    };
    let now = SystemTime::now();
    let mut build = Build {
        id,
        number,
        project: project_name.to_owned(),
        start: now,
        end: None,
        status: IN_PROGRESS,
        phases: vec![Phase {
            kind: PhaseType::Submitted,
            status: Some(SUCCEEDED),
            start: now,
            end: Some(now),
            context: PhaseContext::default(),
        }],
        complete: false,
        source,
        source_version: opt_str(body, "sourceVersion").map(str::to_owned),
        environment: environment(project, body),
        service_role: body
            .get("serviceRoleOverride")
            .unwrap_or(&project["serviceRole"])
            .clone(),
        encryption_key: opt_str(body, "encryptionKeyOverride")
            .or_else(|| opt_str(project, "encryptionKey"))
            .unwrap_or_default()
            .to_owned(),
        logs: log_target(project, project_name, &uuid, body),
        logs_open: false,
        timeout_minutes: minutes("timeoutInMinutesOverride", "timeoutInMinutes"),
        queued_timeout_minutes: minutes("queuedTimeoutInMinutesOverride", "queuedTimeoutInMinutes"),
        exported: None,
        stop_requested: false,
    };
    build.enter(PhaseType::Queued);
    build
}

/// The project's environment with the StartBuild overrides applied; override variables
/// replace project variables of the same name.
fn environment(project: &Value, body: &Value) -> Value {
    let mut environment = project["environment"].clone();
    for (override_key, key) in [
        ("imageOverride", "image"),
        ("computeTypeOverride", "computeType"),
        ("environmentTypeOverride", "type"),
        ("privilegedModeOverride", "privilegedMode"),
        ("certificateOverride", "certificate"),
        (
            "imagePullCredentialsTypeOverride",
            "imagePullCredentialsType",
        ),
        ("registryCredentialOverride", "registryCredential"),
        ("fleetOverride", "fleet"),
    ] {
        if let Some(value) = body.get(override_key) {
            environment[key] = value.clone();
        }
    }
    let mut variables: Vec<Value> = Vec::new();
    let project_variables = environment["environmentVariables"].as_array().cloned();
    let override_variables = body["environmentVariablesOverride"].as_array().cloned();
    for variable in project_variables
        .into_iter()
        .flatten()
        .chain(override_variables.into_iter().flatten())
    {
        let mut variable = variable;
        if variable.get("type").is_none() {
            variable["type"] = json!("PLAINTEXT");
        }
        variables.retain(|earlier| earlier["name"] != variable["name"]);
        variables.push(variable);
    }
    environment["environmentVariables"] = json!(variables);
    for (key, default) in [
        ("privilegedMode", json!(false)),
        ("imagePullCredentialsType", json!("CODEBUILD")),
    ] {
        if environment.get(key).is_none() {
            environment[key] = default;
        }
    }
    environment
}

/// Group `/aws/codebuild/<project>` and stream `<uuid>` unless the logs config names them
/// (a configured stream name is a prefix: `<prefix>/<uuid>`); `None` if disabled.
fn log_target(project: &Value, project_name: &str, uuid: &str, body: &Value) -> Option<LogTarget> {
    let config = body
        .get("logsConfigOverride")
        .or_else(|| project.get("logsConfig"));
    let cloudwatch = config.and_then(|config| config.get("cloudWatchLogs"));
    let field = |key: &str| cloudwatch.and_then(|c| c.get(key)).and_then(Value::as_str);
    if field("status") == Some("DISABLED") {
        return None;
    }
    Some(LogTarget {
        group: field("groupName")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("/aws/codebuild/{project_name}")),
        stream: match field("streamName") {
            Some(prefix) => format!("{prefix}/{uuid}"),
            None => uuid.to_owned(),
        },
    })
}

fn validate_overrides(body: &Value) -> Result<(), AwsError> {
    for (key, low, high) in [
        ("timeoutInMinutesOverride", 5, 2160),
        ("queuedTimeoutInMinutesOverride", 5, 480),
    ] {
        if let Some(value) = body.get(key).and_then(Value::as_i64) {
            if value < low {
                return Err(constraint(
                    key,
                    value,
                    &format!("greater than or equal to {low}"),
                ));
            }
            if value > high {
                return Err(constraint(
                    key,
                    value,
                    &format!("less than or equal to {high}"),
                ));
            }
        }
    }
    if let Some(compute) = opt_str(body, "computeTypeOverride") {
        if !COMPUTE_TYPES.contains(&compute) {
            return Err(invalid(format!("Invalid compute type: {compute}")));
        }
    }
    if let Some(variables) = body.get("environmentVariablesOverride") {
        for variable in variables.as_array().into_iter().flatten() {
            let name = opt_str(variable, "name").unwrap_or_default();
            if name.is_empty() || variable.get("value").is_none() {
                return Err(invalid("Environment variables need a name and a value"));
            }
            let kind = opt_str(variable, "type").unwrap_or("PLAINTEXT");
            if !VARIABLE_TYPES.contains(&kind) {
                return Err(invalid(format!(
                    "Invalid environment variable type {kind} for {name}"
                )));
            }
        }
    }
    Ok(())
}

fn constraint(key: &str, value: i64, bound: &str) -> AwsError {
    invalid(format!(
        "1 validation error detected: Value '{value}' at '{key}' failed to satisfy constraint: \
         Member must have value {bound}"
    ))
}

pub fn batch_get_builds(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let ids = string_list(body, "ids")?;
    let state = inner.state.lock().unwrap();
    let (mut builds, mut not_found) = (Vec::new(), Vec::new());
    for id in ids {
        let id = build_id(&id);
        match state.builds.get(id) {
            Some(build) => builds.push(build.to_json()),
            None => not_found.push(id.to_owned()),
        }
    }
    Ok(json!({ "builds": builds, "buildsNotFound": not_found }))
}

/// Asks the build's runner to stop it; the answer shows the build as it is at that moment
/// (it becomes STOPPED once its processes are gone). Stopping a finished build changes nothing.
pub fn stop_build(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let id = build_id(req_str(body, "id", INVALID_INPUT)?);
    let mut state = inner.state.lock().unwrap();
    let Some(build) = state.builds.get_mut(id) else {
        return Err(AwsError::client(
            NOT_FOUND,
            format!("Build {id} does not exist"),
        ));
    };
    if !build.complete {
        build.stop_requested = true;
    }
    let reply = json!({ "build": build.to_json() });
    if let Some(stop) = state.stops.get(id) {
        let _ = stop.send(true);
    }
    Ok(reply)
}

pub fn list_builds_for_project(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let name = projects::project_name(req_str(body, "projectName", INVALID_INPUT)?);
    let state = inner.state.lock().unwrap();
    if !state.projects.contains_key(name) {
        return Err(AwsError::client(
            NOT_FOUND,
            format!("Project cannot be found: {}", projects::project_arn(name)),
        ));
    }
    let ids: Vec<&String> = state
        .order
        .iter()
        .filter(|id| state.builds[*id].project == name)
        .collect();
    page(ids, body)
}

pub fn list_builds(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let state = inner.state.lock().unwrap();
    page(state.order.iter().collect(), body)
}

/// One page of build ids, newest first unless `sortOrder` is ASCENDING.
fn page(mut ids: Vec<&String>, body: &Value) -> Result<Value, AwsError> {
    if opt_str(body, "sortOrder") != Some("ASCENDING") {
        ids.reverse();
    }
    let start = match opt_str(body, "nextToken") {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| invalid(format!("Invalid nextToken: {token}")))?,
        None => 0,
    };
    let end = (start + PAGE_SIZE).min(ids.len());
    let mut reply = json!({ "ids": ids.get(start..end).unwrap_or_default() });
    if end < ids.len() {
        reply["nextToken"] = json!(end.to_string());
    }
    Ok(reply)
}

/// A build id, or the id inside a build ARN.
fn build_id(id_or_arn: &str) -> &str {
    match id_or_arn.split_once(":build/") {
        Some((_, id)) if id_or_arn.starts_with("arn:") => id,
        _ => id_or_arn,
    }
}
