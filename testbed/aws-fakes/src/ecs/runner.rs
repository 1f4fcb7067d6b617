//! Runs one task through ECS's lifecycle: PROVISIONING → PENDING (secrets resolved, log
//! stream opened, container process started) → RUNNING → DEPROVISIONING → STOPPED. The first
//! essential container runs as a local process (the image is not pulled: its command runs on
//! this machine); its exit stops the task with `EssentialContainerExited`. StopTask and
//! injected interruptions SIGTERM it, then SIGKILL after the container's `stopTimeout`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::model::{Task, DEPROVISIONING, PENDING, RUNNING, STOPPED};
use super::{Inner, StopRequest};
use crate::logs::{pump, LineStyle, LogStream, LogWriter};
use crate::process::{exit_code, terminate};
use crate::sdk::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use crate::secrets::SecretResolver;

/// How long the runner waits for output still in flight after the container exits.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// A container that is running, with what it takes to end it.
struct Started {
    child: tokio::process::Child,
    group: i32,
    pumps: Vec<JoinHandle<()>>,
    stream: Option<LogStream>,
    stop_timeout: Duration,
}

/// Runs task `arn`; `stop` carries StopTask or an injected interruption, and `start_failure`
/// (an injected fault) makes the task stop before it runs.
pub async fn run(
    inner: Arc<Inner>,
    arn: String,
    definition: Value,
    mut stop: watch::Receiver<Option<StopRequest>>,
    start_failure: Option<String>,
) {
    let settings = inner.settings.lock().unwrap().clone();
    let runner = Runner { inner, arn };
    if let Some(request) =
        interruptible(&mut stop, tokio::time::sleep(settings.provisioning_delay)).await
    {
        return runner
            .stop_unstarted(request.code, request.reason, None)
            .await;
    }
    runner.update(|task| {
        task.set_status(PENDING);
        task.pull_started_at = Some(SystemTime::now());
    });
    if let Some(reason) = start_failure {
        return runner
            .stop_unstarted("TaskFailedToStart".into(), reason.clone(), Some(reason))
            .await;
    }
    let workdir = match tempfile::Builder::new().prefix("ecs-task-").tempdir() {
        Ok(workdir) => workdir,
        Err(error) => {
            let reason =
                format!("ResourceInitializationError: cannot make the task directory: {error}");
            return runner
                .stop_unstarted("TaskFailedToStart".into(), reason, None)
                .await;
        }
    };
    let mut started = match runner
        .start_container(&definition, workdir.path(), &settings)
        .await
    {
        Ok(started) => started,
        Err(reason) => {
            return runner
                .stop_unstarted("TaskFailedToStart".into(), reason.clone(), Some(reason))
                .await
        }
    };
    runner.update(|task| task.pull_stopped_at = Some(SystemTime::now()));
    let pending = tokio::time::sleep(settings.pending_delay);
    let mut stop_request = interruptible(&mut stop, pending).await;
    if stop_request.is_none() {
        runner.update(|task| {
            task.set_status(RUNNING);
            task.started_at = Some(SystemTime::now());
        });
        stop_request = tokio::select! {
            _ = started.child.wait() => None,
            request = stop_requested(&mut stop) => Some(request),
        };
    }
    let status = match &stop_request {
        Some(_) => terminate(&mut started.child, started.group, started.stop_timeout).await,
        None => started
            .child
            .wait()
            .await
            .unwrap_or_else(|_| exit_status_unknown()),
    };
    let (code, reason) = match stop_request {
        Some(request) => (request.code, request.reason),
        None => (
            "EssentialContainerExited".to_owned(),
            "Essential container in task exited".to_owned(),
        ),
    };
    runner.update(|task| {
        task.execution_stopped_at = Some(SystemTime::now());
        task.stopping_at = Some(SystemTime::now());
        task.desired_status = STOPPED;
        task.set_status(DEPROVISIONING);
        task.stop_code = Some(code);
        task.stopped_reason = Some(reason);
        if let Some(container) = task
            .containers
            .iter_mut()
            .find(|c| c.name == essential_name(&definition))
        {
            container.exit_code = Some(exit_code(status));
        }
    });
    runner.inner.supervisor.tear_down(started.group);
    for pumping in started.pumps {
        let abort = pumping.abort_handle();
        if tokio::time::timeout(DRAIN_WAIT, pumping).await.is_err() {
            abort.abort();
        }
    }
    if let Some(stream) = started.stream.take() {
        stream.close().await;
    }
    drop(workdir);
    tokio::time::sleep(settings.deprovisioning_delay).await;
    runner.finish();
}

