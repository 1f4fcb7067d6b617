//! ECS clusters and task definitions, kept by the stand-in (minimal, but validated where
//! ECS validates what the backends send: Fargate needs `awsvpc`, task-level cpu and memory,
//! and an execution role for `awslogs`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::{Inner, State, INVALID_PARAMETER};
use crate::protocol::{epoch_seconds, opt_str, req_str, AwsError};
use crate::sdk::{ACCOUNT_ID, REGION};

const CLIENT_EXCEPTION: &str = "ClientException";

pub fn cluster_arn(name: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:cluster/{name}")
}

/// A cluster name from a name or ARN.
pub fn cluster_name(name_or_arn: &str) -> &str {
    match name_or_arn.strip_prefix("arn:") {
        Some(_) => name_or_arn.rsplit('/').next().unwrap_or(name_or_arn),
        None => name_or_arn,
    }
}

pub fn create_cluster(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let name = opt_str(body, "clusterName").unwrap_or("default");
    let mut state = inner.state.lock().unwrap();
    // CreateCluster with an existing name returns that cluster.
    let cluster = state.clusters.entry(name.to_owned()).or_insert_with(|| {
        json!({
            "clusterArn": cluster_arn(name),
            "clusterName": name,
            "status": "ACTIVE",
            "registeredContainerInstancesCount": 0,
            "activeServicesCount": 0,
            "statistics": [],
            "tags": body.get("tags").cloned().unwrap_or(json!([])),
            "settings": body.get("settings").cloned().unwrap_or(json!([])),
            "capacityProviders": body.get("capacityProviders").cloned().unwrap_or(json!([])),
            "defaultCapacityProviderStrategy":
                body.get("defaultCapacityProviderStrategy").cloned().unwrap_or(json!([])),
        })
    });
    let cluster = cluster.clone();
    Ok(json!({ "cluster": with_counts(&state, cluster) }))
}

pub fn describe_clusters(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let names: Vec<String> = match body.get("clusters").and_then(Value::as_array) {
        Some(names) => names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        None => vec!["default".to_owned()],
    };
    let state = inner.state.lock().unwrap();
    let (mut clusters, mut failures) = (Vec::new(), Vec::new());
    for name in names {
        match state.clusters.get(cluster_name(&name)) {
            Some(cluster) => clusters.push(with_counts(&state, cluster.clone())),
            None => failures
                .push(json!({ "arn": cluster_arn(cluster_name(&name)), "reason": "MISSING" })),
        }
    }
    Ok(json!({ "clusters": clusters, "failures": failures }))
}

pub fn list_clusters(inner: &Inner) -> Result<Value, AwsError> {
    let state = inner.state.lock().unwrap();
    let arns: Vec<String> = state
        .clusters
        .keys()
        .map(|name| cluster_arn(name))
        .collect();
    Ok(json!({ "clusterArns": arns }))
}

fn with_counts(state: &State, mut cluster: Value) -> Value {
    let name = cluster["clusterName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let count = |status: &str| {
        state
            .tasks
            .values()
            .filter(|task| task.cluster == name && task.last_status == status)
            .count()
    };
    cluster["runningTasksCount"] = json!(count(super::model::RUNNING));
    cluster["pendingTasksCount"] =
        json!(count(super::model::PENDING) + count(super::model::PROVISIONING));
    cluster
}

/// A cluster by name or ARN (`default` when none is given), or ECS's not-found error.
pub fn require_cluster(
    state: &State,
    name_or_arn: Option<&str>,
) -> Result<(String, String), AwsError> {
    let name = cluster_name(name_or_arn.unwrap_or("default"));
    if state.clusters.contains_key(name) {
        Ok((name.to_owned(), cluster_arn(name)))
    } else {
        Err(AwsError::client(
            "ClusterNotFoundException",
            "Cluster not found.",
        ))
    }
}

