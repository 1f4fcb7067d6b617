//! Everything the backend works with, built and checked once at start-up: the client (from a
//! kubeconfig and context, or in-cluster; rate-limited and counted), the settings, the watch
//! cache and its watch tasks, the metrics, and the fleets' named pod templates. `open` checks
//! what launching will need before the scheduler starts — each namespace exists, the service
//! account may list and watch Jobs and pods and create Jobs and Secrets there, each named
//! `PodTemplate` exists and fits Updraft's pod shape — so a missing namespace or RBAC rule
//! stops start-up with a message naming it, not the first launch.

use crate::cache::{Cache, Kind};
use crate::client_layers::{RateLimitLayer, RequestMetricsLayer};
use crate::config::KubernetesConfig;
use crate::errors::{classify, is_already_exists, BACKEND};
use crate::fleet_settings::FleetTemplate;
use crate::labels;
use crate::metrics::{Metrics, WatchLabels};
use crate::pod_template::{check_shape, PodSource};
use crate::slim::{SlimJob, SlimPod};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplate, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use updraft_backends::BackendError;

/// How long a named `PodTemplate` is used before it is read again.
const TEMPLATE_REFRESH: Duration = Duration::from_secs(30);
/// Launches creating their objects at once. The scheduler may start hundreds together; more
/// than this only adds connections and buffers (the API server takes them one by one anyway)
/// without creating Jobs any faster.
const CONCURRENT_LAUNCHES: usize = 32;
/// How long start-up waits for the watch's first lists.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Named pod templates read so far: (namespace, name) → when it was read, and its spec.
type Templates = HashMap<(String, String), (Instant, Arc<PodSpec>)>;

/// The backend's shared state.
pub struct KubeContext {
    pub client: Client,
    pub config: KubernetesConfig,
    pub cache: Arc<Cache>,
    pub metrics: Metrics,
    /// Each fleet's pending deadline, which bounds how long a pod may stay unschedulable.
    pub pending_deadlines: BTreeMap<String, Duration>,
    templates: Mutex<Templates>,
    watches: Vec<JoinHandle<()>>,
    /// Bounds the launches talking to the API server at once.
    pub launching: tokio::sync::Semaphore,
}

