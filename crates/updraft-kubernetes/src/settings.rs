//! The `[kubernetes]` table: how Updraft reaches the cluster (a kubeconfig and context, or the
//! in-cluster service account), the default namespace, the client's request rate, the watch,
//! failure detection timings, cleanup, and leader election among replicas.

use crate::labels::{is_dns_label, is_dns_subdomain, is_label_value};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use updraft_config::{Duration, Errors, Path, Settings};

/// The Kubernetes backend: one `batch/v1` Job per Buildkite job.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// A kubeconfig file. Unset: `$KUBECONFIG` or `~/.kube/config` when there is one, else
    /// the pod's own service account (in-cluster).
    #[schemars(length(min = 1))]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use; unset: the file's current context.
    #[schemars(length(min = 1))]
    pub context: Option<String>,
    /// The namespace of fleets that name none in `[fleet.kubernetes]`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The value of the `updraft.dev/scheduler` label on everything this scheduler creates;
    /// it watches only objects with its own. Unset: `[buildkite] stack_key`.
    pub scheduler_id: Option<String>,
    /// Requests per second the client sends the API server at most, as client-go's QPS
    /// (agent-stack-k8s uses 10); `0` lifts the limit.
    #[serde(default = "default_api_qps")]
    #[schemars(range(min = 0))]
    pub api_qps: u32,
    /// Requests the client may send at once above `api_qps` after a quiet spell, as
    /// client-go's burst (agent-stack-k8s uses 20).
    #[serde(default = "default_api_burst")]
    #[schemars(range(min = 1))]
    pub api_burst: u32,
    /// How long a pod may keep failing to pull an image (or to start a container for want of
    /// a Secret or ConfigMap it names) before its job is failed with the image and the
    /// kubelet's reason. An invalid image name fails at once.
    #[serde(default = "default_image_pull_grace")]
    pub image_pull_grace: Duration,
    /// `ttlSecondsAfterFinished` of every Job: the cluster deletes a finished Job, its pod and
    /// its Secret after this, should Updraft not have deleted them already.
    #[serde(default = "default_job_ttl")]
    pub job_ttl: Duration,
    /// How long one watch request lasts before it is renewed from the last
    /// `resourceVersion` (a relist happens only when the server answers 410 Gone).
    #[serde(default = "default_watch_timeout")]
    pub watch_timeout: Duration,
    /// Objects per page when the watch (re)lists.
    #[serde(default = "default_list_page_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub list_page_size: u32,
    /// Several replicas of the scheduler elect one leader with a Lease; the others wait.
    #[serde(default)]
    pub leader_election: LeaderElectionSettings,
}

/// Leader election with a `coordination.k8s.io/v1` Lease: only the holder schedules. When
/// it dies, another replica takes the Lease once `lease_duration` has passed without a
/// renewal.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionSettings {
    /// Elect a leader among the replicas of this scheduler.
    #[serde(default)]
    pub enabled: bool,
    /// The Lease's name.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace; unset: `[kubernetes] namespace`.
    pub namespace: Option<String>,
    /// This replica's name in the Lease. Unset: `$POD_NAME`, else the host name and the
    /// process id.
    #[schemars(length(min = 1))]
    pub identity: Option<String>,
    /// How long a Lease holds without a renewal; a replica takes over a leader that died
    /// within this plus one `renew_interval`.
    #[serde(default = "default_lease_duration")]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease, and how often the others try to take it.
    #[serde(default = "default_renew_interval")]
    pub renew_interval: Duration,
}

impl Default for LeaderElectionSettings {
    fn default() -> Self {
        LeaderElectionSettings {
            enabled: false,
            lease_name: default_lease_name(),
            namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            renew_interval: default_renew_interval(),
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}
fn default_api_qps() -> u32 {
    50
}
fn default_api_burst() -> u32 {
    100
}
fn default_image_pull_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_job_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_watch_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_list_page_size() -> u32 {
    500
}
fn default_lease_name() -> String {
    "updraft-scheduler".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(10)
}
fn default_renew_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            kubeconfig: None,
            context: None,
            namespace: default_namespace(),
            scheduler_id: None,
            api_qps: default_api_qps(),
            api_burst: default_api_burst(),
            image_pull_grace: default_image_pull_grace(),
            job_ttl: default_job_ttl(),
            watch_timeout: default_watch_timeout(),
            list_page_size: default_list_page_size(),
            leader_election: LeaderElectionSettings::default(),
        }
    }
}

