//! A fleet's `[fleet.kubernetes]` table: where its Jobs go (namespace, service account), what
//! its pods look like (agent image, pod template, default resources, resource classes, extra
//! labels), whether steps may change that with the `kubernetes` plugin or `image:`, and how
//! long a pool member's agents may take to drain.

use crate::labels::{is_dns_subdomain, is_qualified_name};
use crate::pod_template::{self, PodSource, AGENT_CONTAINER};
use crate::resources::{ResourceClass, ResourceClassSettings, ResourcesSettings};
use crate::settings::check_namespace;
use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use updraft_config::{Duration, Errors, Path, Settings};

/// One fleet's pods. The agent command is the fleet's `template.command`; it runs in the
/// `agent` container.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// The namespace of this fleet's Jobs; unset: `[kubernetes] namespace`.
    pub namespace: Option<String>,
    /// The agent container's image; it must hold the agent the fleet's `template.command`
    /// runs. Required unless the pod template gives the `agent` container an image.
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// The agent container's `imagePullPolicy`; unset: Kubernetes' default.
    #[serde(default)]
    #[schemars(with = "PullPolicy")]
    pub image_pull_policy: Option<PullPolicy>,
    /// The pods' service account; unset: the namespace's `default`.
    pub service_account: Option<String>,
    /// The pod template inline: a PodSpec as in a Pod manifest (camelCase keys), as a TOML
    /// table or a string of YAML. At most one of `pod_template`, `pod_template_file` and
    /// `pod_template_name`.
    #[serde(default)]
    #[schemars(schema_with = "table_or_yaml")]
    pub pod_template: Option<Value>,
    /// A YAML file holding the pod template (a PodSpec, or a PodTemplate or Pod manifest).
    #[schemars(length(min = 1))]
    pub pod_template_file: Option<String>,
    /// The name of a `PodTemplate` object in the fleet's namespace, read at start-up and
    /// every 30 s after.
    #[schemars(length(min = 1))]
    pub pod_template_name: Option<String>,
    /// Let steps change their pod with the agent-stack-k8s `kubernetes` plugin (`podSpec`,
    /// `podSpecPatch`, `sidecars`, `metadata`, …) and `image:`. When false, a step that
    /// tries is failed with the reason.
    #[serde(default = "default_allow_overrides")]
    pub allow_overrides: bool,
    /// The agent container's requests and limits when no resource class says otherwise.
    #[serde(default)]
    pub resources: ResourcesSettings,
    /// Sizes a job picks with the agent tag `resource_class=<name>`; each name must also be
    /// among the fleet's `tags` (`"resource_class=large"`) for jobs asking for it to come here.
    #[serde(default)]
    pub resource_classes: BTreeMap<String, ResourceClassSettings>,
    /// The resource class of jobs that name none.
    #[schemars(length(min = 1))]
    pub default_resource_class: Option<String>,
    /// More labels on every Job and pod of this fleet (a team or a cost centre).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// More annotations on every Job and pod of this fleet.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// For a pool fleet (`mode = "pool"`): how long a draining member's agents may take to
    /// finish the job they are running after their one SIGTERM, before the kubelet kills
    /// them (the member pod's `terminationGracePeriodSeconds`; whole seconds, at least 1s).
    /// Unset: the fleet's `running_deadline`.
    pub pool_drain_grace: Option<Duration>,
}

/// When the kubelet pulls the agent image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum PullPolicy {
    /// Every time a pod starts.
    Always,
    /// Only when the node does not have it.
    IfNotPresent,
    /// Never; the node must have it.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

fn table_or_yaml(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["object", "string"]})
}

fn default_allow_overrides() -> bool {
    true
}

impl Settings for FleetSettings {}

/// A fleet's pods, ready to build from.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTemplate {
    pub name: String,
    pub namespace: String,
    pub image: Option<String>,
    pub image_pull_policy: Option<PullPolicy>,
    pub service_account: Option<String>,
    pub pod: PodSource,
    pub allow_overrides: bool,
    pub resources: ResourceRequirements,
    pub resource_classes: BTreeMap<String, ResourceClass>,
    pub default_resource_class: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// A draining pool member's termination grace, when the fleet sets one.
    pub pool_drain_grace: Option<std::time::Duration>,
}

