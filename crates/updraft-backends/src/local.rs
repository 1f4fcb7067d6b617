//! The local backend, Updraft's embedded default: each launch is a child process on this
//! machine, in its own work directory and process group, capped per fleet.
//!
//! Launches must outlive the scheduler (it may be SIGKILLed and restarted while they run), so
//! everything needed to find them again lives on disk under `<state>/launches/<name>/` (see
//! [`record`]). The command runs under a tiny `sh` wrapper, the process-group leader, that
//! waits for it and writes its exit status to a file: the status is recorded even when no
//! scheduler is alive to wait, with no dependency on the `updraft` binary (so any program
//! embedding this crate can use it) and a few kilobytes per launch. The wrapper traps (does
//! not ignore) TERM/INT/HUP, so the command still gets the default dispositions while the
//! wrapper survives a group SIGTERM long enough to record how the command ended.
//!
//! Stop, deadlines and the forced kill after the grace are level-triggered: a sweeper checks
//! the in-memory table every [`SWEEP_INTERVAL`], and the stop request is persisted so a
//! restarted scheduler still escalates.
//!
//! [`LocalPool`] keeps warm-pool members the same way, under `<state>/pool/`.

mod pool;
mod process;
mod record;
mod settings;

pub use pool::LocalPool;
pub use process::LAUNCH_MARKER_VAR;
pub use settings::{LocalSettings, DEFAULT_STATE_DIR};

use crate::{
    Backend, BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchSpec, LaunchStatus,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use process::ProcessIdentity;
use record::{ExitStatus, LaunchDir, LaunchRecord, StopRecord};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

const BACKEND: &str = "local";

/// How often deadlines, forced kills and launches adopted after a restart are checked.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the launch's command and records how it ended. `$1` is the exit-status file, the rest
/// is the command. The status goes to a temporary name first so a reader never sees half.
const WRAPPER_SCRIPT: &str = r#"trap 'true' TERM INT HUP
status_file=$1
shift
"$@"
status=$?
printf '%s\n' "$status" > "$status_file.tmp" && mv "$status_file.tmp" "$status_file"
exit "$status"
"#;

/// Variables passed from the scheduler's environment into launches. Everything else is left
/// out so a job never sees the scheduler's own credentials; the fleet template's `env` adds
/// what a launch needs.
const INHERITED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SHELL",
    "UPDRAFT_LOG",
    "RUST_LOG",
];

/// How the local backend is set up.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where launch directories live (`<state_dir>/launches/<name>/`).
    pub state_dir: PathBuf,
    /// Most launches running at once for a fleet, by fleet name.
    pub max_running_per_fleet: BTreeMap<String, usize>,
    /// The cap for fleets not named in `max_running_per_fleet`.
    pub default_max_running: usize,
    /// Time between SIGTERM and SIGKILL when stopping a launch.
    pub stop_grace: Duration,
}

impl LocalOptions {
    /// Defaults: 64 running launches per fleet, 10 s stop grace.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        LocalOptions {
            state_dir: state_dir.into(),
            max_running_per_fleet: BTreeMap::new(),
            default_max_running: 64,
            stop_grace: Duration::from_secs(10),
        }
    }

    fn cap_for(&self, fleet: &str) -> usize {
        self.max_running_per_fleet
            .get(fleet)
            .copied()
            .unwrap_or(self.default_max_running)
    }
}

/// The local process backend. Cheap to clone; all clones share one table of launches.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    options: LocalOptions,
    launches_dir: PathBuf,
    table: Mutex<HashMap<LaunchName, Tracked>>,
}

/// What the backend knows of one launch directory.
struct Tracked {
    fleet: String,
    dir: LaunchDir,
    started_at: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
    /// The wrapper shell; `None` while it is being started.
    process: Option<ProcessIdentity>,
    /// Spawned by this backend instance, so a waiter task reaps it and records its end.
    own_child: bool,
    stop: Option<StopRecord>,
    killed: bool,
    /// Set once the launch has ended (or can never run).
    outcome: Option<LaunchPhase>,
}

