//! Reading Kubernetes objects strictly. k8s-openapi's types skip keys they do not know, so a
//! misspelt `imagePullPolicyy` in a pod template would vanish without a word; here a value is
//! read into its type (type errors come back with their path) and written out again, and
//! every key of the input that did not survive the round trip is reported as unknown.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// One problem in a value, at a path relative to the value (`containers[0].image`; empty for
/// the value itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    /// The problem under `prefix` (`fleet[0].kubernetes.pod_template`), as `prefix.path: message`.
    pub fn at(&self, prefix: &str) -> String {
        format!("{}: {}", join(prefix, &self.path), self.message)
    }
}

/// `prefix` and `path` joined the way config paths read (`a.b`, `a[0]`).
pub fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => path.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Read `value` as `T`: the typed value, or every problem found (a type error stops reading,
/// as serde stops; unknown keys are all reported).
pub fn read<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, Vec<Problem>> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|error| {
        vec![Problem {
            path: serde_path(error.path()),
            message: error
                .inner()
                .to_string()
                .replace("invalid type: ", "")
                .replace("invalid value: ", ""),
        }]
    })?;
    let back = serde_json::to_value(&typed).map_err(|error| {
        vec![Problem {
            path: String::new(),
            message: format!("cannot be written back: {error}"),
        }]
    })?;
    let mut unknown = Vec::new();
    missing_keys(value, &back, String::new(), &mut unknown);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(unknown)
    }
}

/// Keys of `original` (recursively) that `round_trip` lacks. A `null` is not reported: it
/// means "unset", which the typed value expresses by leaving the key out.
fn missing_keys(original: &Value, round_trip: &Value, at: String, found: &mut Vec<Problem>) {
    match (original, round_trip) {
        (Value::Object(before), Value::Object(after)) => {
            for (key, value) in before {
                let here = join(&at, key);
                match after.get(key) {
                    Some(kept) => missing_keys(value, kept, here, found),
                    None if value.is_null() => {}
                    None => found.push(Problem {
                        path: here,
                        message: "unknown field".to_string(),
                    }),
                }
            }
        }
        (Value::Array(before), Value::Array(after)) => {
            for (i, (value, kept)) in before.iter().zip(after).enumerate() {
                missing_keys(value, kept, format!("{at}[{i}]"), found);
            }
        }
        _ => {}
    }
}

fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join(&out, key),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};
    use serde_json::json;

    #[test]
    fn a_valid_pod_spec_reads_cleanly() {
        let spec: PodSpec = read(&json!({
            "containers": [{"name": "agent", "image": "x", "env": [{"name": "A", "value": "1"}]}],
            "nodeSelector": {"disk": "ssd"},
            "serviceAccountName": null,
        }))
        .expect("valid");
        assert_eq!(spec.containers[0].name, "agent");
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let problems = read::<PodSpec>(&json!({
            "containers": [{"name": "a", "imagePullPolicyy": "Always", "resources": {"limit": {}}}],
            "nodeSelecter": {},
        }))
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "containers[0].imagePullPolicyy",
                "containers[0].resources.limit",
                "nodeSelecter"
            ]
        );
        assert_eq!(
            problems[0].at("pod_template"),
            "pod_template.containers[0].imagePullPolicyy: unknown field"
        );
    }

    #[test]
    fn type_errors_say_where_and_what() {
        let problems =
            read::<PodSpec>(&json!({"containers": [{"name": "a", "ports": "80"}]})).unwrap_err();
        assert_eq!(problems[0].path, "containers[0].ports");
        assert!(problems[0].message.contains("expected"), "{problems:?}");
        let problems =
            read::<Toleration>(&json!({"key": "a", "tolerationSeconds": "soon"})).unwrap_err();
        assert_eq!(problems[0].path, "tolerationSeconds");
    }

    #[test]
    fn joining_paths_reads_like_the_config() {
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("a", "[0].b"), "a[0].b");
        assert_eq!(join("", "b"), "b");
        assert_eq!(join("a", ""), "a");
    }
}
