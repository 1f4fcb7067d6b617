//! This build has no Kubernetes backend (it was built without the `kubernetes` feature): a
//! config that asks for it is told so, with the path of each place that does.

use serde_json::Value;
use std::sync::Arc;
use updraft_backends::{Backend, LeaderElection};
use updraft_config::reference::Reference;
use updraft_config::{Errors, Path};
use updraft_scheduler::Config;

pub type Settings = ();

const MISSING: &str =
    "backend \"kubernetes\" is not in this build (build updraft with the kubernetes feature)";

pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    if raw.get("kubernetes").is_some() {
        errors.push(&Path::root().key("kubernetes"), MISSING);
    }
    let fleets = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, fleet) in fleets.enumerate() {
        if fleet.get("backend").and_then(Value::as_str) == Some("kubernetes") {
            errors.push(&Path::root().key("fleet").index(i).key("backend"), MISSING);
        }
    }
    Some(())
}

pub struct Opened {
    pub backend: Arc<dyn Backend>,
    pub leader: Option<Arc<dyn LeaderElection>>,
    pub pool: Arc<dyn updraft_backends::PoolBackend>,
    pub metrics: prometheus_client::registry::Registry,
}

pub async fn open(_: &Settings, _: &Config) -> anyhow::Result<Option<Opened>> {
    Ok(None)
}

pub fn reference(_: &mut Reference) {}
