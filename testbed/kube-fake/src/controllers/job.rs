//! The Job controller, after Kubernetes' own: it creates each Job's pods from the template
//! (with the `batch.kubernetes.io/job-tracking` finalizer, removed once a finished pod is
//! counted), keeps `status` (`startTime`, `active`, `ready`, `terminating`, `succeeded`,
//! `failed`, conditions, `completionTime`) up to date, retries failed pods within
//! `backoffLimit` with exponential delay, fails the Job on `activeDeadlineSeconds`, deletes
//! active pods once the outcome is decided (`SuccessCriteriaMet` / `FailureTarget` first,
//! `Complete` / `Failed` when no pod is left running), and deletes finished Jobs after
//! `ttlSecondsAfterFinished`. NonIndexed completion mode only.

use crate::cluster::Cluster;
use crate::controllers::events::{EventSpec, Source};
use crate::meta;
use crate::registry::{self, DeleteOptions, Propagation};
use crate::resource::Resource;
use crate::store::{Change, ObjectKey, Txn};
use chrono::Utc;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The finalizer that keeps a Job's pod until the controller has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const MAX_JOB_BACKOFF: Duration = Duration::from_secs(360);
const SOURCE: Source<'static> = Source {
    component: "job-controller",
    host: None,
};

struct Controller {
    cluster: Arc<Cluster>,
    requeue: mpsc::UnboundedSender<ObjectKey>,
    /// The earliest pending timer for each Job.
    timers: HashMap<ObjectKey, Instant>,
    /// When each Job (by uid) last had a pod counted as failed.
    last_failure: HashMap<String, Instant>,
}

pub async fn run(cluster: Arc<Cluster>, mut changes: mpsc::UnboundedReceiver<Arc<Change>>) {
    let (requeue, mut requeued) = mpsc::unbounded_channel();
    let mut controller = Controller {
        cluster,
        requeue,
        timers: HashMap::new(),
        last_failure: HashMap::new(),
    };
    let shutdown = controller.cluster.shutdown.clone();
    loop {
        let mut dirty = BTreeSet::new();
        tokio::select! {
            Some(change) = changes.recv() => controller.note(&change, &mut dirty),
            Some(key) = requeued.recv() => controller.fired(key, &mut dirty),
            _ = shutdown.cancelled() => return,
        }
        while let Ok(change) = changes.try_recv() {
            controller.note(&change, &mut dirty);
        }
        while let Ok(key) = requeued.try_recv() {
            controller.fired(key, &mut dirty);
        }
        for key in dirty {
            controller.reconcile(&key);
        }
    }
}

impl Controller {
    /// The Job a change concerns, if any; releases pods whose Job is gone.
    fn note(&mut self, change: &Change, dirty: &mut BTreeSet<ObjectKey>) {
        let object = &change.object;
        match change.resource {
            Resource::Jobs => {
                dirty.insert(ObjectKey::of(object));
            }
            Resource::Pods => {
                let job = meta::controller_ref(object).filter(|r| r.kind == "Job");
                if let Some(job) = &job {
                    dirty.insert(ObjectKey::new(meta::namespace(object), &job.name));
                }
                let tracked = meta::finalizers(object)
                    .iter()
                    .any(|f| f == TRACKING_FINALIZER);
                if tracked {
                    let mut txn = self.cluster.store.txn();
                    let owner_alive = job.is_some_and(|j| txn.find_uid(&j.uid).is_some());
                    if !owner_alive {
                        release_pod(&mut txn, &ObjectKey::of(object));
                    }
                }
            }
            _ => {}
        }
    }

    fn fired(&mut self, key: ObjectKey, dirty: &mut BTreeSet<ObjectKey>) {
        if self
            .timers
            .get(&key)
            .is_some_and(|at| *at <= Instant::now())
        {
            self.timers.remove(&key);
        }
        dirty.insert(key);
    }

