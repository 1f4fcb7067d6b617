//! Strategic merge patch for a PodSpec, as `kubectl patch --type strategic` applies it, so an
//! agent-stack-k8s `podSpecPatch` means here what it meant there. No well-kept crate does
//! this, and only the PodSpec needs it, so the patch merge keys are listed here by hand (from
//! the `x-kubernetes-patch-merge-key` markers of the Kubernetes OpenAPI schema):
//!
//! - `containers`, `initContainers`, `ephemeralContainers`, `volumes`, `imagePullSecrets`,
//!   `resourceClaims`, `schedulingGates` by `name`; `hostAliases` by `ip`;
//!   `topologySpreadConstraints` by `topologyKey`;
//! - in a container: `env` by `name`, `volumeMounts` by `mountPath`, `ports` by
//!   `containerPort`, `volumeDevices` by `devicePath`.
//!
//! Every other list is replaced (`tolerations`, `command`, `args`, `envFrom`). Maps merge key
//! by key; `null` deletes a key. Directives: `$patch: delete` on a list item removes the item
//! with that key, on a map removes the map; `$patch: replace` on a map replaces it, and a
//! `{"$patch": "replace"}` item replaces the whole list with the patch's other items.
//! `$setElementOrder/…` and `$retainKeys` hints are accepted and dropped.

use serde_json::{Map, Value};

/// Where in a PodSpec a value sits, which decides how its lists merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    PodSpec,
    Container,
    Elsewhere,
}

const DIRECTIVE: &str = "$patch";

/// Apply `patch` to the PodSpec `target` (both as JSON).
pub fn patch_pod_spec(target: &mut Value, patch: &Value) {
    merge(target, patch, Place::PodSpec);
}

