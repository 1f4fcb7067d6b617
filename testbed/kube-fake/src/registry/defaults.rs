//! What the API server fills in on write: the defaulting functions of `k8s.io/api` plus what
//! its admission plugins add (service account, default tolerations), and the fields a Job
//! gets on creation (selector and controller labels).

use crate::meta;
use crate::quantity;
use crate::resource::Resource;
use base64::Engine;
use serde_json::{json, Map, Value};

/// The labels the API server adds to a Job's pod template (and so to its pods).
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";

/// Fills in defaults for an object being created (`creating`) or replaced.
pub fn apply(resource: Resource, object: &mut Value, creating: bool) {
    match resource {
        Resource::Pods => {
            pod_spec(meta::object_field_mut(object, "spec"));
            if creating {
                let qos = qos_class(&object["spec"]);
                object["status"] = json!({ "phase": "Pending", "qosClass": qos });
            }
        }
        Resource::Jobs => job(object, creating),
        Resource::PodTemplates => {
            let template = meta::object_field_mut(object, "template");
            pod_spec(object_entry(template, "spec"));
        }
        Resource::Secrets => secret(object),
        Resource::Namespaces => {
            let name = meta::name(object).to_string();
            labels_mut(object).insert("kubernetes.io/metadata.name".into(), json!(name));
            if creating {
                object["spec"] = json!({ "finalizers": ["kubernetes"] });
                object["status"] = json!({ "phase": "Active" });
            }
        }
        Resource::Events | Resource::Leases => {}
    }
}

/// The object at `map[key]`, created as `{}` when missing or not an object.
fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("made an object above")
}

fn labels_mut(object: &mut Value) -> &mut Map<String, Value> {
    object_entry(meta::metadata_mut(object), "labels")
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    map.entry(key.to_string()).or_insert(value);
}

fn job(object: &mut Value, creating: bool) {
    let uid = meta::uid(object).to_string();
    let name = meta::name(object).to_string();
    let spec = meta::object_field_mut(object, "spec");
    if !spec.contains_key("completions") && !spec.contains_key("parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    set_default(spec, "manualSelector", json!(false));
    let template = object_entry(spec, "template");
    if creating {
        let labels = object_entry(object_entry(template, "metadata"), "labels");
        for (key, value) in [
            (CONTROLLER_UID_LABEL, &uid),
            (LEGACY_CONTROLLER_UID_LABEL, &uid),
            (JOB_NAME_LABEL, &name),
            (LEGACY_JOB_NAME_LABEL, &name),
        ] {
            labels.insert(key.into(), json!(value));
        }
    }
    pod_spec(object_entry(template, "spec"));
    if creating {
        spec.insert(
            "selector".into(),
            json!({ "matchLabels": { CONTROLLER_UID_LABEL: uid } }),
        );
        object["status"] = json!({});
    }
}

fn secret(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    set_default(map, "type", json!("Opaque"));
    if let Some(Value::Object(string_data)) = map.remove("stringData") {
        let data = object_entry(map, "data");
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, json!(encoded));
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "serviceAccountName", json!("default"));
    let account = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", account);
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(
        spec,
        "tolerations",
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ]),
    );
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                container_defaults(container);
            }
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for volume in volumes.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(Value::Object(secret)) = volume.get_mut("secret") {
                set_default(secret, "defaultMode", json!(0o644));
            }
        }
    }
}

fn container_defaults(container: &mut Map<String, Value>) {
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let pull_policy = if pulls_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(container, "imagePullPolicy", json!(pull_policy));
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    let resources = object_entry(container, "resources");
    if let Some(Value::Object(limits)) = resources.get("limits").cloned() {
        let requests = object_entry(resources, "requests");
        for (name, limit) in limits {
            requests.entry(name).or_insert(limit);
        }
    }
    if let Some(Value::Array(ports)) = container.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
    if let Some(Value::Array(env)) = container.get_mut("env") {
        for var in env.iter_mut() {
            if let Some(Value::Object(field_ref)) = var.pointer_mut("/valueFrom/fieldRef") {
                set_default(field_ref, "apiVersion", json!("v1"));
            }
        }
    }
}

/// Whether an image reference means `:latest` (no tag, no digest), so the default pull policy
/// is `Always`.
fn pulls_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last_component = image.rsplit('/').next().unwrap_or(image);
    match last_component.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The pod's QoS class, as the API server computes it on creation.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
        .collect();
    let quantities = |c: &Value, which: &str| -> Map<String, Value> {
        c.pointer(&format!("/resources/{which}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let any_set = containers
        .iter()
        .any(|c| !quantities(c, "requests").is_empty() || !quantities(c, "limits").is_empty());
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (requests, limits) = (quantities(c, "requests"), quantities(c, "limits"));
        ["cpu", "memory"].iter().all(|r| {
            let parse = |m: &Map<String, Value>| {
                m.get(*r)
                    .and_then(Value::as_str)
                    .and_then(quantity::parse_milli)
            };
            parse(&limits).is_some() && parse(&limits) == parse(&requests)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_gets_selector_labels_and_pod_defaults() {
        let mut job = json!({
            "metadata": {"name": "build", "uid": "u1"},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"}}}
        });
        apply(Resource::Jobs, &mut job, true);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"][CONTROLLER_UID_LABEL],
            "u1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "build"
        );
        assert_eq!(job["spec"]["backoffLimit"], 6);
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["imagePullPolicy"], "Always");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn pods_get_requests_from_limits_and_a_qos_class() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        apply(Resource::Pods, &mut pod, true);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut secret = json!({"stringData": {"token": "abc"}});
        apply(Resource::Secrets, &mut secret, true);
        assert_eq!(secret["data"]["token"], "YWJj");
        assert_eq!(secret["type"], "Opaque");
        assert!(secret.get("stringData").is_none());
    }
}
