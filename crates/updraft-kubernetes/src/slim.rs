//! The Jobs and pods the watch keeps, stripped to the fields failure detection reads.
//! Objects are decoded straight into these small types — serde skips every other field
//! without building it — so a watch event for a Job never materialises its pod template,
//! and the cache holds a few hundred bytes per launch however large the pods are. This is
//! what keeps memory flat with thousands of Jobs (agent-stack-k8s issue #874: 60 GB).

use crate::labels;
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// How a Job ended, from its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Complete,
    /// `Failed` (or `FailureTarget`, which comes first) with Kubernetes' reason and message.
    Failed {
        reason: Box<str>,
        message: Box<str>,
    },
}

/// What the watch keeps of a Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// Tells this Job from a later one of the same name (a relaunch).
    pub uid: Box<str>,
    pub namespace: Box<str>,
    pub fleet: Box<str>,
    pub created: DateTime<Utc>,
    pub outcome: Option<JobOutcome>,
    /// Updraft stopped it (the `updraft.dev/stopped` annotation).
    pub stopped: bool,
    pub deleting: bool,
}

/// A container waiting for a reason that may mean it never starts (an image that cannot be
/// pulled, a Secret it names that does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub container: Box<str>,
    pub image: Box<str>,
    pub reason: Box<str>,
    pub message: Box<str>,
    /// When this process first saw the container stuck (pod times have whole seconds only,
    /// and a grace must not end early).
    pub since: DateTime<Utc>,
}

/// How the agent container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// What the watch keeps of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: Box<str>,
    pub phase: PodPhase,
    /// The pod's own reason and message (`Evicted`, `NodeLost`).
    pub reason: Option<Box<str>>,
    pub message: Option<Box<str>>,
    pub start_time: Option<DateTime<Utc>>,
    /// The scheduler's message while the pod cannot be placed (`PodScheduled=False`,
    /// `Unschedulable`), the same text as its `FailedScheduling` event.
    pub unschedulable: Option<Box<str>>,
    pub waiting: Option<Waiting>,
    pub agent_ended: Option<Terminated>,
    pub deleting: bool,
    /// Deleted from the API; kept to explain how its Job ended.
    pub gone: bool,
}

/// The reasons a waiting container gives when it may never start.
pub const STUCK_REASONS: [&str; 8] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RegistryUnavailable",
];

/// A watched object: the few metadata fields the watcher needs (name, namespace,
/// `resourceVersion`) and the view.
#[derive(Debug, Clone)]
pub struct Slim<V> {
    meta: ObjectMeta,
    pub launch: Option<updraft_backends::LaunchName>,
    pub view: V,
}

pub type SlimJob = Slim<JobView>;
pub type SlimPod = Slim<PodView>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawMeta {
    name: Option<String>,
    uid: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    creation_timestamp: Option<DateTime<Utc>>,
    deletion_timestamp: Option<DateTime<Utc>>,
}

