//! Object validation: the checks of Kubernetes' `ValidateObjectMeta`, `ValidatePodSpec`,
//! `ValidateJob` and friends that a client of Updraft's kind can trip, with the real field
//! paths and messages. Anything not checked here is stored as sent.

use crate::error::Cause;
use crate::meta;
use crate::quantity;
use crate::resource::Resource;
use crate::validation::{self, MAX_ANNOTATIONS_BYTES};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const QUANTITY_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// Problems with an object about to be stored.
pub fn object(resource: Resource, object: &Value) -> Vec<Cause> {
    let mut causes = metadata(resource, object);
    match resource {
        Resource::Pods => pod_spec(&object["spec"], "spec", false, &mut causes),
        Resource::Jobs => job_spec(&object["spec"], &mut causes),
        Resource::PodTemplates => {
            template(&object["template"], "template", false, &mut causes);
        }
        Resource::Secrets => secret(object, &mut causes),
        Resource::Leases => lease(object, &mut causes),
        Resource::Events => event(object, &mut causes),
        Resource::Namespaces => {}
    }
    causes
}

/// Problems with replacing `old` by `new` (immutable fields).
pub fn transition(resource: Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let immutable = |field: &str, pointer: &str, causes: &mut Vec<Cause>| {
        let after = new.pointer(pointer).cloned().unwrap_or(Value::Null);
        if old.pointer(pointer).cloned().unwrap_or(Value::Null) != after {
            causes.push(Cause::invalid(field, &after, "field is immutable"));
        }
    };
    match resource {
        Resource::Jobs => {
            immutable("spec.selector", "/spec/selector", &mut causes);
            immutable("spec.template", "/spec/template", &mut causes);
            immutable("spec.completions", "/spec/completions", &mut causes);
            immutable("spec.completionMode", "/spec/completionMode", &mut causes);
        }
        Resource::Pods if mutable_pod_spec(&old["spec"]) != mutable_pod_spec(&new["spec"]) => {
            causes.push(Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,\
                 `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
                 `spec.tolerations` (only additions to existing tolerations),\
                 `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                 previously negative)",
            ));
        }
        Resource::Secrets => {
            immutable("type", "/type", &mut causes);
            if old["immutable"] == json!(true) {
                immutable("data", "/data", &mut causes);
                if new["immutable"] != json!(true) {
                    causes.push(Cause::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        _ => {}
    }
    causes
}

/// The pod spec with the fields an update may change taken out.
fn mutable_pod_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(map) = spec.as_object_mut() {
        for field in ["activeDeadlineSeconds", "tolerations", "nodeName"] {
            map.remove(field);
        }
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(containers)) = map.get_mut(list) {
                for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                    container.remove("image");
                }
            }
        }
    }
    spec
}

fn metadata(resource: Resource, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta::name(object);
    if name.is_empty() {
        causes.push(Cause::required_because(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let problems = if resource == Resource::Namespaces {
            validation::dns1123_label_problems(name)
        } else {
            validation::dns1123_subdomain_problems(name)
        };
        for problem in problems {
            causes.push(Cause::invalid("metadata.name", &json!(name), &problem));
        }
    }
    labels_and_annotations(&object["metadata"], "metadata", &mut causes);
    let refs = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array);
    for (i, owner) in refs.into_iter().flatten().enumerate() {
        for field in ["apiVersion", "kind", "name", "uid"] {
            if meta::str_at(owner, &format!("/{field}"))
                .unwrap_or_default()
                .is_empty()
            {
                let path = format!("metadata.ownerReferences[{i}].{field}");
                causes.push(Cause::invalid(
                    path,
                    &json!(""),
                    &format!("{field} must not be empty"),
                ));
            }
        }
    }
    let controllers = meta::owner_refs(object)
        .iter()
        .filter(|r| r.controller)
        .count();
    if controllers > 1 {
        causes.push(Cause::invalid(
            "metadata.ownerReferences",
            &object["metadata"]["ownerReferences"],
            "Only one reference can have Controller set to true",
        ));
    }
    causes
}

fn labels_and_annotations(metadata: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(labels) = metadata.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            for problem in validation::label_key_problems(key) {
                causes.push(Cause::invalid(
                    format!("{path}.labels"),
                    &json!(key),
                    &problem,
                ));
            }
            let text = value.as_str().unwrap_or_default();
            for problem in validation::label_value_problems(text) {
                causes.push(Cause::invalid(format!("{path}.labels"), value, &problem));
            }
        }
    }
    if let Some(annotations) = metadata.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (key, value) in annotations {
            for problem in validation::label_key_problems(&key.to_lowercase()) {
                causes.push(Cause::invalid(
                    format!("{path}.annotations"),
                    &json!(key),
                    &problem,
                ));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            causes.push(Cause::too_long(
                format!("{path}.annotations"),
                MAX_ANNOTATIONS_BYTES,
            ));
        }
    }
}