impl FleetSettings {
    /// The fleet's template, every problem reported under `at` (`fleet[1].kubernetes`).
    pub fn resolve(
        &self,
        name: &str,
        default_namespace: &str,
        at: &Path,
        errors: &mut Errors,
    ) -> FleetTemplate {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_string());
        if self.namespace.is_some() {
            check_namespace(&namespace, &at.key("namespace"), errors);
        }
        if let Some(account) = self
            .service_account
            .as_deref()
            .filter(|a| !is_dns_subdomain(a))
        {
            errors.push(
                &at.key("service_account"),
                format!("expected a service account name, got {account:?}"),
            );
        }
        let before = errors.len();
        let pod = self.pod_source(at, errors);
        let template_read = errors.len() == before;
        let template_image = match &pod {
            PodSource::Spec(spec) => spec
                .containers
                .iter()
                .find(|c| c.name == AGENT_CONTAINER)
                .and_then(|c| c.image.clone()),
            _ => None,
        };
        if template_read
            && self.image.is_none()
            && template_image.is_none()
            && !matches!(pod, PodSource::Named(_))
        {
            errors.push(
                &at.key("image"),
                "missing; set the agent image here or give the pod template's \"agent\" container one",
            );
        }
        let resources = self.resources.resolve(&at.key("resources"), errors);
        let resource_classes: BTreeMap<String, ResourceClass> = self
            .resource_classes
            .iter()
            .map(|(class, settings)| {
                let class_at = at.key("resource_classes").key(class);
                (class.clone(), settings.resolve(&class_at, errors))
            })
            .collect();
        if let Some(default) = &self.default_resource_class {
            if !resource_classes.contains_key(default) {
                errors.push(
                    &at.key("default_resource_class"),
                    format!(
                        "{default:?} is not one of this fleet's resource_classes ({})",
                        names(&resource_classes)
                    ),
                );
            }
        }
        for (key, value) in &self.labels {
            if !is_qualified_name(key) || !crate::labels::is_label_value(value) {
                errors.push(
                    &at.key("labels").key(key),
                    format!("expected a label key and value, got {key:?} = {value:?}"),
                );
            }
        }
        for key in self.annotations.keys().filter(|k| !is_qualified_name(k)) {
            errors.push(
                &at.key("annotations").key(key),
                "expected an annotation key like \"example.com/team\"",
            );
        }
        if let Some(grace) = self.pool_drain_grace.filter(|g| g.get().as_secs() == 0) {
            errors.push(
                &at.key("pool_drain_grace"),
                format!("expected at least 1s (it is a whole number of seconds in the pod), got {grace}"),
            );
        }
        FleetTemplate {
            name: name.to_string(),
            namespace,
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy,
            service_account: self.service_account.clone(),
            pod,
            allow_overrides: self.allow_overrides,
            resources,
            resource_classes,
            default_resource_class: self.default_resource_class.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            pool_drain_grace: self.pool_drain_grace.map(Duration::get),
        }
    }

    fn pod_source(&self, at: &Path, errors: &mut Errors) -> PodSource {
        let given: Vec<&str> = [
            self.pod_template.as_ref().map(|_| "pod_template"),
            self.pod_template_file.as_ref().map(|_| "pod_template_file"),
            self.pod_template_name.as_ref().map(|_| "pod_template_name"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            errors.push(
                &at.key(given[1]),
                format!("set only one of {}", given.join(", ")),
            );
            return PodSource::Bare;
        }
        let report = |key: &str,
                      file: Option<&str>,
                      problems: Vec<crate::strict::Problem>,
                      errors: &mut Errors| {
            for problem in problems {
                match file {
                    Some(file) => errors.push(
                        &at.key(key),
                        format!("{file}: {}", problem.at("").trim_start_matches(": ")),
                    ),
                    None => errors.push(
                        &Path::verbatim(&crate::strict::join(at.key(key).as_str(), &problem.path)),
                        problem.message,
                    ),
                }
            }
        };
        if let Some(value) = &self.pod_template {
            return match pod_template::from_value(value) {
                Ok(spec) => PodSource::Spec(std::sync::Arc::new(spec)),
                Err(problems) => {
                    report("pod_template", None, problems, errors);
                    PodSource::Bare
                }
            };
        }
        if let Some(file) = &self.pod_template_file {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(error) => {
                    errors.push(
                        &at.key("pod_template_file"),
                        format!("cannot read {file}: {error}"),
                    );
                    return PodSource::Bare;
                }
            };
            return match pod_template::from_yaml(&text) {
                Ok(spec) => PodSource::Spec(std::sync::Arc::new(spec)),
                Err(problems) => {
                    report("pod_template_file", Some(file), problems, errors);
                    PodSource::Bare
                }
            };
        }
        match &self.pod_template_name {
            Some(name) if !is_dns_subdomain(name) => {
                errors.push(
                    &at.key("pod_template_name"),
                    format!("expected an object name, got {name:?}"),
                );
                PodSource::Bare
            }
            Some(name) => PodSource::Named(name.clone()),
            None => PodSource::Bare,
        }
    }
}

