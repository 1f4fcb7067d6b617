//! The garbage collector: dependents (objects whose `ownerReferences` name an owner's uid)
//! go when their last owner goes; an owner deleted in the foreground keeps its
//! `foregroundDeletion` finalizer until every dependent that blocks owner deletion is gone;
//! an owner deleted with `Orphan` first has itself removed from its dependents' references.

use crate::cluster::Cluster;
use crate::meta;
use crate::registry::{self, DeleteOptions, Propagation, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::resource::Resource;
use crate::store::{Change, ChangeKind, ObjectKey, Txn};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(cluster: Arc<Cluster>, mut changes: mpsc::UnboundedReceiver<Arc<Change>>) {
    loop {
        let change = tokio::select! {
            Some(change) = changes.recv() => change,
            _ = cluster.shutdown.cancelled() => return,
        };
        let mut txn = cluster.store.txn();
        handle(&mut txn, &change);
        while let Ok(change) = changes.try_recv() {
            handle(&mut txn, &change);
        }
    }
}

fn handle(txn: &mut Txn<'_>, change: &Change) {
    let object = &change.object;
    let uid = meta::uid(object);
    match change.kind {
        ChangeKind::Deleted => {
            for (resource, key) in txn.dependents(uid) {
                collect(txn, resource, &key);
            }
            for owner in meta::owner_refs(object) {
                release_foreground_owner(txn, &owner.uid);
            }
        }
        ChangeKind::Added | ChangeKind::Modified => {
            if meta::is_deleting(object) {
                let finalizers = meta::finalizers(object);
                if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
                    orphan_dependents(txn, change.resource, object);
                }
                if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
                    for (resource, key) in txn.dependents(uid) {
                        delete_in_background(txn, resource, &key);
                    }
                    release_foreground_owner(txn, uid);
                }
            }
            let owners = meta::owner_refs(object);
            let dangling =
                !owners.is_empty() && owners.iter().all(|o| txn.find_uid(&o.uid).is_none());
            if change.kind == ChangeKind::Added && dangling {
                delete_in_background(txn, change.resource, &ObjectKey::of(object));
            }
        }
    }
}

/// A dependent whose owner went: deleted when no owner is left, else the reference to the
/// missing owner is dropped.
fn collect(txn: &mut Txn<'_>, resource: Resource, key: &ObjectKey) {
    let Some(dependent) = txn.get(resource, key) else {
        return;
    };
    let owners = meta::owner_refs(&dependent);
    let alive: Vec<String> = owners
        .iter()
        .filter(|o| txn.find_uid(&o.uid).is_some())
        .map(|o| o.uid.clone())
        .collect();
    if alive.is_empty() {
        delete_in_background(txn, resource, key);
    } else if alive.len() < owners.len() {
        registry::modify(txn, resource, key, |object| {
            retain_owner_refs(object, |uid| alive.iter().any(|a| a == uid));
        });
    }
}

fn delete_in_background(txn: &mut Txn<'_>, resource: Resource, key: &ObjectKey) {
    let already = txn.get(resource, key).is_none_or(|o| meta::is_deleting(&o));
    if already {
        return;
    }
    let options = DeleteOptions {
        propagation: Some(Propagation::Background),
        ..DeleteOptions::default()
    };
    if let Err(error) = registry::delete(txn, resource, key, &options, false) {
        tracing::warn!(%error, name = %key.name, "garbage collector could not delete a dependent");
    }
}

/// Drops an owner's `foregroundDeletion` finalizer once nothing blocks it.
fn release_foreground_owner(txn: &mut Txn<'_>, owner_uid: &str) {
    let Some((resource, key)) = txn.find_uid(owner_uid) else {
        return;
    };
    let Some(owner) = txn.get(resource, &key) else {
        return;
    };
    if !meta::is_deleting(&owner)
        || !meta::finalizers(&owner)
            .iter()
            .any(|f| f == FOREGROUND_FINALIZER)
    {
        return;
    }
    let blocked = txn.dependents(owner_uid).iter().any(|(r, k)| {
        txn.get(*r, k).is_some_and(|d| {
            meta::owner_refs(&d)
                .iter()
                .any(|o| o.uid == owner_uid && o.block_owner_deletion)
        })
    });
    if !blocked {
        registry::modify(txn, resource, &key, |owner| {
            remove_finalizer(owner, FOREGROUND_FINALIZER)
        });
    }
}

fn orphan_dependents(txn: &mut Txn<'_>, resource: Resource, owner: &Value) {
    let uid = meta::uid(owner).to_string();
    for (dependent_resource, key) in txn.dependents(&uid) {
        registry::modify(txn, dependent_resource, &key, |object| {
            retain_owner_refs(object, |owner_uid| owner_uid != uid);
        });
    }
    registry::modify(txn, resource, &ObjectKey::of(owner), |owner| {
        remove_finalizer(owner, ORPHAN_FINALIZER)
    });
}

fn retain_owner_refs(object: &mut Value, keep: impl Fn(&str) -> bool) {
    let metadata = meta::metadata_mut(object);
    if let Some(Value::Array(refs)) = metadata.get_mut("ownerReferences") {
        refs.retain(|r| keep(r["uid"].as_str().unwrap_or_default()));
        if refs.is_empty() {
            metadata.remove("ownerReferences");
        }
    }
}

fn remove_finalizer(object: &mut Value, finalizer: &str) {
    let remaining: Vec<String> = meta::finalizers(object)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    meta::set_finalizers(object, &remaining);
}