fn template(template: &Value, path: &str, for_job: bool, causes: &mut Vec<Cause>) {
    if !template.is_object() {
        causes.push(Cause::required(path));
        return;
    }
    labels_and_annotations(&template["metadata"], &format!("{path}.metadata"), causes);
    pod_spec(&template["spec"], &format!("{path}.spec"), for_job, causes);
}

fn job_spec(spec: &Value, causes: &mut Vec<Cause>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64) {
            let too_small = if field == "activeDeadlineSeconds" {
                n <= 0
            } else {
                n < 0
            };
            if too_small {
                let bound = if field == "activeDeadlineSeconds" {
                    "must be greater than 0"
                } else {
                    "must be greater than or equal to 0"
                };
                causes.push(Cause::invalid(format!("spec.{field}"), &json!(n), bound));
            }
        }
    }
    template(&spec["template"], "spec.template", true, causes);
}

fn pod_spec(spec: &Value, path: &str, for_job: bool, causes: &mut Vec<Cause>) {
    let restart_policy = spec.get("restartPolicy").cloned().unwrap_or(Value::Null);
    if for_job {
        if !["OnFailure", "Never"].contains(&restart_policy.as_str().unwrap_or_default()) {
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                &restart_policy,
                &["OnFailure", "Never"],
            ));
        }
    } else if !["Always", "OnFailure", "Never"]
        .contains(&restart_policy.as_str().unwrap_or_default())
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            &restart_policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let volumes = volumes(spec, path, causes);
    let mut names = BTreeSet::new();
    let regular = spec.get("containers").and_then(Value::as_array);
    if regular.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    for (list, init) in [("initContainers", true), ("containers", false)] {
        let containers = spec.get(list).and_then(Value::as_array);
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            container(c, &field, init, &volumes, &mut names, causes);
        }
    }
    for field in ["terminationGracePeriodSeconds", "activeDeadlineSeconds"] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64) {
            if n < 0 || (field == "activeDeadlineSeconds" && n == 0) {
                causes.push(Cause::invalid(
                    format!("{path}.{field}"),
                    &json!(n),
                    "must be greater than 0",
                ));
            }
        }
    }
}

fn volumes(spec: &Value, path: &str, causes: &mut Vec<Cause>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for (i, volume) in volumes.into_iter().flatten().enumerate() {
        let name = meta::str_at(volume, "/name").unwrap_or_default();
        let field = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            causes.push(Cause::required(field));
        } else {
            for problem in validation::dns1123_label_problems(name) {
                causes.push(Cause::invalid(&field, &json!(name), &problem));
            }
            if !names.insert(name.to_string()) {
                causes.push(Cause::duplicate(field, &json!(name)));
            }
        }
        let sources = volume
            .as_object()
            .map_or(0, |m| m.keys().filter(|k| *k != "name").count());
        if sources == 0 {
            causes.push(Cause::required_because(
                format!("{path}.volumes[{i}]"),
                "must specify a volume type",
            ));
        }
    }
    names
}

fn container(
    c: &Value,
    path: &str,
    init: bool,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    causes: &mut Vec<Cause>,
) {
    let name = meta::str_at(c, "/name").unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required(format!("{path}.name")));
    } else {
        for problem in validation::dns1123_label_problems(name) {
            causes.push(Cause::invalid(
                format!("{path}.name"),
                &json!(name),
                &problem,
            ));
        }
        if !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
    }
    if meta::str_at(c, "/image")
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        causes.push(Cause::required(format!("{path}.image")));
    }
    if let Some(policy) = c.get("imagePullPolicy") {
        if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str().unwrap_or_default()) {
            causes.push(Cause::not_supported(
                format!("{path}.imagePullPolicy"),
                policy,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
    }
    if let Some(policy) = c.get("restartPolicy") {
        if !init || policy != "Always" {
            let supported: &[&str] = if init { &["Always"] } else { &[] };
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                supported,
            ));
        }
    }
    resources(c, path, causes);
    env(c, path, causes);
    let mounts = c.get("volumeMounts").and_then(Value::as_array);
    for (i, mount) in mounts.into_iter().flatten().enumerate() {
        let volume = meta::str_at(mount, "/name").unwrap_or_default();
        if !volumes.contains(volume) {
            causes.push(Cause {
                reason: "FieldValueNotFound",
                field: format!("{path}.volumeMounts[{i}].name"),
                message: format!("Not found: {}", json!(volume)),
            });
        }
        if meta::str_at(mount, "/mountPath")
            .unwrap_or_default()
            .is_empty()
        {
            causes.push(Cause::required(format!(
                "{path}.volumeMounts[{i}].mountPath"
            )));
        }
    }
}

