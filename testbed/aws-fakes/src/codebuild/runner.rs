//! Runs one build through CodeBuild's phases: waits in QUEUED for its delay and for capacity,
//! opens its log stream and resolves its secrets while PROVISIONING, reads the buildspec in
//! DOWNLOAD_SOURCE, runs INSTALL/PRE_BUILD/BUILD/POST_BUILD as local shells, then FINALIZING
//! tears every process down and flushes the log before the build is marked complete.
//!
//! Phase transitions follow CodeBuild's rules: a failure in INSTALL or PRE_BUILD skips to
//! FINALIZING; a failure in BUILD still runs POST_BUILD; `on-failure: CONTINUE` goes on as if
//! the phase had succeeded (the build still fails). StopBuild and the build timeout end the
//! running phase as STOPPED / TIMED_OUT and go to FINALIZING.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::buildspec::{CommandPhase, OnFailure};
use super::model::{Build, PhaseContext, PhaseType, FAILED, FAULT, STOPPED, SUCCEEDED, TIMED_OUT};
use super::script::{phase_script, ScriptProgress, ScriptSpec};
use super::session::{
    base_env, read_buildspec, read_exported, resolve_buildspec_variables,
    resolve_project_variables, Session,
};
use super::{CodeBuildSettings, Inner};
use crate::logs::{pump, LineStyle, LogStream, LogWriter};
use crate::process::{exit_code, terminate};
use crate::secrets::SecretResolver;

/// How long a phase waits for its output to drain after its shell exits; output still
/// coming from background processes keeps flowing into the log until FINALIZING.
const DRAIN_WAIT: Duration = Duration::from_millis(200);
/// How long FINALIZING waits for leftover output after killing the build's processes.
const FINAL_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Why a build stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    Stopped,
    TimedOut,
}

impl Interrupt {
    fn status(self) -> &'static str {
        match self {
            Interrupt::Stopped => STOPPED,
            Interrupt::TimedOut => TIMED_OUT,
        }
    }

    fn context(self) -> PhaseContext {
        match self {
            Interrupt::Stopped => PhaseContext::new("BUILD_STOPPED", "Build was stopped"),
            Interrupt::TimedOut => PhaseContext::new("BUILD_TIMED_OUT", "Build has timed out. "),
        }
    }
}

/// Why PROVISIONING or DOWNLOAD_SOURCE did not hand over a session.
enum Halt {
    Interrupted(Interrupt),
    /// The build ends with this status (FAILED, or FAULT for the stand-in's own trouble).
    Failed(&'static str, PhaseContext),
}

/// How a phase's commands ended.
enum CommandsEnd {
    Succeeded,
    Failed(PhaseContext),
    Interrupted(Interrupt),
}

struct Run {
    inner: Arc<Inner>,
    id: String,
    settings: CodeBuildSettings,
    stop: watch::Receiver<bool>,
    deadline: Option<Instant>,
    log: LogWriter,
    stream: Option<LogStream>,
    groups: Vec<i32>,
    draining: Vec<JoinHandle<()>>,
    holds_slot: bool,
    workdir: Option<tempfile::TempDir>,
}

/// Runs build `id` to completion. `stop` turns true when StopBuild is called.
pub async fn run(inner: Arc<Inner>, id: String, stop: watch::Receiver<bool>) {
    let settings = inner.settings.lock().unwrap().clone();
    let mut run = Run {
        inner,
        id,
        settings,
        stop,
        deadline: None,
        log: LogWriter::discard(),
        stream: None,
        groups: Vec::new(),
        draining: Vec::new(),
        holds_slot: false,
        workdir: None,
    };
    let (status, exported_names) = run.phases().await;
    run.finalize(status, &exported_names).await;
}

impl Run {
    fn update<T>(&self, change: impl FnOnce(&mut Build) -> T) -> T {
        let mut state = self.inner.state.lock().unwrap();
        let build = state
            .builds
            .get_mut(&self.id)
            .expect("a running build is known");
        change(build)
    }

    fn snapshot(&self) -> Build {
        self.update(|build| build.clone())
    }

