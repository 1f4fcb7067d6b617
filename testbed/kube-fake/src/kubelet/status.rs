//! The pod status the kubelet reports: container states (`waiting`/`running`/`terminated`
//! with the kubelet's reasons), the kubelet-owned conditions, phase, IPs and start time. The
//! scheduler's `PodScheduled` and the `DisruptionTarget` condition are left as stored.

use crate::meta;
use serde_json::{json, Map, Value};

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<String>,
        finished_at: String,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> State {
        State::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn to_json(&self, container_id: Option<&str>) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut waiting = json!({ "reason": reason });
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({ "waiting": waiting })
            }
            State::Running { started_at } => json!({ "running": { "startedAt": started_at } }),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut terminated = json!({
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started_at,
                    "finishedAt": finished_at,
                });
                if let Some(message) = message {
                    terminated["message"] = json!(message);
                }
                if let Some(id) = container_id {
                    terminated["containerID"] = json!(id);
                }
                json!({ "terminated": terminated })
            }
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            State::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// One container as the kubelet tracks it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// Set once pulled: the normalized reference and the image id.
    pub pulled: Option<(String, String)>,
    pub container_id: Option<String>,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: i64,
    pub started: bool,
    /// A native sidecar: an init container with `restartPolicy: Always`.
    pub sidecar: bool,
}

impl Container {
    pub fn new(spec: &Value, initial_reason: &str, sidecar: bool) -> Container {
        Container {
            name: meta::str_at(spec, "/name").unwrap_or_default().into(),
            image: meta::str_at(spec, "/image").unwrap_or_default().into(),
            pulled: None,
            container_id: None,
            state: State::waiting(initial_reason, None),
            last_state: None,
            restart_count: 0,
            started: false,
            sidecar,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn to_json(&self) -> Value {
        let (image, image_id) = self
            .pulled
            .clone()
            .unwrap_or_else(|| (self.image.clone(), String::new()));
        let mut status = json!({
            "name": self.name,
            "image": image,
            "imageID": image_id,
            "ready": self.is_running(),
            "started": self.is_running(),
            "restartCount": self.restart_count,
            "state": self.state.to_json(self.container_id.as_deref()),
            "lastState": self.last_state.as_ref().map_or(json!({}), |s| s.to_json(None)),
        });
        if let Some(id) = &self.container_id {
            status["containerID"] = json!(id);
        }
        status
    }
}

/// The whole pod as the kubelet reports it.
#[derive(Debug, Clone)]
pub struct PodStatus {
    pub init: Vec<Container>,
    pub regular: Vec<Container>,
    /// `Pending` until the worker decides the terminal phase; reported as `Running` once the
    /// pod is initialized and a regular container has started.
    pub phase: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub start_time: String,
    pub ip: String,
    pub sandbox_ready: bool,
}

impl PodStatus {
    fn unfinished_init(&self) -> Vec<&str> {
        self.init
            .iter()
            .filter(|c| {
                if c.sidecar {
                    !c.started
                } else {
                    c.state.exit_code() != Some(0)
                }
            })
            .map(|c| c.name.as_str())
            .collect()
    }

    fn unready(&self) -> Vec<&str> {
        self.init
            .iter()
            .filter(|c| c.sidecar)
            .chain(&self.regular)
            .filter(|c| !c.is_running())
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Writes this status into a stored pod, keeping conditions the kubelet does not own.
    pub fn apply_to(&self, pod: &mut Value) {
        let terminal = self.phase == "Succeeded" || self.phase == "Failed";
        let unfinished = self.unfinished_init();
        let unready = self.unready();
        let list = |names: &[&str]| format!("[{}]", names.join(" "));
        set_condition(
            pod,
            "PodReadyToStartContainers",
            bool_text(self.sandbox_ready && !terminal),
            "",
            "",
        );
        match (unfinished.is_empty(), terminal) {
            (true, _) => set_condition(pod, "Initialized", "True", "", ""),
            (false, true) => set_condition(pod, "Initialized", "False", "PodCompleted", ""),
            (false, false) => set_condition(
                pod,
                "Initialized",
                "False",
                "ContainersNotInitialized",
                &format!("containers with incomplete status: {}", list(&unfinished)),
            ),
        }
        for condition in ["Ready", "ContainersReady"] {
            match (unready.is_empty(), terminal) {
                (_, true) => set_condition(pod, condition, "False", "PodCompleted", ""),
                (true, false) => set_condition(pod, condition, "True", "", ""),
                (false, false) => set_condition(
                    pod,
                    condition,
                    "False",
                    "ContainersNotReady",
                    &format!("containers with unready status: {}", list(&unready)),
                ),
            }
        }
        let started = unfinished.is_empty() && self.regular.iter().any(|c| c.started);
        let phase = if !terminal && started {
            "Running"
        } else {
            self.phase
        };
        let status = meta::object_field_mut(pod, "status");
        status.insert("phase".into(), json!(phase));
        status.insert("hostIP".into(), json!(self.ip));
        status.insert("hostIPs".into(), json!([{ "ip": self.ip }]));
        status.insert("podIP".into(), json!(self.ip));
        status.insert("podIPs".into(), json!([{ "ip": self.ip }]));
        status.insert("startTime".into(), json!(self.start_time));
        let statuses = |containers: &[Container]| {
            Value::from(
                containers
                    .iter()
                    .map(Container::to_json)
                    .collect::<Vec<_>>(),
            )
        };
        if self.init.is_empty() {
            status.remove("initContainerStatuses");
        } else {
            status.insert("initContainerStatuses".into(), statuses(&self.init));
        }
        status.insert("containerStatuses".into(), statuses(&self.regular));
        for (field, value) in [("reason", &self.reason), ("message", &self.message)] {
            match value {
                Some(text) => status.insert(field.into(), json!(text)),
                None => status.remove(field),
            };
        }
    }
}

fn bool_text(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// Sets a pod condition; `lastTransitionTime` moves only when `status` changes.
pub fn set_condition(pod: &mut Value, kind: &str, status: &str, reason: &str, message: &str) {
    let conditions = meta::object_field_mut(pod, "status")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("made an array above");
    let mut condition = Map::new();
    condition.insert("type".into(), json!(kind));
    condition.insert("status".into(), json!(status));
    condition.insert("lastProbeTime".into(), Value::Null);
    let existing = list.iter().position(|c| c["type"] == kind);
    let transition = match existing {
        Some(at) if list[at]["status"] == status => list[at]["lastTransitionTime"].clone(),
        _ => json!(meta::now()),
    };
    condition.insert("lastTransitionTime".into(), transition);
    if !reason.is_empty() {
        condition.insert("reason".into(), json!(reason));
    }
    if !message.is_empty() {
        condition.insert("message".into(), json!(message));
    }
    match existing {
        Some(at) => list[at] = Value::Object(condition),
        None => list.push(Value::Object(condition)),
    }
}
