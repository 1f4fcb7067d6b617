//! Small accessors for the JSON objects the fake stores: Kubernetes objects are kept as
//! `serde_json::Value` so every field a client sends survives a round trip.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// The string at a JSON pointer, if it is a string.
pub fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

/// `metadata.name`, empty when missing.
pub fn name(object: &Value) -> &str {
    str_at(object, "/metadata/name").unwrap_or_default()
}

/// `metadata.namespace`, empty when missing or cluster-scoped.
pub fn namespace(object: &Value) -> &str {
    str_at(object, "/metadata/namespace").unwrap_or_default()
}

/// `metadata.uid`, empty when missing.
pub fn uid(object: &Value) -> &str {
    str_at(object, "/metadata/uid").unwrap_or_default()
}

/// `metadata.resourceVersion`, empty when missing.
pub fn resource_version(object: &Value) -> &str {
    str_at(object, "/metadata/resourceVersion").unwrap_or_default()
}

/// `metadata.labels`, if any.
pub fn labels(object: &Value) -> Option<&Map<String, Value>> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
}

/// `metadata.finalizers` as strings.
pub fn finalizers(object: &Value) -> Vec<String> {
    strings_at(object, "/metadata/finalizers")
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The strings in the array at a JSON pointer.
pub fn strings_at(object: &Value, pointer: &str) -> Vec<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata`, created empty when missing.
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    object_field_mut(object, "metadata")
}

/// A field of a JSON object that must itself be an object, created (or replaced, when it
/// held something else) as needed.
pub fn object_field_mut<'a>(object: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let map = object.as_object_mut().expect("made an object above");
    let entry = map
        .entry(field.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("made an object above")
}

/// Sets `metadata.finalizers`, removing the field when the list is empty.
pub fn set_finalizers(object: &mut Value, finalizers: &[String]) {
    let metadata = metadata_mut(object);
    if finalizers.is_empty() {
        metadata.remove("finalizers");
    } else {
        metadata.insert("finalizers".into(), Value::from(finalizers.to_vec()));
    }
}

/// An owner reference, as far as the garbage collector and job controller care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub uid: String,
    pub kind: String,
    pub name: String,
    pub controller: bool,
    pub block_owner_deletion: bool,
}

/// `metadata.ownerReferences`.
pub fn owner_refs(object: &Value) -> Vec<OwnerRef> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .map(|r| OwnerRef {
                    uid: str_at(r, "/uid").unwrap_or_default().to_string(),
                    kind: str_at(r, "/kind").unwrap_or_default().to_string(),
                    name: str_at(r, "/name").unwrap_or_default().to_string(),
                    controller: r.pointer("/controller").and_then(Value::as_bool) == Some(true),
                    block_owner_deletion: r.pointer("/blockOwnerDeletion").and_then(Value::as_bool)
                        == Some(true),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(object: &Value) -> Option<OwnerRef> {
    owner_refs(object).into_iter().find(|r| r.controller)
}

/// A timestamp as Kubernetes writes `metav1.Time`: RFC 3339, whole seconds, `Z`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Now, as a Kubernetes `metav1.Time`.
pub fn now() -> String {
    timestamp(Utc::now())
}

/// Parses a `metav1.Time` (or `MicroTime`).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