    /// Everything up to FINALIZING; returns the build status and the exported-variable names.
    async fn phases(&mut self) -> (&'static str, Vec<String>) {
        if let Err(interrupt) = self.wait_in_queue().await {
            self.update(|build| build.end_phase(interrupt.status(), interrupt.context()));
            return (interrupt.status(), Vec::new());
        }
        let session = match self.provision_and_download().await {
            Ok(session) => session,
            Err(Halt::Interrupted(interrupt)) => {
                self.end_phase(interrupt.status(), interrupt.context())
                    .await;
                return (interrupt.status(), Vec::new());
            }
            Err(Halt::Failed(status, context)) => {
                self.end_phase(status, context).await;
                return (status, Vec::new());
            }
        };
        let exported = session.buildspec.exported_variables.clone();
        (self.command_phases(&session).await, exported)
    }

    async fn wait_in_queue(&mut self) -> Result<(), Interrupt> {
        let queued_timeout = self.minutes(self.snapshot().queued_timeout_minutes);
        let queue_deadline = Instant::now() + queued_timeout;
        let delay = self.settings.queue_delay;
        interruptible(
            &mut self.stop,
            Some(queue_deadline),
            tokio::time::sleep(delay),
        )
        .await?;
        let inner = self.inner.clone();
        loop {
            let moved = inner.queue_moved.notified();
            if self.take_slot() {
                return Ok(());
            }
            let wait = tokio::time::timeout(Duration::from_millis(100), moved);
            // Either the queue moved or 100 ms passed: look again.
            let _ = interruptible(&mut self.stop, Some(queue_deadline), wait).await?;
        }
    }

    /// Takes a run slot if this build is first in line and capacity allows.
    fn take_slot(&mut self) -> bool {
        let capacity = self.inner.settings.lock().unwrap().capacity;
        let mut state = self.inner.state.lock().unwrap();
        let first = state.waiting.front() == Some(&self.id);
        if !first || capacity.is_some_and(|capacity| state.running >= capacity) {
            return false;
        }
        state.waiting.pop_front();
        state.running += 1;
        self.holds_slot = true;
        drop(state);
        self.inner.queue_moved.notify_waiters();
        true
    }

    /// PROVISIONING and DOWNLOAD_SOURCE.
    async fn provision_and_download(&mut self) -> Result<Session, Halt> {
        let failed = |context| Halt::Failed(FAILED, context);
        let fault =
            |message: String| Halt::Failed(FAULT, PhaseContext::new("CLIENT_ERROR", message));
        self.enter(PhaseType::Provisioning).await;
        let build = self.snapshot();
        self.deadline = Some(Instant::now() + self.minutes(build.timeout_minutes));
        if let Some(target) = &build.logs {
            let client = aws_sdk_cloudwatchlogs::Client::new(&self.inner.moto);
            let stream = LogStream::open(client, &target.group, &target.stream, true)
                .await
                .map_err(fault)?;
            self.log = stream.writer();
            self.stream = Some(stream);
            self.update(|build| build.logs_open = true);
        }
        self.container_line("Waiting for agent ping").await;
        let delay = self.settings.provisioning_delay;
        interruptible(&mut self.stop, self.deadline, tokio::time::sleep(delay))
            .await
            .map_err(Halt::Interrupted)?;
        let resolver = SecretResolver::new(&self.inner.moto);
        let project_variables = resolve_project_variables(&resolver, &build)
            .await
            .map_err(failed)?;

        self.enter(PhaseType::DownloadSource).await;
        let workdir = tempfile::Builder::new()
            .prefix("codebuild-")
            .tempdir()
            .map_err(|e| fault(format!("cannot make the build directory: {e}")))?;
        let src_dir = workdir.path().join("src");
        let state_dir = workdir.path().join("state");
        for dir in [
            src_dir.clone(),
            state_dir.join("exported"),
            workdir.path().join("home"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| fault(format!("cannot make {}: {e}", dir.display())))?;
        }
        self.container_line(&format!("CODEBUILD_SRC_DIR={}", src_dir.display()))
            .await;
        let buildspec = read_buildspec(&build, &src_dir)
            .map_err(|message| failed(PhaseContext::new("YAML_FILE_ERROR", message)))?;
        let buildspec_variables = resolve_buildspec_variables(&resolver, &buildspec)
            .await
            .map_err(failed)?;
        let mut env = base_env(&build, &self.inner.moto_endpoint, workdir.path(), &src_dir);
        // CodeBuild's precedence: StartBuild overrides, then the project, then the buildspec.
        for (name, value) in buildspec_variables.into_iter().chain(project_variables) {
            env.retain(|(earlier, _)| *earlier != name);
            env.push((name, value));
        }
        self.workdir = Some(workdir);
        Ok(Session {
            buildspec,
            env,
            src_dir,
            state_dir,
        })
    }

