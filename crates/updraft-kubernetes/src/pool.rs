//! `KubernetesPool`: warm-pool members as Pods. A member is one Pod named `<fleet>-<8 hex>`
//! in the fleet's namespace with one container per agent, and a Secret of the same name
//! holding the agents' credentials, created after the Pod with the Pod as its owner so the
//! cluster deletes it with the Pod. Members are found by label (`updraft.dev/pool=<fleet>`
//! with this scheduler's labels), so a restarted scheduler finds them again.
//!
//! Draining deletes the Pod with its termination grace (the fleet's `pool_drain_grace`, else
//! its running deadline): the kubelet sends each agent one SIGTERM, waits for it to finish its
//! job, and only kills what is left when the grace runs out. A Pod already being deleted is
//! never deleted again, so a second drain sends nothing. Removing force-deletes the Pod (the
//! cluster takes its Secret with it), and is refused for a member that was never drained and
//! has not exited.

pub mod pod;
pub mod status;

use crate::context::KubeContext;
use crate::errors::{classify, is_not_found, BACKEND};
use crate::fleet_settings::FleetTemplate;
use crate::labels;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams};
use pod::{build, MemberInputs};
use status::{member_status, phase};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use updraft_backends::pool::{MemberName, MemberPhase, MemberSpec, MemberStatus, PoolBackend};
use updraft_backends::BackendError;

/// How long a member's agents may take to drain when neither the fleet's `pool_drain_grace`
/// nor its running deadline is known.
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(3600);
/// From creating a Pod to connected agents, on a node that has the image.
const TYPICAL_BOOT_TIME: Duration = Duration::from_secs(10);

/// Pool members as Pods, sharing the backend's client, settings and metrics. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesPool {
    context: Arc<KubeContext>,
    running_deadlines: Arc<BTreeMap<String, Duration>>,
}

fn invalid(name: impl Into<String>, detail: String) -> BackendError {
    BackendError::Invalid {
        backend: BACKEND,
        name: name.into(),
        detail,
    }
}

impl KubernetesPool {
    pub(crate) fn new(
        context: Arc<KubeContext>,
        running_deadlines: BTreeMap<String, Duration>,
    ) -> Self {
        KubernetesPool {
            context,
            running_deadlines: Arc::new(running_deadlines),
        }
    }

    fn fleet(&self, name: &str) -> Result<&FleetTemplate, BackendError> {
        self.context.config.fleets.get(name).ok_or_else(|| {
            invalid(
                name,
                format!("fleet {name} is not a kubernetes fleet of this scheduler"),
            )
        })
    }

    /// The fleet a member belongs to, from its name (`<fleet>-<8 hex>`).
    fn fleet_of(&self, member: &MemberName) -> Result<&FleetTemplate, BackendError> {
        member
            .as_str()
            .rsplit_once('-')
            .filter(|(_, suffix)| suffix.len() == 8)
            .and_then(|(fleet, _)| self.context.config.fleets.get(fleet))
            .ok_or_else(|| {
                invalid(
                    member.as_str(),
                    format!("{member} is not the name of a kubernetes pool member (<fleet>-<8 hex digits>)"),
                )
            })
    }

    fn drain_grace(&self, fleet: &FleetTemplate) -> Duration {
        fleet
            .pool_drain_grace
            .or_else(|| self.running_deadlines.get(&fleet.name).copied())
            .unwrap_or(DEFAULT_DRAIN_GRACE)
    }

    fn count(&self, operation: &'static str, error: BackendError) -> BackendError {
        self.context.metrics.count_error(operation, error)
    }

    /// The member's Pod, `None` once it is gone.
    async fn pod(&self, namespace: &str, member: &MemberName) -> Result<Option<Pod>, BackendError> {
        match self.context.pods(namespace).get(member.as_str()).await {
            Ok(pod) => Ok(Some(pod)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(classify(
                &error,
                &format!("reading pod {member} in {namespace}"),
                Some(member.as_str()),
            )),
        }
    }

    async fn delete_pod(
        &self,
        namespace: &str,
        member: &MemberName,
        grace: u32,
    ) -> Result<(), BackendError> {
        let params = DeleteParams::default().grace_period(grace);
        match self
            .context
            .pods(namespace)
            .delete(member.as_str(), &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(
                &error,
                &format!("deleting pod {member} in {namespace}"),
                Some(member.as_str()),
            )),
        }
    }

