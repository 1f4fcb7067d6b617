//! Building one pool member: a Pod named after the member with one container per agent
//! (`agent-1` … `agent-N`), each a copy of the fleet's agent container (pod template, image,
//! resources, default resource class) running the pool's agent command, and the Secret of the
//! same name its credentials come from. The pod keeps the fleet's placement, service account,
//! native sidecars, labels and annotations, shares the workspace volume, is never restarted
//! in place, and gives its agents the drain grace to finish their job after the SIGTERM.

use crate::builder::WORKSPACE_PATH;
use crate::builder::{add_mount, ensure_agent, plain, share_workspace, workspace_mount};
use crate::fleet_settings::FleetTemplate;
use crate::labels;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Pod, PodSpec, Secret, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::time::Duration;
use updraft_backends::pool::{MemberName, MemberSpec};

/// The prefix of each agent container's name; the `n`th is `agent-<n>`.
pub const AGENT_PREFIX: &str = "agent-";

/// What a member is built from besides its spec.
pub struct MemberInputs<'a> {
    pub fleet: &'a FleetTemplate,
    /// The fleet's pod template, when it has one (a named `PodTemplate` already fetched).
    pub base: Option<&'a PodSpec>,
    pub scheduler_id: &'a str,
    /// How long a draining agent may take to finish its job.
    pub drain_grace: Duration,
}

/// A member's objects, ready to create (the Secret's owner is set once the Pod exists).
#[derive(Debug, Clone)]
pub struct BuiltMember {
    pub pod: Pod,
    /// `None` when the spec holds no secret.
    pub secret: Option<Secret>,
}

/// Build the Pod and Secret of member `name`; the error says what is missing.
pub fn build(
    name: &MemberName,
    spec: &MemberSpec,
    inputs: &MemberInputs<'_>,
) -> Result<BuiltMember, String> {
    let fleet = inputs.fleet;
    let labels = labels::for_pool_member(&spec.fleet, inputs.scheduler_id).ok_or_else(|| {
        format!(
            "fleet name {:?} is not a valid label value, so it cannot mark its pool's pods",
            spec.fleet
        )
    })?;
    let mut pod = inputs.base.cloned().unwrap_or_default();
    let index = ensure_agent(&mut pod, fleet);
    if let Some(class) = fleet
        .default_resource_class
        .as_ref()
        .and_then(|class| fleet.resource_classes.get(class))
    {
        class.apply(&mut pod, index);
    }
    let mut template = pod.containers.remove(index);
    if template.image.is_none() {
        template.image = fleet.image.clone();
    }
    if template.image.is_none() {
        return Err(format!(
            "fleet {} names no agent image (set [fleet.kubernetes] image or give the pod template's agent container one)",
            fleet.name
        ));
    }
    if let Some(policy) = fleet.image_pull_policy {
        template
            .image_pull_policy
            .get_or_insert_with(|| policy.as_str().to_string());
    }
    pod.containers = (1..=spec.agents)
        .map(|n| agent_container(&template, name, n, spec))
        .collect();
    share_workspace(&mut pod);
    pod.restart_policy = Some("Never".into());
    pod.termination_grace_period_seconds =
        Some(i64::try_from(inputs.drain_grace.as_secs().max(1)).unwrap_or(i64::MAX));
    if pod.service_account_name.is_none() {
        pod.service_account_name = fleet.service_account.clone();
    }
    let mut pod_labels = fleet.labels.clone();
    pod_labels.extend(labels.clone());
    let mut annotations = fleet.annotations.clone();
    annotations.insert(labels::SAFE_TO_EVICT.into(), "false".into());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(fleet.namespace.clone()),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(pod),
        status: None,
    };
    let secret = (!spec.secrets.is_empty()).then(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(fleet.namespace.clone()),
            labels: Some(labels),
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
    });
    Ok(BuiltMember { pod, secret })
}