    /// INSTALL, PRE_BUILD, BUILD, POST_BUILD and UPLOAD_ARTIFACTS; returns the build status.
    async fn command_phases(&mut self, session: &Session) -> &'static str {
        let mut failed = false;
        for phase in CommandPhase::ALL {
            let kind = phase_type(phase);
            self.enter(kind).await;
            let spec = session.buildspec.phase(phase).cloned().unwrap_or_default();
            let mut end = self.run_commands(session, &spec.commands, !failed).await;
            if !spec.finally.is_empty() && !matches!(end, CommandsEnd::Interrupted(_)) {
                let finally = self.run_commands(session, &spec.finally, !failed).await;
                if !matches!(finally, CommandsEnd::Succeeded)
                    && matches!(end, CommandsEnd::Succeeded)
                {
                    end = finally;
                }
            }
            match end {
                CommandsEnd::Succeeded => self.end_phase(SUCCEEDED, PhaseContext::default()).await,
                CommandsEnd::Interrupted(interrupt) => {
                    self.end_phase(interrupt.status(), interrupt.context())
                        .await;
                    return interrupt.status();
                }
                CommandsEnd::Failed(context) => {
                    self.end_phase(FAILED, context).await;
                    failed = true;
                    let early = matches!(phase, CommandPhase::Install | CommandPhase::PreBuild);
                    if early && spec.on_failure == OnFailure::Abort {
                        return FAILED;
                    }
                }
            }
        }
        self.enter(PhaseType::UploadArtifacts).await;
        self.end_phase(SUCCEEDED, PhaseContext::default()).await;
        if failed {
            FAILED
        } else {
            SUCCEEDED
        }
    }

