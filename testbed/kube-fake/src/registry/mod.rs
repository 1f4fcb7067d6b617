//! The API server's write path for every resource: what happens to an object on create,
//! replace, delete and internal (controller) edits. Defaulting, validation, optimistic
//! concurrency, the `/status` split, generation, graceful deletion and finalizers live here,
//! so HTTP requests and the in-process controllers get the same semantics.

pub mod defaults;
mod delete;
pub mod validate;

pub use delete::{
    delete, finish_pod_deletion, DeleteOptions, Propagation, FOREGROUND_FINALIZER, ORPHAN_FINALIZER,
};

use crate::error::{ApiError, Cause, STALE_OBJECT};
use crate::meta;
use crate::resource::Resource;
use crate::store::{ObjectKey, Txn};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::Arc;

/// Which part of an object a replace writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The object, except `status` for resources that have a `/status` subresource.
    Main,
    /// Only `status`.
    Status,
}

/// Creates an object in `namespace` (ignored for cluster-scoped resources).
pub fn create(
    txn: &mut Txn<'_>,
    resource: Resource,
    namespace: &str,
    mut object: Value,
    dry_run: bool,
) -> Result<Arc<Value>, ApiError> {
    check_shape(resource, &mut object)?;
    let metadata = meta::metadata_mut(&mut object);
    if resource.namespaced() {
        let given = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !given.is_empty() && given != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        metadata.insert("namespace".into(), json!(namespace));
    } else {
        metadata.remove("namespace");
    }
    if metadata
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    for system_field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        metadata.remove(system_field);
    }
    if resource.namespaced()
        && txn
            .get(Resource::Namespaces, &ObjectKey::new("", namespace))
            .is_none()
    {
        return Err(ApiError::not_found(Resource::Namespaces, namespace));
    }
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let generate = metadata
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() && !generate.is_empty() {
        let free = (0..16)
            .map(|_| generated_name(&generate))
            .find(|candidate| {
                txn.get(
                    resource,
                    &ObjectKey::new(namespace_of(resource, namespace), candidate),
                )
                .is_none()
            })
            .unwrap_or_else(|| generated_name(&generate));
        metadata.insert("name".into(), json!(free));
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(meta::now()));
    if has_generation(resource) {
        metadata.insert("generation".into(), json!(1));
    }
    defaults::apply(resource, &mut object, true);
    let causes = validate::object(resource, &object);
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, meta::name(&object), &causes));
    }
    let key = ObjectKey::of(&object);
    if txn.get(resource, &key).is_some() {
        return Err(ApiError::already_exists(resource, &key.name));
    }
    if dry_run {
        return Ok(Arc::new(object));
    }
    Ok(txn.put(resource, object))
}

/// Replaces an object (PUT, and the final step of every PATCH).
pub fn update(
    txn: &mut Txn<'_>,
    resource: Resource,
    key: &ObjectKey,
    mut object: Value,
    target: Target,
    dry_run: bool,
) -> Result<Arc<Value>, ApiError> {
    check_shape(resource, &mut object)?;
    let given_name = meta::name(&object);
    if !given_name.is_empty() && given_name != key.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given_name}) does not match the name on the URL ({})",
            key.name
        )));
    }
    let given_namespace = meta::namespace(&object);
    if resource.namespaced() && !given_namespace.is_empty() && given_namespace != key.namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let current = txn
        .get(resource, key)
        .ok_or_else(|| ApiError::not_found(resource, &key.name))?;
    let given_version = meta::resource_version(&object);
    if !given_version.is_empty() && given_version != meta::resource_version(&current) {
        return Err(ApiError::conflict(resource, &key.name, STALE_OBJECT));
    }
    let given_uid = meta::uid(&object);
    if !given_uid.is_empty() && given_uid != meta::uid(&current) {
        return Err(ApiError::conflict(
            resource,
            &key.name,
            &format!(
                "Precondition failed: UID in precondition: {given_uid}, UID in object meta: {}",
                meta::uid(&current)
            ),
        ));
    }
    let mut next = match target {
        Target::Status => {
            let mut next = (*current).clone();
            next["status"] = object.get("status").cloned().unwrap_or_else(|| json!({}));
            next
        }
        Target::Main => {
            if resource.has_status() {
                object["status"] = current.get("status").cloned().unwrap_or_else(|| json!({}));
            }
            keep_system_metadata(&current, &mut object);
            defaults::apply(resource, &mut object, false);
            if has_generation(resource) && object.get("spec") != current.get("spec") {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            object
        }
    };
    next["metadata"]["resourceVersion"] = json!(meta::resource_version(&current));
    let mut causes = validate::object(resource, &next);
    causes.extend(validate::transition(resource, &current, &next));
    if meta::is_deleting(&current) {
        let before = meta::finalizers(&current);
        if meta::finalizers(&next).iter().any(|f| !before.contains(f)) {
            causes.push(Cause::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &key.name, &causes));
    }
    if next == *current || dry_run {
        return Ok(if dry_run { Arc::new(next) } else { current });
    }
    Ok(commit(txn, resource, next))
}

/// Copies what clients cannot change from the stored object onto a replacement.
fn keep_system_metadata(current: &Value, next: &mut Value) {
    let metadata = meta::metadata_mut(next);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "generateName",
    ] {
        match current["metadata"].get(field) {
            Some(value) => metadata.insert(field.into(), value.clone()),
            None => metadata.remove(field),
        };
    }
    metadata.remove("managedFields");
}

