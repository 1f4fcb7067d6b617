//! The agent-stack-k8s `kubernetes` plugin, read from a job's `BUILDKITE_PLUGINS`, so
//! pipelines written for agent-stack-k8s run unchanged. The plugin is "virtual": Updraft
//! applies it to the pod and no agent ever runs it. Its fields are read as strictly as
//! agent-stack-k8s's linter reads them: an unknown field or a bad PodSpec is a refusal naming
//! the field, never a silent difference.

use crate::strict::{self, Problem};
use k8s_openapi::api::core::v1::{Container, EnvFromSource, PodSpec, VolumeMount};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The repository the plugin is known by (`kubernetes` is its short form).
pub const PLUGIN_REPOSITORY: &str = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

/// The plugin's fields, as agent-stack-k8s v0.47 defines them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubernetesPlugin {
    /// The key the step names the plugin by in `BUILDKITE_PLUGINS`.
    pub key: String,
    pub pod_spec: Option<PodSpec>,
    pub pod_template: Option<String>,
    /// A strategic merge patch on the pod, kept as JSON (its directives are not PodSpec fields).
    pub pod_spec_patch: Option<Value>,
    pub sidecars: Vec<Container>,
    pub git_env_from: Vec<EnvFromSource>,
    pub extra_volume_mounts: Vec<VolumeMount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub checkout: Checkout,
    pub command_env_from: Vec<EnvFromSource>,
    pub command_volume_mounts: Vec<VolumeMount>,
    pub sidecar_env_from: Vec<EnvFromSource>,
    pub sidecar_volume_mounts: Vec<VolumeMount>,
    pub job_active_deadline_seconds: Option<i64>,
}

/// The checkout settings the agent understands, as its environment variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkout {
    pub skip: bool,
    /// `BUILDKITE_GIT_*` variables (clone, fetch, clean and checkout flags; submodules).
    pub env: BTreeMap<String, String>,
    pub env_from: Vec<EnvFromSource>,
    pub volume_mounts: Vec<VolumeMount>,
}

/// The plugin as written, before its Kubernetes objects are read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    pod_spec: Option<Value>,
    pod_template: Option<String>,
    pod_spec_patch: Option<Value>,
    sidecars: Option<Vec<Value>>,
    git_env_from: Option<Vec<Value>>,
    extra_volume_mounts: Option<Vec<Value>>,
    metadata: Option<RawMetadata>,
    checkout: Option<RawCheckout>,
    command_params: Option<RawParams>,
    sidecar_params: Option<RawParams>,
    job_active_deadline_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCheckout {
    #[serde(default)]
    skip: bool,
    clone_flags: Option<String>,
    fetch_flags: Option<String>,
    clean_flags: Option<String>,
    checkout_flags: Option<String>,
    no_submodules: Option<bool>,
    env_from: Option<Vec<Value>>,
    extra_volume_mounts: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawParams {
    interposer: Option<String>,
    env_from: Option<Vec<Value>>,
    extra_volume_mounts: Option<Vec<Value>>,
}

/// Whether a `BUILDKITE_PLUGINS` key names this plugin: `kubernetes`, or its repository with
/// any scheme, `.git` or `#version`.
pub fn is_kubernetes_plugin(key: &str) -> bool {
    let name = key.split('#').next().unwrap_or(key);
    let name = name
        .split_once("://")
        .map_or(name, |(_, rest)| rest)
        .trim_end_matches(".git");
    name == "kubernetes"
        || name == PLUGIN_REPOSITORY
        || name.ends_with("/kubernetes-buildkite-plugin")
}

/// The plugin in a job's `BUILDKITE_PLUGINS`, if the step uses it. Problems are given with
/// paths like `kubernetes.podSpec.containers[0].imagee`.
pub fn from_plugins_env(plugins: Option<&str>) -> Result<Option<KubernetesPlugin>, Vec<Problem>> {
    let Some(raw) = plugins
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "null")
    else {
        return Ok(None);
    };
    let list: Value = serde_json::from_str(raw).map_err(|error| {
        vec![Problem {
            path: "BUILDKITE_PLUGINS".into(),
            message: format!("not valid JSON: {error}"),
        }]
    })?;
    let entries = match list {
        Value::Array(entries) => entries,
        other => vec![other],
    };
    for entry in entries {
        let Value::Object(map) = entry else { continue };
        for (key, config) in map {
            if is_kubernetes_plugin(&key) {
                return read(&config)
                    .map(|plugin| Some(KubernetesPlugin { key, ..plugin }))
                    .map_err(|problems| {
                        problems
                            .into_iter()
                            .map(|p| Problem {
                                path: strict::join("kubernetes", &p.path),
                                message: p.message,
                            })
                            .collect()
                    });
            }
        }
    }
    Ok(None)
}