impl Tracked {
    fn is_running(&self) -> bool {
        self.outcome.is_none()
    }

    fn phase(&self) -> LaunchPhase {
        match (&self.outcome, &self.process) {
            (Some(outcome), _) => outcome.clone(),
            (None, None) => LaunchPhase::Pending,
            (None, Some(_)) => LaunchPhase::Running,
        }
    }

    /// The outcome from the exit status the wrapper (or this backend) recorded.
    fn conclude(&mut self, status: Option<ExitStatus>) {
        let stopped = self
            .stop
            .as_ref()
            .map(|stop| format!("stopped ({}); ", stop.reason))
            .unwrap_or_default();
        self.outcome = Some(match status {
            Some(status) if status.succeeded() => LaunchPhase::Succeeded,
            Some(status) => LaunchPhase::Failed { reason: format!("{stopped}{}", status.describe()) },
            None => LaunchPhase::Failed {
                reason: format!("{stopped}its process ended without recording an exit status (killed from outside?)"),
            },
        });
    }
}

fn unavailable(detail: String) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND,
        detail,
    }
}

impl LocalBackend {
    /// Open (or create) the state directory, find the launches a previous scheduler process
    /// left (running or finished), and start the sweeper. Must run inside a tokio runtime.
    pub async fn open(options: LocalOptions) -> Result<Self, BackendError> {
        let launches_dir = options.state_dir.join("launches");
        fs::create_dir_all(&launches_dir).map_err(|error| {
            unavailable(format!(
                "cannot create the launches directory {}: {error}",
                launches_dir.display()
            ))
        })?;
        let table = recover_launches(&launches_dir)?;
        if !table.is_empty() {
            let running = table.values().filter(|t| t.is_running()).count();
            tracing::info!(launches = table.len(), running, dir = %launches_dir.display(), "found launches from before");
        }
        let inner = Arc::new(Inner {
            options,
            launches_dir,
            table: Mutex::new(table),
        });
        tokio::spawn(sweep_forever(Arc::downgrade(&inner)));
        Ok(LocalBackend { inner })
    }

    /// The directory of a launch (its `output.log` holds the command's output).
    pub fn launch_dir(&self, name: &LaunchName) -> PathBuf {
        self.inner.launches_dir.join(name.as_str())
    }

    /// The file holding a launch's stdout and stderr.
    pub fn output_path(&self, name: &LaunchName) -> PathBuf {
        self.launch_dir(name).join(record::OUTPUT_FILE)
    }

