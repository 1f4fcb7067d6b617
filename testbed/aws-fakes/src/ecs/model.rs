//! A task as the stand-in keeps it, and its rendering as ECS's `Task` shape: last and desired
//! status, the lifecycle timestamps, stop code and reason, containers with exit codes.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::protocol::epoch_seconds;

pub const PROVISIONING: &str = "PROVISIONING";
pub const PENDING: &str = "PENDING";
pub const RUNNING: &str = "RUNNING";
pub const DEPROVISIONING: &str = "DEPROVISIONING";
pub const STOPPED: &str = "STOPPED";

#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub arn: String,
    pub image: String,
    pub last_status: &'static str,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub arn: String,
    pub cluster_arn: String,
    /// The cluster's name, as ListTasks and DescribeTasks match it.
    pub cluster: String,
    pub task_definition_arn: String,
    pub family: String,
    pub last_status: &'static str,
    pub desired_status: &'static str,
    pub created_at: SystemTime,
    pub pull_started_at: Option<SystemTime>,
    pub pull_stopped_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub stopping_at: Option<SystemTime>,
    pub execution_stopped_at: Option<SystemTime>,
    pub stopped_at: Option<SystemTime>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub launch_type: String,
    pub capacity_provider_name: Option<String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// RunTask's `overrides`, echoed.
    pub overrides: Value,
    pub started_by: Option<String>,
    pub group: String,
    pub tags: Vec<Value>,
    pub enable_execute_command: bool,
    /// The subnet of the task's network interface, for `awsvpc` tasks.
    pub subnet: Option<String>,
    pub containers: Vec<Container>,
    /// Bumped on every change, like ECS's `version`.
    pub version: i64,
}

impl Task {
    /// The last segment of the ARN: `arn:aws:ecs:…:task/<cluster>/<id>`.
    pub fn id(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }

    /// Sets `last_status`, and the containers' status along with it (containers are PENDING
    /// until the task runs and STOPPED once it is on its way down).
    pub fn set_status(&mut self, status: &'static str) {
        self.last_status = status;
        let container_status = match status {
            PROVISIONING | PENDING => PENDING,
            RUNNING => RUNNING,
            _ => STOPPED,
        };
        for container in &mut self.containers {
            container.last_status = container_status;
        }
        self.version += 1;
    }

    pub fn to_json(&self, include_tags: bool) -> Value {
        let mut task = json!({
            "taskArn": self.arn,
            "clusterArn": self.cluster_arn,
            "taskDefinitionArn": self.task_definition_arn,
            "lastStatus": self.last_status,
            "desiredStatus": self.desired_status,
            "createdAt": epoch_seconds(self.created_at),
            "launchType": self.launch_type,
            "overrides": self.overrides,
            "group": self.group,
            "version": self.version,
            "availabilityZone": "us-east-1a",
            "healthStatus": "UNKNOWN",
            "enableExecuteCommand": self.enable_execute_command,
            "containers": self.containers.iter().map(|c| self.container_json(c)).collect::<Vec<_>>(),
            "attachments": self.attachments(),
        });
        for (key, at) in [
            ("pullStartedAt", self.pull_started_at),
            ("pullStoppedAt", self.pull_stopped_at),
            ("startedAt", self.started_at),
            ("connectivityAt", self.started_at),
            ("stoppingAt", self.stopping_at),
            ("executionStoppedAt", self.execution_stopped_at),
            ("stoppedAt", self.stopped_at),
        ] {
            if let Some(at) = at {
                task[key] = json!(epoch_seconds(at));
            }
        }
        if self.started_at.is_some() {
            task["connectivity"] = json!("CONNECTED");
        }
        for (key, value) in [
            ("stopCode", &self.stop_code),
            ("stoppedReason", &self.stopped_reason),
            ("capacityProviderName", &self.capacity_provider_name),
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("startedBy", &self.started_by),
        ] {
            if let Some(value) = value {
                task[key] = json!(value);
            }
        }
        if self.launch_type == "FARGATE" {
            task["platformVersion"] = json!("1.4.0");
            task["platformFamily"] = json!("Linux");
            task["ephemeralStorage"] = json!({ "sizeInGiB": 20 });
        }
        if include_tags {
            task["tags"] = json!(self.tags);
        }
        task
    }

    fn container_json(&self, container: &Container) -> Value {
        let mut value = json!({
            "containerArn": container.arn,
            "taskArn": self.arn,
            "name": container.name,
            "image": container.image,
            "lastStatus": container.last_status,
            "networkInterfaces": [],
            "healthStatus": "UNKNOWN",
            "cpu": container.cpu.unwrap_or(0).to_string(),
        });
        if let Some(code) = container.exit_code {
            value["exitCode"] = json!(code);
        }
        if let Some(reason) = &container.reason {
            value["reason"] = json!(reason);
        }
        if let Some(memory) = container.memory {
            value["memory"] = json!(memory.to_string());
        }
        value
    }

    /// The ENI an `awsvpc` task gets (DELETED once the task is stopped).
    fn attachments(&self) -> Value {
        let Some(subnet) = &self.subnet else {
            return json!([]);
        };
        let hex: String = self.id().chars().take(17).collect();
        let status = if self.last_status == STOPPED {
            "DELETED"
        } else {
            "ATTACHED"
        };
        json!([{
            "id": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, self.arn.as_bytes()).to_string(),
            "type": "ElasticNetworkInterface",
            "status": status,
            "details": [
                { "name": "subnetId", "value": subnet },
                { "name": "networkInterfaceId", "value": format!("eni-{hex}") },
                { "name": "privateIPv4Address", "value": "10.0.0.10" },
            ],
        }])
    }
}
