//! The Kubernetes backend in this build: reading `[kubernetes]` and every kubernetes fleet's
//! `[fleet.kubernetes]` into the config's list of problems, opening the backend (and the
//! Lease election when `[kubernetes.leader_election] enabled`), and the reference sections.

use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_backends::{Backend, LeaderElection, PoolBackend};
use updraft_config::reference::Reference;
use updraft_config::{schema_for, Errors, Path};
use updraft_kubernetes::resources::ResourceClassSettings;
use updraft_kubernetes::settings::LeaderElectionSettings;
use updraft_kubernetes::{
    default_identity, read_config, FleetSettings, FleetTable, KubernetesBackend, KubernetesConfig,
    KubernetesSettings, LeaseElection, LeaseOptions,
};
use updraft_scheduler::Config;

/// The backend's settings, when the file has a kubernetes fleet or a `[kubernetes]` table.
pub type Settings = Option<KubernetesConfig>;

/// The name fleets use.
const NAME: &str = "kubernetes";

/// Read the backend's tables from the raw file; `None` when they cannot be read at all.
pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    let fleets: Vec<FleetTable> = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, fleet)| fleet.get("backend").and_then(Value::as_str) == Some(NAME))
        .map(|(i, fleet)| FleetTable {
            at: Path::root().key("fleet").index(i),
            name: fleet
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            table: fleet
                .get(NAME)
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
            tags: fleet
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        })
        .collect();
    let section = raw.get(NAME);
    if fleets.is_empty() && section.is_none() {
        return Some(None);
    }
    let stack_key = raw
        .pointer("/buildkite/stack_key")
        .and_then(Value::as_str)
        .unwrap_or("updraft");
    let empty = Value::Object(Default::default());
    read_config(section.unwrap_or(&empty), &fleets, stack_key, errors).map(Some)
}

/// What opening gives the scheduler.
pub struct Opened {
    pub backend: Arc<dyn Backend>,
    pub leader: Option<Arc<dyn LeaderElection>>,
    /// Members of the pool fleets on Kubernetes (pods of agents).
    pub pool: Arc<dyn PoolBackend>,
    /// The backend's series (`updraft_kubernetes_*`), for `/metrics`.
    pub metrics: updraft_kubernetes::Registry,
}

/// Connect, check the cluster and start watching; `None` when no fleet uses the backend.
pub async fn open(settings: &Settings, config: &Config) -> anyhow::Result<Option<Opened>> {
    let Some(kubernetes) = settings else {
        return Ok(None);
    };
    let pending_deadlines: BTreeMap<String, std::time::Duration> = config
        .fleets
        .iter()
        .filter(|f| f.backend == NAME)
        .map(|f| (f.name.clone(), f.pending_deadline))
        .collect();
    let mut registry = updraft_kubernetes::Registry::default();
    let backend = KubernetesBackend::open(
        kubernetes.clone(),
        pending_deadlines,
        registry.sub_registry_with_prefix("updraft_kubernetes"),
    )
    .await
    .context("opening the kubernetes backend")?;
    let election = &kubernetes.settings.leader_election;
    let leader = election.enabled.then(|| {
        Arc::new(LeaseElection::new(
            backend.client(),
            lease_options(election, &kubernetes.settings),
            backend.metrics().clone(),
        )) as Arc<dyn LeaderElection>
    });
    let running_deadlines = config
        .fleets
        .iter()
        .filter(|f| f.backend == NAME)
        .map(|f| (f.name.clone(), f.running_deadline))
        .collect();
    let pool = Arc::new(backend.pool(running_deadlines));
    Ok(Some(Opened {
        pool,
        backend: Arc::new(backend),
        leader,
        metrics: registry,
    }))
}

fn lease_options(election: &LeaderElectionSettings, settings: &KubernetesSettings) -> LeaseOptions {
    LeaseOptions {
        namespace: election
            .namespace
            .clone()
            .unwrap_or_else(|| settings.namespace.clone()),
        name: election.lease_name.clone(),
        identity: election.identity.clone().unwrap_or_else(default_identity),
        lease_duration: election.lease_duration.get(),
        renew_interval: election.renew_interval.get(),
    }
}

/// The reference sections of the backend's tables.
pub fn reference(doc: &mut Reference) {
    doc.section("[kubernetes]", &schema_for::<KubernetesSettings>());
    doc.section("[fleet.kubernetes]", &schema_for::<FleetSettings>());
    doc.section(
        "[fleet.kubernetes.resource_classes.<name>]",
        &schema_for::<ResourceClassSettings>(),
    );
}
