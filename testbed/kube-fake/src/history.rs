//! The watch history's form of a change: each object version serialized once (watches send
//! those bytes as they are) with its namespace and labels kept for filtering. A parsed pod
//! takes about ten times the memory of its JSON, and the history holds thousands of versions.

use crate::meta;
use crate::resource::Resource;
use crate::store::{Change, ChangeKind};
use bytes::Bytes;
use serde_json::{Map, Value};

/// One version of an object.
#[derive(Debug, Clone)]
pub struct Version {
    pub json: Bytes,
    pub labels: Option<Map<String, Value>>,
}

impl Version {
    fn of(object: &Value) -> Version {
        Version {
            json: Bytes::from(object.to_string()),
            labels: meta::labels(object).cloned(),
        }
    }

    /// The object again, for filters and representations that need more than labels.
    pub fn parse(&self) -> Value {
        serde_json::from_slice(&self.json).expect("the history holds JSON it serialized itself")
    }
}

/// A change as the watch history keeps it.
#[derive(Debug)]
pub struct Recorded {
    pub revision: u64,
    pub resource: Resource,
    pub kind: ChangeKind,
    pub namespace: String,
    /// The object after the change (for a deletion, its last state).
    pub object: Version,
    pub previous: Option<Version>,
}

impl Recorded {
    pub fn of(change: &Change) -> Recorded {
        Recorded {
            revision: change.revision,
            resource: change.resource,
            kind: change.kind,
            namespace: meta::namespace(&change.object).to_string(),
            object: Version::of(&change.object),
            previous: change.previous.as_deref().map(Version::of),
        }
    }
}