struct Runner {
    inner: Arc<Inner>,
    arn: String,
}

impl Runner {
    fn update(&self, change: impl FnOnce(&mut Task)) {
        let mut state = self.inner.state.lock().unwrap();
        if let Some(task) = state.tasks.get_mut(&self.arn) {
            change(task);
        }
    }

    /// Ends a task whose container never ran.
    async fn stop_unstarted(&self, code: String, reason: String, container_reason: Option<String>) {
        self.update(|task| {
            task.stopping_at = Some(SystemTime::now());
            task.desired_status = STOPPED;
            task.set_status(DEPROVISIONING);
            task.stop_code = Some(code);
            task.stopped_reason = Some(reason);
            for container in &mut task.containers {
                container.reason = container_reason.clone();
            }
        });
        let delay = self.inner.settings.lock().unwrap().deprovisioning_delay;
        tokio::time::sleep(delay).await;
        self.finish();
    }

    fn finish(&self) {
        self.update(|task| {
            task.set_status(STOPPED);
            task.stopped_at = Some(SystemTime::now());
        });
        self.inner.state.lock().unwrap().stops.remove(&self.arn);
    }

    /// Resolves secrets, opens the awslogs stream and starts the essential container's
    /// command. The error is the task's `stoppedReason` in ECS's words.
    async fn start_container(
        &self,
        definition: &Value,
        workdir: &std::path::Path,
        settings: &super::EcsSettings,
    ) -> Result<Started, String> {
        let task = self.snapshot();
        let container = definition["containerDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == essential_name(definition))
            .cloned()
            .ok_or("CannotStartContainerError: the task definition has no essential container")?;
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let container_override = task.overrides["containerOverrides"]
            .as_array()
            .and_then(|list| list.iter().find(|o| o["name"] == name.as_str()))
            .cloned()
            .unwrap_or(Value::Null);

        let argv = command_line(&container, &container_override).ok_or(
            "CannotStartContainerError: no command: the stand-in cannot run an image's default \
             command, so the container needs a command or an entryPoint",
        )?;
        let env = self
            .environment(&task, &container, &container_override, workdir)
            .await?;
        let stream = self.open_log_stream(&task, &container).await?;
        let log = stream
            .as_ref()
            .map(LogStream::writer)
            .unwrap_or_else(LogWriter::discard);

        std::fs::create_dir_all(workdir.join("home"))
            .map_err(|e| format!("ResourceInitializationError: {e}"))?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, group) =
            self.inner
                .supervisor
                .spawn_process(&mut command)
                .map_err(|error| {
                    format!(
                        "CannotStartContainerError: failed to start {:?}: {error}",
                        argv[0]
                    )
                })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pumps = vec![
            tokio::spawn(pump(stdout, log.clone(), LineStyle::StripNewline)),
            tokio::spawn(pump(stderr, log, LineStyle::StripNewline)),
        ];
        let stop_timeout = container["stopTimeout"]
            .as_u64()
            .map(Duration::from_secs)
            .unwrap_or(settings.stop_timeout);
        Ok(Started {
            child,
            group,
            pumps,
            stream,
            stop_timeout,
        })
    }

    fn snapshot(&self) -> Task {
        let state = self.inner.state.lock().unwrap();
        state.tasks[&self.arn].clone()
    }