/// The `n`th agent: the fleet's agent container running the pool's command, named
/// `agent-<n>`, with the pool's environment, its own agent name and build path, and each
/// secret from the member's Secret.
fn agent_container(
    template: &Container,
    member: &MemberName,
    n: u32,
    spec: &MemberSpec,
) -> Container {
    let mut agent = template.clone();
    agent.name = format!("{AGENT_PREFIX}{n}");
    agent.command = Some(spec.command.clone());
    agent.args = None;
    let mut ours: BTreeMap<String, String> = spec.env.clone();
    ours.insert("BUILDKITE_AGENT_NAME".into(), member.agent_name(n));
    let has_build_path = agent
        .env
        .iter()
        .flatten()
        .any(|v| v.name == "BUILDKITE_BUILD_PATH");
    if !has_build_path {
        ours.entry("BUILDKITE_BUILD_PATH".into())
            .or_insert_with(|| format!("{WORKSPACE_PATH}/{}", agent.name));
    }
    let env = agent.env.get_or_insert_with(Vec::new);
    env.retain(|var| !ours.contains_key(&var.name) && !spec.secrets.contains_key(&var.name));
    env.extend(ours.iter().map(|(name, value)| plain(name, value)));
    env.extend(spec.secrets.keys().map(|key| EnvVar {
        name: key.clone(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: member.to_string(),
                key: key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    add_mount(&mut agent, workspace_mount());
    agent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_template::PodSource;
    use updraft_model::Secret as Credential;

    fn fleet() -> FleetTemplate {
        FleetTemplate {
            name: "linux".into(),
            namespace: "ci".into(),
            image: Some("ghcr.io/acme/agent:3".into()),
            image_pull_policy: None,
            service_account: Some("ci-agents".into()),
            pod: PodSource::Bare,
            allow_overrides: true,
            resources: Default::default(),
            resource_classes: BTreeMap::new(),
            default_resource_class: None,
            labels: [("team".to_string(), "platform".to_string())].into(),
            annotations: BTreeMap::new(),
            pool_drain_grace: None,
        }
    }

    fn spec() -> MemberSpec {
        MemberSpec {
            fleet: "linux".into(),
            agents: 2,
            command: vec!["buildkite-agent".into(), "start".into()],
            env: [(
                "BUILDKITE_AGENT_TAGS".to_string(),
                "queue=linux".to_string(),
            )]
            .into(),
            secrets: [(
                "BUILDKITE_AGENT_TOKEN".to_string(),
                Credential::new("registration-token"),
            )]
            .into(),
        }
    }

    #[test]
    fn each_agent_is_a_container_with_its_name_and_the_token_by_reference() {
        let fleet = fleet();
        let name = MemberName::new("linux-0a1b2c3d");
        let base: PodSpec = serde_json::from_value(serde_json::json!({
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "containers": [{"name": "agent", "env": [{"name": "LANG", "value": "C"}]}],
        }))
        .unwrap();
        let built = build(
            &name,
            &spec(),
            &MemberInputs {
                fleet: &fleet,
                base: Some(&base),
                scheduler_id: "updraft",
                drain_grace: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let pod = built.pod.spec.as_ref().unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["agent-1", "agent-2"]);
        assert_eq!(pod.termination_grace_period_seconds, Some(3600));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("ci-agents"));
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["kubernetes.io/arch"],
            "arm64"
        );
        let second = &pod.containers[1];
        assert_eq!(second.image.as_deref(), Some("ghcr.io/acme/agent:3"));
        let env = second.env.as_ref().unwrap();
        let value = |n: &str| env.iter().find(|v| v.name == n).cloned().unwrap();
        assert_eq!(
            value("BUILDKITE_AGENT_NAME").value.as_deref(),
            Some("linux-0a1b2c3d-2")
        );
        assert_eq!(value("LANG").value.as_deref(), Some("C"));
        let token = value("BUILDKITE_AGENT_TOKEN");
        assert_eq!(token.value, None);
        let reference = token.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(reference.name, "linux-0a1b2c3d");
        let labels = built.pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::POOL], "linux");
        assert_eq!(labels["team"], "platform");
        let secret = built.secret.unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("linux-0a1b2c3d"));
        assert!(!serde_json::to_string(&built.pod)
            .unwrap()
            .contains("registration-token"));
    }

    #[test]
    fn a_fleet_without_an_image_is_refused_with_the_reason() {
        let mut fleet = fleet();
        fleet.image = None;
        let error = build(
            &MemberName::new("linux-0a1b2c3d"),
            &spec(),
            &MemberInputs {
                fleet: &fleet,
                base: None,
                scheduler_id: "updraft",
                drain_grace: Duration::from_secs(60),
            },
        )
        .unwrap_err();
        assert!(error.contains("names no agent image"), "{error}");
    }
}