impl Settings for KubernetesSettings {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        check_namespace(&self.namespace, &at.key("namespace"), errors);
        if let Some(id) = &self.scheduler_id {
            check_scheduler_id(id, &at.key("scheduler_id"), errors);
        }
        // Without `kubeconfig`, a `context` names one in the default kubeconfig, which `kube`
        // checks when it loads the file at start-up.
        if let Some(file) = &self.kubeconfig {
            check_kubeconfig(file, self.context.as_deref(), at, errors);
        }
        let election = &self.leader_election;
        let here = at.key("leader_election");
        if let Some(namespace) = &election.namespace {
            check_namespace(namespace, &here.key("namespace"), errors);
        }
        if !is_dns_subdomain(&election.lease_name) {
            errors.push(
                &here.key("lease_name"),
                format!(
                    "expected a DNS subdomain (lowercase letters, digits, '-', '.'), got {:?}",
                    election.lease_name
                ),
            );
        }
        if election.renew_interval.get() * 2 > election.lease_duration.get() {
            errors.push(
                &here.key("renew_interval"),
                format!(
                    "expected at most half of lease_duration ({}) so the leader renews at least twice per lease, got {}",
                    election.lease_duration, election.renew_interval
                ),
            );
        }
        if self.job_ttl.get().as_secs() == 0 {
            errors.push(
                &at.key("job_ttl"),
                "expected at least 1s (it is a whole number of seconds in the Job)",
            );
        }
    }
}

impl KubernetesSettings {
    /// The scheduler id the labels carry: `scheduler_id`, else the Stacks API stack key.
    pub fn scheduler_id_or(&self, stack_key: &str) -> String {
        self.scheduler_id
            .clone()
            .unwrap_or_else(|| stack_key.to_string())
    }

    /// The kubeconfig file named, with `~/` expanded.
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        self.kubeconfig.as_deref().map(expand_home)
    }
}

pub(crate) fn check_namespace(namespace: &str, at: &Path, errors: &mut Errors) {
    if !is_dns_label(namespace) {
        errors.push(
            at,
            format!("expected a namespace name (lowercase letters, digits and '-', at most 63), got {namespace:?}"),
        );
    }
}

/// The scheduler id must be a label value (and the stack key it defaults to as well).
pub fn check_scheduler_id(id: &str, at: &Path, errors: &mut Errors) {
    if id.is_empty() || !is_label_value(id) {
        errors.push(
            at,
            format!("expected a label value (letters, digits, '-', '_', '.', at most 63, starting and ending with a letter or digit), got {id:?}"),
        );
    }
}

fn check_kubeconfig(file: &str, context: Option<&str>, at: &Path, errors: &mut Errors) {
    let path = expand_home(file);
    if !path.exists() {
        errors.push(
            &at.key("kubeconfig"),
            format!("the file {} does not exist", path.display()),
        );
        return;
    }
    match kube::config::Kubeconfig::read_from(&path) {
        Err(error) => errors.push(
            &at.key("kubeconfig"),
            format!("cannot read {}: {error}", path.display()),
        ),
        Ok(config) => {
            let names: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
            match context {
                Some(context) if !names.contains(&context) => errors.push(
                    &at.key("context"),
                    format!(
                        "{} has no context {context:?} (it has: {})",
                        path.display(),
                        names.join(", ")
                    ),
                ),
                None if config.current_context.is_none() => errors.push(
                    &at.key("context"),
                    format!(
                        "{} sets no current-context; name one (it has: {})",
                        path.display(),
                        names.join(", ")
                    ),
                ),
                _ => {}
            }
        }
    }
}

fn expand_home(file: &str) -> PathBuf {
    match (file.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: serde_json::Value) -> (Option<KubernetesSettings>, Vec<String>) {
        let mut errors = Errors::new();
        let settings = updraft_config::read::<KubernetesSettings>(
            &value,
            &Path::root().key("kubernetes"),
            &mut errors,
        );
        (
            settings,
            errors.into_vec().iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn defaults_are_those_documented() {
        let (settings, errors) = read(json!({}));
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.unwrap();
        assert_eq!((settings.api_qps, settings.api_burst), (50, 100));
        assert_eq!(settings.image_pull_grace.get().as_secs(), 30);
        assert_eq!(settings.scheduler_id_or("updraft"), "updraft");
        assert!(!settings.leader_election.enabled);
    }

    #[test]
    fn a_missing_kubeconfig_and_bad_names_are_reported_with_their_paths() {
        let (_, errors) = read(json!({
            "kubeconfig": "/nonexistent/kubeconfig",
            "namespace": "CI",
            "scheduler_id": "has space",
            "leader_election": {"lease_duration": "10s", "renew_interval": "6s"},
        }));
        assert!(
            errors.contains(
                &"kubernetes.kubeconfig: the file /nonexistent/kubeconfig does not exist"
                    .to_string()
            ),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("kubernetes.namespace: expected a namespace name")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("kubernetes.scheduler_id: expected a label value")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e
                .starts_with("kubernetes.leader_election.renew_interval: expected at most half")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_context_missing_from_the_kubeconfig_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n- name: dev\n  context: {cluster: c, user: u}\ncurrent-context: dev\n",
        )
        .unwrap();
        let (_, errors) = read(json!({"kubeconfig": file.to_string_lossy(), "context": "prod"}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("kubernetes.context: ")
                && errors[0].contains("has no context \"prod\" (it has: dev)"),
            "{errors:?}"
        );
        let (_, errors) = read(json!({"kubeconfig": file.to_string_lossy(), "context": "dev"}));
        assert!(errors.is_empty(), "{errors:?}");
    }
}