/// Edits an object in place for an in-process controller (scheduler, kubelet, job controller,
/// garbage collector): no validation, no conflict check, no write when nothing changed.
/// Returns the object as stored afterwards, or `None` when it does not exist (any more).
pub fn modify(
    txn: &mut Txn<'_>,
    resource: Resource,
    key: &ObjectKey,
    edit: impl FnOnce(&mut Value),
) -> Option<Arc<Value>> {
    let current = txn.get(resource, key)?;
    let mut next = (*current).clone();
    edit(&mut next);
    if next == *current {
        return Some(current);
    }
    let object = commit(txn, resource, next);
    txn.get(resource, key).map(|_| object)
}

/// Stores an object, or removes it when it is being deleted with no grace period and no
/// finalizers left: the write that drops the last finalizer is the one that deletes.
fn commit(txn: &mut Txn<'_>, resource: Resource, object: Value) -> Arc<Value> {
    let grace_over = object["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0)
        == 0;
    if meta::is_deleting(&object) && grace_over && meta::finalizers(&object).is_empty() {
        let key = ObjectKey::of(&object);
        if let Some(last) = txn.remove(resource, &key, Some(object.clone())) {
            return last;
        }
    }
    txn.put(resource, object)
}

/// Checks `apiVersion`/`kind` and the JSON types the real server's decoder insists on, and
/// fills in `apiVersion`/`kind` when the client left them out.
fn check_shape(resource: Resource, object: &mut Value) -> Result<(), ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {why}",
            kind = resource.kind()
        ))
    };
    let Some(map) = object.as_object_mut() else {
        return Err(cannot(
            "json: cannot unmarshal into Go value: not a JSON object".into(),
        ));
    };
    for (field, expected) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != expected => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({given}) does not match the expected {field} ({expected})"
                )));
            }
            _ => {
                map.insert(field.into(), json!(expected));
            }
        }
    }
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        return Err(cannot(
            "json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta".into(),
        ));
    }
    for field in ["labels", "annotations"] {
        if let Some(entries) = metadata.get(field).filter(|v| !v.is_null()) {
            let strings = entries
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                return Err(cannot(format!(
                    "json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} of type map[string]string"
                )));
            }
        }
    }
    if resource == Resource::Secrets {
        let data = map.get("data").and_then(Value::as_object);
        for (key, value) in data.into_iter().flatten() {
            let decodes = value.as_str().is_some_and(|text| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .is_ok()
            });
            if !decodes {
                return Err(cannot(format!("illegal base64 data in data[{key}]")));
            }
        }
    }
    Ok(())
}

fn has_generation(resource: Resource) -> bool {
    matches!(resource, Resource::Jobs | Resource::Pods)
}

fn namespace_of(resource: Resource, namespace: &str) -> &str {
    if resource.namespaced() {
        namespace
    } else {
        ""
    }
}

/// `generateName` plus five characters from the alphabet Kubernetes uses (no vowels, no
/// look-alikes), the base cut so the result stays within 63 characters.
pub fn generated_name(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base: String = base.chars().take(58).collect();
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn store_with_namespace() -> Store {
        let store = Store::new(100);
        create(
            &mut store.txn(),
            Resource::Namespaces,
            "",
            json!({"metadata": {"name": "default"}}),
            false,
        )
        .unwrap();
        store
    }

    fn secret(name: &str) -> Value {
        json!({"metadata": {"name": name}, "stringData": {"k": "v"}})
    }

    #[test]
    fn create_conflicts_and_stale_updates() {
        let store = store_with_namespace();
        let mut txn = store.txn();
        let created = create(&mut txn, Resource::Secrets, "default", secret("s"), false).unwrap();
        assert_eq!(created["data"]["k"], "dg==");
        let again = create(&mut txn, Resource::Secrets, "default", secret("s"), false).unwrap_err();
        assert_eq!((again.code, again.reason), (409, "AlreadyExists"));
        let key = ObjectKey::new("default", "s");
        let mut changed = (*created).clone();
        changed["data"]["k"] = json!("dw==");
        update(
            &mut txn,
            Resource::Secrets,
            &key,
            changed.clone(),
            Target::Main,
            false,
        )
        .unwrap();
        let stale = update(
            &mut txn,
            Resource::Secrets,
            &key,
            changed,
            Target::Main,
            false,
        )
        .unwrap_err();
        assert_eq!((stale.code, stale.reason), (409, "Conflict"));
        let missing =
            create(&mut txn, Resource::Secrets, "nowhere", secret("s"), false).unwrap_err();
        assert_eq!(missing.message, "namespaces \"nowhere\" not found");
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let store = store_with_namespace();
        let mut txn = store.txn();
        let mut held = secret("held");
        held["metadata"]["finalizers"] = json!(["example.com/hold"]);
        create(&mut txn, Resource::Secrets, "default", held, false).unwrap();
        let key = ObjectKey::new("default", "held");
        let deletion = delete(
            &mut txn,
            Resource::Secrets,
            &key,
            &DeleteOptions::default(),
            false,
        )
        .unwrap();
        assert!(!deletion.removed);
        assert!(meta::is_deleting(&deletion.object));
        modify(&mut txn, Resource::Secrets, &key, |s| {
            meta::set_finalizers(s, &[])
        });
        assert!(txn.get(Resource::Secrets, &key).is_none());
    }

    #[test]
    fn generated_names_keep_the_base() {
        let name = generated_name("build-");
        assert!(name.starts_with("build-") && name.len() == 11);
    }
}
