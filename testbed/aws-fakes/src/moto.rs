//! Control of a `moto_server` child process: start it on a free port, wait until it answers,
//! drive its `/moto-api` control endpoints, and stop its whole process group on shutdown or
//! drop so no server outlives the test that started it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// How long moto may take to answer its first request (it normally needs well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long moto gets to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Start attempts, in case another process takes the free port between probe and bind.
const START_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error(
        "cannot run the Python interpreter {python}: {source}. Set UPDRAFT_PYTHON to a Python \
         with moto[server]==5.2.5 installed (.ci/run creates .venv with it)"
    )]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "moto server did not start with {python} ({status}); is moto[server]==5.2.5 installed \
         for it? (pip install 'moto[server]==5.2.5'). Its output ends with:\n{output}"
    )]
    Exited {
        python: PathBuf,
        status: String,
        output: String,
    },
    #[error("moto server with {python} did not answer on {endpoint} within {READY_TIMEOUT:?}")]
    NotAnswering { python: PathBuf, endpoint: String },
    #[error("moto control call {path} failed: {detail}")]
    Control { path: String, detail: String },
    #[error("cannot prepare the moto server: {0}")]
    Io(#[from] std::io::Error),
}

/// A running `moto_server`. Stopped by [`Moto::shutdown`] or on drop.
pub struct Moto {
    child: Option<Child>,
    endpoint: String,
    python: PathBuf,
    http: reqwest::Client,
    started_in: Duration,
    _output: tempfile::NamedTempFile,
}

impl Moto {
    /// The interpreter that runs moto: `$UPDRAFT_PYTHON`, else the workspace's `.venv`.
    pub fn python_path() -> PathBuf {
        match std::env::var_os("UPDRAFT_PYTHON") {
            Some(python) if !python.is_empty() => PathBuf::from(python),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        }
    }

    /// Starts moto with [`Moto::python_path`] on a free loopback port.
    pub async fn start() -> Result<Moto, MotoError> {
        Moto::start_with(&Moto::python_path()).await
    }

    /// Starts moto with the given interpreter on a free loopback port.
    pub async fn start_with(python: &Path) -> Result<Moto, MotoError> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Moto::start_once(python).await {
                Ok(moto) => return Ok(moto),
                // A lost race for the port shows up as an early exit; try another port.
                Err(error @ MotoError::Exited { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.expect("at least one start attempt"))
    }

    async fn start_once(python: &Path) -> Result<Moto, MotoError> {
        let began = Instant::now();
        let port = free_port()?;
        let output = tempfile::NamedTempFile::new()?;
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(output.reopen()?)
            .stderr(output.reopen()?)
            .process_group(0)
            .spawn()
            .map_err(|source| MotoError::Spawn {
                python: python.to_owned(),
                source,
            })?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| MotoError::Control {
                path: "(client)".into(),
                detail: error.to_string(),
            })?;
        let mut moto = Moto {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            python: python.to_owned(),
            http,
            started_in: Duration::ZERO,
            _output: output,
        };
        moto.wait_until_answering().await?;
        moto.started_in = began.elapsed();
        tracing::debug!(endpoint = %moto.endpoint, started_in = ?moto.started_in, "moto up");
        Ok(moto)
    }

    async fn wait_until_answering(&mut self) -> Result<(), MotoError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = format!("{}/moto-api/", self.endpoint);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(MotoError::Exited {
                    python: self.python.clone(),
                    status: status.to_string(),
                    output: tail(&std::fs::read_to_string(self._output.path())?, 2000),
                });
            }
            let answered = self
                .http
                .get(&probe)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok();
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(MotoError::NotAnswering {
                    python: self.python.clone(),
                    endpoint: self.endpoint.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Base URL of the server, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's process id (also its process group id); `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long start-up took, from spawn to the first answered request.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Forgets every resource in every service (`POST /moto-api/reset`).
    pub async fn reset(&self) -> Result<(), MotoError> {
        self.post("/moto-api/reset", None).await
    }

    /// Sets how a model advances through its states, e.g. `set_transition("ecs::task",
    /// json!({"progression": "manual", "times": 3}))`.
    pub async fn set_transition(&self, model: &str, transition: Value) -> Result<(), MotoError> {
        let body = json!({ "model_name": model, "transition": transition });
        self.post("/moto-api/state-manager/set-transition", Some(body))
            .await
    }

    /// Changes moto's runtime configuration, e.g. `{"lambda": {"use_docker": false}}`.
    pub async fn config(&self, config: Value) -> Result<(), MotoError> {
        self.post("/moto-api/config", Some(config)).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> Result<(), MotoError> {
        let control_error = |detail: String| MotoError::Control {
            path: path.to_owned(),
            detail,
        };
        let mut request = self.http.post(format!("{}{path}", self.endpoint));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| control_error(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(control_error(format!(
            "HTTP {status}: {}",
            tail(&text, 500)
        )))
    }

    /// Stops the server and everything it started: SIGTERM to its process group, SIGKILL after
    /// a short grace. Idempotent; also done on drop.
    pub fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever is left in the group (the server, or anything it spawned) goes now.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn tail(text: &str, max_chars: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len().saturating_sub(max_chars);
    chars[start..].iter().collect()
}
