//! This build has no AWS backends (it was built without the `aws` feature): a config that
//! asks for CodeBuild, ECS, `[aws]` or a secret reference is told so, with the path of each
//! place that does.

use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_backends::Backend;
use updraft_config::reference::Reference;
use updraft_config::{Errors, Path};
use updraft_scheduler::{Config, SchedulerHandle};

pub type Settings = ();

const BACKENDS: [&str; 2] = ["codebuild", "ecs"];
pub const SECTION: &str = "aws";

const MISSING: &str = "is not in this build (build updraft with the aws feature)";

pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    if raw.get(SECTION).is_some() {
        errors.push(&Path::root().key(SECTION), format!("[aws] {MISSING}"));
    }
    let fleets = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, fleet) in fleets.enumerate() {
        let backend = fleet
            .get("backend")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if BACKENDS.contains(&backend) || backend == SECTION {
            errors.push(
                &Path::root().key("fleet").index(i).key("backend"),
                format!("backend {backend:?} {MISSING}"),
            );
        }
    }
    Some(())
}

pub async fn resolve_references(config: &mut Config, _: Option<&Settings>, errors: &mut Errors) {
    if config.buildkite.agent_token_from.is_some() {
        errors.push(
            &Path::root().key("buildkite").key("agent_token_from"),
            format!("secrets from AWS {MISSING}"),
        );
    }
    if config.push.webhook_token_from.is_some() {
        errors.push(
            &Path::root().key("push").key("webhook_token_from"),
            format!("secrets from AWS {MISSING}"),
        );
    }
}

pub async fn open(_: &Settings, _: &mut BTreeMap<String, Arc<dyn Backend>>) -> anyhow::Result<()> {
    Ok(())
}

pub fn metrics(_: &Settings) -> Option<Registry> {
    None
}

pub fn push_source<'a>(
    _: &'a Settings,
    _: &'a SchedulerHandle,
) -> BoxFuture<'a, anyhow::Result<()>> {
    std::future::pending().boxed()
}

pub fn reference(_: &mut Reference) {}