/// The names of `classes`, for messages.
pub fn names<T>(classes: &BTreeMap<String, T>) -> String {
    if classes.is_empty() {
        "none defined".to_string()
    } else {
        classes.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolve(value: Value) -> (FleetTemplate, Vec<String>) {
        let mut errors = Errors::new();
        let at = Path::root().key("fleet").index(0).key("kubernetes");
        let settings =
            updraft_config::read::<FleetSettings>(&value, &at, &mut errors).expect("readable");
        let template = settings.resolve("linux", "ci", &at, &mut errors);
        (
            template,
            errors.into_vec().iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_full_fleet_table_resolves() {
        let (template, errors) = resolve(json!({
            "image": "ghcr.io/acme/agent:3",
            "image_pull_policy": "IfNotPresent",
            "service_account": "ci-jobs",
            "pod_template": {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
            "resources": {"requests": {"cpu": "1"}},
            "resource_classes": {"small": {"requests": {"cpu": "500m"}}, "large": {"requests": {"cpu": "4"}}},
            "default_resource_class": "small",
            "labels": {"team": "core"},
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(template.namespace, "ci");
        assert!(matches!(template.pod, PodSource::Spec(_)));
        assert_eq!(template.resource_classes.len(), 2);
    }

    #[test]
    fn every_mistake_is_named_with_its_path() {
        let (_, errors) = resolve(json!({
            "namespace": "Not_A_Namespace",
            "pod_template": {"containers": [{"name": "agent", "imagee": "x"}]},
            "resource_classes": {"small": {}},
            "default_resource_class": "medium",
            "labels": {"bad key": "x"},
            "pool_drain_grace": "500ms",
        }));
        for expected in [
            "fleet[0].kubernetes.pool_drain_grace: expected at least 1s (it is a whole number of seconds in the pod), got 500ms",
            "fleet[0].kubernetes.pod_template.containers[0].imagee: unknown field",
            "fleet[0].kubernetes.default_resource_class: \"medium\" is not one of this fleet's resource_classes (small)",
        ] {
            assert!(errors.iter().any(|e| e == expected), "missing {expected:?} in {errors:#?}");
        }
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("fleet[0].kubernetes.namespace: ")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("fleet[0].kubernetes.labels.bad key: ")),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_template_file_is_read_and_its_problems_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pod.yaml");
        std::fs::write(
            &file,
            "containers:\n- name: agent\n  image: ci:1\n  securityContextt: {}\n",
        )
        .unwrap();
        let (_, errors) = resolve(json!({"pod_template_file": file.to_string_lossy()}));
        assert_eq!(
            errors,
            [format!("fleet[0].kubernetes.pod_template_file: {}: containers[0].securityContextt: unknown field", file.display())]
        );
        let (_, errors) = resolve(json!({"image": "x", "pod_template_file": "/nonexistent.yaml"}));
        assert!(
            errors[0].starts_with(
                "fleet[0].kubernetes.pod_template_file: cannot read /nonexistent.yaml"
            ),
            "{errors:?}"
        );
        let (_, errors) =
            resolve(json!({"image": "x", "pod_template": {}, "pod_template_name": "ci"}));
        assert_eq!(errors, ["fleet[0].kubernetes.pod_template_name: set only one of pod_template, pod_template_name"]);
    }
}
