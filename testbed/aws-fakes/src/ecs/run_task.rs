//! RunTask: validation as ECS does it (launch type or capacity provider strategy, network
//! configuration, overrides, tags), client-token idempotency per cluster for 24 hours,
//! injected placement faults, then one runner per task.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::definitions::{find_definition, require_cluster};
use super::model::{Container, Task, PENDING, PROVISIONING, RUNNING};
use super::{runner, Inner, StartFault, State, TokenUse, INVALID_PARAMETER};
use crate::protocol::{opt_str, req_str, AwsError};
use crate::sdk::{ACCOUNT_ID, REGION};

/// "The client token is valid for 24 hours."
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_OVERRIDES_CHARS: usize = 8192;

pub fn run_task(inner: &Arc<Inner>, body: &Value) -> Result<Value, AwsError> {
    let mut state = inner.state.lock().unwrap();
    let (cluster, cluster_arn) = require_cluster(&state, opt_str(body, "cluster"))?;
    let token = opt_str(body, "clientToken").map(str::to_owned);
    let mut request = body.clone();
    if let Some(object) = request.as_object_mut() {
        object.remove("clientToken");
    }
    if let Some(token) = &token {
        let key = (cluster_arn.clone(), token.clone());
        if let Some(earlier) = state
            .tokens
            .get(&key)
            .filter(|t| t.at.elapsed() < TOKEN_LIFETIME)
        {
            if earlier.request != request {
                let message =
                    format!("The client token {token} was already used with different parameters.");
                return Err(AwsError::client("ConflictException", message)
                    .with("resourceIds", json!(earlier.reply)));
            }
            let tasks: Vec<Value> = earlier
                .reply
                .iter()
                .filter_map(|arn| state.tasks.get(arn))
                .map(|task| task.to_json(false))
                .collect();
            return Ok(json!({ "tasks": tasks, "failures": earlier.failures }));
        }
    }

    let plan = Placement::plan(&state, &cluster, body)?;
    let count = body.get("count").and_then(Value::as_i64).unwrap_or(1);
    if !(1..=10).contains(&count) {
        return Err(invalid("count must be between 1 and 10."));
    }
    let (mut tasks, mut arns, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..count {
        let fault = state.faults.pop_front();
        if let Some(StartFault::NoPlacement(reason)) = &fault {
            failures.push(json!({ "arn": cluster_arn, "reason": reason }));
            continue;
        }
        let task = plan.new_task(&cluster, &cluster_arn, body);
        let arn = task.arn.clone();
        tasks.push(task.to_json(false));
        arns.push(arn.clone());
        let (stop_sender, stop) = watch::channel(None);
        state.stops.insert(arn.clone(), stop_sender);
        state.tasks.insert(arn.clone(), task);
        state.order.push(arn.clone());
        let start_failure = match fault {
            Some(StartFault::FailToStart(reason)) => Some(reason),
            _ => None,
        };
        let work = runner::run(
            inner.clone(),
            arn,
            plan.definition.clone(),
            stop,
            start_failure,
        );
        inner.supervisor.spawn_task(work);
    }
    if let Some(token) = token {
        let use_ = TokenUse {
            request,
            reply: arns,
            failures: failures.clone(),
            at: Instant::now(),
        };
        state.tokens.insert((cluster_arn, token), use_);
    }
    Ok(json!({ "tasks": tasks, "failures": failures }))
}

/// What RunTask resolved before creating tasks: the definition, launch type, capacity
/// provider, network.
struct Placement {
    definition: Value,
    launch_type: String,
    capacity_provider: Option<String>,
    subnet: Option<String>,
}

impl Placement {
    fn plan(state: &State, cluster: &str, body: &Value) -> Result<Placement, AwsError> {
        let reference = req_str(body, "taskDefinition", INVALID_PARAMETER)?;
        let definition = find_definition(state, reference)
            .ok_or_else(|| invalid("TaskDefinition not found."))?;
        let strategy = body
            .get("capacityProviderStrategy")
            .and_then(Value::as_array)
            .filter(|strategy| !strategy.is_empty());
        let launch_type = opt_str(body, "launchType");
        if launch_type.is_some() && strategy.is_some() {
            return Err(invalid(
                "Specifying both a launch type and capacity provider strategy is not supported. \
                 Remove one and try again.",
            ));
        }
        let default_strategy = state.clusters[cluster]["defaultCapacityProviderStrategy"]
            .as_array()
            .filter(|strategy| !strategy.is_empty())
            .cloned();
        let strategy = strategy.cloned().or(if launch_type.is_none() {
            default_strategy
        } else {
            None
        });
        let (launch_type, capacity_provider) = match (launch_type, strategy) {
            (Some(launch_type), _) => {
                if !["EC2", "FARGATE", "EXTERNAL", "MANAGED_INSTANCES"].contains(&launch_type) {
                    return Err(invalid(format!("Invalid launch type: {launch_type}")));
                }
                (launch_type.to_owned(), None)
            }
            (None, Some(strategy)) => {
                if strategy.len() > 20 {
                    return Err(invalid(
                        "capacityProviderStrategy can have at most 20 items.",
                    ));
                }
                let chosen = strategy
                    .iter()
                    .find(|item| item["base"].as_i64().unwrap_or(0) > 0)
                    .or_else(|| {
                        strategy
                            .iter()
                            .find(|item| item["weight"].as_i64().unwrap_or(0) > 0)
                    })
                    .unwrap_or(&strategy[0]);
                let provider = req_str(chosen, "capacityProvider", INVALID_PARAMETER)?.to_owned();
                let launch_type = if provider.starts_with("FARGATE") {
                    "FARGATE"
                } else {
                    "EC2"
                };
                (launch_type.to_owned(), Some(provider))
            }
            (None, None) => ("EC2".to_owned(), None),
        };
        if launch_type == "FARGATE"
            && !definition["compatibilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "FARGATE"))
        {
            return Err(invalid(
                "Task definition does not support launch_type FARGATE.",
            ));
        }
        let subnet = validate_network(&definition, &launch_type, body)?;
        validate_overrides(&definition, body)?;
        validate_tags(body)?;
        if opt_str(body, "startedBy").is_some_and(|by| by.len() > 128) {
            return Err(invalid("startedBy must be at most 128 characters."));
        }
        Ok(Placement {
            definition,
            launch_type,
            capacity_provider,
            subnet,
        })
    }

    fn new_task(&self, cluster: &str, cluster_arn: &str, body: &Value) -> Task {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let arn = format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/{cluster}/{id}");
        let definition = &self.definition;
        let overrides = body.get("overrides");
        let container_override = |name: &str| {
            overrides
                .and_then(|o| o["containerOverrides"].as_array())
                .and_then(|list| list.iter().find(|o| o["name"] == name))
                .cloned()
        };
        let containers = definition["containerDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|container| {
                let name = container["name"].as_str().unwrap_or_default();
                let overridden = container_override(name);
                let pick = |key: &str| {
                    overridden
                        .as_ref()
                        .and_then(|o| o.get(key))
                        .or_else(|| container.get(key))
                        .and_then(Value::as_i64)
                };
                Container {
                    name: name.to_owned(),
                    arn: format!(
                        "arn:aws:ecs:{REGION}:{ACCOUNT_ID}:container/{cluster}/{id}/{}",
                        uuid::Uuid::new_v4()
                    ),
                    image: container["image"].as_str().unwrap_or_default().to_owned(),
                    last_status: PENDING,
                    exit_code: None,
                    reason: None,
                    cpu: pick("cpu"),
                    memory: pick("memory"),
                }
            })
            .collect();
        let task_level = |key: &str| {
            overrides
                .and_then(|o| o.get(key))
                .or_else(|| definition.get(key))
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
        };
        let mut echoed_overrides = overrides.cloned().unwrap_or(json!({}));
        for key in ["containerOverrides", "inferenceAcceleratorOverrides"] {
            if echoed_overrides.get(key).is_none() {
                echoed_overrides[key] = json!([]);
            }
        }
        let family = definition["family"].as_str().unwrap_or_default().to_owned();
        Task {
            arn,
            cluster_arn: cluster_arn.to_owned(),
            cluster: cluster.to_owned(),
            task_definition_arn: definition["taskDefinitionArn"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            group: opt_str(body, "group")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("family:{family}")),
            family,
            last_status: PROVISIONING,
            desired_status: RUNNING,
            created_at: SystemTime::now(),
            pull_started_at: None,
            pull_stopped_at: None,
            started_at: None,
            stopping_at: None,
            execution_stopped_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            launch_type: self.launch_type.clone(),
            capacity_provider_name: self.capacity_provider.clone(),
            cpu: task_level("cpu"),
            memory: task_level("memory"),
            overrides: echoed_overrides,
            started_by: opt_str(body, "startedBy").map(str::to_owned),
            tags: body["tags"].as_array().cloned().unwrap_or_default(),
            enable_execute_command: body["enableExecuteCommand"].as_bool().unwrap_or(false),
            subnet: self.subnet.clone(),
            containers,
            version: 1,
        }
    }
}

/// Checks `networkConfiguration` against the definition's network mode; returns the subnet
/// the task's interface goes into (for `awsvpc`).
fn validate_network(
    definition: &Value,
    launch_type: &str,
    body: &Value,
) -> Result<Option<String>, AwsError> {
    let awsvpc = definition["networkMode"] == "awsvpc";
    let config = body.pointer("/networkConfiguration/awsvpcConfiguration");
    let Some(config) = config else {
        if awsvpc {
            return Err(invalid(
                "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
            ));
        }
        return Ok(None);
    };
    if !awsvpc {
        return Err(invalid(
            "Network Configuration is not valid for the given networkMode of this task definition.",
        ));
    }
    let subnets: Vec<&str> = config["subnets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if subnets.is_empty() {
        return Err(invalid("subnets can not be empty."));
    }
    if subnets.len() > 16 {
        return Err(invalid("subnets can have at most 16 items."));
    }
    if config["securityGroups"]
        .as_array()
        .is_some_and(|groups| groups.len() > 5)
    {
        return Err(invalid("securityGroups can have at most 5 items."));
    }
    match opt_str(config, "assignPublicIp") {
        None | Some("DISABLED") => {}
        Some("ENABLED") if launch_type == "FARGATE" => {}
        Some("ENABLED") => {
            return Err(invalid(
                "Assign public IP is not supported for this launch type.",
            ))
        }
        Some(other) => return Err(invalid(format!("Invalid assignPublicIp value: {other}"))),
    }
    Ok(Some(subnets[0].to_owned()))
}

fn validate_overrides(definition: &Value, body: &Value) -> Result<(), AwsError> {
    let Some(overrides) = body.get("overrides") else {
        return Ok(());
    };
    if overrides.to_string().len() > MAX_OVERRIDES_CHARS {
        return Err(invalid("Container Overrides length must be at most 8192"));
    }
    for container in overrides["containerOverrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = container["name"].as_str().unwrap_or_default();
        let known = definition["containerDefinitions"]
            .as_array()
            .is_some_and(|containers| containers.iter().any(|c| c["name"] == name));
        if !known {
            return Err(invalid(format!(
                "Override for container named {name} is not a container in the TaskDefinition."
            )));
        }
    }
    Ok(())
}

pub fn validate_tags(body: &Value) -> Result<(), AwsError> {
    let tags = body["tags"].as_array().cloned().unwrap_or_default();
    if tags.len() > 50 {
        return Err(invalid("A resource can have at most 50 tags."));
    }
    for tag in &tags {
        let key = tag["key"].as_str().unwrap_or_default();
        let value = tag["value"].as_str().unwrap_or_default();
        if key.is_empty() || key.len() > 128 || value.len() > 256 {
            return Err(invalid(
                "Tag keys must be 1-128 characters and values at most 256.",
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid("Tag keys prefixed with 'aws:' are reserved."));
        }
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client(INVALID_PARAMETER, message)
}
