//! This build has no EC2 pools (it was built without the `ec2` feature): a config with
//! `[ec2]` or a fleet on the `ec2` backend is told so, with the path of each place.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_backends::PoolBackend;
use updraft_config::reference::Reference;
use updraft_config::{Errors, Path};
use updraft_scheduler::Config;

pub type Settings = ();

pub const BACKEND: &str = "ec2";

const MISSING: &str = "is not in this build (build updraft with the ec2 feature)";

pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    if raw.get(BACKEND).is_some() {
        errors.push(&Path::root().key(BACKEND), format!("[ec2] {MISSING}"));
    }
    let fleets = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, fleet) in fleets.enumerate() {
        if fleet.get("backend").and_then(Value::as_str) == Some(BACKEND) {
            errors.push(
                &Path::root().key("fleet").index(i).key("backend"),
                format!("backend \"ec2\" {MISSING}"),
            );
        }
    }
    Some(())
}

pub async fn open(
    _: &Settings,
    _: &Config,
    _: &mut BTreeMap<String, Arc<dyn PoolBackend>>,
) -> anyhow::Result<()> {
    Ok(())
}

pub fn reference(_: &mut Reference) {}