impl RawMeta {
    fn object_meta(&mut self) -> ObjectMeta {
        ObjectMeta {
            name: self.name.take(),
            namespace: self.namespace.clone(),
            resource_version: self.resource_version.take(),
            ..Default::default()
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCondition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawJob {
    metadata: RawMeta,
    status: RawJobStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawJobStatus {
    conditions: Vec<RawCondition>,
}

impl<'de> Deserialize<'de> for SlimJob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut raw = RawJob::deserialize(deserializer)?;
        let holds = |kind: &str| {
            raw.status
                .conditions
                .iter()
                .find(|c| c.kind == kind && c.status == "True")
        };
        let outcome = match (
            holds("Complete").or(holds("SuccessCriteriaMet")),
            holds("Failed").or(holds("FailureTarget")),
        ) {
            (Some(_), _) => Some(JobOutcome::Complete),
            (None, Some(failed)) => Some(JobOutcome::Failed {
                reason: failed.reason.clone().unwrap_or_default().into(),
                message: failed.message.clone().unwrap_or_default().into(),
            }),
            (None, None) => None,
        };
        let view = JobView {
            uid: raw.metadata.uid.clone().unwrap_or_default().into(),
            namespace: raw.metadata.namespace.clone().unwrap_or_default().into(),
            fleet: raw
                .metadata
                .labels
                .get(labels::FLEET)
                .cloned()
                .unwrap_or_default()
                .into(),
            created: raw.metadata.creation_timestamp.unwrap_or_else(Utc::now),
            outcome,
            stopped: raw.metadata.annotations.contains_key(labels::STOPPED),
            deleting: raw.metadata.deletion_timestamp.is_some(),
        };
        Ok(Slim {
            launch: labels::launch_of(&raw.metadata.labels),
            meta: raw.metadata.object_meta(),
            view,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPod {
    metadata: RawMeta,
    status: RawPodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawPodStatus {
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    start_time: Option<DateTime<Utc>>,
    conditions: Vec<RawCondition>,
    init_container_statuses: Vec<RawContainerStatus>,
    container_statuses: Vec<RawContainerStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawContainerStatus {
    name: String,
    image: String,
    state: RawContainerState,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawContainerState {
    waiting: Option<RawStateDetail>,
    terminated: Option<RawStateDetail>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawStateDetail {
    reason: Option<String>,
    message: Option<String>,
    exit_code: Option<i32>,
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut raw = RawPod::deserialize(deserializer)?;
        let status = &raw.status;
        let phase = match status.phase.as_deref() {
            Some("Pending") | None => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some(_) => PodPhase::Unknown,
        };
        let unschedulable = status
            .conditions
            .iter()
            .find(|c| {
                c.kind == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default().into());
        let waiting = status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
            .find_map(|c| {
                let waiting = c.state.waiting.as_ref()?;
                let reason = waiting
                    .reason
                    .as_deref()
                    .filter(|r| STUCK_REASONS.contains(r))?;
                Some(Waiting {
                    container: c.name.as_str().into(),
                    image: c.image.as_str().into(),
                    reason: reason.into(),
                    message: waiting.message.clone().unwrap_or_default().into(),
                    since: Utc::now(),
                })
            });
        let agent_ended = status
            .container_statuses
            .iter()
            .find(|c| c.name == crate::pod_template::AGENT_CONTAINER)
            .and_then(|c| c.state.terminated.as_ref())
            .map(|t| Terminated {
                exit_code: t.exit_code.unwrap_or_default(),
                reason: t.reason.clone().unwrap_or_default().into(),
            });
        let view = PodView {
            name: raw.metadata.name.clone().unwrap_or_default().into(),
            phase,
            reason: status.reason.clone().map(Into::into),
            message: status.message.clone().map(Into::into),
            start_time: status.start_time,
            unschedulable,
            waiting,
            agent_ended,
            deleting: raw.metadata.deletion_timestamp.is_some(),
            gone: false,
        };
        Ok(Slim {
            launch: labels::launch_of(&raw.metadata.labels),
            meta: raw.metadata.object_meta(),
            view,
        })
    }
}

macro_rules! resource {
    ($view:ty, $kind:literal, $group:literal, $plural:literal) => {
        impl kube::Resource for Slim<$view> {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.meta
            }
        }
    };
}

resource!(JobView, "Job", "batch", "jobs");
resource!(PodView, "Pod", "", "pods");

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn a_job_keeps_only_what_failure_detection_reads() {
        let job = Uuid::new_v4();
        let slim: SlimJob = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": format!("updraft-{job}"), "namespace": "ci", "resourceVersion": "42",
                         "creationTimestamp": "2026-11-28T10:00:00Z",
                         "labels": {"buildkite.com/job-uuid": job.to_string(), "updraft.dev/fleet": "linux", "other": "x"},
                         "annotations": {"updraft.dev/stopped": "true"},
                         "managedFields": [{"manager": "updraft", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "x", "env": [{"name": "A", "value": "1"}]}]}}},
            "status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]},
        }))
        .unwrap();
        assert_eq!(slim.meta().resource_version.as_deref(), Some("42"));
        assert_eq!(slim.launch.as_ref().map(|l| l.job_id()), Some(job));
        assert_eq!(&*slim.view.fleet, "linux");
        assert!(slim.view.stopped);
        assert_eq!(
            slim.view.outcome,
            Some(JobOutcome::Failed {
                reason: "DeadlineExceeded".into(),
                message: "Job was active longer than specified deadline".into()
            })
        );
        assert!(slim.meta().labels.is_none(), "labels are not kept");
    }

    #[test]
    fn a_pod_keeps_its_phase_scheduling_image_trouble_and_agent_end() {
        let slim: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "updraft-x-abcde", "namespace": "ci", "resourceVersion": "7", "labels": {}},
            "spec": {"containers": [{"name": "agent"}]},
            "status": {
                "phase": "Pending",
                "startTime": "2026-11-28T10:00:01Z",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}],
                "initContainerStatuses": [{"name": "dind", "image": "docker:dind", "state": {"running": {}}}],
                "containerStatuses": [{"name": "agent", "image": "ghcr.io/acme/nope:1",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "failed to pull and unpack image: not found"}}}],
            },
        }))
        .unwrap();
        let view = &slim.view;
        assert_eq!(view.phase, PodPhase::Pending);
        assert_eq!(
            view.unschedulable.as_deref(),
            Some("0/1 nodes are available: 1 Insufficient cpu.")
        );
        let waiting = view.waiting.as_ref().unwrap();
        assert_eq!(
            (&*waiting.container, &*waiting.image, &*waiting.reason),
            ("agent", "ghcr.io/acme/nope:1", "ErrImagePull")
        );

        let ended: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-11-28T10:00:09Z"},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
                       "containerStatuses": [{"name": "agent", "image": "x", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
        }))
        .unwrap();
        assert_eq!(ended.view.phase, PodPhase::Failed);
        assert_eq!(ended.view.reason.as_deref(), Some("Evicted"));
        assert_eq!(
            ended.view.agent_ended,
            Some(Terminated {
                exit_code: 137,
                reason: "OOMKilled".into()
            })
        );
        assert!(ended.view.deleting);
    }
}
