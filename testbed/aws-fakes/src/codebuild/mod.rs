//! The CodeBuild execution stand-in: serves CodeBuild's JSON 1.1 API (projects, StartBuild,
//! BatchGetBuilds, StopBuild, ListBuilds*) and runs each build's buildspec as local shell
//! processes, with logs in moto's CloudWatch Logs and secrets from moto's SSM and Secrets
//! Manager. moto's own CodeBuild runs nothing, so tests point the CodeBuild client here.

mod builds;
mod buildspec;
mod model;
mod projects;
mod runner;
mod script;
mod session;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::process::Supervisor;
use crate::protocol::{AwsError, RequestGate};
use model::Build;

const INVALID_INPUT: &str = "InvalidInputException";
const NOT_FOUND: &str = "ResourceNotFoundException";

/// How the stand-in schedules and runs builds. Change it with [`CodeBuild::set_settings`].
#[derive(Debug, Clone)]
pub struct CodeBuildSettings {
    /// Time every build spends in QUEUED before it may start (default 0).
    pub queue_delay: Duration,
    /// Time every build spends in PROVISIONING (default 0).
    pub provisioning_delay: Duration,
    /// How many builds may run at once; the rest stay QUEUED in start order (default none).
    pub capacity: Option<usize>,
    /// How long one minute of `timeoutInMinutes` / `queuedTimeoutInMinutes` lasts here
    /// (default 60 s; tests shrink it, since CodeBuild's minimum timeout is 5 minutes).
    pub minute: Duration,
    /// Time between SIGTERM and SIGKILL when a build is stopped or times out (default 1 s).
    pub stop_grace: Duration,
    /// Whether the log carries CodeBuild's own `[Container] …` lines (default true).
    pub container_log_lines: bool,
}

impl Default for CodeBuildSettings {
    fn default() -> CodeBuildSettings {
        CodeBuildSettings {
            queue_delay: Duration::ZERO,
            provisioning_delay: Duration::ZERO,
            capacity: None,
            minute: Duration::from_secs(60),
            stop_grace: Duration::from_secs(1),
            container_log_lines: true,
        }
    }
}

/// A handle on the CodeBuild stand-in (cheap to clone).
#[derive(Clone)]
pub struct CodeBuild {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    settings: Mutex<CodeBuildSettings>,
    gate: RequestGate,
    moto: SdkConfig,
    moto_endpoint: String,
    supervisor: Supervisor,
    /// Wakes queued builds when capacity may have freed up.
    queue_moved: Notify,
}

#[derive(Default)]
struct State {
    projects: BTreeMap<String, Value>,
    builds: HashMap<String, Build>,
    /// Build ids in start order.
    order: Vec<String>,
    numbers: HashMap<String, i64>,
    tokens: HashMap<String, TokenUse>,
    stops: HashMap<String, watch::Sender<bool>>,
    /// Builds waiting for capacity, in start order.
    waiting: VecDeque<String>,
    running: usize,
}

/// One use of a StartBuild idempotency token.
struct TokenUse {
    request: Value,
    build_id: String,
    at: Instant,
}

impl CodeBuild {
    pub(crate) fn new(
        moto: SdkConfig,
        moto_endpoint: &str,
        supervisor: Supervisor,
        settings: CodeBuildSettings,
    ) -> CodeBuild {
        CodeBuild {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                settings: Mutex::new(settings),
                gate: RequestGate::default(),
                moto,
                moto_endpoint: moto_endpoint.to_owned(),
                supervisor,
                queue_moved: Notify::new(),
            }),
        }
    }

    pub fn settings(&self) -> CodeBuildSettings {
        self.inner.settings.lock().unwrap().clone()
    }

    /// New settings apply to builds from their next step on (e.g. a raised capacity lets
    /// queued builds start).
    pub fn set_settings(&self, settings: CodeBuildSettings) {
        *self.inner.settings.lock().unwrap() = settings;
        self.inner.queue_moved.notify_waiters();
    }

    /// Recording and fault injection for CodeBuild calls.
    pub fn gate(&self) -> &RequestGate {
        &self.inner.gate
    }

    /// Every build, oldest first, as BatchGetBuilds would show it now.
    pub fn builds(&self) -> Vec<Value> {
        let state = self.inner.state.lock().unwrap();
        state
            .order
            .iter()
            .filter_map(|id| state.builds.get(id))
            .map(Build::to_json)
            .collect()
    }

    /// One build as BatchGetBuilds would show it now.
    pub fn build(&self, id: &str) -> Option<Value> {
        let state = self.inner.state.lock().unwrap();
        state.builds.get(id).map(Build::to_json)
    }

    /// Serves one CodeBuild operation (the part of `X-Amz-Target` after the dot).
    pub(crate) fn call(&self, operation: &str, body: &Value) -> Result<Value, AwsError> {
        let inner = &self.inner;
        match operation {
            "CreateProject" => projects::create_project(inner, body),
            "BatchGetProjects" => projects::batch_get_projects(inner, body),
            "DeleteProject" => projects::delete_project(inner, body),
            "ListProjects" => projects::list_projects(inner),
            "StartBuild" => builds::start_build(inner, body),
            "BatchGetBuilds" => builds::batch_get_builds(inner, body),
            "StopBuild" => builds::stop_build(inner, body),
            "ListBuildsForProject" => builds::list_builds_for_project(inner, body),
            "ListBuilds" => builds::list_builds(inner, body),
            other => Err(AwsError::client(
                "UnknownOperationException",
                format!("The CodeBuild stand-in does not serve {other}"),
            )),
        }
    }
}