    /// Reconciles the Job again after `delay` (unless an earlier timer is already set).
    fn after(&mut self, key: &ObjectKey, delay: Duration) {
        let at = Instant::now() + delay;
        if self.timers.get(key).is_some_and(|pending| *pending <= at) {
            return;
        }
        self.timers.insert(key.clone(), at);
        let (requeue, key) = (self.requeue.clone(), key.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = requeue.send(key);
        });
    }

    fn reconcile(&mut self, key: &ObjectKey) {
        let cluster = self.cluster.clone();
        let mut txn = cluster.store.txn();
        let Some(job) = txn.get(Resource::Jobs, key) else {
            return;
        };
        let uid = meta::uid(&job).to_string();
        let pods = pods_of(&txn, &uid);
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        for pod in &pods {
            let counted_as = match meta::str_at(pod, "/status/phase") {
                Some("Succeeded") => "succeeded",
                Some("Failed") => "failed",
                _ => continue,
            };
            if meta::finalizers(pod)
                .iter()
                .any(|f| f == TRACKING_FINALIZER)
            {
                status[counted_as] = json!(status[counted_as].as_i64().unwrap_or(0) + 1);
                if counted_as == "failed" {
                    self.last_failure.insert(uid.clone(), Instant::now());
                }
                release_pod(&mut txn, &ObjectKey::of(pod));
            }
        }
        if !meta::is_deleting(&job) && !finished(&status) {
            self.drive(&mut txn, &job, &pods, &mut status);
        }
        let live_pods: Vec<Arc<Value>> = pods_of(&txn, &uid)
            .into_iter()
            .filter(|pod| !is_finished_pod(pod))
            .collect();
        let active = live_pods.iter().filter(|p| !meta::is_deleting(p)).count();
        let terminating = live_pods.iter().filter(|p| meta::is_deleting(p)).count();
        let ready = live_pods
            .iter()
            .filter(|p| !meta::is_deleting(p) && pod_ready(p))
            .count();
        set_count(&mut status, "active", active);
        status["ready"] = json!(ready);
        status["terminating"] = json!(terminating);
        status["uncountedTerminatedPods"] = json!({});
        if active == 0 && terminating == 0 {
            self.conclude(&mut txn, &job, &mut status);
        }
        if job["status"] != status {
            registry::modify(&mut txn, Resource::Jobs, key, |job| {
                job["status"] = status.clone()
            });
        }
        let job = txn.get(Resource::Jobs, key).unwrap_or(job);
        drop(txn);
        self.schedule_ttl(key, &job);
    }

    /// Decides the outcome or creates the pods still needed.
    fn drive(&mut self, txn: &mut Txn<'_>, job: &Value, pods: &[Arc<Value>], status: &mut Value) {
        let key = ObjectKey::of(job);
        let spec = &job["spec"];
        let now = Utc::now();
        if status.get("startTime").is_none() && spec["suspend"] != json!(true) {
            status["startTime"] = json!(meta::timestamp(now));
        }
        let failed = status["failed"].as_i64().unwrap_or(0);
        let succeeded = status["succeeded"].as_i64().unwrap_or(0);
        let completions = spec["completions"].as_i64().unwrap_or(1);
        let deadline = spec["activeDeadlineSeconds"].as_i64().and_then(|seconds| {
            let started = meta::parse_time(status["startTime"].as_str()?)?;
            Some(started + chrono::Duration::seconds(seconds))
        });
        if let Some(deadline) = deadline {
            let left = (deadline - now).to_std().unwrap_or_default();
            self.after(&key, left + Duration::from_millis(10));
        }
        if !has_condition(status, "FailureTarget") && !has_condition(status, "SuccessCriteriaMet") {
            let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
            let decided = if failed > backoff_limit {
                Some((
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ))
            } else if deadline.is_some_and(|d| d <= now) {
                Some((
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ))
            } else if succeeded >= completions {
                Some((
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ))
            } else {
                None
            };
            if let Some((condition, reason, message)) = decided {
                add_condition(status, condition, reason, message);
                if condition == "FailureTarget" {
                    self.event(txn, job, true, reason, message);
                }
            }
        }
        let decided =
            has_condition(status, "FailureTarget") || has_condition(status, "SuccessCriteriaMet");
        let suspended = spec["suspend"] == json!(true);
        let active: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| !meta::is_deleting(p) && !is_finished_pod(p))
            .collect();
        if decided || suspended {
            for pod in active {
                let options = DeleteOptions::default();
                if registry::delete(txn, Resource::Pods, &ObjectKey::of(pod), &options, false)
                    .is_ok()
                {
                    self.event(
                        txn,
                        job,
                        false,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", meta::name(pod)),
                    );
                }
            }
            return;
        }
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
        let wanted = parallelism.min(completions - succeeded).max(0) as usize;
        let missing = wanted.saturating_sub(active.len());
        if missing == 0 {
            return;
        }
        if failed > 0 {
            let delay = (self.cluster.options.job_backoff
                * 2u32.saturating_pow((failed - 1).min(16) as u32))
            .min(MAX_JOB_BACKOFF);
            if let Some(since) = self.last_failure.get(meta::uid(job)) {
                let waited = since.elapsed();
                if waited < delay {
                    self.after(&key, delay - waited);
                    return;
                }
            }
        }
        for _ in 0..missing {
            match registry::create(txn, Resource::Pods, &key.namespace, pod_for(job), false) {
                Ok(pod) => self.event(
                    txn,
                    job,
                    false,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta::name(&pod)),
                ),
                Err(error) => self.event(
                    txn,
                    job,
                    true,
                    "FailedCreate",
                    &format!("Error creating: {}", error.message),
                ),
            }
        }
    }

    /// Turns a decided outcome into the terminal condition once no pod is left running.
    fn conclude(&mut self, txn: &mut Txn<'_>, job: &Value, status: &mut Value) {
        if finished(status) {
            return;
        }
        if let Some(target) = condition(status, "FailureTarget") {
            let reason = target["reason"].as_str().unwrap_or_default().to_string();
            let message = target["message"].as_str().unwrap_or_default().to_string();
            add_condition(status, "Failed", &reason, &message);
        } else if let Some(met) = condition(status, "SuccessCriteriaMet") {
            let reason = met["reason"].as_str().unwrap_or_default().to_string();
            let message = met["message"].as_str().unwrap_or_default().to_string();
            add_condition(status, "Complete", &reason, &message);
            status["completionTime"] = json!(meta::now());
            self.event(txn, job, false, "Completed", "Job completed");
        }
    }

    /// Deletes a finished Job once its `ttlSecondsAfterFinished` has passed, or sets a timer.
    fn schedule_ttl(&mut self, key: &ObjectKey, job: &Value) {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return;
        };
        if meta::is_deleting(job) {
            return;
        }
        let Some(finished_at) = ["Complete", "Failed"]
            .iter()
            .filter_map(|c| condition(&job["status"], c))
            .find_map(|c| meta::parse_time(c["lastTransitionTime"].as_str()?))
        else {
            return;
        };
        let expires = finished_at + chrono::Duration::seconds(ttl);
        match (expires - Utc::now()).to_std() {
            Ok(left) if !left.is_zero() => self.after(key, left + Duration::from_millis(10)),
            _ => {
                let options = DeleteOptions {
                    propagation: Some(Propagation::Foreground),
                    ..DeleteOptions::default()
                };
                let mut txn = self.cluster.store.txn();
                if let Err(error) = registry::delete(&mut txn, Resource::Jobs, key, &options, false)
                {
                    tracing::warn!(%error, job = %key.name, "TTL deletion failed");
                }
            }
        }
    }

    fn event(&self, txn: &mut Txn<'_>, job: &Value, warning: bool, reason: &str, message: &str) {
        self.cluster.events.record(
            txn,
            Resource::Jobs,
            job,
            SOURCE,
            EventSpec {
                warning,
                reason,
                message,
                field_path: None,
            },
        );
    }
}