    /// How many launches of `fleet` are running now.
    pub fn running(&self, fleet: &str) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|t| t.fleet == fleet && t.is_running())
            .count()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<LaunchName, Tracked>> {
        // A panic while holding the lock leaves the table consistent (every update is a
        // single assignment), so a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claim the name and a slot under the fleet's cap, creating the launch directory.
    fn reserve(
        &self,
        spec: &LaunchSpec,
    ) -> Result<Option<(LaunchDir, LaunchRecord)>, BackendError> {
        let mut table = self.lock();
        if table.contains_key(&spec.name) {
            return Ok(None);
        }
        let cap = self.options.cap_for(&spec.fleet);
        let running = table
            .values()
            .filter(|t| t.fleet == spec.fleet && t.is_running())
            .count();
        if running >= cap {
            return Err(BackendError::AtCapacity {
                backend: BACKEND,
                detail: format!(
                    "fleet {} has {running}/{cap} local launches running",
                    spec.fleet
                ),
            });
        }
        let dir = LaunchDir::new(self.launches_dir.join(spec.name.as_str()));
        match fs::create_dir(&dir.path) {
            Ok(()) => {}
            // On disk but not in the table (a delete that could not remove it, or another
            // process sharing the state dir): the name is taken, and `list` must show it.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                match recover_launch(&spec.name, dir) {
                    Ok(tracked) => {
                        table.insert(spec.name.clone(), tracked);
                    }
                    Err(error) => {
                        tracing::warn!(launch = %spec.name, %error, "cannot read a launch directory")
                    }
                }
                return Ok(None);
            }
            Err(error) => {
                return Err(unavailable(format!(
                    "cannot create {}: {error}",
                    dir.path.display()
                )))
            }
        }
        let now = Utc::now();
        let deadline_at = chrono::Duration::from_std(spec.deadline)
            .ok()
            .and_then(|deadline| now.checked_add_signed(deadline))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let record = LaunchRecord {
            job_id: spec.job_id,
            fleet: spec.fleet.clone(),
            command: spec.command.clone(),
            started_at: now,
            deadline_at,
        };
        table.insert(
            spec.name.clone(),
            Tracked {
                fleet: spec.fleet.clone(),
                dir: dir.clone(),
                started_at: now,
                deadline_at,
                process: None,
                own_child: true,
                stop: None,
                killed: false,
                outcome: None,
            },
        );
        Ok(Some((dir, record)))
    }

    /// Ask a running launch to stop: persist why, then SIGTERM its group. The sweeper sends
    /// SIGKILL once the grace has passed.
    fn request_stop(tracked: &mut Tracked, name: &LaunchName, reason: String) {
        if !tracked.is_running() || tracked.stop.is_some() {
            return;
        }
        let stop = StopRecord {
            requested_at: Utc::now(),
            reason,
        };
        if let Err(error) = tracked.dir.write_stop(&stop) {
            tracing::warn!(launch = %name, %error, "cannot record the stop request; stopping anyway");
        }
        tracing::info!(launch = %name, fleet = %tracked.fleet, reason = %stop.reason, "stopping launch");
        tracked.stop = Some(stop);
        if let Some(process) = tracked.process {
            process.signal_group(Signal::SIGTERM);
        }
    }

    /// One pass over every running launch: deadlines, forced kills, adopted launches ending.
    fn sweep(&self) {
        let now = Utc::now();
        let grace =
            chrono::Duration::from_std(self.options.stop_grace).unwrap_or(chrono::Duration::MAX);
        let mut table = self.lock();
        for (name, tracked) in table.iter_mut().filter(|(_, t)| t.is_running()) {
            let Some(process) = tracked.process else {
                continue;
            };
            if !tracked.own_child && !process.is_alive() {
                let status = tracked.dir.read_exit_status().ok().flatten();
                let status = status.or(tracked
                    .killed
                    .then_some(ExitStatus(128 + Signal::SIGKILL as i32)));
                tracked.conclude(status);
                continue;
            }
            if now >= tracked.deadline_at && tracked.stop.is_none() {
                let limit = (tracked.deadline_at - tracked.started_at)
                    .to_std()
                    .unwrap_or_default();
                Inner::request_stop(tracked, name, format!("deadline of {limit:?} passed"));
            }
            if let Some(stop) = &tracked.stop {
                if !tracked.killed && now >= stop.requested_at + grace {
                    tracing::warn!(launch = %name, "launch still running after the stop grace; sending SIGKILL");
                    process.signal_group(Signal::SIGKILL);
                    tracked.killed = true;
                }
            }
        }
    }

    /// Record how a child this instance spawned ended (called by its waiter after reaping).
    fn child_exited(&self, name: &LaunchName, status: std::process::ExitStatus) {
        let mut table = self.lock();
        let Some(tracked) = table.get_mut(name) else {
            return;
        };
        let shell_status = status
            .code()
            .or(status.signal().map(|signal| 128 + signal))
            .map(ExitStatus);
        // The wrapper writes the command's status itself; if it was killed first, its own
        // end is the best account there is.
        if let Some(status) = shell_status {
            if let Err(error) = tracked.dir.record_exit_status_if_absent(status) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(launch = %name, %error, "cannot record the exit status");
                }
            }
        }
        let recorded = tracked
            .dir
            .read_exit_status()
            .ok()
            .flatten()
            .or(shell_status);
        tracked.conclude(recorded);
        tracing::debug!(launch = %name, fleet = %tracked.fleet, phase = ?tracked.phase(), "launch ended");
    }
}

async fn sweep_forever(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.sweep();
    }
}

