//! `KubernetesBackend`: the `Backend` trait over the context. Launch creates the Job (named
//! after the launch, so a second launch is a 409 and reported as `AlreadyExists`) and then the
//! Secret holding the job acquisition token, owned by the Job. Stop ends a launch: a pending
//! one is deleted at once (Job and pod, no grace), a running one is failed through its
//! deadline so the agent gets its termination grace. Delete removes the Job in the background
//! (the cluster takes the pod and the Secret with it). List reads the watch cache.

use crate::builder::{self, BuildInputs, Refusal};
use crate::config::KubernetesConfig;
use crate::context::{self, KubeContext};
use crate::errors::{classify, is_already_exists, is_not_found, BACKEND};
use crate::labels;
use crate::metrics::Metrics;
use crate::phase::{assess, Timings};
use crate::pool::KubernetesPool;
use crate::slim::PodPhase;
use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use updraft_backends::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus,
};

/// The Kubernetes backend. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesBackend {
    context: Arc<KubeContext>,
}

impl KubernetesBackend {
    /// Connect, check the cluster, and start watching. `pending_deadlines` are the fleets'
    /// (an unschedulable pod is refused at its fleet's); metrics go into `registry`.
    pub async fn open(
        config: KubernetesConfig,
        pending_deadlines: BTreeMap<String, Duration>,
        registry: &mut Registry,
    ) -> Result<KubernetesBackend, BackendError> {
        let metrics = Metrics::register(registry);
        let client = context::client(&config, &metrics).await?;
        KubernetesBackend::with_client(client, config, pending_deadlines, metrics).await
    }

    /// As [`KubernetesBackend::open`], with a client made elsewhere.
    pub async fn with_client(
        client: kube::Client,
        config: KubernetesConfig,
        pending_deadlines: BTreeMap<String, Duration>,
        metrics: Metrics,
    ) -> Result<KubernetesBackend, BackendError> {
        let context = KubeContext::open(client, config, pending_deadlines, metrics).await?;
        Ok(KubernetesBackend {
            context: Arc::new(context),
        })
    }

    /// Warm pools of this backend's fleets on the same client, settings and metrics. A
    /// draining member's agents get the fleet's `pool_drain_grace`, else its entry in
    /// `running_deadlines`, to finish their job.
    pub fn pool(&self, running_deadlines: BTreeMap<String, Duration>) -> KubernetesPool {
        KubernetesPool::new(self.context.clone(), running_deadlines)
    }

    /// The client, for leader election on the same connection.
    pub fn client(&self) -> kube::Client {
        self.context.client.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.context.metrics
    }

    /// Roughly the bytes the watch cache holds.
    pub fn cache_footprint(&self) -> usize {
        self.context.cache.footprint()
    }

    fn config(&self) -> &KubernetesConfig {
        &self.context.config
    }

    fn count(&self, operation: &'static str, error: BackendError) -> BackendError {
        self.context.metrics.count_error(operation, error)
    }

    fn invalid(&self, spec: &LaunchSpec, refusal: Refusal) -> BackendError {
        BackendError::Invalid {
            backend: BACKEND,
            name: spec.name.to_string(),
            detail: refusal.to_string(),
        }
    }

    async fn launch_inner(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        if self.context.cache.knows(&spec.name) {
            return Ok(LaunchOutcome::AlreadyExists);
        }
        let _permit =
            self.context
                .launching
                .acquire()
                .await
                .map_err(|_| BackendError::Unavailable {
                    backend: BACKEND,
                    detail: "the backend is shutting down".into(),
                })?;
        // Hundreds of launches may wait for a turn at once; while they wait each holds only
        // this small future, and the API calls' much larger state exists for the few with a
        // turn.
        Box::pin(self.create_objects(spec)).await
    }

