//! PATCH in the four formats the API server takes: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386), strategic merge patch (merge patch, except that lists Kubernetes marks with a
//! merge key — containers, env, volumes, conditions, ... — merge element by element), and
//! server-side apply, which here is a strategic merge that creates the object when missing
//! (no field ownership, so no apply conflicts).

use super::crud::{self, Request};
use super::json_response;
use crate::error::ApiError;
use crate::meta;
use crate::registry::{self, Target};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

pub fn serve(request: &Request) -> Result<Response, ApiError> {
    request.only_subresources(&["status"])?;
    let target = crud::target(request)?;
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = content_type.split(';').next().unwrap_or_default().trim();
    let apply = format == "application/apply-patch+yaml";
    if apply
        && request
            .query
            .get("fieldManager")
            .unwrap_or_default()
            .is_empty()
    {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    let key = request.key();
    let dry_run = request.query.dry_run();
    let mut txn = request.cluster.store.txn();
    let Some(current) = txn.get(request.resource(), &key) else {
        if !apply || target == Target::Status {
            return Err(ApiError::not_found(request.resource(), &key.name));
        }
        let mut object = parse_yaml(&request.body)?;
        if meta::name(&object).is_empty() {
            meta::metadata_mut(&mut object).insert("name".into(), Value::from(key.name.clone()));
        }
        let created = registry::create(
            &mut txn,
            request.resource(),
            request.namespace(),
            object,
            dry_run,
        )?;
        return Ok(json_response(StatusCode::CREATED, &created));
    };
    let mut patched = (*current).clone();
    match format {
        "application/json-patch+json" => {
            let operations: json_patch::Patch = serde_json::from_slice(&request.body)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            json_patch::patch(&mut patched, &operations)
                .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        }
        "application/merge-patch+json" => {
            json_patch::merge(&mut patched, &parse_json(&request.body)?);
        }
        "application/strategic-merge-patch+json" => {
            strategic_merge(&mut patched, &parse_json(&request.body)?);
        }
        "application/apply-patch+yaml" => {
            strategic_merge(&mut patched, &parse_yaml(&request.body)?)
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    let updated = registry::update(&mut txn, request.resource(), &key, patched, target, dry_run)?;
    Ok(json_response(StatusCode::OK, &updated))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal a non-object into Go value of type map[string]interface {}",
        ));
    }
    Ok(patch)
}

fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let object: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !object.is_object() {
        return Err(ApiError::bad_request("error decoding YAML: not an object"));
    }
    Ok(object)
}

/// The merge key of a list field whose patch strategy is `merge`, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

/// Lists of plain values whose patch strategy is `merge` (set union).
fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch: `null` deletes, objects merge, keyed lists merge by key
/// (an element with `$patch: delete` removes its match), other lists replace.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (field, value) in patch {
        if field.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                map.remove(field);
            }
            Value::Array(items) if merge_key(field).is_some() => {
                let list = map.entry(field.clone()).or_insert(Value::Array(vec![]));
                merge_keyed_list(list, items, merge_key(field).expect("checked above"));
            }
            Value::Array(items) if merges_as_set(field) => {
                let list = map.entry(field.clone()).or_insert(Value::Array(vec![]));
                if !list.is_array() {
                    *list = Value::Array(vec![]);
                }
                let existing = list.as_array_mut().expect("made an array above");
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            Value::Object(_) => {
                strategic_merge(map.entry(field.clone()).or_insert(Value::Null), value);
            }
            other => {
                map.insert(field.clone(), other.clone());
            }
        }
    }
}

fn merge_keyed_list(list: &mut Value, items: &[Value], key: &str) {
    if !list.is_array() {
        *list = Value::Array(vec![]);
    }
    let existing = list.as_array_mut().expect("made an array above");
    for item in items {
        let id = item.get(key).cloned();
        let position = id
            .as_ref()
            .and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
        let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, deleting) {
            (Some(at), true) => {
                existing.remove(at);
            }
            (None, true) => {}
            (Some(at), false) => strategic_merge(&mut existing[at], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strategic_merge;
    use serde_json::json;

    #[test]
    fn keyed_lists_merge_and_plain_lists_replace() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["1"]},
            {"name": "b", "image": "y"}]}, "metadata": {"finalizers": ["f1"]}});
        strategic_merge(
            &mut pod,
            &json!({
                "spec": {"containers": [{"name": "a", "image": "z", "args": ["2"]}, {"name": "b", "$patch": "delete"}]},
                "metadata": {"finalizers": ["f2"], "labels": {"k": "v"}}
            }),
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "z", "args": ["2"]}])
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["f1", "f2"]));
        strategic_merge(&mut pod, &json!({"metadata": {"labels": {"k": null}}}));
        assert_eq!(pod["metadata"]["labels"], json!({}));
    }
}