/// Rebuild the table from the launch directories a previous process left.
fn recover_launches(launches_dir: &Path) -> Result<HashMap<LaunchName, Tracked>, BackendError> {
    let entries = fs::read_dir(launches_dir)
        .map_err(|error| unavailable(format!("cannot read {}: {error}", launches_dir.display())))?;
    let mut table = HashMap::new();
    for entry in entries.flatten() {
        let raw_name = entry.file_name();
        let Some(name) = raw_name.to_str().and_then(LaunchName::parse) else {
            tracing::warn!(entry = %entry.path().display(), "ignoring a file that is not a launch directory");
            continue;
        };
        match recover_launch(&name, LaunchDir::new(entry.path())) {
            Ok(tracked) => {
                table.insert(name, tracked);
            }
            Err(error) => {
                tracing::warn!(launch = %name, %error, "cannot read a launch directory; leaving it alone")
            }
        }
    }
    Ok(table)
}

fn recover_launch(name: &LaunchName, dir: LaunchDir) -> io::Result<Tracked> {
    let modified: DateTime<Utc> = fs::metadata(&dir.path)?
        .modified()
        .map(DateTime::from)
        .unwrap_or_else(|_| Utc::now());
    let Some(record) = dir.read_launch()? else {
        // Created, but the process starts only after launch.json is written: it never ran.
        return Ok(Tracked {
            fleet: String::new(),
            dir,
            started_at: modified,
            deadline_at: modified,
            process: None,
            own_child: false,
            stop: None,
            killed: false,
            outcome: Some(LaunchPhase::Failed {
                reason: "interrupted before its process started".to_string(),
            }),
        });
    };
    let process = match dir.read_process()? {
        Some(process) => Some(process),
        // The scheduler died between spawning and recording the pid: find the wrapper by
        // the marker its environment carries (it started first of the launch's processes).
        None => {
            let found = process::processes_marked(name.as_str())
                .into_iter()
                .min_by_key(|p| p.start_ticks);
            if let Some(process) = found {
                dir.write_process(&process)?;
            }
            found
        }
    };
    let mut tracked = Tracked {
        fleet: record.fleet,
        started_at: record.started_at,
        deadline_at: record.deadline_at,
        stop: dir.read_stop()?,
        process,
        own_child: false,
        killed: false,
        outcome: None,
        dir,
    };
    match process {
        Some(process) if process.is_alive() => {}
        Some(_) => {
            let status = tracked.dir.read_exit_status()?;
            tracked.conclude(status);
        }
        None => {
            tracked.outcome = Some(LaunchPhase::Failed {
                reason: "interrupted before its process started".to_string(),
            })
        }
    }
    Ok(tracked)
}

/// Start the wrapper shell for `spec` in `dir`; returns the child to wait on.
fn spawn(spec: &LaunchSpec, dir: &LaunchDir) -> io::Result<tokio::process::Child> {
    spawn_wrapped(
        dir,
        spec.name.as_str(),
        &spec.command,
        &spec.env,
        &spec.secrets,
    )
}

