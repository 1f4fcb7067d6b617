//! Building one launch's objects: a `batch/v1` Job named after the launch and the Secret that
//! holds its job acquisition token (owned by the Job once it exists, so the cluster deletes
//! both together).
//!
//! The pod has one regular container, `agent`, which runs the fleet's agent command with the
//! job acquisition token from the Secret (never the cluster agent token), and any number of
//! native sidecars (init containers with `restartPolicy: Always`), which Kubernetes stops when
//! the agent exits. It is built in this order, each step able to refine the last:
//!
//! 1. the fleet's pod template (or nothing) and the fleet's default resources;
//! 2. the step's `kubernetes` plugin: `podTemplate`, then `podSpec` merged over it — its one
//!    container (agent-stack-k8s calls it a command container) is the step's container;
//! 3. the step's `image:` (the step's container, else the agent's);
//! 4. the plugin's `podSpecPatch`, as a strategic merge patch; it may not touch the agent's
//!    command, arguments or credentials;
//! 5. the step's container folds into `agent`: its image, environment, mounts, resources and
//!    security context; its command becomes the job's command (`UPDRAFT_JOB_COMMAND`);
//! 6. sidecars, `gitEnvFrom`, `extraVolumeMounts`, checkout settings, metadata, the resource
//!    class, the workspace volume and Updraft's environment.
//!
//! Anything a step asks for that cannot be built is a [`Refusal`] naming the field: the job
//! fails once with it, never a retry loop.

use crate::fleet_settings::FleetTemplate;
use crate::labels;
use crate::plugin::{self, KubernetesPlugin};
use crate::pod_template::AGENT_CONTAINER;
use crate::resources::{merge_resources, RESOURCE_CLASS_TAG};
use crate::strategic_merge::patch_pod_spec;
use crate::strict::{self, Problem};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use updraft_backends::LaunchSpec;

pub(crate) use containers::{add_mount, plain, share_workspace, workspace_mount};
use containers::{
    add_sidecars, check_agent_untouched, finish_agent, fold_step_container, set_agent_essentials,
};
pub use containers::{APPLIED_PLUGINS_ENV, JOB_COMMAND_ENV, WORKSPACE_PATH, WORKSPACE_VOLUME};

/// What a launch needs besides its spec.
pub struct BuildInputs<'a> {
    pub fleet: &'a FleetTemplate,
    /// The fleet's pod template, when it has one (a named `PodTemplate` already fetched).
    pub base: Option<&'a PodSpec>,
    /// The `PodTemplate` a step's plugin names, already fetched.
    pub step_template: Option<&'a PodSpec>,
    pub scheduler_id: &'a str,
    pub job_ttl: Duration,
}

/// A launch's objects, ready to create (the Secret's owner is set once the Job exists).
#[derive(Debug, Clone)]
pub struct Built {
    pub job: Job,
    pub secret: Secret,
}

/// Why a launch cannot be built: the field (`kubernetes.podSpecPatch.containers[0].command`)
/// and the reason, shown in the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        reason: reason.into(),
    }
}

fn refuse_all(prefix: &str, problems: Vec<Problem>) -> Refusal {
    let reason = problems
        .iter()
        .map(|p| p.at(prefix))
        .collect::<Vec<_>>()
        .join("; ");
    match problems.as_slice() {
        [one] => refuse(strict::join(prefix, &one.path), one.message.clone()),
        _ => refuse(prefix, reason),
    }
}

/// The plugin a step uses, read from its job's `BUILDKITE_PLUGINS`.
pub fn step_plugin(spec: &LaunchSpec) -> Result<Option<KubernetesPlugin>, Refusal> {
    plugin::from_plugins_env(spec.job.env.get("BUILDKITE_PLUGINS").map(String::as_str))
        .map_err(|problems| refuse_all("", problems))
}

/// The step's `image:`, if it sets one.
fn step_image(spec: &LaunchSpec) -> Option<&str> {
    spec.job
        .env
        .get("BUILDKITE_IMAGE")
        .map(String::as_str)
        .filter(|i| !i.trim().is_empty())
}