    /// Build the launch's Job and Secret and create them.
    async fn create_objects(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let Some(fleet) = self.config().fleets.get(&spec.fleet) else {
            return Err(BackendError::Invalid {
                backend: BACKEND,
                name: spec.name.to_string(),
                detail: format!(
                    "fleet {} is not a kubernetes fleet of this scheduler",
                    spec.fleet
                ),
            });
        };
        let plugin = builder::step_plugin(spec).map_err(|r| self.invalid(spec, r))?;
        let base = self.context.fleet_pod(fleet).await?;
        let step_template = match plugin.as_ref().and_then(|p| p.pod_template.as_deref()) {
            Some(name) => Some(
                self.context
                    .pod_template(&fleet.namespace, name)
                    .await
                    .map_err(|reason| {
                        self.invalid(
                            spec,
                            Refusal {
                                field: "kubernetes.podTemplate".into(),
                                reason,
                            },
                        )
                    })?,
            ),
            None => None,
        };
        let built = builder::build(
            spec,
            plugin.as_ref(),
            &BuildInputs {
                fleet,
                base: base.as_deref(),
                step_template: step_template.as_deref(),
                scheduler_id: &self.config().scheduler_id,
                job_ttl: self.config().settings.job_ttl.get(),
            },
        )
        .map_err(|r| self.invalid(spec, r))?;
        let namespace = fleet.namespace.as_str();
        let jobs = self.context.jobs(namespace);
        let doing = format!("creating Job {} in {namespace}", spec.name);
        let (outcome, uid) = match jobs.create(&PostParams::default(), &built.job).await {
            Ok(job) => (LaunchOutcome::Started, job.metadata.uid),
            Err(error) if is_already_exists(&error) => {
                let existing = jobs.get(spec.name.as_str()).await.map_err(|e| {
                    classify(
                        &e,
                        &format!("reading Job {} in {namespace}", spec.name),
                        Some(spec.name.as_str()),
                    )
                })?;
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(BackendError::Unavailable {
                        backend: BACKEND,
                        detail: format!(
                            "Job {} in {namespace} is still being deleted; launching again once it is gone",
                            spec.name
                        ),
                    });
                }
                (LaunchOutcome::AlreadyExists, existing.metadata.uid)
            }
            Err(error) => return Err(classify(&error, &doing, Some(spec.name.as_str()))),
        };
        self.context.cache.created(spec.name.clone(), &spec.fleet);
        let mut secret = built.secret;
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: spec.name.to_string(),
            uid: uid.unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]);
        match self
            .context
            .secrets(namespace)
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(outcome),
            Err(error) if is_already_exists(&error) => Ok(outcome),
            Err(error) => {
                // Without its Secret the pod cannot start: take the Job back so the next
                // attempt starts clean.
                let _ = self.delete_job(namespace, &spec.name, None).await;
                self.context.cache.forget(&spec.name);
                Err(classify(
                    &error,
                    &format!("creating Secret {} in {namespace}", spec.name),
                    Some(spec.name.as_str()),
                ))
            }
        }
    }

    async fn delete_job(
        &self,
        namespace: &str,
        name: &LaunchName,
        grace: Option<u32>,
    ) -> Result<(), BackendError> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            grace_period_seconds: grace,
            ..Default::default()
        };
        match self
            .context
            .jobs(namespace)
            .delete(name.as_str(), &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(
                &error,
                &format!("deleting Job {name} in {namespace}"),
                Some(name.as_str()),
            )),
        }
    }

    /// The namespaces a launch may be in: its own when the cache knows it, else every one.
    fn namespaces_of(&self, name: &LaunchName) -> Vec<String> {
        match self.context.cache.entry(name).and_then(|e| e.job) {
            Some(job) => vec![job.namespace.to_string()],
            None => self.config().namespaces(),
        }
    }

    async fn stop_inner(&self, name: &LaunchName) -> Result<(), BackendError> {
        let entry = self.context.cache.entry(name);
        let running = entry.as_ref().is_some_and(|e| {
            e.pods
                .iter()
                .any(|(p, _)| p.phase == PodPhase::Running && !p.gone)
        });
        let Some(job) = entry
            .as_ref()
            .and_then(|e| e.job.as_ref())
            .filter(|_| running)
        else {
            // Pending (or not seen yet): nothing has started, so nothing needs a grace.
            for namespace in self.namespaces_of(name) {
                self.delete_job(&namespace, name, Some(0)).await?;
                for (pod, _) in entry.iter().flat_map(|e| &e.pods).filter(|(p, _)| !p.gone) {
                    let pods = self.context.pods(&namespace);
                    match pods
                        .delete(&pod.name, &DeleteParams::default().grace_period(0))
                        .await
                    {
                        Ok(_) => {}
                        Err(error) if is_not_found(&error) => {}
                        Err(error) => {
                            return Err(classify(
                                &error,
                                &format!("deleting pod {} in {namespace}", pod.name),
                                Some(name.as_str()),
                            ))
                        }
                    }
                }
            }
            self.context.cache.forget(name);
            return Ok(());
        };
        if job.outcome.is_some() || job.stopped {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {labels::STOPPED: "true"}},
            "spec": {"activeDeadlineSeconds": 1},
        });
        match self
            .context
            .jobs(&job.namespace)
            .patch(
                name.as_str(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(
                &error,
                &format!("stopping Job {name} in {}", job.namespace),
                Some(name.as_str()),
            )),
        }
    }

    async fn delete_inner(&self, name: &LaunchName) -> Result<(), BackendError> {
        for namespace in self.namespaces_of(name) {
            self.delete_job(&namespace, name, None).await?;
        }
        self.context.cache.forget(name);
        Ok(())
    }

    fn timings(&self, fleet: &str) -> Timings {
        Timings {
            image_pull_grace: self.config().settings.image_pull_grace.get(),
            pending_deadline: self
                .context
                .pending_deadlines
                .get(fleet)
                .copied()
                .unwrap_or(Duration::from_secs(300)),
        }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    fn needs_job_details(&self) -> bool {
        true
    }

    #[tracing::instrument(skip_all, fields(launch = %spec.name, fleet = %spec.fleet))]
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        self.launch_inner(spec)
            .await
            .map_err(|e| self.count("launch", e))
    }

    #[tracing::instrument(skip_all, fields(launch = %name))]
    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        self.stop_inner(name)
            .await
            .map_err(|e| self.count("stop", e))
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        let now = chrono::Utc::now();
        let cache = &self.context.cache;
        let statuses = cache.map(
            |name, job, pods| {
                let pods = pods.iter().map(|(pod, _)| pod);
                let (phase, detail) = assess(name, job, pods, now, self.timings(&job.fleet));
                LaunchStatus {
                    name: name.clone(),
                    fleet: job.fleet.to_string(),
                    phase,
                    started_at: job.created,
                    detail,
                }
            },
            |name, created| LaunchStatus {
                name: name.clone(),
                fleet: created.fleet.clone(),
                phase: LaunchPhase::Pending,
                started_at: created.at,
                detail: None,
            },
        );
        let (jobs, pods) = cache.sizes();
        self.context.metrics.cached_jobs.set(jobs as i64);
        self.context.metrics.cached_pods.set(pods as i64);
        self.context
            .metrics
            .cached_bytes
            .set(cache.footprint() as i64);
        Ok(statuses)
    }

    #[tracing::instrument(skip_all, fields(launch = %name))]
    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        self.delete_inner(name)
            .await
            .map_err(|e| self.count("delete", e))
    }
}
