//! `backend = "ecs"`: each launch is an ECS task (Fargate or EC2 capacity) of the fleet's
//! task definition, started with RunTask under a client token derived from the launch name
//! (ECS keeps it 24 hours per cluster), read with DescribeTasks, found again with ListTasks by
//! `startedBy` (the launch name) and stopped with StopTask. RunTask overrides cannot carry
//! secrets, so an agent launch runs a per-launch revision (family = the launch name) of the
//! fleet's definition whose job container gets its job acquisition token through `secrets`
//! from the launch's SSM parameter; the revision is deregistered with the launch.

mod observe;
pub mod request;

use crate::errors::{classify, AwsError, ErrorClass};
use crate::platform::{LaunchLabels, LineStyle, Observed, Platform, RelayedJob, Started};
use crate::settings::{EcsFleetSettings, RunMode};
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride,
    DesiredStatus, KeyValuePair, LaunchType, NetworkConfiguration, Secret, Tag, TaskDefinition,
    TaskOverride,
};
use observe::Definition;
use request::RunRequest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use updraft_backends::{LaunchName, LaunchSpec};

pub const KIND: &str = "ecs";
/// DescribeTasks takes at most this many tasks.
const BATCH: usize = 100;
/// "The client token is valid for 24 hours."
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The ECS side of the backend: one client, each fleet's settings and task definition.
pub struct Ecs {
    client: aws_sdk_ecs::Client,
    fleets: BTreeMap<String, EcsFleetSettings>,
    /// Each fleet's task definition as described at start-up, by fleet.
    bases: BTreeMap<String, TaskDefinition>,
    /// What each task definition (by ARN) says of the job container.
    definitions: Mutex<HashMap<String, Definition>>,
}

fn failure(operation: &'static str, class: ErrorClass, detail: String) -> AwsError {
    AwsError {
        operation,
        code: None,
        class,
        detail,
    }
}

/// `items`, or nothing when there are none (RegisterTaskDefinition treats an empty list and
/// an absent one alike, but the request reads better without noise).
fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// The cluster part of a task ARN (`arn:aws:ecs:r:a:task/<cluster>/<id>`).
fn cluster_of(task_arn: &str) -> Option<&str> {
    let path = task_arn.split_once(":task/")?.1;
    path.split_once('/').map(|(cluster, _)| cluster)
}

/// The job container of a definition: the named one, or the first essential one.
fn job_container(definition: &TaskDefinition, named: Option<&str>) -> Option<Definition> {
    let container = definition
        .container_definitions()
        .iter()
        .find(|c| match named {
            Some(name) => c.name() == Some(name),
            None => c.essential().unwrap_or(true),
        })?;
    let awslogs = container
        .log_configuration()
        .filter(|config| config.log_driver().as_str() == "awslogs")
        .and_then(|config| {
            let options = config.options()?;
            Some((
                options.get("awslogs-group")?.clone(),
                options.get("awslogs-stream-prefix").cloned(),
            ))
        });
    Some(Definition {
        container: container.name()?.to_string(),
        awslogs,
    })
}

impl Ecs {
    pub fn new(client: aws_sdk_ecs::Client, fleets: BTreeMap<String, EcsFleetSettings>) -> Ecs {
        Ecs {
            client,
            fleets,
            bases: BTreeMap::new(),
            definitions: Mutex::new(HashMap::new()),
        }
    }

    /// Check every fleet's cluster and task definition (once, at start-up) and keep the
    /// definitions.
    pub async fn preflight(&mut self) -> Result<(), AwsError> {
        for (name, fleet) in &self.fleets {
            let fatal = |detail: String| {
                failure(
                    "preflight",
                    ErrorClass::Fatal,
                    format!("fleet {name}: {detail}"),
                )
            };
            let clusters = self
                .client
                .describe_clusters()
                .clusters(&fleet.cluster)
                .send()
                .await
                .map_err(|error| classify("DescribeClusters", &error))?;
            let active = clusters
                .clusters()
                .iter()
                .any(|c| c.status() == Some("ACTIVE"));
            if !active {
                return Err(fatal(format!(
                    "ECS cluster {:?} does not exist or is not active",
                    fleet.cluster
                )));
            }
            let described = self
                .client
                .describe_task_definition()
                .task_definition(&fleet.task_definition)
                .send()
                .await
                .map_err(|error| {
                    let error = classify("DescribeTaskDefinition", &error);
                    fatal(format!(
                        "task definition {:?}: {error}",
                        fleet.task_definition
                    ))
                })?;
            let definition = described.task_definition().cloned().ok_or_else(|| {
                fatal(format!(
                    "task definition {:?} was not returned",
                    fleet.task_definition
                ))
            })?;
            let job = job_container(&definition, fleet.container.as_deref()).ok_or_else(|| {
                fatal(match &fleet.container {
                    Some(container) => format!(
                        "task definition {:?} has no container {container:?}",
                        fleet.task_definition
                    ),
                    None => format!(
                        "task definition {:?} has no essential container",
                        fleet.task_definition
                    ),
                })
            })?;
            let arn = definition
                .task_definition_arn()
                .unwrap_or_default()
                .to_string();
            self.remember(&arn, job);
            self.bases.insert(name.clone(), definition);
        }
        Ok(())
    }

