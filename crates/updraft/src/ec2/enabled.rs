//! EC2 pools in this build: reading `[ec2]` and every EC2 fleet's `[fleet.ec2]` into the
//! config's list of problems, opening the pool backend for the pool fleets on `ec2`, and the
//! reference sections.

use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_backends::PoolBackend;
use updraft_config::reference::Reference;
use updraft_config::{read as read_settings, schema_for, Errors, Path};
use updraft_ec2::{Ec2Clients, Ec2Fleet, Ec2FleetSettings, Ec2Pool, Ec2Settings};
use updraft_scheduler::Config;

/// The backend name fleets use, which is also the name of the shared table.
pub const BACKEND: &str = "ec2";

/// `[ec2]` and each EC2 fleet's table, by fleet name.
pub struct Settings {
    ec2: Ec2Settings,
    fleets: BTreeMap<String, Ec2FleetSettings>,
}

/// Read `[ec2]` and the EC2 fleets' tables; an EC2 fleet must be a pool.
pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    let fleets = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, fleet) in fleets.enumerate() {
        let backend = fleet.get("backend").and_then(Value::as_str);
        let mode = fleet
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("acquire");
        if backend == Some(BACKEND) && mode != "pool" {
            errors.push(
                &Path::root().key("fleet").index(i).key("mode"),
                "the ec2 backend keeps pools only: set mode = \"pool\" and a [fleet.pool]",
            );
        }
    }
    let empty = Value::Object(Default::default());
    let ec2 = read_settings::<Ec2Settings>(
        raw.get(BACKEND).unwrap_or(&empty),
        &Path::root().key(BACKEND),
        errors,
    );
    let mut tables = BTreeMap::new();
    for (at, name, table) in Config::fleet_backend_tables(raw, BACKEND) {
        if let Some(fleet) = read_settings::<Ec2FleetSettings>(&table, &at, errors) {
            tables.insert(name, fleet);
        }
    }
    Some(Settings {
        ec2: ec2?,
        fleets: tables,
    })
}

/// Open the EC2 pool backend when some pool fleet uses it, checking AWS first.
pub async fn open(
    settings: &Settings,
    config: &Config,
    pools: &mut BTreeMap<String, Arc<dyn PoolBackend>>,
) -> anyhow::Result<()> {
    let fleets: Vec<Ec2Fleet> = config
        .fleets
        .iter()
        .filter(|fleet| fleet.backend == BACKEND)
        .filter_map(|fleet| {
            let pool = fleet.pool.as_ref()?;
            Some(Ec2Fleet {
                name: fleet.name.clone(),
                settings: settings.fleets.get(&fleet.name)?.clone(),
                agents: pool.agents_per_instance,
                max: pool.max,
            })
        })
        .collect();
    if fleets.is_empty() {
        return Ok(());
    }
    let clients = Ec2Clients::load(&settings.ec2).await;
    let pool = Ec2Pool::open(&clients, settings.ec2.clone(), fleets)
        .await
        .context("opening the ec2 pools")?;
    pools.insert(BACKEND.to_string(), Arc::new(pool));
    Ok(())
}

pub fn reference(doc: &mut Reference) {
    doc.section("[ec2]", &schema_for::<Ec2Settings>());
    doc.section("[fleet.ec2]", &schema_for::<Ec2FleetSettings>());
}
