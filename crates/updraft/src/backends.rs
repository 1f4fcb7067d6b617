//! The backends this build has, by the name fleets use in `backend = "…"`. Reading a config
//! file happens here because only the binary knows every backend: the scheduler's sections
//! and each backend's tables are read into one list of problems, so `updraft check` names all
//! of them at once. `open` builds the backends for `updraft run`, and `reference` renders
//! `docs/configuration.md` from the same settings types.

use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_backends::local::{LocalBackend, LocalPool, LocalSettings};
use updraft_backends::{Backend, LeaderElection, PoolBackend};
use updraft_config::reference::Reference;
use updraft_config::{read, schema_for, ConfigErrors, Path};
use updraft_scheduler::config::{
    BuildkiteFile, FleetFile, HttpFile, LedgerFile, LimitsFile, PushFile, ReconcileFile,
};
use updraft_scheduler::Config;

#[cfg_attr(feature = "kubernetes", path = "kubernetes/enabled.rs")]
#[cfg_attr(not(feature = "kubernetes"), path = "kubernetes/disabled.rs")]
mod kubernetes;

#[cfg_attr(feature = "aws", path = "aws/enabled.rs")]
#[cfg_attr(not(feature = "aws"), path = "aws/disabled.rs")]
mod aws;

#[cfg_attr(feature = "ec2", path = "ec2/enabled.rs")]
#[cfg_attr(not(feature = "ec2"), path = "ec2/disabled.rs")]
mod ec2;

/// The backend names fleets may use (one compiled out of this build says so when used), and
/// `[aws]`, the table the CodeBuild and ECS backends share: the tables backends read besides
/// the scheduler's sections. `ec2` (pools) is both a backend and its shared table.
const TABLES: &[&str] = &[
    "local",
    "kubernetes",
    "codebuild",
    "ecs",
    aws::SECTION,
    ec2::BACKEND,
];

/// A config file read whole: the scheduler's settings and every backend's.
pub struct Loaded {
    pub config: Config,
    pub local: LocalSettings,
    pub kubernetes: kubernetes::Settings,
    pub aws: aws::Settings,
    pub ec2: ec2::Settings,
}

/// The backends `updraft run` schedules with, and the leader election when one is set up.
pub struct Opened {
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    /// Where pool fleets (`mode = "pool"`) keep their members.
    pub pools: BTreeMap<String, Arc<dyn PoolBackend>>,
    pub leader: Option<Arc<dyn LeaderElection>>,
    /// The backends' own series, for the scheduler to serve on `/metrics`.
    pub metrics: Vec<prometheus_client::registry::Registry>,
}

/// Read a config file's text with the process environment's overrides, secrets given by
/// reference (`agent_token_from = "ssm:/…"`) looked up; every problem, the scheduler's and the
/// backends', comes back at once.
pub async fn load(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigErrors> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let (raw, mut errors) = Config::prepare(text, &env, TABLES)?;
    let mut config = Config::read(&raw, &env, TABLES, &mut errors);
    let local = read::<LocalSettings>(
        &section(&raw, "local"),
        &Path::root().key("local"),
        &mut errors,
    );
    for (at, _, table) in Config::fleet_backend_tables(&raw, "local") {
        if table.as_object().is_some_and(|t| !t.is_empty()) {
            errors.push(&at, "the local backend has no per-fleet settings");
        }
    }
    let kubernetes = kubernetes::read(&raw, &mut errors);
    let aws = aws::read(&raw, &mut errors);
    let ec2 = ec2::read(&raw, &mut errors);
    if let Some(config) = &mut config {
        aws::resolve_references(config, aws.as_ref(), &mut errors).await;
    }
    match (config, local, kubernetes, aws, ec2) {
        (Some(config), Some(local), Some(kubernetes), Some(aws), Some(ec2)) => {
            errors.into_result(Loaded {
                config,
                local,
                kubernetes,
                aws,
                ec2,
            })
        }
        _ => Err(errors
            .into_result(())
            .expect_err("reading failed with no error")),
    }
}

