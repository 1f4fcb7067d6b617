//! The ECS execution stand-in: serves ECS's JSON 1.1 API (clusters, task definitions,
//! RunTask with client-token idempotency, DescribeTasks, ListTasks, StopTask, tags) and runs
//! each task's essential container as a local process, with `awslogs` output in moto's
//! CloudWatch Logs and `secrets` from moto's SSM and Secrets Manager. moto's own ECS runs
//! nothing and ignores client tokens, so tests point the ECS client here.

mod definitions;
mod model;
mod run_task;
mod runner;
mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::Value;
use tokio::sync::watch;

use crate::process::Supervisor;
use crate::protocol::{AwsError, RequestGate};
use model::Task;

const INVALID_PARAMETER: &str = "InvalidParameterException";

/// How the stand-in paces task lifecycles. Change it with [`Ecs::set_settings`].
#[derive(Debug, Clone)]
pub struct EcsSettings {
    /// Time a task spends in PROVISIONING (default 0).
    pub provisioning_delay: Duration,
    /// Time a task spends in PENDING after its container process started (default 0).
    pub pending_delay: Duration,
    /// Time a task spends in DEPROVISIONING before STOPPED (default 0).
    pub deprovisioning_delay: Duration,
    /// SIGTERM → SIGKILL grace when a container defines no `stopTimeout` (ECS's default is
    /// 30 s; default here 1 s so tests stay short).
    pub stop_timeout: Duration,
}

impl Default for EcsSettings {
    fn default() -> EcsSettings {
        EcsSettings {
            provisioning_delay: Duration::ZERO,
            pending_delay: Duration::ZERO,
            deprovisioning_delay: Duration::ZERO,
            stop_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a task is being stopped: a stop code and the reason shown as `stoppedReason`.
#[derive(Debug, Clone, PartialEq)]
pub struct StopRequest {
    pub code: String,
    pub reason: String,
}

/// A failure to inject into the next RunTask.
#[derive(Debug, Clone, PartialEq)]
pub enum StartFault {
    /// The task is created, then stops before running with stop code `TaskFailedToStart`
    /// and this reason (e.g. `CannotPullContainerError: …`).
    FailToStart(String),
    /// RunTask places nothing and answers with this reason in `failures`
    /// (e.g. `RESOURCE:MEMORY`).
    NoPlacement(String),
}

/// A handle on the ECS stand-in (cheap to clone).
#[derive(Clone)]
pub struct Ecs {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    settings: Mutex<EcsSettings>,
    gate: RequestGate,
    moto: SdkConfig,
    moto_endpoint: String,
    supervisor: Supervisor,
}

#[derive(Default)]
struct State {
    /// Cluster name → cluster as DescribeClusters shows it (without task counts).
    clusters: BTreeMap<String, Value>,
    /// Family → revisions, revision N at index N-1.
    definitions: BTreeMap<String, Vec<Value>>,
    tasks: HashMap<String, Task>,
    /// Task ARNs in start order.
    order: Vec<String>,
    /// (cluster ARN, client token) → the RunTask that used it.
    tokens: HashMap<(String, String), TokenUse>,
    stops: HashMap<String, watch::Sender<Option<StopRequest>>>,
    faults: VecDeque<StartFault>,
}

/// One use of a RunTask client token.
struct TokenUse {
    request: Value,
    reply: Vec<String>,
    failures: Vec<Value>,
    at: Instant,
}

impl Ecs {
    pub(crate) fn new(
        moto: SdkConfig,
        moto_endpoint: &str,
        supervisor: Supervisor,
        settings: EcsSettings,
    ) -> Ecs {
        Ecs {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                settings: Mutex::new(settings),
                gate: RequestGate::default(),
                moto,
                moto_endpoint: moto_endpoint.to_owned(),
                supervisor,
            }),
        }
    }

    pub fn settings(&self) -> EcsSettings {
        self.inner.settings.lock().unwrap().clone()
    }

    /// New settings apply to tasks started afterwards.
    pub fn set_settings(&self, settings: EcsSettings) {
        *self.inner.settings.lock().unwrap() = settings;
    }

    /// Recording and fault injection for ECS calls.
    pub fn gate(&self) -> &RequestGate {
        &self.inner.gate
    }

    /// Every task, oldest first, as DescribeTasks (with tags) would show it now.
    pub fn tasks(&self) -> Vec<Value> {
        let state = self.inner.state.lock().unwrap();
        state
            .order
            .iter()
            .filter_map(|arn| state.tasks.get(arn))
            .map(|task| task.to_json(true))
            .collect()
    }

    /// One task by ARN or id, as DescribeTasks (with tags) would show it now.
    pub fn task(&self, arn_or_id: &str) -> Option<Value> {
        let state = self.inner.state.lock().unwrap();
        tasks::find(&state, None, arn_or_id).map(|task| task.to_json(true))
    }

    /// Makes the next task RunTask would start fail as `fault` says (one fault per task, in
    /// the order given).
    pub fn inject_start_fault(&self, fault: StartFault) {
        self.inner.state.lock().unwrap().faults.push_back(fault);
    }

    /// Stops a task from outside, as the platform does (e.g. a Fargate Spot interruption:
    /// `StopRequest { code: "SpotInterruption".into(), reason: "Your Spot Task was
    /// interrupted.".into() }`). Returns false for an unknown or already stopping task.
    pub fn interrupt(&self, arn_or_id: &str, request: StopRequest) -> bool {
        let state = self.inner.state.lock().unwrap();
        let Some(task) = tasks::find(&state, None, arn_or_id) else {
            return false;
        };
        match state.stops.get(&task.arn) {
            Some(stop) if stop.borrow().is_none() => {
                let _ = stop.send(Some(request));
                true
            }
            _ => false,
        }
    }

    /// Serves one ECS operation (the part of `X-Amz-Target` after the dot).
    pub(crate) fn call(&self, operation: &str, body: &Value) -> Result<Value, AwsError> {
        let inner = &self.inner;
        match operation {
            "CreateCluster" => definitions::create_cluster(inner, body),
            "DescribeClusters" => definitions::describe_clusters(inner, body),
            "ListClusters" => definitions::list_clusters(inner),
            "RegisterTaskDefinition" => definitions::register_task_definition(inner, body),
            "DescribeTaskDefinition" => definitions::describe_task_definition(inner, body),
            "DeregisterTaskDefinition" => definitions::deregister_task_definition(inner, body),
            "RunTask" => run_task::run_task(inner, body),
            "DescribeTasks" => tasks::describe_tasks(inner, body),
            "ListTasks" => tasks::list_tasks(inner, body),
            "StopTask" => tasks::stop_task(inner, body),
            "TagResource" => tasks::tag_resource(inner, body),
            "ListTagsForResource" => tasks::list_tags_for_resource(inner, body),
            other => Err(AwsError::client(
                "UnknownOperationException",
                format!("The ECS stand-in does not serve {other}"),
            )),
        }
    }
}