    fn remember(&self, arn: &str, definition: Definition) {
        self.definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(arn.to_string(), definition);
    }

    fn fleet(&self, fleet: &str) -> Result<(&EcsFleetSettings, &TaskDefinition), String> {
        match (self.fleets.get(fleet), self.bases.get(fleet)) {
            (Some(settings), Some(base)) => Ok((settings, base)),
            _ => Err(format!("fleet {fleet} has no [fleet.ecs] table")),
        }
    }

    fn container_of(&self, base: &TaskDefinition) -> String {
        let arn = base.task_definition_arn().unwrap_or_default();
        self.definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(arn)
            .map(|d| d.container.clone())
            .unwrap_or_default()
    }

    /// What `arn` says of the job container, described once and remembered.
    async fn definition(&self, arn: &str, container: Option<&str>) -> Option<Definition> {
        if let Some(known) = self
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(arn)
        {
            return Some(known.clone());
        }
        let described = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .ok()?;
        let definition = job_container(described.task_definition()?, container)?;
        self.remember(arn, definition.clone());
        Some(definition)
    }

    /// The per-launch revision carrying the launch's secrets: the one an earlier attempt
    /// registered, or a new one.
    async fn launch_definition(
        &self,
        name: &LaunchName,
        request: &RunRequest,
    ) -> Result<String, AwsError> {
        let family = name.as_str();
        if let Ok(existing) = self
            .client
            .describe_task_definition()
            .task_definition(family)
            .send()
            .await
        {
            if let Some(arn) = existing
                .task_definition()
                .filter(|d| d.status().is_some_and(|s| s.as_str() == "ACTIVE"))
                .and_then(|d| d.task_definition_arn())
            {
                return Ok(arn.to_string());
            }
        }
        let base = self
            .bases
            .values()
            .find(|b| b.task_definition_arn() == Some(request.task_definition.as_str()))
            .ok_or_else(|| {
                failure(
                    "RegisterTaskDefinition",
                    ErrorClass::Invalid,
                    format!("unknown task definition {}", request.task_definition),
                )
            })?;
        let mut containers = base.container_definitions().to_vec();
        for container in containers
            .iter_mut()
            .filter(|c| c.name() == Some(request.container.as_str()))
        {
            let mut secrets = container.secrets.clone().unwrap_or_default();
            for (variable, parameter) in &request.secrets {
                secrets.retain(|s| s.name() != variable);
                secrets.push(
                    Secret::builder()
                        .name(variable)
                        .value_from(parameter)
                        .build()
                        .expect("name and valueFrom are set"),
                );
            }
            container.secrets = Some(secrets);
        }
        let registered = self
            .client
            .register_task_definition()
            .family(family)
            .set_task_role_arn(base.task_role_arn().map(str::to_string))
            .set_execution_role_arn(base.execution_role_arn().map(str::to_string))
            .set_network_mode(base.network_mode().cloned())
            .set_container_definitions(Some(containers))
            .set_volumes(non_empty(base.volumes().to_vec()))
            .set_placement_constraints(non_empty(base.placement_constraints().to_vec()))
            .set_requires_compatibilities(non_empty(base.requires_compatibilities().to_vec()))
            .set_cpu(base.cpu().map(str::to_string))
            .set_memory(base.memory().map(str::to_string))
            .set_pid_mode(base.pid_mode().cloned())
            .set_ipc_mode(base.ipc_mode().cloned())
            .set_proxy_configuration(base.proxy_configuration().cloned())
            .set_ephemeral_storage(base.ephemeral_storage().cloned())
            .set_runtime_platform(base.runtime_platform().cloned())
            .tags(Tag::builder().key("updraft:launch").value(family).build())
            .send()
            .await
            .map_err(|error| classify("RegisterTaskDefinition", &error))?;
        let definition = registered.task_definition().ok_or_else(|| {
            failure(
                "RegisterTaskDefinition",
                ErrorClass::Unavailable,
                "the answer named no definition".into(),
            )
        })?;
        let arn = definition
            .task_definition_arn()
            .unwrap_or_default()
            .to_string();
        if let Some(job) = job_container(definition, Some(&request.container)) {
            self.remember(&arn, job);
        }
        Ok(arn)
    }

