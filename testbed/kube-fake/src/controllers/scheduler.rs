//! The scheduler for the one node: binds pending pods (oldest first) when their requests fit
//! in what bound, unfinished pods leave free, their `nodeSelector`/required node affinity
//! matches the node's labels and they tolerate its `NoSchedule`/`NoExecute` taints.
//! Otherwise the pod gets `PodScheduled=False` (`Unschedulable`) and a `FailedScheduling`
//! event worded as `default-scheduler` words it, and is tried again whenever capacity or the
//! node changes.

use crate::cluster::{Cluster, Node};
use crate::controllers::events::{EventSpec, Source};
use crate::kubelet::status::set_condition;
use crate::meta;
use crate::quantity;
use crate::registry;
use crate::resource::Resource;
use crate::store::{Change, ChangeKind, ObjectKey};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

const SOURCE: Source<'static> = Source {
    component: "default-scheduler",
    host: None,
};

/// CPU and memory a pod asks for, in milli-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Demand {
    cpu: i128,
    memory: i128,
}

#[derive(Default)]
struct Scheduler {
    /// Unscheduled pods by arrival order.
    pending: BTreeMap<u64, ObjectKey>,
    arrival: HashMap<ObjectKey, u64>,
    next_arrival: u64,
    /// What bound, unfinished pods hold.
    bound: HashMap<ObjectKey, Demand>,
    /// The last `FailedScheduling` message given to each pod.
    reported: HashMap<ObjectKey, String>,
}

pub async fn run(cluster: Arc<Cluster>, mut changes: mpsc::UnboundedReceiver<Arc<Change>>) {
    let mut scheduler = Scheduler::default();
    loop {
        tokio::select! {
            Some(change) = changes.recv() => scheduler.note(&cluster, &change),
            _ = cluster.scheduler_nudge.notified() => {}
            _ = cluster.shutdown.cancelled() => return,
        }
        while let Ok(change) = changes.try_recv() {
            scheduler.note(&cluster, &change);
        }
        if !cluster.scheduling_paused() {
            scheduler.schedule(&cluster);
        }
    }
}

impl Scheduler {
    fn note(&mut self, cluster: &Cluster, change: &Change) {
        if change.resource != Resource::Pods {
            return;
        }
        let pod = &change.object;
        let key = ObjectKey::of(pod);
        let finished = matches!(
            meta::str_at(pod, "/status/phase"),
            Some("Succeeded" | "Failed")
        );
        let node = meta::str_at(pod, "/spec/nodeName").unwrap_or_default();
        if change.kind == ChangeKind::Deleted
            || finished
            || (node.is_empty() && meta::is_deleting(pod))
        {
            self.forget_pending(&key);
            self.bound.remove(&key);
            self.reported.remove(&key);
        } else if !node.is_empty() {
            self.forget_pending(&key);
            if node == cluster.node().name {
                self.bound.insert(key, demand(pod));
            }
        } else if meta::str_at(pod, "/spec/schedulerName") == Some("default-scheduler")
            && !self.arrival.contains_key(&key)
        {
            self.next_arrival += 1;
            self.pending.insert(self.next_arrival, key.clone());
            self.arrival.insert(key, self.next_arrival);
        }
    }

    fn forget_pending(&mut self, key: &ObjectKey) {
        if let Some(order) = self.arrival.remove(key) {
            self.pending.remove(&order);
        }
    }

    fn schedule(&mut self, cluster: &Cluster) {
        let node = cluster.node();
        let mut used = self
            .bound
            .values()
            .fold(Demand::default(), |sum, d| Demand {
                cpu: sum.cpu + d.cpu,
                memory: sum.memory + d.memory,
            });
        let mut pod_count = self.bound.len();
        let pending: Vec<(u64, ObjectKey)> =
            self.pending.iter().map(|(o, k)| (*o, k.clone())).collect();
        for (order, key) in pending {
            let mut txn = cluster.store.txn();
            let Some(pod) = txn.get(Resource::Pods, &key) else {
                self.forget_pending(&key);
                continue;
            };
            let wanted = demand(&pod);
            match unschedulable(&node, &pod, used, wanted, pod_count) {
                None => {
                    registry::modify(&mut txn, Resource::Pods, &key, |pod| {
                        pod["spec"]["nodeName"] = node.name.clone().into();
                        set_condition(pod, "PodScheduled", "True", "", "");
                    });
                    let message = format!(
                        "Successfully assigned {}/{} to {}",
                        key.namespace, key.name, node.name
                    );
                    record(cluster, &mut txn, &pod, false, "Scheduled", &message);
                    self.pending.remove(&order);
                    self.arrival.remove(&key);
                    self.reported.remove(&key);
                    self.bound.insert(key, wanted);
                    used.cpu += wanted.cpu;
                    used.memory += wanted.memory;
                    pod_count += 1;
                }
                Some(message) if self.reported.get(&key) != Some(&message) => {
                    registry::modify(&mut txn, Resource::Pods, &key, |pod| {
                        set_condition(pod, "PodScheduled", "False", "Unschedulable", &message);
                    });
                    record(cluster, &mut txn, &pod, true, "FailedScheduling", &message);
                    self.reported.insert(key, message);
                }
                Some(_) => {}
            }
        }
    }
}

fn record(
    cluster: &Cluster,
    txn: &mut crate::store::Txn<'_>,
    pod: &Value,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let event = EventSpec {
        warning,
        reason,
        message,
        field_path: None,
    };
    cluster
        .events
        .record(txn, Resource::Pods, pod, SOURCE, event);
}

