//! Writing `v1` Events the way client-go's event recorder does: named
//! `<object>.<hex nanoseconds>`, and a repeat of the same event (same object, type, reason,
//! message and source) bumps `count` and `lastTimestamp` instead of adding another.

use crate::meta;
use crate::registry;
use crate::resource::Resource;
use crate::store::{ObjectKey, Txn};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Who reports an event: `source.component` / `reportingComponent`, and the node for
/// kubelet events.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

/// What happened, to which object (and which of its containers).
#[derive(Debug, Clone, Copy)]
pub struct EventSpec<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub message: &'a str,
    pub field_path: Option<&'a str>,
}

/// Remembers which Event each repeatable occurrence went to.
#[derive(Debug, Default)]
pub struct EventRecorder {
    recorded: Mutex<HashMap<String, ObjectKey>>,
}

impl EventRecorder {
    /// Records an event about `involved` (a stored object of `resource`).
    pub fn record(
        &self,
        txn: &mut Txn<'_>,
        resource: Resource,
        involved: &Value,
        source: Source<'_>,
        event: EventSpec<'_>,
    ) {
        let kind = if event.warning { "Warning" } else { "Normal" };
        let dedupe_key = format!(
            "{}|{}|{}|{kind}|{}|{}|{}",
            source.component,
            meta::uid(involved),
            event.field_path.unwrap_or_default(),
            event.reason,
            event.message,
            source.host.unwrap_or_default(),
        );
        let now = meta::now();
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = recorded.get(&dedupe_key) {
            let bumped = registry::modify(txn, Resource::Events, key, |existing| {
                let count = existing["count"].as_i64().unwrap_or(1);
                existing["count"] = json!(count + 1);
                existing["lastTimestamp"] = json!(now);
            });
            if bumped.is_some() {
                return;
            }
        }
        let namespace = match meta::namespace(involved) {
            "" => "default",
            ns => ns,
        };
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let mut involved_object = json!({
            "kind": resource.kind(),
            "namespace": meta::namespace(involved),
            "name": meta::name(involved),
            "uid": meta::uid(involved),
            "apiVersion": resource.api_version(),
            "resourceVersion": meta::resource_version(involved),
        });
        if let Some(field_path) = event.field_path {
            involved_object["fieldPath"] = json!(field_path);
        }
        let mut source_json = json!({ "component": source.component });
        if let Some(host) = source.host {
            source_json["host"] = json!(host);
        }
        let object = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "name": format!("{}.{nanos:x}", meta::name(involved)), "namespace": namespace },
            "involvedObject": involved_object,
            "reason": event.reason,
            "message": event.message,
            "source": source_json,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": kind,
            "eventTime": null,
            "reportingComponent": source.component,
            "reportingInstance": source.host.unwrap_or_default(),
        });
        match registry::create(txn, Resource::Events, namespace, object, false) {
            Ok(created) => {
                recorded.insert(dedupe_key, ObjectKey::of(&created));
            }
            Err(error) => tracing::warn!(%error, reason = event.reason, "event not recorded"),
        }
    }
}