/// Read the plugin's configuration (the value under its key).
pub fn read(config: &Value) -> Result<KubernetesPlugin, Vec<Problem>> {
    let raw: Raw = serde_path_to_error::deserialize(config).map_err(|error| {
        vec![Problem {
            path: error.path().to_string().trim_start_matches('.').to_string(),
            message: error.inner().to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut plugin = KubernetesPlugin {
        pod_template: raw.pod_template,
        job_active_deadline_seconds: raw.job_active_deadline_seconds,
        ..KubernetesPlugin::default()
    };
    plugin.pod_spec = raw
        .pod_spec
        .as_ref()
        .and_then(|v| one::<PodSpec>(v, "podSpec", &mut problems));
    if let Some(patch) = &raw.pod_spec_patch {
        // A patch may carry directives and `null`s a PodSpec cannot; only its shape is checked.
        if !patch.is_object() {
            problems.push(Problem {
                path: "podSpecPatch".into(),
                message: "expected a PodSpec patch (a map)".into(),
            });
        }
        plugin.pod_spec_patch = Some(patch.clone());
    }
    plugin.sidecars = many::<Container>(raw.sidecars.as_deref(), "sidecars", &mut problems);
    plugin.git_env_from =
        many::<EnvFromSource>(raw.git_env_from.as_deref(), "gitEnvFrom", &mut problems);
    plugin.extra_volume_mounts = many::<VolumeMount>(
        raw.extra_volume_mounts.as_deref(),
        "extraVolumeMounts",
        &mut problems,
    );
    if let Some(metadata) = raw.metadata {
        plugin.labels = metadata.labels;
        plugin.annotations = metadata.annotations;
    }
    if let Some(checkout) = raw.checkout {
        let mut env = BTreeMap::new();
        for (var, value) in [
            ("BUILDKITE_GIT_CLONE_FLAGS", checkout.clone_flags),
            ("BUILDKITE_GIT_FETCH_FLAGS", checkout.fetch_flags),
            ("BUILDKITE_GIT_CLEAN_FLAGS", checkout.clean_flags),
            ("BUILDKITE_GIT_CHECKOUT_FLAGS", checkout.checkout_flags),
        ] {
            if let Some(value) = value {
                env.insert(var.to_string(), value);
            }
        }
        if checkout.no_submodules == Some(true) {
            env.insert("BUILDKITE_GIT_SUBMODULES".into(), "false".into());
        }
        plugin.checkout = Checkout {
            skip: checkout.skip,
            env,
            env_from: many(
                checkout.env_from.as_deref(),
                "checkout.envFrom",
                &mut problems,
            ),
            volume_mounts: many(
                checkout.extra_volume_mounts.as_deref(),
                "checkout.extraVolumeMounts",
                &mut problems,
            ),
        };
    }
    if let Some(params) = raw.command_params {
        if let Some(interposer) = params.interposer.filter(|i| i != "buildkite") {
            problems.push(Problem {
                path: "commandParams.interposer".into(),
                message: format!(
                    "only \"buildkite\" (the default) is supported, got {interposer:?}"
                ),
            });
        }
        plugin.command_env_from = many(
            params.env_from.as_deref(),
            "commandParams.envFrom",
            &mut problems,
        );
        plugin.command_volume_mounts = many(
            params.extra_volume_mounts.as_deref(),
            "commandParams.extraVolumeMounts",
            &mut problems,
        );
    }
    if let Some(params) = raw.sidecar_params {
        if params.interposer.is_some() {
            problems.push(Problem {
                path: "sidecarParams.interposer".into(),
                message: "unknown field".into(),
            });
        }
        plugin.sidecar_env_from = many(
            params.env_from.as_deref(),
            "sidecarParams.envFrom",
            &mut problems,
        );
        plugin.sidecar_volume_mounts = many(
            params.extra_volume_mounts.as_deref(),
            "sidecarParams.extraVolumeMounts",
            &mut problems,
        );
    }
    if let Some(seconds) = plugin.job_active_deadline_seconds.filter(|s| *s < 1) {
        problems.push(Problem {
            path: "jobActiveDeadlineSeconds".into(),
            message: format!("expected at least 1, got {seconds}"),
        });
    }
    if problems.is_empty() {
        Ok(plugin)
    } else {
        Err(problems)
    }
}

fn one<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match strict::read::<T>(value) {
        Ok(typed) => Some(typed),
        Err(found) => {
            problems.extend(found.into_iter().map(|p| Problem {
                path: strict::join(at, &p.path),
                message: p.message,
            }));
            None
        }
    }
}

fn many<T: serde::de::DeserializeOwned + serde::Serialize>(
    values: Option<&[Value]>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    values
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, value)| one(value, &format!("{at}[{i}]"), problems))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_plugin_is_found_by_any_of_its_names() {
        for key in [
            "kubernetes",
            "github.com/buildkite-plugins/kubernetes-buildkite-plugin",
            "https://github.com/buildkite-plugins/kubernetes-buildkite-plugin.git#v1.2.0",
            "kubernetes#v1",
        ] {
            assert!(is_kubernetes_plugin(key), "{key}");
        }
        assert!(!is_kubernetes_plugin("docker-compose#v5"));
        assert_eq!(
            from_plugins_env(Some(r#"[{"docker#v5": {"image": "x"}}]"#)),
            Ok(None)
        );
        assert_eq!(from_plugins_env(None), Ok(None));
    }

    #[test]
    fn an_agent_stack_k8s_step_reads_whole() {
        let plugins = json!([{"github.com/buildkite-plugins/kubernetes-buildkite-plugin": {
            "metadata": {"labels": {"team": "core"}, "annotations": {"note": "x"}},
            "checkout": {"cloneFlags": "--depth=1", "skip": false},
            "gitEnvFrom": [{"secretRef": {"name": "git-ssh-key"}}],
            "sidecars": [{"image": "postgres:16", "env": [{"name": "POSTGRES_PASSWORD", "value": "pw"}]}],
            "podSpec": {"containers": [{"name": "tests", "image": "alpine:latest", "command": ["echo \"MOUNTAIN=$$MOUNTAIN\""]}]},
            "podSpecPatch": {"containers": [{"name": "tests", "env": [{"name": "MOUNTAIN", "value": "cotopaxi"}]}]},
            "jobActiveDeadlineSeconds": 3600
        }}]);
        let plugin = from_plugins_env(Some(&plugins.to_string()))
            .unwrap()
            .expect("the plugin");
        assert_eq!(plugin.labels["team"], "core");
        assert_eq!(
            plugin.checkout.env["BUILDKITE_GIT_CLONE_FLAGS"],
            "--depth=1"
        );
        assert_eq!(plugin.sidecars[0].image.as_deref(), Some("postgres:16"));
        assert_eq!(plugin.pod_spec.unwrap().containers[0].name, "tests");
        assert_eq!(plugin.git_env_from.len(), 1);
        assert_eq!(plugin.job_active_deadline_seconds, Some(3600));
    }

    #[test]
    fn mistakes_are_refused_with_their_path() {
        let problems = from_plugins_env(Some(
            &json!([{"kubernetes": {"podSpec": {"containers": [{"name": "a", "imagee": "x"}]}}}])
                .to_string(),
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            vec![Problem {
                path: "kubernetes.podSpec.containers[0].imagee".into(),
                message: "unknown field".into()
            }]
        );

        let problems = from_plugins_env(Some(
            &json!([{"kubernetes": {"podSpecPatchh": {}}}]).to_string(),
        ))
        .unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("unknown field `podSpecPatchh`"),
            "{problems:?}"
        );

        let problems = from_plugins_env(Some(
            &json!([{"kubernetes": {"sidecars": [{"image": "x", "ports": "80"}]}}]).to_string(),
        ))
        .unwrap_err();
        assert_eq!(problems[0].path, "kubernetes.sidecars[0].ports");

        assert!(from_plugins_env(Some("[{")).unwrap_err()[0]
            .message
            .starts_with("not valid JSON"));
    }
}