    async fn run(
        &self,
        request: &RunRequest,
        definition: &str,
        token: &str,
    ) -> Result<String, AwsError> {
        let environment = request
            .environment
            .iter()
            .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
            .collect();
        let container = ContainerOverride::builder()
            .name(&request.container)
            .set_command(Some(request.command.clone()))
            .set_environment(Some(environment))
            .set_cpu(request.cpu.map(|c| c as i32))
            .set_memory(request.memory.map(|m| m as i32))
            .build();
        let mut run = self
            .client
            .run_task()
            .cluster(&request.cluster)
            .task_definition(definition)
            .client_token(token)
            .started_by(&request.started_by)
            .count(1)
            .overrides(
                TaskOverride::builder()
                    .container_overrides(container)
                    .build(),
            )
            .set_tags(Some(
                request
                    .tags
                    .iter()
                    .map(|(key, value)| Tag::builder().key(key).value(value).build())
                    .collect(),
            ))
            .set_launch_type(request.launch_type.as_deref().map(LaunchType::from));
        for (provider, weight, base) in &request.capacity_providers {
            run = run.capacity_provider_strategy(
                CapacityProviderStrategyItem::builder()
                    .capacity_provider(provider)
                    .weight(*weight as i32)
                    .base(*base as i32)
                    .build()
                    .expect("the provider is set"),
            );
        }
        if !request.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(request.subnets.clone()))
                .set_security_groups(Some(request.security_groups.clone()))
                .assign_public_ip(if request.assign_public_ip {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                })
                .build()
                .expect("the subnets are set");
            run = run.network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            );
        }
        let answer = run
            .send()
            .await
            .map_err(|error| classify("RunTask", &error))?;
        if let Some(arn) = answer.tasks().first().and_then(|t| t.task_arn()) {
            return Ok(arn.to_string());
        }
        let reason = answer
            .failures()
            .first()
            .and_then(|f| f.reason())
            .unwrap_or("no reason given")
            .to_string();
        // Placement failures (`RESOURCE:CPU`, `RESOURCE:MEMORY`, no agent) mean the cluster
        // is full for now.
        let class = if reason.starts_with("RESOURCE") || reason.starts_with("AGENT") {
            ErrorClass::AtCapacity
        } else {
            ErrorClass::Invalid
        };
        Err(failure(
            "RunTask",
            class,
            format!("no task was placed: {reason}"),
        ))
    }
}

#[async_trait]
impl Platform for Ecs {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn mode(&self, fleet: &str) -> Option<RunMode> {
        self.fleets.get(fleet).map(|f| f.mode)
    }

    fn line_style(&self) -> LineStyle {
        LineStyle::AwsLogs
    }

    fn token_lifetime(&self) -> Duration {
        TOKEN_LIFETIME
    }

    fn cancel_grace(&self, fleet: &str) -> Duration {
        self.fleets
            .get(fleet)
            .map(|f| f.cancel_grace.get())
            .unwrap_or(Duration::from_secs(5))
    }

    fn check(&self, fleet: &str, _env: &BTreeMap<String, String>) -> Result<(), String> {
        self.fleet(fleet).map(drop)
    }

    fn agent_request(
        &self,
        spec: &LaunchSpec,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let (settings, base) = self.fleet(&spec.fleet)?;
        let request = RunRequest::new(
            settings,
            base.task_definition_arn().unwrap_or_default(),
            &self.container_of(base),
            spec.command.clone(),
            &spec.env,
            secrets,
            &LaunchLabels::of(spec),
        )?;
        serde_json::to_string(&request)
            .map_err(|e| format!("cannot record the RunTask request: {e}"))
    }

    fn relay_request(&self, fleet: &str, job: &RelayedJob) -> Result<String, String> {
        let (settings, base) = self.fleet(fleet)?;
        let mut command = settings.shell.clone();
        command.push(job.command.clone());
        let request = RunRequest::new(
            settings,
            base.task_definition_arn().unwrap_or_default(),
            &self.container_of(base),
            command,
            &job.env,
            &BTreeMap::new(),
            &job.labels,
        )?;
        serde_json::to_string(&request)
            .map_err(|e| format!("cannot record the RunTask request: {e}"))
    }