pub fn register_task_definition(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let family = req_str(body, "family", CLIENT_EXCEPTION)?;
    let family_ok = (1..=255).contains(&family.len())
        && family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !family_ok {
        return Err(client(
            "Family contains invalid characters or is longer than 255 characters.",
        ));
    }
    let containers = body
        .get("containerDefinitions")
        .and_then(Value::as_array)
        .filter(|containers| !containers.is_empty())
        .ok_or_else(|| client("Container definitions are required."))?;
    for container in containers {
        if opt_str(container, "name").is_none() || opt_str(container, "image").is_none() {
            return Err(client(
                "Container.name and Container.image should not be null or empty.",
            ));
        }
    }
    let fargate = body["requiresCompatibilities"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == "FARGATE"));
    if fargate {
        validate_fargate(body, containers)?;
    }
    let mut definition = body.clone();
    let tags = definition
        .as_object_mut()
        .and_then(|object| object.remove("tags"))
        .unwrap_or(json!([]));
    for container in definition["containerDefinitions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        for (key, default) in [
            ("essential", json!(true)),
            ("environment", json!([])),
            ("portMappings", json!([])),
            ("mountPoints", json!([])),
            ("volumesFrom", json!([])),
        ] {
            if container.get(key).is_none() {
                container[key] = default;
            }
        }
    }
    let network_mode = opt_str(body, "networkMode").unwrap_or("bridge");
    let mut compatibilities = vec!["EC2"];
    if network_mode == "awsvpc" {
        compatibilities.push("FARGATE");
    }
    let mut state = inner.state.lock().unwrap();
    let revisions = state.definitions.entry(family.to_owned()).or_default();
    let revision = revisions.len() + 1;
    definition["taskDefinitionArn"] = json!(format!(
        "arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/{family}:{revision}"
    ));
    definition["revision"] = json!(revision);
    definition["status"] = json!("ACTIVE");
    definition["networkMode"] = json!(network_mode);
    definition["compatibilities"] = json!(compatibilities);
    definition["requiresAttributes"] = json!([]);
    definition["registeredAt"] = json!(epoch_seconds(SystemTime::now()));
    definition["registeredBy"] = json!(format!("arn:aws:iam::{ACCOUNT_ID}:root"));
    definition["tags"] = tags.clone();
    revisions.push(definition.clone());
    definition
        .as_object_mut()
        .map(|object| object.remove("tags"));
    Ok(json!({ "taskDefinition": definition, "tags": tags }))
}

fn validate_fargate(body: &Value, containers: &[Value]) -> Result<(), AwsError> {
    if opt_str(body, "networkMode") != Some("awsvpc") {
        return Err(client("Fargate only supports network mode ‘awsvpc’."));
    }
    for key in ["cpu", "memory"] {
        if body.get(key).is_none() {
            return Err(client(format!(
                "Fargate requires that '{key}' be defined at the task level."
            )));
        }
    }
    let uses_awslogs = containers
        .iter()
        .any(|c| c.pointer("/logConfiguration/logDriver") == Some(&json!("awslogs")));
    if uses_awslogs && opt_str(body, "executionRoleArn").is_none() {
        return Err(client(
            "Fargate requires task definition to have execution role ARN to support log driver awslogs.",
        ));
    }
    Ok(())
}

/// A task definition by `family` (latest ACTIVE revision), `family:revision` or ARN.
pub fn find_definition(state: &State, reference: &str) -> Option<Value> {
    let reference = reference
        .strip_prefix(&format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/"
        ))
        .unwrap_or(reference);
    let (family, revision) = match reference.split_once(':') {
        Some((family, revision)) => (family, Some(revision.parse::<usize>().ok()?)),
        None => (reference, None),
    };
    let revisions = state.definitions.get(family)?;
    match revision {
        Some(revision) => revisions.get(revision.checked_sub(1)?).cloned(),
        None => revisions
            .iter()
            .rev()
            .find(|definition| definition["status"] == "ACTIVE")
            .cloned(),
    }
}

pub fn describe_task_definition(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let reference = req_str(body, "taskDefinition", CLIENT_EXCEPTION)?;
    let state = inner.state.lock().unwrap();
    let mut definition = find_definition(&state, reference)
        .ok_or_else(|| client("Unable to describe task definition."))?;
    let tags = definition
        .as_object_mut()
        .and_then(|object| object.remove("tags"))
        .unwrap_or(json!([]));
    let mut reply = json!({ "taskDefinition": definition });
    if wants_tags(body) {
        reply["tags"] = tags;
    }
    Ok(reply)
}

pub fn deregister_task_definition(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let reference = req_str(body, "taskDefinition", CLIENT_EXCEPTION)?;
    let mut state = inner.state.lock().unwrap();
    let arn = find_definition(&state, reference)
        .filter(|_| reference.contains(':'))
        .and_then(|definition| definition["taskDefinitionArn"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            AwsError::client(
                INVALID_PARAMETER,
                "The specified task definition does not exist.",
            )
        })?;
    let definition = state
        .definitions
        .values_mut()
        .flatten()
        .find(|definition| definition["taskDefinitionArn"] == arn.as_str())
        .expect("the definition was just found");
    definition["status"] = json!("INACTIVE");
    definition["deregisteredAt"] = json!(epoch_seconds(SystemTime::now()));
    let mut definition = definition.clone();
    definition
        .as_object_mut()
        .map(|object| object.remove("tags"));
    Ok(json!({ "taskDefinition": definition }))
}

/// Whether `include` asks for tags.
pub fn wants_tags(body: &Value) -> bool {
    body["include"]
        .as_array()
        .is_some_and(|include| include.iter().any(|item| item == "TAGS"))
}

fn client(message: impl Into<String>) -> AwsError {
    AwsError::client(CLIENT_EXCEPTION, message)
}