/// Build the Job and Secret of `spec`.
pub fn build(
    spec: &LaunchSpec,
    plugin: Option<&KubernetesPlugin>,
    inputs: &BuildInputs<'_>,
) -> Result<Built, Refusal> {
    let fleet = inputs.fleet;
    if !fleet.allow_overrides {
        if plugin.is_some() {
            return Err(refuse(
                "kubernetes",
                format!("fleet {} does not allow steps to change their pod (allow_overrides = false); remove the kubernetes plugin or run the step on another fleet", fleet.name),
            ));
        }
        if step_image(spec).is_some() {
            return Err(refuse(
                "image",
                format!(
                    "fleet {} does not allow steps to choose their image (allow_overrides = false)",
                    fleet.name
                ),
            ));
        }
    }
    let default_plugin = KubernetesPlugin::default();
    let plugin = plugin.unwrap_or(&default_plugin);

    // 1-2: the starting pod and the step's container.
    let mut pod = match (
        plugin.pod_template.as_ref(),
        inputs.step_template,
        inputs.base,
    ) {
        (Some(_), Some(step_template), _) if plugin.pod_spec.is_none() => step_template.clone(),
        (_, _, Some(base)) => base.clone(),
        _ => PodSpec::default(),
    };
    let mut step_containers = Vec::new();
    if let Some(pod_spec) = &plugin.pod_spec {
        let mut overlay = pod_spec.clone();
        step_containers = std::mem::take(&mut overlay.containers);
        let overlay = serde_json::to_value(&overlay)
            .map_err(|e| refuse("kubernetes.podSpec", e.to_string()))?;
        pod = patched(&pod, &overlay, "kubernetes.podSpec")?;
    }
    if step_containers.len() > 1 {
        return Err(refuse(
            "kubernetes.podSpec.containers",
            format!(
                "Updraft runs a step in one container and this podSpec has {}; run the others as sidecars",
                step_containers.len()
            ),
        ));
    }
    let agent_index = ensure_agent(&mut pod, fleet);
    let step_names: Vec<String> = step_containers.iter().map(|c| c.name.clone()).collect();
    pod.containers.extend(step_containers);

    // 3: the step's image.
    if let Some(image) = step_image(spec) {
        let target = if pod.containers.len() > 1 {
            pod.containers.len() - 1
        } else {
            agent_index
        };
        pod.containers[target].image = Some(image.to_string());
    }

    // 4: the agent's command and credentials are set before the patch so it can be checked.
    set_agent_essentials(&mut pod.containers[agent_index], spec);
    if let Some(patch) = &plugin.pod_spec_patch {
        let before = pod.containers[agent_index].clone();
        pod = patched(&pod, patch, "kubernetes.podSpecPatch")?;
        check_agent_untouched(&before, &pod, spec)?;
    }

    // 5: fold the step's container into the agent.
    let agent_index = pod
        .containers
        .iter()
        .position(|c| c.name == AGENT_CONTAINER)
        .ok_or_else(|| {
            refuse(
                "kubernetes.podSpecPatch",
                "the agent container may not be removed",
            )
        })?;
    let mut agent = pod.containers.remove(agent_index);
    let mut job_command = None;
    let others: Vec<Container> = std::mem::take(&mut pod.containers);
    for step in others {
        if !step_names.contains(&step.name) {
            return Err(refuse(
                "kubernetes.podSpecPatch.containers",
                format!(
                    "adds container {:?}; run it as a sidecar so it ends with the job",
                    step.name
                ),
            ));
        }
        job_command = fold_step_container(&mut agent, step)?;
    }
    pod.containers = vec![agent];

    // 6: everything else.
    add_sidecars(&mut pod, plugin);
    finish_agent(&mut pod.containers[0], spec, plugin, fleet, job_command);
    if let Some(class) = resource_class(spec, fleet)? {
        class.apply(&mut pod, 0);
    }
    share_workspace(&mut pod);
    pod.restart_policy = Some("Never".into());
    if pod.service_account_name.is_none() {
        pod.service_account_name = fleet.service_account.clone();
    }
    if pod.containers[0].image.is_none() {
        return Err(refuse(
            "image",
            format!(
                "fleet {} names no agent image and the step gives none",
                fleet.name
            ),
        ));
    }
    let Metadata {
        labels: job_labels,
        annotations: job_annotations,
    } = metadata(spec, plugin, inputs)?;
    let mut pod_annotations = job_annotations.clone();
    pod_annotations.insert(labels::SAFE_TO_EVICT.into(), "false".into());
    let namespace = fleet.namespace.clone();
    let deadline = active_deadline(spec.deadline, plugin.job_active_deadline_seconds);
    let job = Job {
        metadata: ObjectMeta {
            name: Some(spec.name.to_string()),
            namespace: Some(namespace.clone()),
            labels: Some(job_labels.clone()),
            annotations: Some(job_annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline),
            ttl_seconds_after_finished: Some(
                i32::try_from(inputs.job_ttl.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(job_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    };
    Ok(Built {
        job,
        secret: secret_for(spec, &namespace, inputs.scheduler_id),
    })
}

/// The pod as JSON with `patch` merged in, read back strictly.
fn patched(pod: &PodSpec, patch: &serde_json::Value, field: &str) -> Result<PodSpec, Refusal> {
    let mut value = serde_json::to_value(pod).map_err(|e| refuse(field, e.to_string()))?;
    patch_pod_spec(&mut value, patch);
    strict::read::<PodSpec>(&value).map_err(|problems| refuse_all(field, problems))
}

/// The index of the agent container, created (with the fleet's default resources under
/// whatever the template sets) when the template has none.
pub(crate) fn ensure_agent(pod: &mut PodSpec, fleet: &FleetTemplate) -> usize {
    let index = match pod
        .containers
        .iter()
        .position(|c| c.name == AGENT_CONTAINER)
    {
        Some(index) => index,
        None => {
            pod.containers.insert(
                0,
                Container {
                    name: AGENT_CONTAINER.into(),
                    ..Default::default()
                },
            );
            0
        }
    };
    let agent = &mut pod.containers[index];
    let mut resources = fleet.resources.clone();
    if let Some(own) = &agent.resources {
        merge_resources(&mut resources, own);
    }
    if resources != ResourceRequirements::default() {
        agent.resources = Some(resources);
    }
    index
}

/// The job's resource class: its `resource_class` tag, else the fleet's default.
fn resource_class<'a>(
    spec: &LaunchSpec,
    fleet: &'a FleetTemplate,
) -> Result<Option<&'a crate::resources::ResourceClass>, Refusal> {
    let Some(name) = spec
        .job
        .tag(RESOURCE_CLASS_TAG)
        .or(fleet.default_resource_class.as_deref())
    else {
        return Ok(None);
    };
    match fleet.resource_classes.get(name) {
        Some(class) => Ok(Some(class)),
        None if spec.job.tag(RESOURCE_CLASS_TAG).is_none() => Ok(None),
        None => Err(refuse(
            RESOURCE_CLASS_TAG,
            format!(
                "fleet {} has no resource class {name:?} (it has: {})",
                fleet.name,
                crate::fleet_settings::names(&fleet.resource_classes)
            ),
        )),
    }
}

/// The labels and annotations of a launch's Job and pod.
struct Metadata {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Labels and annotations: the fleet's, then the step's plugin `metadata`, then Updraft's
/// (which nothing overrides: the watch and cost attribution depend on them).
fn metadata(
    spec: &LaunchSpec,
    plugin: &KubernetesPlugin,
    inputs: &BuildInputs<'_>,
) -> Result<Metadata, Refusal> {
    for (key, value) in &plugin.labels {
        if !labels::is_qualified_name(key) || !labels::is_label_value(value) {
            return Err(refuse(
                format!("kubernetes.metadata.labels.{key}"),
                format!("expected a label key and value, got {key:?}: {value:?}"),
            ));
        }
    }
    if let Some(key) = plugin
        .annotations
        .keys()
        .find(|k| !labels::is_qualified_name(k))
    {
        return Err(refuse(
            format!("kubernetes.metadata.annotations.{key}"),
            "expected an annotation key",
        ));
    }
    let mut job_labels = inputs.fleet.labels.clone();
    job_labels.extend(plugin.labels.clone());
    job_labels.extend(labels::for_launch(spec, inputs.scheduler_id));
    let mut annotations = inputs.fleet.annotations.clone();
    annotations.extend(plugin.annotations.clone());
    annotations.extend(labels::annotations_for_launch(spec));
    Ok(Metadata {
        labels: job_labels,
        annotations,
    })
}

/// `activeDeadlineSeconds`: the launch's deadline, or the step's if shorter.
fn active_deadline(deadline: Duration, step: Option<i64>) -> i64 {
    let launch = i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX).max(1);
    step.map_or(launch, |s| s.min(launch))
}

/// The launch's Secret: its credentials, and the labels the watch and the cleanup select on.
fn secret_for(spec: &LaunchSpec, namespace: &str, scheduler_id: &str) -> Secret {
    let mut selection = BTreeMap::new();
    let all = labels::for_launch(spec, scheduler_id);
    for key in [
        labels::MANAGED_BY,
        labels::SCHEDULER,
        labels::FLEET,
        labels::JOB_UUID,
    ] {
        if let Some(value) = all.get(key) {
            selection.insert(key.to_string(), value.clone());
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(selection),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(
            spec.secrets
                .iter()
                .map(|(key, secret)| (key.clone(), ByteString(secret.expose().as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

mod containers;
#[cfg(test)]
mod tests;
