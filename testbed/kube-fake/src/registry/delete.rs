//! DELETE: preconditions, propagation (jobs orphan their pods by default, with the API
//! server's warning), the graceful deletion of pods a kubelet may be running, finalizers, and
//! the kubelet's final delete.

use super::{commit, has_generation, modify};
use crate::error::ApiError;
use crate::meta;
use crate::resource::Resource;
use crate::store::{ObjectKey, Txn};
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;

/// The finalizer that keeps an owner until its dependents are gone (foreground deletion).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer that keeps an owner until its dependents no longer point at it (orphaning).
pub const ORPHAN_FINALIZER: &str = "orphan";

const JOB_ORPHAN_WARNING: &str = "child pods are preserved by default when jobs are deleted; \
    set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to \
    suppress this warning";

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// `DeleteOptions`, from the request body or query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The removed object, or the object now waiting for its grace period or finalizers.
    pub object: Arc<Value>,
    /// Whether the object is gone.
    pub removed: bool,
    /// `Warning` headers for the response.
    pub warnings: Vec<String>,
}

/// Deletes an object as `DELETE` does: preconditions, propagation finalizers, the grace
/// period of a running pod, and removal once nothing holds the object back.
pub fn delete(
    txn: &mut Txn<'_>,
    resource: Resource,
    key: &ObjectKey,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<Deletion, ApiError> {
    let current = txn
        .get(resource, key)
        .ok_or_else(|| ApiError::not_found(resource, &key.name))?;
    check_preconditions(resource, key, &current, options)?;
    let mut warnings = Vec::new();
    let propagation = options.propagation.unwrap_or_else(|| {
        if resource == Resource::Jobs {
            warnings.push(JOB_ORPHAN_WARNING.to_string());
            Propagation::Orphan
        } else {
            Propagation::Background
        }
    });
    let grace = grace_period(resource, &current, options.grace_period_seconds);
    let pending = |object| Deletion {
        object,
        removed: false,
        warnings: warnings.clone(),
    };
    if dry_run {
        return Ok(pending(current));
    }
    let mut next = (*current).clone();
    if meta::is_deleting(&current) {
        let remaining = current["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if grace >= remaining {
            return Ok(pending(current));
        }
        set_deletion(&mut next, grace, false);
        let object = commit(txn, resource, next);
        let removed = txn.get(resource, key).is_none();
        return Ok(Deletion {
            object,
            removed,
            warnings,
        });
    }
    let mut finalizers = meta::finalizers(&current);
    if !txn.dependents(meta::uid(&current)).is_empty() {
        let wanted = match propagation {
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Background => None,
        };
        if let Some(wanted) = wanted.filter(|w| !finalizers.iter().any(|f| f == w)) {
            finalizers.push(wanted.to_string());
        }
    }
    if finalizers.is_empty() && grace == 0 {
        let object = txn
            .remove(resource, key, None)
            .expect("read in this transaction");
        return Ok(Deletion {
            object,
            removed: true,
            warnings,
        });
    }
    meta::set_finalizers(&mut next, &finalizers);
    set_deletion(&mut next, grace, has_generation(resource));
    Ok(pending(txn.put(resource, next)))
}

/// The kubelet's final delete of a pod whose containers are gone: the grace period is over;
/// the pod disappears unless finalizers still hold it.
pub fn finish_pod_deletion(txn: &mut Txn<'_>, key: &ObjectKey) {
    modify(txn, Resource::Pods, key, |pod| {
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !meta::is_deleting(pod) {
            pod["metadata"]["deletionTimestamp"] = json!(meta::now());
        }
    });
}

fn set_deletion(object: &mut Value, grace: i64, bump_generation: bool) {
    let at = Utc::now() + chrono::Duration::seconds(grace);
    let metadata = meta::metadata_mut(object);
    metadata.insert("deletionTimestamp".into(), json!(meta::timestamp(at)));
    metadata.insert("deletionGracePeriodSeconds".into(), json!(grace));
    if bump_generation {
        if let Some(generation) = metadata.get("generation").and_then(Value::as_i64) {
            metadata.insert("generation".into(), json!(generation + 1));
        }
    }
}

/// Seconds a deleted object lingers: only pods that a kubelet may be running get any.
fn grace_period(resource: Resource, object: &Value, requested: Option<i64>) -> i64 {
    if resource != Resource::Pods {
        return 0;
    }
    let unscheduled = meta::str_at(object, "/spec/nodeName")
        .unwrap_or_default()
        .is_empty();
    let phase = meta::str_at(object, "/status/phase").unwrap_or_default();
    if unscheduled || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    requested
        .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

fn check_preconditions(
    resource: Resource,
    key: &ObjectKey,
    current: &Value,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    let checks = [
        ("UID", &options.precondition_uid, meta::uid(current)),
        (
            "ResourceVersion",
            &options.precondition_resource_version,
            meta::resource_version(current),
        ),
    ];
    for (what, wanted, actual) in checks {
        if let Some(wanted) = wanted.as_deref().filter(|w| *w != actual) {
            return Err(ApiError::conflict(
                resource,
                &key.name,
                &format!(
                    "Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
                ),
            ));
        }
    }
    Ok(())
}