    async fn start(
        &self,
        name: &LaunchName,
        _fleet: &str,
        request: &str,
        token: &str,
    ) -> Result<Started, AwsError> {
        let request: RunRequest = serde_json::from_str(request).map_err(|e| {
            failure(
                "RunTask",
                ErrorClass::Invalid,
                format!("the recorded request cannot be read: {e}"),
            )
        })?;
        if request.secrets.is_empty() {
            let id = self.run(&request, &request.task_definition, token).await?;
            return Ok(Started { id, extra: None });
        }
        let definition = self.launch_definition(name, &request).await?;
        match self.run(&request, &definition, token).await {
            Ok(id) => Ok(Started {
                id,
                extra: Some(definition),
            }),
            Err(error) => {
                if error.class != ErrorClass::Unavailable {
                    if let Err(cleanup) = self.clean_up(&definition).await {
                        tracing::warn!(launch = %name, error = %cleanup, "cannot deregister the definition of a task that did not start");
                    }
                }
                Err(error)
            }
        }
    }

    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, Observed>, AwsError> {
        let mut by_cluster: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for id in ids {
            by_cluster
                .entry(cluster_of(id).unwrap_or("default"))
                .or_default()
                .push(id.clone());
        }
        let mut observed = HashMap::new();
        for (cluster, tasks) in by_cluster {
            for batch in tasks.chunks(BATCH) {
                let answer = self
                    .client
                    .describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(batch.to_vec()))
                    .send()
                    .await
                    .map_err(|error| classify("DescribeTasks", &error))?;
                for task in answer.tasks() {
                    let (Some(arn), Some(definition_arn)) =
                        (task.task_arn(), task.task_definition_arn())
                    else {
                        continue;
                    };
                    let container = self
                        .bases
                        .iter()
                        .find(|(_, b)| b.task_definition_arn() == Some(definition_arn))
                        .and_then(|(fleet, _)| self.fleets.get(fleet)?.container.clone());
                    if let Some(definition) =
                        self.definition(definition_arn, container.as_deref()).await
                    {
                        observed.insert(arn.to_string(), observe::observe(task, &definition));
                    }
                }
            }
        }
        Ok(observed)
    }

    async fn stop(&self, _fleet: &str, id: &str, reason: &str) -> Result<(), AwsError> {
        let reason: String = reason.chars().take(255).collect();
        let answer = self
            .client
            .stop_task()
            .cluster(cluster_of(id).unwrap_or("default"))
            .task(id)
            .reason(format!("Updraft: {reason}"))
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(error) => {
                let error = classify("StopTask", &error);
                if error.is_not_found() || error.class == ErrorClass::Invalid {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn find(&self, fleet: &str, name: &LaunchName) -> Result<Option<String>, AwsError> {
        let Some(settings) = self.fleets.get(fleet) else {
            return Ok(None);
        };
        for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
            let answer = self
                .client
                .list_tasks()
                .cluster(&settings.cluster)
                .started_by(name.as_str())
                .desired_status(status)
                .send()
                .await
                .map_err(|error| classify("ListTasks", &error))?;
            if let Some(arn) = answer.task_arns().first() {
                return Ok(Some(arn.clone()));
            }
        }
        Ok(None)
    }

    async fn clean_up(&self, extra: &str) -> Result<(), AwsError> {
        match self
            .client
            .deregister_task_definition()
            .task_definition(extra)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let error = classify("DeregisterTaskDefinition", &error);
                if error.is_not_found() || error.class == ErrorClass::Invalid {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }
}

impl crate::AwsBackend<Ecs> {
    /// The ECS backend for `fleets` (by fleet name): checks every cluster and task
    /// definition, then opens the backend's state.
    pub async fn ecs(
        clients: &crate::AwsClients,
        settings: &crate::settings::AwsSettings,
        fleets: BTreeMap<String, EcsFleetSettings>,
        options: crate::BackendOptions,
        metrics: crate::metrics::AwsMetrics,
    ) -> Result<crate::EcsBackend, updraft_backends::BackendError> {
        let mut platform = Ecs::new(clients.ecs(), fleets);
        platform
            .preflight()
            .await
            .map_err(|error| error.into_backend(KIND, ""))?;
        crate::AwsBackend::open(platform, clients, settings, options, metrics).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_of_a_task_arn() {
        assert_eq!(
            cluster_of("arn:aws:ecs:us-east-1:123456789012:task/ci/abc"),
            Some("ci")
        );
        assert_eq!(cluster_of("abc"), None);
    }
}
