//! The containers of a launch's pod: the agent's command, credentials and environment, the
//! step's container folded into it, sidecars, and the workspace every container shares.

use super::{refuse, Refusal};
use crate::fleet_settings::FleetTemplate;
use crate::plugin::KubernetesPlugin;
use crate::pod_template::{AGENT_CONTAINER, RESERVED_ENV};
use crate::resources::merge_resources;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, SecretKeySelector, Volume,
    VolumeMount,
};
use std::collections::BTreeMap;
use updraft_backends::LaunchSpec;

/// The shared emptyDir the agent checks out and builds in, and sidecars can see.
pub const WORKSPACE_VOLUME: &str = "workspace";
pub const WORKSPACE_PATH: &str = "/workspace";
/// The command a step's container gives the job, run by the agent instead of the job's own
/// (Updraft's agent reads it; it is how agent-stack-k8s `podSpec` commands run).
pub const JOB_COMMAND_ENV: &str = "UPDRAFT_JOB_COMMAND";
/// The `BUILDKITE_PLUGINS` key of the plugin the platform applied itself, which the agent
/// must neither run nor refuse.
pub const APPLIED_PLUGINS_ENV: &str = "UPDRAFT_APPLIED_PLUGINS";

/// The agent's command and the variables that carry its job and credentials.
pub(super) fn set_agent_essentials(agent: &mut Container, spec: &LaunchSpec) {
    agent.command = Some(spec.command.clone());
    agent.args = None;
    let env = agent.env.get_or_insert_with(Vec::new);
    env.retain(|var| {
        !RESERVED_ENV.contains(&var.name.as_str()) && !spec.secrets.contains_key(&var.name)
    });
    for (name, value) in spec
        .env
        .iter()
        .filter(|(name, _)| RESERVED_ENV.contains(&name.as_str()))
    {
        env.push(plain(name, value));
    }
    for key in spec.secrets.keys() {
        env.push(EnvVar {
            name: key.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: spec.name.to_string(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

/// A patch may not change what the agent runs or the credentials it holds (the reserved
/// variables and the launch's secrets; the patch may add its own).
pub(super) fn check_agent_untouched(
    before: &Container,
    pod: &PodSpec,
    spec: &LaunchSpec,
) -> Result<(), Refusal> {
    let field = "kubernetes.podSpecPatch.containers";
    let Some(after) = pod.containers.iter().find(|c| c.name == AGENT_CONTAINER) else {
        return Err(refuse(field, "the agent container may not be removed"));
    };
    if after.command != before.command || after.args != before.args {
        return Err(refuse(
            field,
            "changing the agent container's command or arguments is not allowed (put the step's command in its podSpec container)",
        ));
    }
    let credentials = |c: &Container| -> Vec<EnvVar> {
        c.env
            .iter()
            .flatten()
            .filter(|v| {
                RESERVED_ENV.contains(&v.name.as_str()) || spec.secrets.contains_key(&v.name)
            })
            .cloned()
            .collect()
    };
    if credentials(after) != credentials(before) {
        return Err(refuse(
            field,
            "changing the agent container's token or credentials is not allowed",
        ));
    }
    Ok(())
}

/// Merge the step's container into the agent; the step's command (and arguments) becomes the
/// job's command.
pub(super) fn fold_step_container(
    agent: &mut Container,
    step: Container,
) -> Result<Option<String>, Refusal> {
    let field = format!("kubernetes.podSpec.containers[{}]", step.name);
    for var in step.env.iter().flatten() {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            return Err(refuse(
                format!("{field}.env"),
                format!("{} is set by Updraft for each job", var.name),
            ));
        }
    }
    if let Some(image) = step.image {
        agent.image = Some(image);
    }
    if step.image_pull_policy.is_some() {
        agent.image_pull_policy = step.image_pull_policy;
    }
    let env = agent.env.get_or_insert_with(Vec::new);
    for var in step.env.into_iter().flatten() {
        env.retain(|existing| existing.name != var.name);
        env.push(var);
    }
    agent
        .env_from
        .get_or_insert_with(Vec::new)
        .extend(step.env_from.into_iter().flatten());
    for mount in step.volume_mounts.into_iter().flatten() {
        add_mount(agent, mount);
    }
    if let Some(resources) = &step.resources {
        merge_resources(
            agent.resources.get_or_insert_with(Default::default),
            resources,
        );
    }
    if step.working_dir.is_some() {
        agent.working_dir = step.working_dir;
    }
    if step.security_context.is_some() {
        agent.security_context = step.security_context;
    }
    let words: Vec<String> = step
        .command
        .into_iter()
        .flatten()
        .chain(step.args.into_iter().flatten())
        .collect();
    // agent-stack-k8s joins a command container's command and arguments as lines of one
    // script, which is what a shell runs for the job.
    Ok((!words.is_empty()).then(|| words.join("\n")))
}

pub(super) fn add_sidecars(pod: &mut PodSpec, plugin: &KubernetesPlugin) {
    if plugin.sidecars.is_empty() {
        return;
    }
    let init = pod.init_containers.get_or_insert_with(Vec::new);
    for (i, sidecar) in plugin.sidecars.iter().enumerate() {
        let mut sidecar = sidecar.clone();
        if sidecar.name.is_empty() {
            sidecar.name = format!("sidecar-{i}");
        }
        sidecar.restart_policy = Some("Always".into());
        sidecar
            .env_from
            .get_or_insert_with(Vec::new)
            .extend(plugin.sidecar_env_from.iter().cloned());
        drop_empty_env_from(&mut sidecar);
        for mount in plugin
            .extra_volume_mounts
            .iter()
            .chain(&plugin.sidecar_volume_mounts)
        {
            add_mount(&mut sidecar, mount.clone());
        }
        init.push(sidecar);
    }
}

/// Updraft's environment for the agent: the launch's variables (its own override the
/// template's), the build path in the workspace, and what the plugin asks of the checkout.
fn set_agent_env(
    agent: &mut Container,
    spec: &LaunchSpec,
    plugin: &KubernetesPlugin,
    job_command: Option<String>,
) {
    let mut ours: BTreeMap<String, String> = spec
        .env
        .iter()
        .filter(|(name, _)| !RESERVED_ENV.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let has_build_path = agent
        .env
        .iter()
        .flatten()
        .any(|v| v.name == "BUILDKITE_BUILD_PATH");
    if !has_build_path {
        ours.entry("BUILDKITE_BUILD_PATH".into())
            .or_insert_with(|| format!("{WORKSPACE_PATH}/build"));
    }
    ours.extend(plugin.checkout.env.clone());
    if plugin.checkout.skip {
        ours.insert("BUILDKITE_SKIP_CHECKOUT".into(), "true".into());
    }
    if let Some(command) = job_command {
        ours.insert(JOB_COMMAND_ENV.into(), command);
    }
    let env = agent.env.get_or_insert_with(Vec::new);
    env.retain(|var| !ours.contains_key(&var.name));
    env.extend(ours.iter().map(|(name, value)| plain(name, value)));
    env.push(EnvVar {
        name: "BUILDKITE_K8S_NODE".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    drop_empty_env_from(agent);
}

pub(crate) fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn drop_empty_env(container: &mut Container) {
    if container.env.as_ref().is_some_and(Vec::is_empty) {
        container.env = None;
    }
    drop_empty_env_from(container);
}

fn drop_empty_env_from(container: &mut Container) {
    if container.env_from.as_ref().is_some_and(Vec::is_empty) {
        container.env_from = None;
    }
}

pub(crate) fn workspace_mount() -> VolumeMount {
    VolumeMount {
        name: WORKSPACE_VOLUME.into(),
        mount_path: WORKSPACE_PATH.into(),
        ..Default::default()
    }
}

/// Add a mount unless the container already mounts something at that path.
pub(crate) fn add_mount(container: &mut Container, mount: VolumeMount) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.mount_path == mount.mount_path) {
        mounts.push(mount);
    }
}

fn ensure_workspace_volume(pod: &mut PodSpec) {
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == WORKSPACE_VOLUME) {
        volumes.push(Volume {
            name: WORKSPACE_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
    }
}

/// The agent's environment, `envFrom`, mounts, image and pull policy once the step has had its
/// say: the plugin's `gitEnvFrom`, checkout and command parameters, `extraVolumeMounts`, the
/// workspace, Updraft's variables, and the fleet's image when neither template nor step gave one.
pub(super) fn finish_agent(
    agent: &mut Container,
    spec: &LaunchSpec,
    plugin: &KubernetesPlugin,
    fleet: &FleetTemplate,
    job_command: Option<String>,
) {
    agent.env_from.get_or_insert_with(Vec::new).extend(
        plugin
            .git_env_from
            .iter()
            .chain(&plugin.checkout.env_from)
            .chain(&plugin.command_env_from)
            .cloned(),
    );
    for mount in plugin
        .extra_volume_mounts
        .iter()
        .chain(&plugin.checkout.volume_mounts)
        .chain(&plugin.command_volume_mounts)
    {
        add_mount(agent, mount.clone());
    }
    add_mount(agent, workspace_mount());
    set_agent_env(agent, spec, plugin, job_command);
    if !plugin.key.is_empty() {
        let env = agent.env.get_or_insert_with(Vec::new);
        env.retain(|var| var.name != APPLIED_PLUGINS_ENV);
        env.push(plain(APPLIED_PLUGINS_ENV, &plugin.key));
    }
    if agent.image.is_none() {
        agent.image = fleet.image.clone();
    }
    if let Some(policy) = fleet.image_pull_policy {
        agent
            .image_pull_policy
            .get_or_insert_with(|| policy.as_str().to_string());
    }
    drop_empty_env(agent);
}

/// The workspace volume, mounted in every init container too (the native sidecars above all,
/// as in agent-stack-k8s: a sidecar can leave a socket or a file for the job).
pub(crate) fn share_workspace(pod: &mut PodSpec) {
    ensure_workspace_volume(pod);
    for container in pod.init_containers.iter_mut().flatten() {
        add_mount(container, workspace_mount());
    }
}