    /// Create one member: its Pod, then its Secret owned by the Pod.
    async fn add_member(
        &self,
        spec: &MemberSpec,
        fleet: &FleetTemplate,
    ) -> Result<(), BackendError> {
        let name = MemberName::new(format!(
            "{}-{}",
            spec.fleet,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        if !labels::is_dns_subdomain(name.as_str()) {
            return Err(invalid(
                &spec.fleet,
                format!("fleet name {:?} cannot start a pod name ({name}): use lowercase letters, digits and '-'", spec.fleet),
            ));
        }
        let base = self.context.fleet_pod(fleet).await?;
        let built = build(
            &name,
            spec,
            &MemberInputs {
                fleet,
                base: base.as_deref(),
                scheduler_id: &self.context.config.scheduler_id,
                drain_grace: self.drain_grace(fleet),
            },
        )
        .map_err(|detail| invalid(&spec.fleet, detail))?;
        let namespace = fleet.namespace.as_str();
        let created = self
            .context
            .pods(namespace)
            .create(&PostParams::default(), &built.pod)
            .await
            .map_err(|error| {
                classify(
                    &error,
                    &format!("creating pod {name} in {namespace}"),
                    Some(name.as_str()),
                )
            })?;
        if let Some(mut secret) = built.secret {
            secret.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.to_string(),
                uid: created.metadata.uid.unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]);
            if let Err(error) = self
                .context
                .secrets(namespace)
                .create(&PostParams::default(), &secret)
                .await
            {
                // Without its Secret no agent can start: take the Pod back.
                if let Err(cleanup) = self.delete_pod(namespace, &name, 0).await {
                    tracing::warn!(member = %name, error = %cleanup, "cannot delete a pool member whose Secret failed");
                }
                return Err(classify(
                    &error,
                    &format!("creating Secret {name} in {namespace}"),
                    Some(name.as_str()),
                ));
            }
        }
        tracing::info!(member = %name, fleet = %spec.fleet, agents = spec.agents, %namespace, "pool member created");
        Ok(())
    }

    async fn add_inner(&self, spec: &MemberSpec, count: u32) -> Result<(), BackendError> {
        if spec.command.is_empty() || spec.agents == 0 {
            return Err(invalid(
                &spec.fleet,
                "a pool member needs a command and at least one agent".into(),
            ));
        }
        let fleet = self.fleet(&spec.fleet)?;
        for _ in 0..count {
            self.add_member(spec, fleet).await?;
        }
        Ok(())
    }

    async fn drain_inner(&self, member: &MemberName) -> Result<(), BackendError> {
        let fleet = self.fleet_of(member)?;
        let namespace = fleet.namespace.as_str();
        let Some(pod) = self.pod(namespace, member).await? else {
            return Ok(());
        };
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase(&pod), MemberPhase::Exited { .. })
        {
            return Ok(());
        }
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or_else(|| {
                u32::try_from(self.drain_grace(fleet).as_secs()).unwrap_or(u32::MAX)
            });
        self.delete_pod(namespace, member, grace).await?;
        tracing::info!(%member, grace_seconds = grace, "pool member draining: each agent stops after its current job");
        Ok(())
    }

    async fn remove_inner(&self, member: &MemberName) -> Result<(), BackendError> {
        let fleet = self.fleet_of(member)?;
        let namespace = fleet.namespace.as_str();
        let Some(pod) = self.pod(namespace, member).await? else {
            return Ok(());
        };
        let drained = pod.metadata.deletion_timestamp.is_some();
        if !drained && !matches!(phase(&pod), MemberPhase::Exited { .. }) {
            return Err(invalid(
                member.as_str(),
                "its agents are still running; drain it and wait for them to exit".into(),
            ));
        }
        self.delete_pod(namespace, member, 0).await?;
        tracing::info!(%member, "pool member removed");
        Ok(())
    }
}

#[async_trait]
impl PoolBackend for KubernetesPool {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    fn typical_boot_time(&self) -> Duration {
        TYPICAL_BOOT_TIME
    }

    async fn members(&self, fleet: &str) -> Result<Vec<MemberStatus>, BackendError> {
        let template = self
            .fleet(fleet)
            .map_err(|e| self.count("pool_members", e))?;
        let namespace = template.namespace.as_str();
        let selector = labels::pool_selector(fleet, &self.context.config.scheduler_id);
        let pods = self
            .context
            .pods(namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|error| {
                self.count(
                    "pool_members",
                    classify(
                        &error,
                        &format!("listing pool pods of fleet {fleet} in {namespace}"),
                        None,
                    ),
                )
            })?;
        Ok(pods.items.iter().filter_map(member_status).collect())
    }

    async fn add(&self, spec: &MemberSpec, count: u32) -> Result<(), BackendError> {
        self.add_inner(spec, count)
            .await
            .map_err(|e| self.count("pool_add", e))
    }

    async fn drain(&self, member: &MemberName) -> Result<(), BackendError> {
        self.drain_inner(member)
            .await
            .map_err(|e| self.count("pool_drain", e))
    }

    async fn remove(&self, member: &MemberName) -> Result<(), BackendError> {
        self.remove_inner(member)
            .await
            .map_err(|e| self.count("pool_remove", e))
    }
}
