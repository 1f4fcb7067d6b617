//! The object store, the fake's etcd: every object of every resource, one global revision
//! counter that becomes each write's `resourceVersion`, a bounded history of changes that
//! watches replay from, indexes by uid and by owner uid, and a change feed for the in-process
//! controllers (which, unlike watches, never lose events).
//!
//! All access goes through a [`Txn`], which holds the one lock: a controller's
//! read-check-write is atomic, as an etcd transaction would make it.

use crate::history::Recorded;
use crate::meta;
use crate::resource::Resource;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

/// Where an object lives: namespace (empty for cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of a stored object.
    pub fn of(object: &Value) -> ObjectKey {
        ObjectKey::new(meta::namespace(object), meta::name(object))
    }
}

/// What a write did, as watch events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write: the object after it (for a deletion, the last state, stamped with the deletion's
/// revision) and before it.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    pub resource: Resource,
    pub kind: ChangeKind,
    pub object: Arc<Value>,
    pub previous: Option<Arc<Value>>,
}

/// A watch asked to resume from a revision the history no longer reaches back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryExpired {
    pub oldest_available: u64,
}

type Dependent = (Resource, ObjectKey);

struct State {
    revision: u64,
    objects: HashMap<Resource, BTreeMap<ObjectKey, Arc<Value>>>,
    by_uid: HashMap<String, Dependent>,
    dependents: HashMap<String, BTreeSet<Dependent>>,
    history: VecDeque<Arc<Recorded>>,
    history_limit: usize,
    /// The newest revision no longer in `history`: a watch from an older revision gets 410.
    compacted: u64,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Change>>>,
}

/// The store; share it behind an `Arc`.
pub struct Store {
    state: Mutex<State>,
    latest: watch::Sender<u64>,
}

impl Store {
    /// An empty store whose watch history keeps at most `history_limit` changes.
    pub fn new(history_limit: usize) -> Store {
        Store {
            state: Mutex::new(State {
                revision: 1,
                objects: HashMap::new(),
                by_uid: HashMap::new(),
                dependents: HashMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 1,
                subscribers: Vec::new(),
            }),
            latest: watch::channel(1).0,
        }
    }

    /// Starts a transaction: holds the store's lock until dropped, so keep it short and never
    /// hold it across an `.await`.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            latest: &self.latest,
            wrote: false,
        }
    }

    /// Every change from now on, for an in-process controller.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.txn().state.subscribers.push(tx);
        rx
    }

    /// Follows the newest revision, so watches wake when something was written.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// A transaction on the store; see [`Store::txn`].
pub struct Txn<'a> {
    state: MutexGuard<'a, State>,
    latest: &'a watch::Sender<u64>,
    wrote: bool,
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.wrote {
            self.latest.send_replace(self.state.revision);
        }
    }
}