impl Drop for KubeContext {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

fn fatal(detail: String) -> BackendError {
    BackendError::Fatal {
        backend: BACKEND,
        detail,
    }
}

/// A client for `config`: its kubeconfig (and context) or, without one, `$KUBECONFIG`,
/// `~/.kube/config` or the pod's service account; rate-limited and counted into `metrics`.
pub async fn client(config: &KubernetesConfig, metrics: &Metrics) -> Result<Client, BackendError> {
    let settings = &config.settings;
    let options = KubeConfigOptions {
        context: settings.context.clone(),
        ..Default::default()
    };
    let kube_config = match settings.kubeconfig_path() {
        Some(path) => {
            let file = Kubeconfig::read_from(&path)
                .map_err(|e| fatal(format!("kubernetes.kubeconfig: cannot read {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| fatal(format!("kubernetes.kubeconfig: {} with context {:?}: {e}", path.display(), settings.context)))?
        }
        None if settings.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| fatal(format!("kubernetes.context: {e}")))?,
        None => Config::infer().await.map_err(|e| {
            fatal(format!(
                "no kubeconfig ($KUBECONFIG or ~/.kube/config) and not in a cluster: {e}; set [kubernetes] kubeconfig"
            ))
        })?,
    };
    let builder = ClientBuilder::try_from(kube_config)
        .map_err(|e| fatal(format!("building the Kubernetes client: {e}")))?;
    let builder = builder.with_layer(&RequestMetricsLayer::new(metrics.clone()));
    Ok(if settings.api_qps == 0 {
        builder.build()
    } else {
        builder
            .with_layer(&RateLimitLayer::new(settings.api_qps, settings.api_burst))
            .build()
    })
}

impl KubeContext {
    /// Check the cluster, read the named templates, start the watches and wait for their
    /// first lists.
    pub async fn open(
        client: Client,
        config: KubernetesConfig,
        pending_deadlines: BTreeMap<String, Duration>,
        metrics: Metrics,
    ) -> Result<KubeContext, BackendError> {
        let namespaces = config.namespaces();
        for namespace in &namespaces {
            preflight(&client, namespace, &config.scheduler_id).await?;
        }
        let cache = Arc::new(Cache::new(namespaces.len() * 2));
        let mut context = KubeContext {
            client,
            config,
            cache,
            metrics,
            pending_deadlines,
            templates: Mutex::new(HashMap::new()),
            launching: tokio::sync::Semaphore::new(CONCURRENT_LAUNCHES),
            watches: Vec::new(),
        };
        let named: Vec<(String, String, String)> = context
            .config
            .fleets
            .values()
            .filter_map(|f| match &f.pod {
                PodSource::Named(name) => Some((f.name.clone(), f.namespace.clone(), name.clone())),
                _ => None,
            })
            .collect();
        for (fleet, namespace, name) in named {
            context
                .pod_template(&namespace, &name)
                .await
                .map_err(|e| fatal(format!("fleet {fleet}: pod_template_name: {e}")))?;
        }
        for namespace in &namespaces {
            context
                .watches
                .push(tokio::spawn(watch(&context, namespace, jobs_feed())));
            context
                .watches
                .push(tokio::spawn(watch(&context, namespace, pods_feed())));
        }
        if tokio::time::timeout(SYNC_TIMEOUT, context.cache.ready())
            .await
            .is_err()
        {
            return Err(BackendError::Unavailable {
                backend: BACKEND,
                detail: format!("the watch of Jobs and pods did not complete its first list within {SYNC_TIMEOUT:?}"),
            });
        }
        Ok(context)
    }

    pub fn jobs(&self, namespace: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn pods(&self, namespace: &str) -> Api<k8s_openapi::api::core::v1::Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The pod a fleet's pods start from: its template from the config, or its named
    /// `PodTemplate` (see [`KubeContext::pod_template`]); `None` for a bare fleet.
    pub async fn fleet_pod(
        &self,
        fleet: &FleetTemplate,
    ) -> Result<Option<Arc<PodSpec>>, BackendError> {
        match &fleet.pod {
            PodSource::Bare => Ok(None),
            PodSource::Spec(pod) => Ok(Some(pod.clone())),
            PodSource::Named(name) => self
                .pod_template(&fleet.namespace, name)
                .await
                .map(Some)
                .map_err(|detail| BackendError::Unavailable {
                    backend: BACKEND,
                    detail: format!("fleet {}: {detail}", fleet.name),
                }),
        }
    }

    /// A `PodTemplate`'s spec, read again once it is older than [`TEMPLATE_REFRESH`]. The
    /// error says what is wrong with it, in words for a build or a start-up message.
    pub async fn pod_template(&self, namespace: &str, name: &str) -> Result<Arc<PodSpec>, String> {
        let key = (namespace.to_string(), name.to_string());
        if let Some((read_at, spec)) = self.lock_templates().get(&key) {
            if read_at.elapsed() < TEMPLATE_REFRESH {
                return Ok(spec.clone());
            }
        }
        let api: Api<PodTemplate> = Api::namespaced(self.client.clone(), namespace);
        let template = api.get(name).await.map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 404 => {
                format!("no PodTemplate {name:?} in namespace {namespace}")
            }
            other => format!("reading PodTemplate {name:?} in {namespace}: {other}"),
        })?;
        let spec = template
            .template
            .and_then(|t| t.spec)
            .ok_or_else(|| format!("PodTemplate {name:?} in {namespace} has no template.spec"))?;
        let problems = check_shape(&spec);
        if !problems.is_empty() {
            let words: Vec<String> = problems.iter().map(|p| p.at("template.spec")).collect();
            return Err(format!(
                "PodTemplate {name:?} in {namespace}: {}",
                words.join("; ")
            ));
        }
        let spec = Arc::new(spec);
        self.lock_templates()
            .insert(key, (Instant::now(), spec.clone()));
        Ok(spec)
    }

    fn lock_templates(&self) -> std::sync::MutexGuard<'_, Templates> {
        self.templates.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watcher_config(&self) -> watcher::Config {
        let settings = &self.config.settings;
        watcher::Config::default()
            .labels(&labels::selector(&self.config.scheduler_id))
            .timeout(
                u32::try_from(settings.watch_timeout.get().as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1),
            )
            .page_size(settings.list_page_size)
    }
}

/// What launching in `namespace` needs: list and watch of Jobs and pods, and create of Jobs
/// and Secrets (tried as dry runs, which also prove the namespace exists).
async fn preflight(
    client: &Client,
    namespace: &str,
    scheduler_id: &str,
) -> Result<(), BackendError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let probe = ListParams::default()
        .labels(&labels::selector(scheduler_id))
        .limit(1);
    let checking =
        |what: &str| format!("checking that the scheduler may {what} in namespace {namespace}");
    let as_fatal = |error: BackendError| match error {
        BackendError::Unavailable { detail, .. } => {
            fatal(format!("{detail} (is the API server reachable?)"))
        }
        other => other,
    };
    jobs.list_metadata(&probe)
        .await
        .map_err(|e| as_fatal(classify(&e, &checking("list Jobs"), None)))?;
    pods.list_metadata(&probe)
        .await
        .map_err(|e| as_fatal(classify(&e, &checking("list pods"), None)))?;
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let probe_job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "updraft-preflight", "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": "updraft-preflight"}]}}},
    }))
    .map_err(|e| fatal(format!("building the preflight Job: {e}")))?;
    if let Err(error) = jobs.create(&dry_run, &probe_job).await {
        if !is_already_exists(&error) {
            return Err(as_fatal(classify(&error, &checking("create Jobs"), None)));
        }
    }
    let probe_secret = Secret {
        metadata: kube::core::ObjectMeta {
            name: Some("updraft-preflight".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Err(error) = secrets.create(&dry_run, &probe_secret).await {
        if !is_already_exists(&error) {
            return Err(as_fatal(classify(
                &error,
                &checking("create Secrets"),
                None,
            )));
        }
    }
    Ok(())
}

/// How one watch stream feeds the cache.
struct Feed<K> {
    resource: &'static str,
    kind: Kind,
    apply: fn(&Cache, &str, K),
    delete: fn(&Cache, K),
}

/// Feed the cache from a label-selected watch of this scheduler's objects of one kind in
/// `namespace`. The watcher resumes from its last `resourceVersion` when a watch ends, lists
/// again (an `Init` event) only when the server answers 410 Gone, and backs off on errors.
fn watch<K>(
    context: &KubeContext,
    namespace: &str,
    feed: Feed<K>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(context.client.clone(), namespace);
    let stream = watcher::watcher(api, context.watcher_config()).default_backoff();
    let (cache, metrics) = (context.cache.clone(), context.metrics.clone());
    let namespace = namespace.to_string();
    async move {
        let labels = WatchLabels {
            resource: feed.resource,
            namespace: namespace.clone(),
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    metrics.watch_errors.get_or_create(&labels).inc();
                    tracing::warn!(%error, namespace, resource = feed.resource, "watch failed; retrying");
                    continue;
                }
            };
            metrics.watch_events.get_or_create(&labels).inc();
            match event {
                Event::Init => {
                    metrics.relists.get_or_create(&labels).inc();
                    cache.begin_list(feed.kind, &namespace);
                }
                Event::InitApply(object) | Event::Apply(object) => {
                    (feed.apply)(&cache, &namespace, object)
                }
                Event::Delete(object) => (feed.delete)(&cache, object),
                Event::InitDone => cache.end_list(feed.kind, &namespace),
            }
        }
    }
}

/// The watch of this scheduler's Jobs in a namespace.
fn jobs_feed() -> Feed<SlimJob> {
    Feed {
        resource: "jobs",
        kind: Kind::Jobs,
        apply: |cache, _, job| cache.apply_job(job),
        delete: |cache, job| cache.delete_job(job),
    }
}

/// The watch of this scheduler's pods in a namespace.
fn pods_feed() -> Feed<SlimPod> {
    Feed {
        resource: "pods",
        kind: Kind::Pods,
        apply: |cache, namespace, pod| cache.apply_pod(namespace, pod),
        delete: |cache, pod| cache.delete_pod(pod),
    }
}