/// The pods a Job controls.
fn pods_of(txn: &Txn<'_>, job_uid: &str) -> Vec<Arc<Value>> {
    txn.dependents(job_uid)
        .into_iter()
        .filter(|(resource, _)| *resource == Resource::Pods)
        .filter_map(|(_, key)| txn.get(Resource::Pods, &key))
        .filter(|pod| meta::controller_ref(pod).is_some_and(|r| r.uid == job_uid))
        .collect()
}

fn is_finished_pod(pod: &Value) -> bool {
    matches!(
        meta::str_at(pod, "/status/phase"),
        Some("Succeeded" | "Failed")
    )
}

/// The pod a Job runs, from its template.
fn pod_for(job: &Value) -> Value {
    let template = &job["spec"]["template"];
    let mut metadata = json!({
        "generateName": format!("{}-", meta::name(job)),
        "ownerReferences": [{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta::name(job),
            "uid": meta::uid(job),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
        "finalizers": [TRACKING_FINALIZER],
    });
    for field in ["labels", "annotations"] {
        if let Some(value) = template["metadata"].get(field) {
            metadata[field] = value.clone();
        }
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"] })
}

/// Removes the tracking finalizer from a pod (which may let it disappear).
fn release_pod(txn: &mut Txn<'_>, key: &ObjectKey) {
    registry::modify(txn, Resource::Pods, key, |pod| {
        let remaining: Vec<String> = meta::finalizers(pod)
            .into_iter()
            .filter(|f| f != TRACKING_FINALIZER)
            .collect();
        meta::set_finalizers(pod, &remaining);
    });
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Sets an integer status field, leaving it out when zero as the API does.
fn set_count(status: &mut Value, field: &str, count: usize) {
    if let Some(map) = status.as_object_mut() {
        if count == 0 {
            map.remove(field);
        } else {
            map.insert(field.into(), json!(count));
        }
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

fn has_condition(status: &Value, kind: &str) -> bool {
    condition(status, kind).is_some()
}

fn finished(status: &Value) -> bool {
    has_condition(status, "Complete") || has_condition(status, "Failed")
}

fn add_condition(status: &mut Value, kind: &str, reason: &str, message: &str) {
    let now = meta::now();
    let entry = json!({
        "type": kind,
        "status": "True",
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    });
    match status["conditions"].as_array_mut() {
        Some(conditions) => conditions.push(entry),
        None => status["conditions"] = json!([entry]),
    }
}
