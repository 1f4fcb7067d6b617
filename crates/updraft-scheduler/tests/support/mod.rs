//! Test support: `AgentBackend`, a real `Backend` whose launches act as acquire-mode agents
//! against the emulator over HTTP — register with the job acquisition token from the launch
//! spec, acquire the job, start it, run for a while (watching for cancellation), finish it —
//! and that records every launch, stop and delete so tests can count them. Plus helpers to
//! start an emulator and write a scheduler config for it.

use async_trait::async_trait;
use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updraft_backends::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus,
};
use updraft_buildkite::{ApiClient, AuthScheme, ClientOptions, RetryPolicy, Secret};
use updraft_emulator::{EmulatorConfig, EmulatorHandle};
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Launch {
    spec_fleet: String,
    phase: LaunchPhase,
    started_at: chrono::DateTime<Utc>,
    stop: Arc<tokio::sync::Notify>,
    agent: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct Book {
    live: HashMap<LaunchName, Launch>,
    /// Every launch ever started, by name (AlreadyExists answers are not counted).
    started: BTreeMap<LaunchName, u32>,
    stops: Vec<LaunchName>,
    deletes: Vec<LaunchName>,
    errors: Vec<String>,
}

#[derive(Clone)]
pub struct AgentBackend {
    book: Arc<Mutex<Book>>,
    run_for: Option<Duration>,
    watch_cancel: bool,
}

impl AgentBackend {
    /// Each simulated job runs `run_for` and finishes with exit 0; `None` runs until the job
    /// is canceled or the launch is stopped.
    pub fn new(run_for: Option<Duration>) -> Self {
        AgentBackend {
            book: Arc::default(),
            run_for,
            watch_cancel: true,
        }
    }

    /// The agents never look at their job's state, so only a stop from the scheduler ends
    /// a canceled job.
    pub fn ignoring_cancellation(mut self) -> Self {
        self.watch_cancel = false;
        self
    }

    pub fn launches_started(&self) -> BTreeMap<LaunchName, u32> {
        self.book.lock().unwrap().started.clone()
    }

    pub fn stops(&self) -> Vec<LaunchName> {
        self.book.lock().unwrap().stops.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.book.lock().unwrap().errors.clone()
    }

    pub fn live(&self) -> usize {
        self.book.lock().unwrap().live.len()
    }

    /// The launch dies on the spot, whatever its agent was doing (a killed process, a lost
    /// node): its agent goes silent without finishing the job.
    pub fn crash(&self, job: Uuid) {
        let mut book = self.book.lock().unwrap();
        if let Some(launch) = book.live.get_mut(&LaunchName::for_job(job)) {
            if let Some(agent) = launch.agent.take() {
                agent.abort();
            }
            launch.phase = LaunchPhase::Failed {
                reason: "killed by signal 9".into(),
            };
        }
    }

    fn set_phase(&self, name: &LaunchName, phase: LaunchPhase) {
        if let Some(launch) = self.book.lock().unwrap().live.get_mut(name) {
            launch.phase = phase;
        }
    }
}

fn client(endpoint: &str, token: &Secret) -> ApiClient {
    let options = ClientOptions {
        retry: RetryPolicy {
            max_attempts: 5,
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    };
    ApiClient::new(endpoint, token, AuthScheme::Token, options).expect("client")
}

/// The acquire-mode agent flow of reference §1.5, just enough of it.
async fn run_agent(
    spec: LaunchSpec,
    run_for: Option<Duration>,
    watch_cancel: bool,
    stop: Arc<tokio::sync::Notify>,
) -> Result<i32, String> {
    let endpoint = spec
        .env
        .get("BUILDKITE_AGENT_ENDPOINT")
        .ok_or("no endpoint in the launch env")?;
    let job = spec
        .env
        .get("BUILDKITE_AGENT_ACQUIRE_JOB")
        .ok_or("no job in the launch env")?
        .clone();
    let jat = spec
        .secrets
        .get("BUILDKITE_AGENT_TOKEN")
        .ok_or("no agent token in the launch secrets")?;
    let register: Value = client(endpoint, jat)
        .json(client(endpoint, jat).request(Method::POST, "register").json(&json!({
            "name": spec.name.to_string(),
            "ignore_in_dispatches": true,
            "features": ["acquire-job"],
            "meta_data": spec.env.get("BUILDKITE_AGENT_TAGS").map(|t| t.split(',').collect::<Vec<_>>()).unwrap_or_default(),
        })))
        .await
        .map_err(|e| format!("register: {e}"))?;
    let session = Secret::new(
        register["access_token"]
            .as_str()
            .ok_or("register gave no access_token")?,
    );
    let agent = client(endpoint, &session);
    agent
        .send(agent.request(Method::POST, "connect"))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let acquired: Value = agent
        .json(
            agent
                .request(Method::PUT, &format!("jobs/{job}/acquire"))
                .header("X-Buildkite-Lock-Acquire-Job", "1"),
        )
        .await
        .map_err(|e| format!("acquire: {e}"))?;
    let job_token = Secret::new(
        acquired["token"]
            .as_str()
            .ok_or("acquire gave no job token")?,
    );
    let runner = client(endpoint, &job_token);
    runner
        .send(
            runner
                .request(Method::PUT, &format!("jobs/{job}/start"))
                .json(&json!({"started_at": Utc::now()})),
        )
        .await
        .map_err(|e| format!("start: {e}"))?;
    let started = Instant::now();
    let mut canceled = false;
    loop {
        if run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if watch_cancel {
            let state: Value = runner
                .json(runner.request(Method::GET, &format!("jobs/{job}")))
                .await
                .map_err(|e| format!("job state: {e}"))?;
            if matches!(state["state"].as_str(), Some("canceling" | "canceled")) {
                canceled = true;
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.notified() => { canceled = true; break; }
        }
    }
    let finish = if canceled {
        json!({"exit_status": "-1", "signal": "SIGTERM", "signal_reason": "cancel"})
    } else {
        json!({"exit_status": "0"})
    };
    runner
        .send(
            runner
                .request(Method::PUT, &format!("jobs/{job}/finish"))
                .json(&finish),
        )
        .await
        .map_err(|e| format!("finish: {e}"))?;
    let _ = agent.send(agent.request(Method::POST, "disconnect")).await;
    Ok(if canceled { -1 } else { 0 })
}

#[async_trait]
impl Backend for AgentBackend {
    fn kind(&self) -> &'static str {
        "agent-sim"
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let stop = Arc::new(tokio::sync::Notify::new());
        {
            let mut book = self.book.lock().unwrap();
            if book.live.contains_key(&spec.name) {
                return Ok(LaunchOutcome::AlreadyExists);
            }
            *book.started.entry(spec.name.clone()).or_default() += 1;
            book.live.insert(
                spec.name.clone(),
                Launch {
                    spec_fleet: spec.fleet.clone(),
                    phase: LaunchPhase::Running,
                    started_at: Utc::now(),
                    stop: stop.clone(),
                    agent: None,
                },
            );
        }
        let this = self.clone();
        let spec = spec.clone();
        let name = spec.name.clone();
        let task = tokio::spawn(async move {
            let name = spec.name.clone();
            let phase = match run_agent(spec, this.run_for, this.watch_cancel, stop).await {
                Ok(0) => LaunchPhase::Succeeded,
                Ok(code) => LaunchPhase::Failed {
                    reason: format!("exit {code}"),
                },
                Err(error) => {
                    this.book
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("{name}: {error}"));
                    LaunchPhase::Failed { reason: error }
                }
            };
            this.set_phase(&name, phase);
        });
        if let Some(launch) = self.book.lock().unwrap().live.get_mut(&name) {
            launch.agent = Some(task.abort_handle());
        }
        Ok(LaunchOutcome::Started)
    }

    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        let mut book = self.book.lock().unwrap();
        book.stops.push(name.clone());
        if let Some(launch) = book.live.get_mut(name) {
            launch.stop.notify_one();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        let book = self.book.lock().unwrap();
        Ok(book
            .live
            .iter()
            .map(|(name, launch)| LaunchStatus {
                detail: None,
                name: name.clone(),
                fleet: launch.spec_fleet.clone(),
                phase: launch.phase.clone(),
                started_at: launch.started_at,
            })
            .collect())
    }

    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        let mut book = self.book.lock().unwrap();
        book.deletes.push(name.clone());
        book.live.remove(name);
        Ok(())
    }
}

pub async fn emulator() -> EmulatorHandle {
    updraft_emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts")
}

/// A config for `emulator` with the given fleets (TOML `[[fleet]]` blocks) and extra
/// top-level TOML, a fresh ledger in `dir`, HTTP on a free port.
pub fn config_text(
    emulator: &EmulatorHandle,
    dir: &std::path::Path,
    fleets: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[buildkite]
endpoint = "{endpoint}"
agent_token = "{token}"
stack_key = "test"
poll_interval_ms = 1000

[http]
listen = "127.0.0.1:0"

[ledger]
path = "{ledger}"

[reconcile]
interval_ms = 300

{extra}

{fleets}
"#,
        endpoint = emulator.agent_endpoint(),
        token = emulator.agent_token().expose(),
        ledger = dir.join("ledger.sqlite").display(),
    )
}

/// Poll `check` every 50 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn acquires(emulator: &EmulatorHandle, job: Uuid) -> u64 {
    emulator
        .job_timeline(job)
        .and_then(|t| t["acquires"].as_u64())
        .unwrap_or(0)
}