    /// Runs `commands` in one shell session, output to the log.
    async fn run_commands(
        &mut self,
        session: &Session,
        commands: &[String],
        succeeding: bool,
    ) -> CommandsEnd {
        if commands.is_empty() {
            return CommandsEnd::Succeeded;
        }
        let _ = std::fs::remove_file(session.state_dir.join("status"));
        let script = phase_script(&ScriptSpec {
            commands,
            state_dir: &session.state_dir,
            exported_variables: &session.buildspec.exported_variables,
            succeeding,
            container_lines: self.settings.container_log_lines,
        });
        let shell = match session.buildspec.shell.as_deref() {
            Some("bash") => "bash",
            _ => "sh",
        };
        let mut command = Command::new(shell);
        command
            .args(["-c", &script])
            .env_clear()
            .envs(session.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&session.src_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let (mut child, group) = match self.inner.supervisor.spawn_process(&mut command) {
            Ok(spawned) => spawned,
            Err(error) => {
                return CommandsEnd::Failed(PhaseContext::new(
                    "COMMAND_EXECUTION_ERROR",
                    format!(
                        "Error while executing command: {}. Reason: {error}",
                        commands[0]
                    ),
                ))
            }
        };
        self.groups.push(group);
        let output = child.stdout.take().expect("stdout is piped");
        let mut pumping = tokio::spawn(pump(output, self.log.clone(), LineStyle::KeepNewline));
        let grace = self.settings.stop_grace;
        let exited = interruptible(&mut self.stop, self.deadline, child.wait()).await;
        if let Err(interrupt) = exited {
            terminate(&mut child, group, grace).await;
            self.drain_later(pumping);
            return CommandsEnd::Interrupted(interrupt);
        }
        if tokio::time::timeout(DRAIN_WAIT, &mut pumping)
            .await
            .is_err()
        {
            self.drain_later(pumping);
        }
        let exit_status = exited
            .ok()
            .and_then(Result::ok)
            .map(exit_code)
            .unwrap_or(-1);
        match ScriptProgress::read(&session.state_dir) {
            Some(progress) if progress.done >= commands.len() => CommandsEnd::Succeeded,
            Some(progress) => CommandsEnd::Failed(command_error(&commands[progress.done], progress.status)),
            None => CommandsEnd::Failed(PhaseContext::new(
                "COMMAND_EXECUTION_ERROR",
                format!("Error while executing commands: the shell ended without finishing. Reason: exit status {exit_status}"),
            )),
        }
    }

    fn drain_later(&mut self, pumping: JoinHandle<()>) {
        self.draining.push(pumping);
    }

    /// FINALIZING and COMPLETED: kill what is left, read the exported variables, flush the
    /// log, free the run slot, then mark the build complete with `status`.
    async fn finalize(mut self, status: &'static str, exported_names: &[String]) {
        self.enter(PhaseType::Finalizing).await;
        for group in self.groups.drain(..) {
            self.inner.supervisor.tear_down(group);
        }
        for pumping in self.draining.drain(..) {
            let abort = pumping.abort_handle();
            if tokio::time::timeout(FINAL_DRAIN_WAIT, pumping)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let exported = self
            .workdir
            .as_ref()
            .map(|workdir| read_exported(&workdir.path().join("state/exported"), exported_names));
        self.end_phase(SUCCEEDED, PhaseContext::default()).await;
        self.log = LogWriter::discard();
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
        let mut state = self.inner.state.lock().unwrap();
        if self.holds_slot {
            state.running -= 1;
        } else {
            state.waiting.retain(|id| *id != self.id);
        }
        state.stops.remove(&self.id);
        let build = state
            .builds
            .get_mut(&self.id)
            .expect("a running build is known");
        if !exported_names.is_empty() {
            build.exported = exported;
        }
        build.complete(status);
        drop(state);
        self.inner.queue_moved.notify_waiters();
    }

    /// Ends the running phase as SUCCEEDED (unless it already ended), then starts `phase`.
    async fn enter(&mut self, phase: PhaseType) {
        let running = self.update(|build| build.phases.last().is_some_and(|p| p.end.is_none()));
        if running {
            self.end_phase(SUCCEEDED, PhaseContext::default()).await;
        }
        self.update(|build| build.enter(phase));
        self.container_line(&format!("Entering phase {}", phase.name()))
            .await;
    }

    async fn end_phase(&mut self, status: &'static str, context: PhaseContext) {
        let phase = self.snapshot().current_phase();
        self.update(|build| build.end_phase(status, context.clone()));
        self.container_line(&format!("Phase complete: {} State: {status}", phase.name()))
            .await;
        if !context.status_code.is_empty() {
            self.container_line(&format!(
                "Phase context status code: {} Message: {}",
                context.status_code, context.message
            ))
            .await;
        }
    }

    async fn container_line(&self, text: &str) {
        if self.settings.container_log_lines {
            let now = chrono::Utc::now().format("%Y/%m/%d %H:%M:%S%.6f");
            self.log
                .message(&format!("[Container] {now} {text}\n"))
                .await;
        }
    }

    fn minutes(&self, minutes: i64) -> Duration {
        self.settings.minute * u32::try_from(minutes.max(0)).unwrap_or(u32::MAX)
    }
}

/// Waits for `work`, unless StopBuild comes first or `deadline` passes.
async fn interruptible<T>(
    stop: &mut watch::Receiver<bool>,
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Interrupt> {
    let deadline_passed = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = work => Ok(result),
        _ = stop_requested(stop) => Err(Interrupt::Stopped),
        _ = deadline_passed => Err(Interrupt::TimedOut),
    }
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn phase_type(phase: CommandPhase) -> PhaseType {
    match phase {
        CommandPhase::Install => PhaseType::Install,
        CommandPhase::PreBuild => PhaseType::PreBuild,
        CommandPhase::Build => PhaseType::Build,
        CommandPhase::PostBuild => PhaseType::PostBuild,
    }
}

fn command_error(command: &str, status: i32) -> PhaseContext {
    PhaseContext::new(
        "COMMAND_EXECUTION_ERROR",
        format!("Error while executing command: {command}. Reason: exit status {status}"),
    )
}
