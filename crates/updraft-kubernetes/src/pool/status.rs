//! Where a pool member stands, read from its Pod: every agent container ended (or the pod
//! Succeeded or Failed) → `Exited`, with how each ended; deletion under way (a drain) →
//! `Draining`; `Running` → `Running`; anything earlier (unscheduled, pulling) → `Booting`. A
//! `DisruptionTarget` condition (an eviction or preemption on its way) is the member's notice.

use super::pod::AGENT_PREFIX;
use crate::labels;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use updraft_backends::pool::{MemberName, MemberPhase, MemberStatus};

/// How pool members are bought, for the status page.
pub const CAPACITY: &str = "pod";

/// The member a pool Pod is; `None` for a pod without a name.
pub fn member_status(pod: &Pod) -> Option<MemberStatus> {
    let name = pod.metadata.name.clone()?;
    let fleet = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::FLEET))
        .cloned()
        .unwrap_or_default();
    let launched_at = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()))
        .unwrap_or_else(Utc::now);
    Some(MemberStatus {
        name: MemberName::new(name),
        fleet,
        phase: phase(pod),
        launched_at,
        agents: u32::try_from(agent_names(pod).len()).unwrap_or(u32::MAX),
        notice: notice(pod),
        capacity: CAPACITY,
    })
}

/// The member's phase (see the module's comment).
pub fn phase(pod: &Pod) -> MemberPhase {
    if let Some(detail) = exit_detail(pod) {
        return MemberPhase::Exited { detail };
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return MemberPhase::Draining;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") | Some("Unknown") => MemberPhase::Running,
        _ => MemberPhase::Booting,
    }
}

fn agent_names(pod: &Pod) -> Vec<&str> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.name.as_str())
        .filter(|name| name.starts_with(AGENT_PREFIX))
        .collect()
}

/// How the member ended, once it has: the pod's reason and each agent's end.
fn exit_detail(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref();
    let pod_phase = status.and_then(|s| s.phase.as_deref());
    let statuses: &[ContainerStatus] = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let agents = agent_names(pod);
    let ended = |name: &str| {
        statuses
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.state.as_ref())
            .and_then(|state| state.terminated.as_ref())
    };
    let all_ended = !agents.is_empty() && agents.iter().all(|a| ended(a).is_some());
    if !all_ended && !matches!(pod_phase, Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(reason) = status.and_then(|s| s.reason.as_deref()) {
        let message = status
            .and_then(|s| s.message.as_deref())
            .unwrap_or_default();
        parts.push(format!("pod {reason}: {}", message.trim()));
    }
    for agent in agents {
        parts.push(match ended(agent) {
            Some(end) => format!(
                "{agent}: exit {} ({})",
                end.exit_code,
                end.reason.as_deref().unwrap_or("no reason given")
            ),
            None => format!("{agent}: never ran"),
        });
    }
    Some(parts.join("; "))
}

/// Why the cluster is about to take the member away, when it says so.
fn notice(pod: &Pod) -> Option<String> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?;
    Some(format!(
        "{}: {}",
        condition.reason.as_deref().unwrap_or("DisruptionTarget"),
        condition
            .message
            .as_deref()
            .unwrap_or("the pod is about to be disrupted")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": "linux-0a1b2c3d", "labels": {"updraft.dev/fleet": "linux"},
                         "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"containers": [{"name": "agent-1"}, {"name": "agent-2"}]},
        });
        for (key, part) in extra.as_object().unwrap() {
            for (field, v) in part.as_object().unwrap() {
                value[key][field] = v.clone();
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn terminated(name: &str, code: i32, reason: &str) -> serde_json::Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "reason": reason}}})
    }

    fn running(name: &str) -> serde_json::Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
               "state": {"running": {}}})
    }

    #[test]
    fn each_pod_state_is_a_member_phase() {
        let pending = pod(json!({"status": {"phase": "Pending"}}));
        let status = member_status(&pending).unwrap();
        assert_eq!(status.phase, MemberPhase::Booting);
        assert_eq!((status.fleet.as_str(), status.agents), ("linux", 2));
        assert_eq!(status.launched_at.to_rfc3339(), "2026-01-02T03:04:05+00:00");

        let up = json!({"phase": "Running", "containerStatuses": [running("agent-1"), running("agent-2")]});
        assert_eq!(
            phase(&pod(json!({"status": up.clone()}))),
            MemberPhase::Running
        );
        let draining =
            pod(json!({"status": up, "metadata": {"deletionTimestamp": "2026-01-02T04:00:00Z"}}));
        assert_eq!(phase(&draining), MemberPhase::Draining);

        let one_left = json!({"phase": "Running", "containerStatuses": [terminated("agent-1", 0, "Completed"), running("agent-2")]});
        assert_eq!(
            phase(&pod(json!({"status": one_left}))),
            MemberPhase::Running
        );
        let all_done = json!({"phase": "Running", "containerStatuses": [terminated("agent-1", 0, "Completed"), terminated("agent-2", 137, "Error")]});
        assert_eq!(
            phase(&pod(json!({"status": all_done}))),
            MemberPhase::Exited {
                detail: "agent-1: exit 0 (Completed); agent-2: exit 137 (Error)".into()
            }
        );
    }

    #[test]
    fn an_evicted_member_says_why() {
        let evicted = pod(json!({"status": {
            "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory. ",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": "low on memory"}],
        }}));
        let status = member_status(&evicted).unwrap();
        assert_eq!(
            status.phase,
            MemberPhase::Exited {
                detail: "pod Evicted: The node was low on resource: memory.; agent-1: never ran; agent-2: never ran".into()
            }
        );
        assert_eq!(
            status.notice.as_deref(),
            Some("TerminationByKubelet: low on memory")
        );
    }
}
