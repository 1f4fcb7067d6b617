//! The RunTask request a launch sends, as recorded before it is sent (JSON, no secret): the
//! cluster and task definition, the job container's command and environment (overrides), its
//! secrets by SSM parameter name (placed in a per-launch task definition revision, since
//! RunTask overrides cannot carry secrets), capacity and network, tags, and `startedBy` set
//! to the launch name so a task whose start answer was lost can be found with ListTasks.

use crate::platform::LaunchLabels;
use crate::settings::{EcsFleetSettings, LaunchType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// ECS's limit on a RunTask's overrides, in characters of JSON.
pub const MAX_OVERRIDES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub cluster: String,
    /// The fleet's task definition (ARN), the base of a per-launch revision.
    pub task_definition: String,
    pub container: String,
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// Variable → SSM parameter name.
    pub secrets: Vec<(String, String)>,
    pub cpu: Option<u32>,
    pub memory: Option<u32>,
    pub launch_type: Option<String>,
    /// (provider, weight, base)
    pub capacity_providers: Vec<(String, u32, u32)>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    pub tags: Vec<(String, String)>,
    pub started_by: String,
}

impl RunRequest {
    /// A request running `command` with `environment` in the fleet's job container.
    pub fn new(
        fleet: &EcsFleetSettings,
        task_definition: &str,
        container: &str,
        command: Vec<String>,
        environment: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
        labels: &LaunchLabels,
    ) -> Result<RunRequest, String> {
        let mut environment: Vec<(String, String)> = environment
            .iter()
            .filter(|(name, _)| !secrets.contains_key(*name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        environment.push(("UPDRAFT_LAUNCH".into(), labels.launch.clone()));
        environment.push(("UPDRAFT_FLEET".into(), labels.fleet.clone()));
        let request = RunRequest {
            cluster: fleet.cluster.clone(),
            task_definition: task_definition.to_string(),
            container: container.to_string(),
            command,
            environment,
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cpu: fleet.cpu,
            memory: fleet.memory,
            launch_type: fleet.launch_type.map(|t| {
                match t {
                    LaunchType::Fargate => "FARGATE",
                    LaunchType::Ec2 => "EC2",
                }
                .to_string()
            }),
            capacity_providers: fleet
                .capacity_provider_strategy
                .iter()
                .map(|item| (item.capacity_provider.clone(), item.weight, item.base))
                .collect(),
            subnets: fleet.subnets.clone(),
            security_groups: fleet.security_groups.clone(),
            assign_public_ip: fleet.assign_public_ip,
            tags: labels.pairs(),
            started_by: labels.launch.clone(),
        };
        let size = request.overrides_size();
        if size > MAX_OVERRIDES {
            return Err(format!(
                "the job's command and environment take {size} characters of RunTask overrides; ECS allows {MAX_OVERRIDES}"
            ));
        }
        Ok(request)
    }

    /// How many characters of JSON the container override takes, as ECS counts them.
    fn overrides_size(&self) -> usize {
        let environment: Vec<serde_json::Value> = self
            .environment
            .iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
            .collect();
        serde_json::json!({"containerOverrides": [{
            "name": self.container,
            "command": self.command,
            "environment": environment,
            "cpu": self.cpu,
            "memory": self.memory,
        }]})
        .to_string()
        .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> EcsFleetSettings {
        serde_json::from_value(serde_json::json!({
            "cluster": "ci", "task_definition": "agent", "launch_type": "FARGATE",
            "subnets": ["subnet-1"], "security_groups": ["sg-1"],
        }))
        .unwrap()
    }

    #[test]
    fn secrets_stay_out_of_the_environment_and_the_launch_is_its_started_by() {
        let labels = LaunchLabels {
            launch: "updraft-1".into(),
            fleet: "ecs".into(),
            job: "1".into(),
            ..LaunchLabels::default()
        };
        let env = [
            ("A".to_string(), "1".to_string()),
            ("BUILDKITE_AGENT_TOKEN".into(), "leak".into()),
        ]
        .into();
        let secrets = [(
            "BUILDKITE_AGENT_TOKEN".to_string(),
            "/updraft/launches/updraft-1/BUILDKITE_AGENT_TOKEN".to_string(),
        )]
        .into();
        let request = RunRequest::new(
            &fleet(),
            "arn:td/agent:1",
            "agent",
            vec!["agent".into()],
            &env,
            &secrets,
            &labels,
        )
        .unwrap();
        assert!(request.environment.iter().all(|(_, v)| v != "leak"));
        assert_eq!(request.started_by, "updraft-1");
        assert_eq!(request.launch_type.as_deref(), Some("FARGATE"));
        assert!(request
            .tags
            .contains(&("updraft:launch".into(), "updraft-1".into())));
    }

    #[test]
    fn overrides_past_the_ecs_limit_are_refused_with_the_numbers() {
        let env = [("BIG".to_string(), "x".repeat(9000))].into();
        let error = RunRequest::new(
            &fleet(),
            "td",
            "agent",
            vec![],
            &env,
            &BTreeMap::new(),
            &LaunchLabels::default(),
        )
        .unwrap_err();
        assert!(error.contains("ECS allows 8192"), "{error}");
    }
}