fn resources(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut parsed = [None, None];
    for (slot, which) in ["limits", "requests"].iter().enumerate() {
        let Some(map) = c
            .pointer(&format!("/resources/{which}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        let mut values = std::collections::BTreeMap::new();
        for (resource, value) in map {
            let field = format!("{path}.resources.{which}[{resource}]");
            let amount = match value {
                Value::String(text) => quantity::parse_milli(text),
                Value::Number(n) => n.as_f64().map(|n| (n * 1000.0).ceil() as i128),
                _ => None,
            };
            match amount {
                Some(amount) if amount >= 0 => {
                    values.insert(resource.clone(), amount);
                }
                Some(_) => causes.push(Cause::invalid(
                    field,
                    value,
                    "must be greater than or equal to 0",
                )),
                None => causes.push(Cause::invalid(field, value, QUANTITY_MESSAGE)),
            }
        }
        parsed[slot] = Some(values);
    }
    if let [Some(limits), Some(requests)] = &parsed {
        for (resource, request) in requests {
            if let Some(limit) = limits.get(resource).filter(|limit| request > *limit) {
                let field = format!("{path}.resources.requests");
                let shown = &c["resources"]["requests"][resource];
                let shown_limit = &c["resources"]["limits"][resource];
                let limit_text = shown_limit
                    .as_str()
                    .map_or(limit.to_string(), str::to_string);
                causes.push(Cause::invalid(
                    field,
                    shown,
                    &format!("must be less than or equal to {resource} limit of {limit_text}"),
                ));
            }
        }
    }
}

fn env(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    let vars = c.get("env").and_then(Value::as_array);
    for (i, var) in vars.into_iter().flatten().enumerate() {
        let name = meta::str_at(var, "/name").unwrap_or_default();
        let field = format!("{path}.env[{i}]");
        if name.is_empty() {
            causes.push(Cause::required(format!("{field}.name")));
        }
        for problem in validation::env_var_name_problems(name)
            .into_iter()
            .filter(|_| !name.is_empty())
        {
            causes.push(Cause::invalid(
                format!("{field}.name"),
                &json!(name),
                &problem,
            ));
        }
        if let Some(source) = var.get("valueFrom").and_then(Value::as_object) {
            if var
                .get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
            {
                causes.push(Cause::invalid(
                    format!("{field}.valueFrom"),
                    &json!(""),
                    "may not be specified when `value` is not empty",
                ));
            }
            if source.len() != 1 {
                causes.push(Cause::invalid(
                    format!("{field}.valueFrom"),
                    &json!(""),
                    "may not have more than one field specified at a time",
                ));
            }
            if let Some(key_ref) = source.get("secretKeyRef") {
                for part in ["name", "key"] {
                    if meta::str_at(key_ref, &format!("/{part}"))
                        .unwrap_or_default()
                        .is_empty()
                    {
                        causes.push(Cause::required(format!(
                            "{field}.valueFrom.secretKeyRef.{part}"
                        )));
                    }
                }
            }
        }
    }
}

fn secret(object: &Value, causes: &mut Vec<Cause>) {
    let mut total = 0;
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            for problem in validation::config_key_problems(key) {
                causes.push(Cause::invalid(
                    format!("data[{key}]"),
                    &json!(key),
                    &problem,
                ));
            }
            let decoded = value
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
            total += decoded.map_or(0, |d| d.len());
        }
    }
    if total > MAX_SECRET_BYTES {
        causes.push(Cause::too_long("data", MAX_SECRET_BYTES));
    }
}

fn lease(object: &Value, causes: &mut Vec<Cause>) {
    if let Some(n) = object
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
    {
        if n <= 0 {
            causes.push(Cause::invalid(
                "spec.leaseDurationSeconds",
                &json!(n),
                "must be greater than 0",
            ));
        }
    }
}

fn event(object: &Value, causes: &mut Vec<Cause>) {
    let involved = meta::str_at(object, "/involvedObject/namespace").unwrap_or_default();
    if !involved.is_empty() && involved != meta::namespace(object) {
        causes.push(Cause::invalid(
            "involvedObject.namespace",
            &json!(involved),
            "does not match event.namespace",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<String> {
        causes.iter().map(|c| c.field.clone()).collect()
    }

    #[test]
    fn job_needs_named_containers_with_images_and_a_job_restart_policy() {
        let job = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": "Always", "containers": [{"name": "", "image": ""}]}}}});
        let causes = object(Resource::Jobs, &job);
        assert_eq!(
            fields(&causes),
            [
                "spec.template.spec.restartPolicy",
                "spec.template.spec.containers[0].name",
                "spec.template.spec.containers[0].image"
            ]
        );
    }

    #[test]
    fn labels_names_and_quantities() {
        let pod = json!({"metadata": {"name": "Bad_Name", "labels": {"a": "x".repeat(64)}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": "lots"}}}]}});
        let causes = object(Resource::Pods, &pod);
        assert_eq!(
            fields(&causes),
            [
                "metadata.name",
                "metadata.labels",
                "spec.containers[0].resources.requests[cpu]"
            ]
        );
    }

    #[test]
    fn job_template_is_immutable() {
        let old = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let new = json!({"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}});
        assert_eq!(
            fields(&transition(Resource::Jobs, &old, &new)),
            ["spec.template"]
        );
    }
}