fn merge(target: &mut Value, patch: &Value, place: Place) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    match patch.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            *target = Value::Object(without_directives(patch));
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if key == DIRECTIVE || key.starts_with("$setElementOrder/") || key == "$retainKeys" {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let child = child_place(place, key);
        match (value, merge_key(place, key)) {
            (Value::Array(items), Some(merge_key)) => {
                let existing = target.remove(key).unwrap_or(Value::Array(Vec::new()));
                let merged = merge_list(existing, items, merge_key, child);
                target.insert(key.clone(), merged);
            }
            (Value::Object(_), _) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                merge(slot, value, child);
                if slot.is_null() {
                    target.remove(key);
                }
            }
            _ => {
                target.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

/// The key list items of `field` merge by, when `field` sits at `place`.
fn merge_key(place: Place, field: &str) -> Option<&'static str> {
    match (place, field) {
        (
            Place::PodSpec,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims"
            | "schedulingGates",
        ) => Some("name"),
        (Place::PodSpec, "hostAliases") => Some("ip"),
        (Place::PodSpec, "topologySpreadConstraints") => Some("topologyKey"),
        (Place::Container, "env") => Some("name"),
        (Place::Container, "volumeMounts") => Some("mountPath"),
        (Place::Container, "ports") => Some("containerPort"),
        (Place::Container, "volumeDevices") => Some("devicePath"),
        _ => None,
    }
}

fn child_place(place: Place, field: &str) -> Place {
    match (place, field) {
        (Place::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            Place::Container
        }
        _ => Place::Elsewhere,
    }
}

fn merge_list(existing: Value, patch: &[Value], key: &str, items_place: Place) -> Value {
    let replace = patch.iter().any(|item| {
        item.get(DIRECTIVE).and_then(Value::as_str) == Some("replace") && item.get(key).is_none()
    });
    let mut merged = match existing {
        Value::Array(items) if !replace => items,
        _ => Vec::new(),
    };
    for item in patch {
        let directive = item.get(DIRECTIVE).and_then(Value::as_str);
        let Some(id) = item.get(key) else {
            if directive.is_none() {
                merged.push(strip_directives(item));
            }
            continue;
        };
        let position = merged.iter().position(|m| m.get(key) == Some(id));
        match (directive, position) {
            (Some("delete"), Some(i)) => {
                merged.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge(&mut merged[i], item, items_place),
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                merge(&mut fresh, item, items_place);
                merged.push(fresh);
            }
        }
    }
    Value::Array(merged)
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_directives(v)))
        .collect()
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(without_directives(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut target = target;
        patch_pod_spec(&mut target, &patch);
        target
    }

    fn base() -> Value {
        json!({
            "containers": [
                {"name": "agent", "image": "agent:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                 "ports": [{"containerPort": 80, "name": "http"}],
                 "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
                 "command": ["agent", "start"]}
            ],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "nodeSelector": {"disk": "ssd"},
        })
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let out = patched(
            base(),
            json!({"containers": [
                {"name": "agent", "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]},
                {"name": "extra", "image": "busybox"}
            ]}),
        );
        let agent = &out["containers"][0];
        assert_eq!(agent["image"], "agent:1", "untouched fields stay");
        assert_eq!(
            agent["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(
            out["containers"][1],
            json!({"name": "extra", "image": "busybox"})
        );
    }

    #[test]
    fn mounts_merge_by_path_ports_by_number_and_maps_deeply() {
        let out = patched(
            base(),
            json!({"containers": [{"name": "agent",
                "volumeMounts": [{"mountPath": "/workspace", "readOnly": true}, {"name": "cache", "mountPath": "/cache"}],
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "2"}}}],
                "nodeSelector": {"zone": "a"}}),
        );
        let agent = &out["containers"][0];
        assert_eq!(
            agent["volumeMounts"][0],
            json!({"name": "workspace", "mountPath": "/workspace", "readOnly": true})
        );
        assert_eq!(agent["volumeMounts"][1]["mountPath"], "/cache");
        assert_eq!(
            agent["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}])
        );
        assert_eq!(
            agent["resources"],
            json!({"requests": {"cpu": "1"}, "limits": {"memory": "1Gi", "cpu": "2"}})
        );
        assert_eq!(out["nodeSelector"], json!({"disk": "ssd", "zone": "a"}));
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced() {
        let out = patched(
            base(),
            json!({"tolerations": [{"key": "b", "operator": "Exists"}],
                   "containers": [{"name": "agent", "command": ["other"]}]}),
        );
        assert_eq!(
            out["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
        assert_eq!(out["containers"][0]["command"], json!(["other"]));
    }

    #[test]
    fn null_deletes_a_key() {
        let out = patched(
            base(),
            json!({"nodeSelector": null, "containers": [{"name": "agent", "resources": {"limits": null}}]}),
        );
        assert!(out.get("nodeSelector").is_none());
        assert_eq!(
            out["containers"][0]["resources"],
            json!({"requests": {"cpu": "1"}})
        );
    }

    #[test]
    fn patch_delete_removes_a_list_item_or_a_map() {
        let out = patched(
            base(),
            json!({"volumes": [{"name": "workspace", "$patch": "delete"}],
                   "containers": [{"name": "agent", "env": [{"name": "A", "$patch": "delete"}], "resources": {"$patch": "delete"}}]}),
        );
        assert_eq!(out["volumes"], json!([]));
        assert_eq!(
            out["containers"][0]["env"],
            json!([{"name": "B", "value": "2"}])
        );
        assert!(out["containers"][0].get("resources").is_none());
    }

    #[test]
    fn patch_replace_replaces_a_map_or_a_whole_list() {
        let out = patched(
            base(),
            json!({"containers": [{"name": "agent",
                "env": [{"$patch": "replace"}, {"name": "Z", "value": "26"}],
                "resources": {"$patch": "replace", "limits": {"cpu": "4"}}}]}),
        );
        assert_eq!(
            out["containers"][0]["env"],
            json!([{"name": "Z", "value": "26"}])
        );
        assert_eq!(
            out["containers"][0]["resources"],
            json!({"limits": {"cpu": "4"}})
        );
    }

    #[test]
    fn ordering_hints_are_dropped_and_new_lists_created() {
        let out = patched(
            json!({"containers": [{"name": "agent"}]}),
            json!({"$setElementOrder/containers": [{"name": "agent"}],
                   "initContainers": [{"name": "dind", "image": "docker:dind", "restartPolicy": "Always"}]}),
        );
        assert!(out.get("$setElementOrder/containers").is_none());
        assert_eq!(out["initContainers"][0]["name"], "dind");
    }
}