fn section(raw: &Value, name: &str) -> Value {
    raw.get(name)
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// Open every backend some fleet uses.
pub async fn open(loaded: &Loaded) -> anyhow::Result<Opened> {
    let config = &loaded.config;
    let mut options = loaded.local.options();
    options.max_running_per_fleet = config
        .fleets
        .iter()
        .map(|fleet| (fleet.name.clone(), fleet.max_in_flight as usize))
        .collect();
    let local = LocalBackend::open(options)
        .await
        .with_context(|| format!("opening the local backend in {}", loaded.local.state_dir))?;
    let mut backends: BTreeMap<String, Arc<dyn Backend>> =
        [("local".to_string(), Arc::new(local) as Arc<dyn Backend>)].into();
    let local_pool = LocalPool::open(std::path::Path::new(&loaded.local.state_dir))
        .with_context(|| format!("opening the local pool in {}", loaded.local.state_dir))?;
    let mut pools: BTreeMap<String, Arc<dyn PoolBackend>> = [(
        "local".to_string(),
        Arc::new(local_pool) as Arc<dyn PoolBackend>,
    )]
    .into();
    let mut leader = None;
    let mut metrics = Vec::new();
    if let Some(opened) = kubernetes::open(&loaded.kubernetes, config).await? {
        backends.insert("kubernetes".to_string(), opened.backend);
        pools.insert("kubernetes".to_string(), opened.pool);
        leader = opened.leader;
        metrics.push(opened.metrics);
    }
    aws::open(&loaded.aws, &mut backends).await?;
    metrics.extend(aws::metrics(&loaded.aws));
    ec2::open(&loaded.ec2, config, &mut pools).await?;
    Ok(Opened {
        backends,
        pools,
        leader,
        metrics,
    })
}

/// Push events from outside the scheduler's own receiver (`[aws.sqs_push]`), taken in until
/// the source cannot be used; never resolves when there is none.
pub fn push_source<'a>(
    aws: &'a aws::Settings,
    scheduler: &'a updraft_scheduler::SchedulerHandle,
) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
    aws::push_source(aws, scheduler)
}

/// `docs/configuration.md`: every key of every section this build reads.
pub fn reference() -> String {
    let mut doc = Reference::new(
        "Configuration reference",
        "Generated by `updraft check --reference` from the settings types themselves; a test \
         fails when this file and the code differ. Every key can be checked with \
         `updraft check --config FILE`, which lists each mistake with its path. Any key of a \
         single-table section can be overridden from the environment as \
         `UPDRAFT_<SECTION>_<KEY>` (e.g. `UPDRAFT_BUILDKITE_POLL_INTERVAL_MS=2000`). Durations \
         are written `\"90s\"`, `\"5m\"`, `\"1h30m\"`, `\"7d\"` or as whole seconds.",
    );
    doc.section("[buildkite]", &schema_for::<BuildkiteFile>());
    doc.section("[push]", &schema_for::<PushFile>());
    doc.section("[http]", &schema_for::<HttpFile>());
    doc.section("[ledger]", &schema_for::<LedgerFile>());
    doc.section("[limits]", &schema_for::<LimitsFile>());
    doc.section("[reconcile]", &schema_for::<ReconcileFile>());
    doc.section("[[fleet]]", &schema_for::<FleetFile>());
    doc.paragraph(
        "A fleet's backend may have a table of its own under the fleet, named after the \
         backend (`[fleet.kubernetes]`); the backend sections below say what each takes.",
    );
    doc.section("[local]", &schema_for::<LocalSettings>());
    kubernetes::reference(&mut doc);
    aws::reference(&mut doc);
    ec2::reference(&mut doc);
    doc.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_configuration_md_matches_the_code() {
        let committed = include_str!("../../../docs/configuration.md");
        assert!(
            committed == reference(),
            "docs/configuration.md is out of date: run `cargo run -- check --reference > docs/configuration.md`"
        );
    }
}