/// Why the pod cannot go on the node, as the scheduler's message; `None` when it fits.
fn unschedulable(
    node: &Node,
    pod: &Value,
    used: Demand,
    wanted: Demand,
    pods: usize,
) -> Option<String> {
    const NOT_HELPFUL: &str =
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
    if let Some(taint) = node.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !tolerated(pod, &t.key, &t.value, &t.effect)
    }) {
        return Some(format!(
            "0/1 nodes are available: 1 node(s) had untolerated taint {{{}: {}}}. {NOT_HELPFUL}",
            taint.key, taint.value
        ));
    }
    if !selects(pod, &node.labels, &node.name) {
        return Some(format!(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. {NOT_HELPFUL}"
        ));
    }
    let mut short = Vec::new();
    if wanted.cpu > node.cpu_milli - used.cpu {
        short.push("1 Insufficient cpu");
    }
    if wanted.memory > node.memory_milli - used.memory {
        short.push("1 Insufficient memory");
    }
    if pods >= node.max_pods {
        short.push("1 Too many pods");
    }
    (!short.is_empty()).then(|| {
        format!(
            "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption \
             victims found for incoming pod.",
            short.join(", ")
        )
    })
}

fn tolerated(pod: &Value, key: &str, value: &str, effect: &str) -> bool {
    let tolerations = pod["spec"]["tolerations"].as_array();
    tolerations.into_iter().flatten().any(|t| {
        let t_effect = meta::str_at(t, "/effect").unwrap_or_default();
        let t_key = meta::str_at(t, "/key").unwrap_or_default();
        let exists = meta::str_at(t, "/operator") == Some("Exists");
        (t_effect.is_empty() || t_effect == effect)
            && ((t_key.is_empty() && exists)
                || (t_key == key
                    && (exists || meta::str_at(t, "/value").unwrap_or_default() == value)))
    })
}

/// `nodeSelector` and required node affinity against the node's labels.
fn selects(pod: &Value, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let affinity_ok = terms.is_none_or(|terms| {
        terms.iter().any(|term| {
            let expressions = term["matchExpressions"].as_array().into_iter().flatten();
            let fields = term["matchFields"].as_array().into_iter().flatten();
            let name_labels =
                BTreeMap::from([("metadata.name".to_string(), node_name.to_string())]);
            expressions.clone().count() + fields.clone().count() > 0
                && expressions.into_iter().all(|e| expression_holds(e, labels))
                && fields
                    .into_iter()
                    .all(|e| expression_holds(e, &name_labels))
        })
    });
    selector_ok && affinity_ok
}

fn expression_holds(expression: &Value, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(meta::str_at(expression, "/key").unwrap_or_default());
    let values = meta::strings_at(expression, "/values");
    let number = |v: &str| v.parse::<i64>().ok();
    match meta::str_at(expression, "/operator").unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// The pod's effective requests as Kubernetes computes them: regular containers and native
/// sidecars add up; an init container needs its own request plus the sidecars started
/// before it; the pod needs the larger of the two.
fn demand(pod: &Value) -> Demand {
    let request = |c: &Value, resource: &str| {
        meta::str_at(c, &format!("/resources/requests/{resource}"))
            .and_then(quantity::parse_milli)
            .unwrap_or(0)
    };
    let of = |c: &Value| Demand {
        cpu: request(c, "cpu"),
        memory: request(c, "memory"),
    };
    let mut sidecars = Demand::default();
    let mut init_peak = Demand::default();
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let d = of(c);
        if c["restartPolicy"] == "Always" {
            sidecars.cpu += d.cpu;
            sidecars.memory += d.memory;
            init_peak.cpu = init_peak.cpu.max(sidecars.cpu);
            init_peak.memory = init_peak.memory.max(sidecars.memory);
        } else {
            init_peak.cpu = init_peak.cpu.max(d.cpu + sidecars.cpu);
            init_peak.memory = init_peak.memory.max(d.memory + sidecars.memory);
        }
    }
    let regular = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .fold(sidecars, |sum, c| {
            let d = of(c);
            Demand {
                cpu: sum.cpu + d.cpu,
                memory: sum.memory + d.memory,
            }
        });
    Demand {
        cpu: regular.cpu.max(init_peak.cpu),
        memory: regular.memory.max(init_peak.memory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn demand_counts_sidecars_with_regular_containers_and_peaks_init() {
        let pod = json!({"spec": {
            "initContainers": [
                {"name": "big-init", "resources": {"requests": {"cpu": "2"}}},
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            ],
            "containers": [{"name": "main", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}});
        let d = demand(&pod);
        assert_eq!(d.cpu, 2000);
        assert_eq!(d.memory, 2 * 1024 * 1024 * 1024 * 1000);
    }

    #[test]
    fn messages_name_the_failing_filter() {
        let node = Node::from_options(&crate::options::NodeOptions {
            cpu: "1".into(),
            ..Default::default()
        })
        .unwrap();
        let pod = json!({"spec": {"containers": [{"name": "m", "resources": {"requests": {"cpu": "2"}}}]}});
        let message = unschedulable(&node, &pod, Demand::default(), demand(&pod), 0).unwrap();
        assert!(
            message.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
            "{message}"
        );
        let picky = json!({"spec": {"nodeSelector": {"disk": "ssd"}, "containers": []}});
        let message =
            unschedulable(&node, &picky, Demand::default(), Demand::default(), 0).unwrap();
        assert!(
            message.contains("didn't match Pod's node affinity/selector"),
            "{message}"
        );
    }
}