/// Start `program` (with its arguments) under the wrapper shell in `dir` (its own process group, work directory
/// and output file), with the inherited variables, `env`, `secrets` and `marker` as
/// [`LAUNCH_MARKER_VAR`]; returns the child to wait on.
fn spawn_wrapped(
    dir: &LaunchDir,
    marker: &str,
    program: &[String],
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, updraft_model::Secret>,
) -> io::Result<tokio::process::Child> {
    let work = dir.file(record::WORK_DIR);
    fs::create_dir(&work)?;
    let output = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.file(record::OUTPUT_FILE))?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER_SCRIPT)
        .arg(format!("updraft-launch:{marker}"))
        .arg(dir.file(record::EXIT_STATUS_FILE))
        .args(program)
        .current_dir(&work)
        .env_clear()
        .envs(
            INHERITED_VARS
                .iter()
                .filter_map(|var| Some((*var, std::env::var_os(var)?))),
        )
        .envs(env)
        .envs(secrets.iter().map(|(key, value)| (key, value.expose())))
        .env(LAUNCH_MARKER_VAR, marker)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0);
    command.spawn()
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        let invalid = |detail: &str| BackendError::Invalid {
            backend: BACKEND,
            name: spec.name.to_string(),
            detail: detail.to_string(),
        };
        if spec.command.is_empty() {
            return Err(invalid(
                "the command is empty (the fleet template must name a program)",
            ));
        }
        if spec.fleet.is_empty() {
            return Err(invalid("the fleet name is empty"));
        }
        let Some((dir, record)) = self.inner.reserve(spec)? else {
            return Ok(LaunchOutcome::AlreadyExists);
        };
        let mut child = match dir.write_launch(&record).and_then(|()| spawn(spec, &dir)) {
            Ok(child) => child,
            Err(error) => {
                self.inner.lock().remove(&spec.name);
                if let Err(cleanup) = fs::remove_dir_all(&dir.path) {
                    tracing::warn!(launch = %spec.name, error = %cleanup, "cannot remove the directory of a failed launch");
                }
                return Err(unavailable(format!(
                    "cannot start launch {}: {error}",
                    spec.name
                )));
            }
        };
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        // The child is not reaped until the waiter below runs, so its /proc entry is there.
        let process = pid.and_then(ProcessIdentity::of);
        if let Some(process) = &process {
            if let Err(error) = dir.write_process(process) {
                tracing::warn!(launch = %spec.name, %error, "cannot record the launch's pid; a restart will find it by its marker");
            }
        }
        if let Some(tracked) = self.inner.lock().get_mut(&spec.name) {
            tracked.process = process;
            // A stop that arrived while the process was starting could not signal it yet.
            if let (Some(process), Some(_)) = (process, &tracked.stop) {
                process.signal_group(Signal::SIGTERM);
            }
        }
        tracing::debug!(launch = %spec.name, fleet = %spec.fleet, pid = ?pid, "launch started");
        let inner = Arc::downgrade(&self.inner);
        let name = spec.name.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let Some(inner) = inner.upgrade() else { return };
            match status {
                Ok(status) => inner.child_exited(&name, status),
                Err(error) => tracing::warn!(launch = %name, %error, "waiting for a launch failed"),
            }
        });
        Ok(LaunchOutcome::Started)
    }

    async fn stop(&self, name: &LaunchName) -> Result<(), BackendError> {
        if let Some(tracked) = self.inner.lock().get_mut(name) {
            Inner::request_stop(tracked, name, "stop requested".to_string());
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> {
        let table = self.inner.lock();
        let mut statuses: Vec<LaunchStatus> = table
            .iter()
            .map(|(name, tracked)| LaunchStatus {
                name: name.clone(),
                fleet: tracked.fleet.clone(),
                phase: tracked.phase(),
                started_at: tracked.started_at,
                detail: None,
            })
            .collect();
        statuses.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(statuses)
    }

    async fn delete(&self, name: &LaunchName) -> Result<(), BackendError> {
        let removed = self.inner.lock().remove(name);
        let dir = removed
            .as_ref()
            .map(|t| t.dir.clone())
            .unwrap_or_else(|| LaunchDir::new(self.launch_dir(name)));
        if let Some(process) = removed.as_ref().and_then(|t| t.process) {
            process.signal_group(Signal::SIGKILL);
        }
        // Whatever outlived the wrapper, left its group or started before a pid was recorded
        // still carries the launch's marker; the group id alone is not proof once its leader
        // is gone.
        process::signal_each(&process::processes_marked(name.as_str()), Signal::SIGKILL);
        // A process killed a moment ago may still create a file while the tree is removed;
        // a second attempt, once it is gone, finishes the job.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match fs::remove_dir_all(&dir.path) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(_) if attempts < 3 => tokio::time::sleep(SWEEP_INTERVAL).await,
                Err(error) => {
                    return Err(unavailable(format!(
                        "cannot remove {}: {error}",
                        dir.path.display()
                    )))
                }
            }
        }
    }
}