impl Txn<'_> {
    /// The newest revision.
    pub fn revision(&self) -> u64 {
        self.state.revision
    }

    pub fn get(&self, resource: Resource, key: &ObjectKey) -> Option<Arc<Value>> {
        self.state.objects.get(&resource)?.get(key).cloned()
    }

    /// Objects of a resource in key order (namespace, then name), optionally in one namespace
    /// and starting after a key (for paging).
    pub fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        after: Option<&ObjectKey>,
    ) -> Vec<Arc<Value>> {
        let Some(objects) = self.state.objects.get(&resource) else {
            return vec![];
        };
        let lower = match (after, namespace) {
            (Some(key), _) => Bound::Excluded(key.clone()),
            (None, Some(ns)) => Bound::Included(ObjectKey::new(ns, "")),
            (None, None) => Bound::Unbounded,
        };
        objects
            .range((lower, Bound::Unbounded))
            .take_while(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Where the object with this uid lives, if it exists.
    pub fn find_uid(&self, uid: &str) -> Option<(Resource, ObjectKey)> {
        self.state.by_uid.get(uid).cloned()
    }

    /// Objects that name this uid in their `ownerReferences`.
    pub fn dependents(&self, owner_uid: &str) -> Vec<(Resource, ObjectKey)> {
        self.state
            .dependents
            .get(owner_uid)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores an object (created when new, replaced otherwise) stamped with the next revision
    /// as its `resourceVersion`.
    pub fn put(&mut self, resource: Resource, mut object: Value) -> Arc<Value> {
        let key = ObjectKey::of(&object);
        let revision = self.next_revision();
        meta::metadata_mut(&mut object)
            .insert("resourceVersion".into(), json!(revision.to_string()));
        let object = Arc::new(object);
        let previous = self
            .state
            .objects
            .entry(resource)
            .or_default()
            .insert(key.clone(), object.clone());
        self.reindex(resource, &key, previous.as_deref(), Some(&object));
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            revision,
            resource,
            kind,
            object: object.clone(),
            previous,
        });
        object
    }

    /// Removes an object; returns its last state (the stored one, or `last_state` when an
    /// update is what ends it, as when its last finalizer goes), stamped with the deletion's
    /// revision as the real server does in the `DELETED` event.
    pub fn remove(
        &mut self,
        resource: Resource,
        key: &ObjectKey,
        last_state: Option<Value>,
    ) -> Option<Arc<Value>> {
        let previous = self.state.objects.get_mut(&resource)?.remove(key)?;
        let revision = self.next_revision();
        let mut last = last_state.unwrap_or_else(|| (*previous).clone());
        meta::metadata_mut(&mut last).insert("resourceVersion".into(), json!(revision.to_string()));
        let last = Arc::new(last);
        self.reindex(resource, key, Some(&previous), None);
        self.record(Change {
            revision,
            resource,
            kind: ChangeKind::Deleted,
            object: last.clone(),
            previous: Some(previous),
        });
        Some(last)
    }

    /// Changes after `revision`, oldest first, or the error a watch from there must report.
    pub fn changes_since(&self, revision: u64) -> Result<Vec<Arc<Recorded>>, HistoryExpired> {
        if revision < self.state.compacted {
            return Err(HistoryExpired {
                oldest_available: self.state.compacted + 1,
            });
        }
        let history = &self.state.history;
        let start = history.partition_point(|c| c.revision <= revision);
        Ok(history.range(start..).cloned().collect())
    }

    /// Whether a watch or continue token at `revision` can still be served.
    pub fn can_resume_from(&self, revision: u64) -> bool {
        revision >= self.state.compacted
    }

    /// Forgets the whole watch history and moves the revision on, as an etcd compaction after
    /// unrelated writes would: every resourceVersion handed out so far becomes too old to
    /// resume a watch from.
    pub fn expire_history(&mut self) {
        let revision = self.next_revision();
        self.state.history.clear();
        self.state.compacted = revision;
    }

    fn next_revision(&mut self) -> u64 {
        self.wrote = true;
        self.state.revision += 1;
        self.state.revision
    }

    fn record(&mut self, change: Change) {
        let recorded = Arc::new(Recorded::of(&change));
        let change = Arc::new(change);
        let state = &mut *self.state;
        state.subscribers.retain(|s| s.send(change.clone()).is_ok());
        state.history.push_back(recorded);
        while state.history.len() > state.history_limit {
            if let Some(dropped) = state.history.pop_front() {
                state.compacted = dropped.revision;
            }
        }
    }

    fn reindex(
        &mut self,
        resource: Resource,
        key: &ObjectKey,
        before: Option<&Value>,
        after: Option<&Value>,
    ) {
        let state = &mut *self.state;
        if let Some(before) = before {
            state.by_uid.remove(meta::uid(before));
            for owner in meta::owner_refs(before) {
                if let Some(set) = state.dependents.get_mut(&owner.uid) {
                    set.remove(&(resource, key.clone()));
                    if set.is_empty() {
                        state.dependents.remove(&owner.uid);
                    }
                }
            }
        }
        if let Some(after) = after {
            state
                .by_uid
                .insert(meta::uid(after).to_string(), (resource, key.clone()));
            for owner in meta::owner_refs(after) {
                state
                    .dependents
                    .entry(owner.uid)
                    .or_default()
                    .insert((resource, key.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}})
    }

    #[test]
    fn revisions_history_and_expiry() {
        let store = Store::new(2);
        let mut txn = store.txn();
        let a = txn.put(Resource::Secrets, obj("a"));
        assert_eq!(meta::resource_version(&a), "2");
        txn.put(Resource::Secrets, obj("b"));
        txn.put(Resource::Secrets, obj("c"));
        assert_eq!(txn.changes_since(3).unwrap().len(), 1);
        assert_eq!(
            txn.changes_since(1).unwrap_err(),
            HistoryExpired {
                oldest_available: 3
            }
        );
        let gone = txn
            .remove(Resource::Secrets, &ObjectKey::new("ns", "a"), None)
            .unwrap();
        assert_eq!(meta::resource_version(&gone), "5");
        txn.expire_history();
        assert!(txn.changes_since(5).is_err());
        assert!(txn.changes_since(6).unwrap().is_empty());
    }

    #[test]
    fn owner_index_follows_writes() {
        let store = Store::new(10);
        let mut txn = store.txn();
        let mut child = obj("child");
        child["metadata"]["ownerReferences"] =
            json!([{"uid": "uid-parent", "kind": "Job", "name": "parent"}]);
        txn.put(Resource::Pods, child);
        assert_eq!(txn.dependents("uid-parent").len(), 1);
        txn.put(Resource::Pods, obj("child"));
        assert!(txn.dependents("uid-parent").is_empty());
        assert!(txn.find_uid("uid-child").is_some());
    }
}