    /// The container's environment: what ECS sets, the definition's variables, the
    /// override's (replacing by name), then the resolved `secrets`.
    async fn environment(
        &self,
        task: &Task,
        container: &Value,
        container_override: &Value,
        workdir: &std::path::Path,
    ) -> Result<Vec<(String, String)>, String> {
        let execution_env = if task.launch_type == "FARGATE" {
            "AWS_ECS_FARGATE"
        } else {
            "AWS_ECS_EC2"
        };
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            ("HOME".into(), workdir.join("home").display().to_string()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_EXECUTION_ENV".into(), execution_env.into()),
            ("AWS_ENDPOINT_URL".into(), self.inner.moto_endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
        ];
        let mut set = |name: &str, value: String| {
            env.retain(|(earlier, _)| earlier != name);
            env.push((name.to_owned(), value));
        };
        for source in [
            &container["environment"],
            &container_override["environment"],
        ] {
            for variable in source.as_array().into_iter().flatten() {
                let name = variable["name"].as_str().unwrap_or_default();
                set(
                    name,
                    variable["value"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        let resolver = SecretResolver::new(&self.inner.moto);
        for secret in container["secrets"].as_array().into_iter().flatten() {
            let name = secret["name"].as_str().unwrap_or_default();
            let value_from = secret["valueFrom"].as_str().unwrap_or_default();
            let value = resolver.value_from(value_from).await.map_err(|error| {
                format!(
                    "ResourceInitializationError: unable to pull secrets or registry auth: \
                     execution resource retrieval failed: unable to retrieve secret from \
                     {value_from}: {error}"
                )
            })?;
            set(name, value);
        }
        Ok(env)
    }

    /// The `awslogs` stream `<prefix>/<container>/<task-id>`, if the container logs there.
    async fn open_log_stream(
        &self,
        task: &Task,
        container: &Value,
    ) -> Result<Option<LogStream>, String> {
        let config = &container["logConfiguration"];
        if config["logDriver"] != "awslogs" {
            return Ok(None);
        }
        let options = &config["options"];
        let group = options["awslogs-group"]
            .as_str()
            .ok_or("ResourceInitializationError: failed to validate logger args: awslogs-group is required")?;
        let name = container["name"].as_str().unwrap_or_default();
        let stream = match options["awslogs-stream-prefix"].as_str() {
            Some(prefix) => format!("{prefix}/{name}/{}", task.id()),
            None if task.launch_type == "FARGATE" => {
                return Err(
                    "ResourceInitializationError: failed to validate logger args: \
                            awslogs-stream-prefix is required for Fargate"
                        .into(),
                )
            }
            None => task.id().to_owned(),
        };
        let create_group = options["awslogs-create-group"] == "true";
        let client = aws_sdk_cloudwatchlogs::Client::new(&self.inner.moto);
        LogStream::open(client, group, &stream, create_group)
            .await
            .map(Some)
            .map_err(|error| {
                format!("ResourceInitializationError: failed to validate logger args: {error}")
            })
    }
}

/// The first essential container's name (containers are essential unless they say not).
fn essential_name(definition: &Value) -> &str {
    definition["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["essential"].as_bool().unwrap_or(true))
        .and_then(|c| c["name"].as_str())
        .unwrap_or_default()
}

/// `entryPoint` + `command` (the override's command replaces the definition's), as Docker
/// combines them; `None` if both are empty.
fn command_line(container: &Value, container_override: &Value) -> Option<Vec<String>> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()
    };
    let command = match container_override.get("command") {
        Some(command) => strings(command),
        None => strings(&container["command"]),
    };
    let argv: Vec<String> = strings(&container["entryPoint"])
        .into_iter()
        .chain(command)
        .collect();
    (!argv.is_empty()).then_some(argv)
}

async fn interruptible(
    stop: &mut watch::Receiver<Option<StopRequest>>,
    work: impl std::future::Future<Output = ()>,
) -> Option<StopRequest> {
    tokio::select! {
        _ = work => None,
        request = stop_requested(stop) => Some(request),
    }
}

async fn stop_requested(stop: &mut watch::Receiver<Option<StopRequest>>) -> StopRequest {
    let request = match stop.wait_for(Option::is_some).await {
        Ok(request) => request.clone(),
        Err(_) => None,
    };
    match request {
        Some(request) => request,
        // The task is gone from the table: nothing will ever ask it to stop.
        None => std::future::pending().await,
    }
}

fn exit_status_unknown() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(255 << 8)
}
