//! A fleet's pod template: the PodSpec every launch of the fleet starts from, written inline
//! in the config (a TOML table or a YAML string), in a YAML file, or kept in the cluster as a
//! `PodTemplate` object. Each is read strictly (unknown keys are mistakes) and held to the
//! rules of Updraft's pod shape.

use crate::strict::{self, Problem};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

/// The name of the container that runs the agent.
pub const AGENT_CONTAINER: &str = "agent";

/// Environment variables only Updraft sets in the agent container: the job acquisition
/// token, the job it is for, and where to take it from.
pub const RESERVED_ENV: [&str; 3] = [
    "BUILDKITE_AGENT_TOKEN",
    "BUILDKITE_AGENT_ACQUIRE_JOB",
    "BUILDKITE_AGENT_ENDPOINT",
];

/// Where a fleet's pods start from.
#[derive(Debug, Clone, PartialEq)]
pub enum PodSource {
    /// Only what Updraft adds: the agent container, the workspace.
    Bare,
    /// A PodSpec from the config or a file.
    Spec(std::sync::Arc<PodSpec>),
    /// A `PodTemplate` object in the fleet's namespace, read at start-up and again now and then.
    Named(String),
}

/// Read a pod template given as a value: a table, or a string of YAML. Accepts a PodSpec or a
/// whole `PodTemplate` or `Pod` object (its spec is taken).
pub fn from_value(value: &Value) -> Result<PodSpec, Vec<Problem>> {
    match value {
        Value::String(yaml) => from_yaml(yaml),
        other => from_document(other),
    }
}

/// Read a pod template from YAML text (see [`from_value`]).
pub fn from_yaml(yaml: &str) -> Result<PodSpec, Vec<Problem>> {
    let value: Value = serde_yaml_ng::from_str(yaml).map_err(|error| {
        vec![Problem {
            path: String::new(),
            message: format!("not valid YAML: {error}"),
        }]
    })?;
    from_document(&value)
}

fn from_document(value: &Value) -> Result<PodSpec, Vec<Problem>> {
    let (spec, under) = match value.get("kind").and_then(Value::as_str) {
        Some("PodTemplate") => (&value["template"]["spec"], "template.spec"),
        Some("Pod") => (&value["spec"], "spec"),
        Some(other) => {
            return Err(vec![Problem {
                path: "kind".into(),
                message: format!("expected a PodSpec, a PodTemplate or a Pod, got a {other}"),
            }])
        }
        None => (value, ""),
    };
    let spec: PodSpec = strict::read(spec).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| Problem {
                path: strict::join(under, &p.path),
                message: p.message,
            })
            .collect::<Vec<_>>()
    })?;
    let shape = check_shape(&spec);
    if shape.is_empty() {
        Ok(spec)
    } else {
        Err(shape
            .into_iter()
            .map(|p| Problem {
                path: strict::join(under, &p.path),
                message: p.message,
            })
            .collect())
    }
}

/// The rules of Updraft's pod shape: the only regular container is `agent` (anything else
/// would keep the pod running after the job; run it as a native sidecar instead), pods are
/// never restarted in place (the scheduler relaunches), and only Updraft sets the agent's
/// credentials.
pub fn check_shape(spec: &PodSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, container) in spec.containers.iter().enumerate() {
        if container.name != AGENT_CONTAINER {
            problems.push(Problem {
                path: format!("containers[{i}].name"),
                message: format!(
                    "the only regular container is {AGENT_CONTAINER:?}; run {:?} as a native sidecar (an initContainer with restartPolicy: Always) so it ends with the job",
                    container.name
                ),
            });
        }
        for (j, var) in container.env.iter().flatten().enumerate() {
            if RESERVED_ENV.contains(&var.name.as_str()) {
                problems.push(Problem {
                    path: format!("containers[{i}].env[{j}].name"),
                    message: format!("{} is set by Updraft for each job", var.name),
                });
            }
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref().filter(|p| *p != "Never") {
        problems.push(Problem {
            path: "restartPolicy".into(),
            message: format!("expected \"Never\" or unset (a failed pod is relaunched by Updraft, not restarted), got {policy:?}"),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_a_yaml_string_and_whole_objects_all_read() {
        let spec = from_value(&json!({"containers": [{"name": "agent", "image": "ci:1"}], "nodeSelector": {"a": "b"}})).unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("ci:1"));
        let spec = from_value(&json!("containers:\n- name: agent\n  image: ci:2\n")).unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("ci:2"));
        let spec = from_yaml("kind: PodTemplate\napiVersion: v1\nmetadata: {name: ci}\ntemplate:\n  spec:\n    serviceAccountName: ci\n    containers: []\n").unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("ci"));
    }

    #[test]
    fn unknown_fields_and_shape_problems_are_named_with_their_path() {
        let problems = from_yaml("kind: PodTemplate\ntemplate:\n  spec:\n    containers:\n    - name: agent\n      imagee: x\n").unwrap_err();
        assert_eq!(
            problems,
            vec![Problem {
                path: "template.spec.containers[0].imagee".into(),
                message: "unknown field".into()
            }]
        );

        let problems = from_value(&json!({
            "restartPolicy": "OnFailure",
            "containers": [
                {"name": "agent", "env": [{"name": "BUILDKITE_AGENT_TOKEN", "value": "x"}]},
                {"name": "docker"},
            ],
        }))
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "containers[0].env[0].name",
                "containers[1].name",
                "restartPolicy"
            ]
        );
        assert!(
            problems[1].message.contains("native sidecar"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_yaml_and_other_kinds_are_refused() {
        assert!(from_yaml("containers: [").unwrap_err()[0]
            .message
            .starts_with("not valid YAML"));
        assert_eq!(from_yaml("kind: Deployment\n").unwrap_err()[0].path, "kind");
    }
}
