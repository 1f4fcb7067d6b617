//! DescribeTasks (MISSING failures), ListTasks (desiredStatus RUNNING by default), StopTask
//! and task tags.

use serde_json::{json, Value};

use super::definitions::{cluster_name, require_cluster, wants_tags};
use super::model::{Task, RUNNING, STOPPED};
use super::run_task::validate_tags;
use super::{Inner, State, StopRequest, INVALID_PARAMETER};
use crate::protocol::{opt_str, req_str, AwsError};

/// A task by ARN or id, optionally only in `cluster` (a name).
pub fn find<'a>(state: &'a State, cluster: Option<&str>, arn_or_id: &str) -> Option<&'a Task> {
    let id = arn_or_id.rsplit('/').next().unwrap_or(arn_or_id);
    state
        .tasks
        .values()
        .find(|task| task.id() == id && cluster.is_none_or(|cluster| task.cluster == cluster))
}

pub fn describe_tasks(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let references = body["tasks"].as_array().cloned().unwrap_or_default();
    if references.is_empty() || references.len() > 100 {
        return Err(invalid(
            "Tasks cannot be empty and can have at most 100 items.",
        ));
    }
    let state = inner.state.lock().unwrap();
    let (cluster, cluster_arn) = require_cluster(&state, opt_str(body, "cluster"))?;
    let include_tags = wants_tags(body);
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for reference in references.iter().filter_map(Value::as_str) {
        match find(&state, Some(&cluster), reference) {
            Some(task) => tasks.push(task.to_json(include_tags)),
            None => {
                let arn = if reference.starts_with("arn:") {
                    reference.to_owned()
                } else {
                    format!("{}/{reference}", cluster_arn.replace(":cluster/", ":task/"))
                };
                failures.push(json!({ "arn": arn, "reason": "MISSING" }));
            }
        }
    }
    Ok(json!({ "tasks": tasks, "failures": failures }))
}

pub fn list_tasks(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let state = inner.state.lock().unwrap();
    let (cluster, _) = require_cluster(&state, opt_str(body, "cluster"))?;
    let desired = opt_str(body, "desiredStatus").unwrap_or(RUNNING);
    if !["RUNNING", "PENDING", "STOPPED"].contains(&desired) {
        return Err(invalid(format!("Invalid desiredStatus: {desired}")));
    }
    let family = opt_str(body, "family");
    let started_by = opt_str(body, "startedBy");
    let launch_type = opt_str(body, "launchType");
    // No services or container instances exist here, so those filters match nothing.
    let impossible = body.get("serviceName").is_some() || body.get("containerInstance").is_some();
    let arns: Vec<&String> = state
        .order
        .iter()
        .filter_map(|arn| state.tasks.get(arn))
        .filter(|task| {
            !impossible
                && task.cluster == cluster
                && task.desired_status == desired
                && family.is_none_or(|family| task.family == family)
                && started_by.is_none_or(|by| task.started_by.as_deref() == Some(by))
                && launch_type.is_none_or(|launch| task.launch_type == launch)
        })
        .map(|task| &task.arn)
        .collect();
    let max = body
        .get("maxResults")
        .and_then(Value::as_u64)
        .unwrap_or(100);
    if !(1..=100).contains(&max) {
        return Err(invalid("maxResults must be between 1 and 100."));
    }
    let start = match opt_str(body, "nextToken") {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| invalid("Invalid nextToken."))?,
        None => 0,
    };
    let end = (start + max as usize).min(arns.len());
    let mut reply = json!({ "taskArns": arns.get(start..end).unwrap_or_default() });
    if end < arns.len() {
        reply["nextToken"] = json!(end.to_string());
    }
    Ok(reply)
}

pub fn stop_task(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let reference = req_str(body, "task", INVALID_PARAMETER)?;
    let mut state = inner.state.lock().unwrap();
    let (cluster, _) = require_cluster(&state, opt_str(body, "cluster"))?;
    let arn = find(&state, Some(&cluster), reference)
        .map(|task| task.arn.clone())
        .ok_or_else(|| invalid("The referenced task was not found."))?;
    let reason = opt_str(body, "reason")
        .unwrap_or("Task stopped by user")
        .to_owned();
    let request = StopRequest {
        code: "UserInitiated".into(),
        reason,
    };
    if let Some(stop) = state.stops.get(&arn) {
        if stop.borrow().is_none() {
            let _ = stop.send(Some(request));
        }
    }
    let task = state.tasks.get_mut(&arn).expect("the task was just found");
    if task.last_status != STOPPED {
        task.desired_status = STOPPED;
        // "Any tags associated with the task will be deleted."
        task.tags.clear();
        task.version += 1;
    }
    Ok(json!({ "task": task.to_json(false) }))
}

pub fn tag_resource(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let arn = req_str(body, "resourceArn", INVALID_PARAMETER)?;
    validate_tags(body)?;
    let new_tags = body["tags"].as_array().cloned().unwrap_or_default();
    let mut state = inner.state.lock().unwrap();
    let tags = tags_of(&mut state, arn)?;
    for tag in new_tags {
        tags.retain(|old| old["key"] != tag["key"]);
        tags.push(tag);
    }
    Ok(json!({}))
}

pub fn list_tags_for_resource(inner: &Inner, body: &Value) -> Result<Value, AwsError> {
    let arn = req_str(body, "resourceArn", INVALID_PARAMETER)?;
    let mut state = inner.state.lock().unwrap();
    let tags = tags_of(&mut state, arn)?.clone();
    Ok(json!({ "tags": tags }))
}

/// The tags of a task or cluster.
fn tags_of<'a>(state: &'a mut State, arn: &str) -> Result<&'a mut Vec<Value>, AwsError> {
    if arn.contains(":cluster/") {
        let cluster = state
            .clusters
            .get_mut(cluster_name(arn))
            .ok_or_else(|| AwsError::client("ClusterNotFoundException", "Cluster not found."))?;
        if !cluster["tags"].is_array() {
            cluster["tags"] = json!([]);
        }
        return Ok(cluster["tags"].as_array_mut().expect("tags is an array"));
    }
    state
        .tasks
        .get_mut(arn)
        .map(|task| &mut task.tags)
        .ok_or_else(|| invalid("The specified resource is not found."))
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client(INVALID_PARAMETER, message)
}
