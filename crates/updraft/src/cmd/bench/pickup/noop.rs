//! `NoopBackend`: a backend that starts nothing. Each launch is only recorded (with the time
//! it was asked for) and reported running from then on, so the benchmarks measure the
//! scheduler's own path from "job scheduled" to "launch called" and nothing else.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;
use updraft_backends::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus,
};

pub struct NoopBackend {
    launches: Mutex<Launches>,
    /// How many distinct launches were recorded; benchmarks wait on it.
    launched: watch::Sender<usize>,
}

impl NoopBackend {
    pub fn new() -> NoopBackend {
        NoopBackend {
            launches: Mutex::new(Launches::default()),
            launched: watch::Sender::new(0),
        }
    }

    pub fn launched(&self) -> watch::Receiver<usize> {
        self.launched.subscribe()
    }

    /// The jobs launched so far, in launch order.
    pub fn launch_order(&self) -> Vec<LaunchName> {
        self.table().order.clone()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Launches> {
        self.launches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct Launches {
    by_name: HashMap<LaunchName, LaunchStatus>,
    order: Vec<LaunchName>,
}

#[async_trait]
impl Backend for NoopBackend {
    fn kind(&self) -> &'static str {
        "noop"
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let mut table = self.table();
        if table.by_name.contains_key(&spec.name) {
            return Ok(LaunchOutcome::AlreadyExists);
        }
        let status = LaunchStatus {
            detail: None,
            name: spec.name.clone(),
            fleet: spec.fleet.clone(),
            phase: LaunchPhase::Running,
            started_at: chrono::Utc::now(),
        };
        table.by_name.insert(spec.name.clone(), status);
        table.order.push(spec.name.clone());
        self.launched.send_replace(table.order.len());
        Ok(LaunchOutcome::Started)
    }

    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        if let Some(status) = self.table().by_name.get_mut(name) {
            status.phase = LaunchPhase::Failed {
                reason: "stopped".to_string(),
            };
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        Ok(self.table().by_name.values().cloned().collect())
    }

    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        // The launch order keeps the name: it records what was launched, not what still is.
        self.table().by_name.remove(name);
        Ok(())
    }
}
