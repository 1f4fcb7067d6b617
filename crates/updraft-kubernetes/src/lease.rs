//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it (kube-rs has no helper of its own). Every write is a replace carrying the
//! `resourceVersion` read just before, so of two replicas racing for the Lease exactly one
//! wins and the other gets 409 Conflict.
//!
//! - A candidate takes the Lease when it has none, when its holder released it, or when the
//!   holder has not renewed it for `leaseDurationSeconds` — measured on the candidate's own
//!   clock from when it last saw the Lease change, never by comparing clocks across machines.
//! - The leader renews every `renew_interval`. When it cannot renew for two thirds of the
//!   lease duration, or finds another holder, it stops leading at once (`lost()` resolves)
//!   — before any candidate may take over.
//! - On shutdown the leader releases the Lease (empty holder, one-second duration) so another
//!   replica takes over at its next try instead of after the lease duration.

use crate::errors::{classify, is_already_exists};
use crate::metrics::Metrics;
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use updraft_backends::{BackendError, LeaderElection};

/// How the election is run.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

/// This replica's side of the election.
pub struct LeaseElection {
    shared: Arc<Shared>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    api: Api<Lease>,
    options: LeaseOptions,
    leading: watch::Sender<bool>,
    seen: Mutex<Seen>,
    metrics: Metrics,
}

/// The Lease as last read, and when (on this machine's clock) it last changed.
#[derive(Default)]
struct Seen {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    changed_at: Option<Instant>,
}

/// What one attempt found.
enum Attempt {
    Leading,
    HeldByAnother,
}

impl LeaseElection {
    pub fn new(client: kube::Client, options: LeaseOptions, metrics: Metrics) -> LeaseElection {
        LeaseElection {
            shared: Arc::new(Shared {
                api: Api::namespaced(client, &options.namespace),
                options,
                leading: watch::Sender::new(false),
                seen: Mutex::new(Seen::default()),
                metrics,
            }),
            renewer: Mutex::new(None),
        }
    }

    /// Whether this replica leads now.
    pub fn is_leading(&self) -> bool {
        *self.shared.leading.borrow()
    }

    fn set_renewer(&self, task: Option<JoinHandle<()>>) {
        let mut slot = self.renewer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            old.abort();
        }
        *slot = task;
    }
}

impl Drop for LeaseElection {
    fn drop(&mut self) {
        self.set_renewer(None);
    }
}

/// This replica's identity when none is configured: the pod's name, else the host's name and
/// this process's id.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "updraft".into());
    format!("{host}-{}", std::process::id())
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_leading(&self, leading: bool) {
        self.leading
            .send_if_modified(|now| std::mem::replace(now, leading) != leading);
        self.metrics.leader.set(i64::from(leading));
    }

    /// Read the Lease and take or renew it if this replica may.
    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let me = self.options.identity.as_str();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds =
            i32::try_from(self.options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.options.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_duration_seconds: Some(seconds),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.took(me)),
                Err(error) if is_already_exists(&error) => Ok(Attempt::HeldByAnother),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
        );
        let expired = {
            let mut seen = self.seen();
            if seen.holder != holder
                || seen.renew_time != spec.renew_time
                || seen.changed_at.is_none()
            {
                seen.holder = holder.clone();
                seen.renew_time = spec.renew_time.clone();
                seen.changed_at = Some(Instant::now());
            }
            seen.changed_at.is_some_and(|at| at.elapsed() >= held_for)
        };
        match holder.as_deref() {
            Some(holder) if holder == me => {}
            Some(_) if !expired => return Ok(Attempt::HeldByAnother),
            _ => {
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.holder_identity = Some(me.to_string());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(self.took(me)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByAnother),
            Err(error) => Err(error),
        }
    }

    fn took(&self, me: &str) -> Attempt {
        let mut seen = self.seen();
        seen.holder = Some(me.to_string());
        seen.changed_at = Some(Instant::now());
        Attempt::Leading
    }

    /// Renew until that fails for too long or another replica holds the Lease.
    async fn renew(self: Arc<Self>) {
        let deadline = self.options.lease_duration * 2 / 3;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.options.renew_interval).await;
            match self.attempt().await {
                Ok(Attempt::Leading) => renewed = Instant::now(),
                Ok(Attempt::HeldByAnother) => {
                    tracing::warn!(lease = %self.options.name, "another replica holds the lease; no longer leading");
                    break;
                }
                Err(error) if renewed.elapsed() < deadline => {
                    tracing::warn!(%error, lease = %self.options.name, "renewing the lease failed; retrying");
                }
                Err(error) => {
                    tracing::error!(%error, lease = %self.options.name, "could not renew the lease in time; no longer leading");
                    break;
                }
            }
        }
        self.set_leading(false);
    }
}

#[async_trait]
impl LeaderElection for LeaseElection {
    fn identity(&self) -> &str {
        &self.shared.options.identity
    }

    async fn acquire(&self) -> Result<(), BackendError> {
        let shared = &self.shared;
        loop {
            match shared.attempt().await {
                Ok(Attempt::Leading) => break,
                Ok(Attempt::HeldByAnother) => {}
                Err(error) => {
                    let doing = format!(
                        "taking Lease {} in {}",
                        shared.options.name, shared.options.namespace
                    );
                    let error = classify(&error, &doing, None);
                    if matches!(error, BackendError::Fatal { .. }) {
                        return Err(error);
                    }
                    tracing::warn!(%error, "leader election: retrying");
                }
            }
            tokio::time::sleep(shared.options.renew_interval).await;
        }
        tracing::info!(identity = %shared.options.identity, lease = %shared.options.name, "leading");
        shared.set_leading(true);
        self.set_renewer(Some(tokio::spawn(shared.clone().renew())));
        Ok(())
    }

    async fn lost(&self) {
        let mut leading = self.shared.leading.subscribe();
        let _ = leading.wait_for(|leading| !*leading).await;
    }

    async fn release(&self) {
        self.set_renewer(None);
        let shared = &self.shared;
        if !*shared.leading.borrow() {
            return;
        }
        shared.set_leading(false);
        let result = async {
            let mut lease = shared.api.get(&shared.options.name).await?;
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(shared.options.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            shared
                .api
                .replace(&shared.options.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %shared.options.name, "released the lease"),
            Err(error) => {
                tracing::warn!(%error, lease = %shared.options.name, "releasing the lease failed; it expires by itself")
            }
        }
    }

    fn leader(&self) -> Option<String> {
        self.shared.seen().holder.clone()
    }
}
