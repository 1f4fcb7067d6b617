//! Warm-pool members on this machine: each member is a directory under `<state>/pool/` with
//! one process group per agent, run by the same wrapper shell as a launch, so the members
//! outlive the scheduler and a restarted one finds them again.
//!
//! ```text
//! <state>/pool/<member>/member.json      fleet, agents, command, launch time (written first)
//!                       drain.json       when it was asked to drain (written before the signal)
//!                       agent-<n>/       process.json, exit-status, output.log, work/
//! ```
//!
//! Draining sends each live agent's process group one SIGTERM (the agent finishes its job,
//! then disconnects; the wrapper shell traps it). `drain.json` is written before the signals
//! and a drain is never repeated once it exists, even by a restarted scheduler: a second
//! SIGTERM would cancel the running job. A member is removed only when none of its agents is
//! alive; whatever still carries an agent's marker then (a job's leftover process) is killed.

use super::process::{processes_marked, signal_each, ProcessIdentity};
use super::record::{read_json, write_json, ExitStatus, LaunchDir};
use super::spawn_wrapped;
use crate::pool::{MemberName, MemberPhase, MemberSpec, MemberStatus, PoolBackend};
use crate::BackendError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const BACKEND: &str = "local";
const POOL_DIR: &str = "pool";
const MEMBER_FILE: &str = "member.json";
const DRAIN_FILE: &str = "drain.json";

/// What a member runs, written before any of its agents starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberRecord {
    fleet: String,
    agents: u32,
    command: Vec<String>,
    launched_at: DateTime<Utc>,
}

/// When the member was asked to drain; its presence means the signals were sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DrainRecord {
    requested_at: DateTime<Utc>,
}

struct Agent {
    dir: LaunchDir,
    /// The wrapper shell leading the agent's process group; `None` if it never started.
    process: Option<ProcessIdentity>,
}

impl Agent {
    fn is_alive(&self) -> bool {
        self.process.is_some_and(|p| p.is_alive())
    }

    fn describe_end(&self) -> String {
        match (self.process, self.dir.read_exit_status().ok().flatten()) {
            (None, _) => "never started".to_string(),
            (Some(_), Some(status)) => status.describe(),
            (Some(_), None) => "ended without recording an exit status".to_string(),
        }
    }
}

struct Member {
    record: MemberRecord,
    dir: PathBuf,
    agents: Vec<Agent>,
    draining: bool,
}

impl Member {
    fn status(&self, name: &MemberName) -> MemberStatus {
        let phase = if self.agents.iter().any(Agent::is_alive) {
            if self.draining {
                MemberPhase::Draining
            } else {
                MemberPhase::Running
            }
        } else {
            let ends: Vec<String> = self
                .agents
                .iter()
                .enumerate()
                .map(|(i, agent)| format!("agent {}: {}", i + 1, agent.describe_end()))
                .collect();
            MemberPhase::Exited {
                detail: ends.join("; "),
            }
        };
        MemberStatus {
            name: name.clone(),
            fleet: self.record.fleet.clone(),
            phase,
            launched_at: self.record.launched_at,
            agents: self.record.agents,
            notice: None,
            capacity: "process",
        }
    }
}

/// Pool members as local processes. Cheap to clone; clones share one table.
#[derive(Clone)]
pub struct LocalPool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    members: Mutex<BTreeMap<MemberName, Member>>,
}

fn unavailable(detail: String) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND,
        detail,
    }
}

impl LocalPool {
    /// Open (or create) `<state_dir>/pool` and find the members a previous scheduler left.
    /// Must run inside a tokio runtime.
    pub fn open(state_dir: &Path) -> Result<Self, BackendError> {
        let dir = state_dir.join(POOL_DIR);
        fs::create_dir_all(&dir).map_err(|error| {
            unavailable(format!(
                "cannot create the pool directory {}: {error}",
                dir.display()
            ))
        })?;
        let members = recover_members(&dir)?;
        if !members.is_empty() {
            tracing::info!(members = members.len(), dir = %dir.display(), "found pool members from before");
        }
        Ok(LocalPool {
            inner: Arc::new(Inner {
                dir,
                members: Mutex::new(members),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<MemberName, Member>> {
        // Every update is a single assignment, so a poisoned table is still consistent.
        self.inner
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Create one member's directory and start its agents.
    fn start_member(&self, spec: &MemberSpec) -> Result<(), BackendError> {
        let name = MemberName::new(format!(
            "{}-{}",
            spec.fleet,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let dir = self.inner.dir.join(name.as_str());
        fs::create_dir(&dir)
            .map_err(|error| unavailable(format!("cannot create {}: {error}", dir.display())))?;
        let record = MemberRecord {
            fleet: spec.fleet.clone(),
            agents: spec.agents,
            command: spec.command.clone(),
            launched_at: Utc::now(),
        };
        write_json(&dir.join(MEMBER_FILE), &record)
            .map_err(|error| unavailable(format!("cannot record pool member {name}: {error}")))?;
        let mut member = Member {
            record,
            dir: dir.clone(),
            agents: Vec::new(),
            draining: false,
        };
        let mut failure = None;
        for n in 1..=spec.agents {
            let agent_dir = LaunchDir::new(dir.join(format!("agent-{n}")));
            let started = fs::create_dir(&agent_dir.path)
                .and_then(|()| start_agent(&agent_dir, &name.agent_name(n), spec));
            match started {
                Ok(process) => member.agents.push(Agent {
                    dir: agent_dir,
                    process,
                }),
                Err(error) => {
                    member.agents.push(Agent {
                        dir: agent_dir,
                        process: None,
                    });
                    failure = Some(unavailable(format!(
                        "cannot start agent {} of pool member {name}: {error}",
                        name.agent_name(n)
                    )));
                }
            }
        }
        tracing::info!(member = %name, fleet = %spec.fleet, agents = spec.agents, "pool member started");
        self.lock().insert(name, member);
        failure.map_or(Ok(()), Err)
    }
}

/// Start one agent under the wrapper shell; a waiter reaps it and records how it ended.
fn start_agent(
    dir: &LaunchDir,
    agent_name: &str,
    spec: &MemberSpec,
) -> io::Result<Option<ProcessIdentity>> {
    let mut env = spec.env.clone();
    env.insert("BUILDKITE_AGENT_NAME".into(), agent_name.to_string());
    let mut child = spawn_wrapped(dir, agent_name, &spec.command, &env, &spec.secrets)?;
    // The child is not reaped before the waiter below runs, so its /proc entry is there.
    let process = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(ProcessIdentity::of);
    if let Some(process) = &process {
        if let Err(error) = dir.write_process(process) {
            tracing::warn!(agent = agent_name, %error, "cannot record the agent's pid; a restart finds it by its marker");
        }
    }
    let waiter_dir = dir.clone();
    let agent = agent_name.to_string();
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => {
                let code = status
                    .code()
                    .or(status.signal().map(|signal| 128 + signal))
                    .map(ExitStatus);
                if let Some(code) = code {
                    if let Err(error) = waiter_dir.record_exit_status_if_absent(code) {
                        if error.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(agent, %error, "cannot record the agent's exit status");
                        }
                    }
                }
                tracing::debug!(agent, ?code, "pool agent exited");
            }
            Err(error) => tracing::warn!(agent, %error, "waiting for a pool agent failed"),
        }
    });
    Ok(process)
}

/// Rebuild the table from the member directories a previous process left.
fn recover_members(dir: &Path) -> Result<BTreeMap<MemberName, Member>, BackendError> {
    let entries = fs::read_dir(dir)
        .map_err(|error| unavailable(format!("cannot read {}: {error}", dir.display())))?;
    let mut members = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(raw) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let name = MemberName::new(raw);
        match recover_member(&name, &entry.path()) {
            Ok(Some(member)) => {
                members.insert(name, member);
            }
            Ok(None) => {
                // Created, but stopped before its record was written: none of its agents
                // ever started.
                if let Err(error) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(member = %name, %error, "cannot remove an unstarted pool member's directory");
                }
            }
            Err(error) => {
                tracing::warn!(member = %name, %error, "cannot read a pool member's directory; leaving it alone")
            }
        }
    }
    Ok(members)
}

fn recover_member(name: &MemberName, dir: &Path) -> io::Result<Option<Member>> {
    let Some(record) = read_json::<MemberRecord>(&dir.join(MEMBER_FILE))? else {
        return Ok(None);
    };
    let draining = read_json::<DrainRecord>(&dir.join(DRAIN_FILE))?.is_some();
    let mut agents = Vec::new();
    for n in 1..=record.agents {
        let agent_dir = LaunchDir::new(dir.join(format!("agent-{n}")));
        let process = match agent_dir.read_process()? {
            Some(process) => Some(process),
            // Died between spawning and recording the pid: the wrapper is the first process
            // carrying the agent's marker.
            None => processes_marked(&name.agent_name(n))
                .into_iter()
                .min_by_key(|p| p.start_ticks),
        };
        agents.push(Agent {
            dir: agent_dir,
            process,
        });
    }
    Ok(Some(Member {
        record,
        dir: dir.to_path_buf(),
        agents,
        draining,
    }))
}

#[async_trait]
impl PoolBackend for LocalPool {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    fn typical_boot_time(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn members(&self, fleet: &str) -> Result<Vec<MemberStatus>, BackendError> {
        Ok(self
            .lock()
            .iter()
            .filter(|(_, m)| m.record.fleet == fleet)
            .map(|(name, member)| member.status(name))
            .collect())
    }

    async fn add(&self, spec: &MemberSpec, count: u32) -> Result<(), BackendError> {
        if spec.command.is_empty() || spec.agents == 0 {
            return Err(BackendError::Invalid {
                backend: BACKEND,
                name: spec.fleet.clone(),
                detail: "a pool member needs a command and at least one agent".into(),
            });
        }
        for _ in 0..count {
            self.start_member(spec)?;
        }
        Ok(())
    }

    async fn drain(&self, member: &MemberName) -> Result<(), BackendError> {
        let mut members = self.lock();
        let Some(entry) = members.get_mut(member) else {
            return Ok(());
        };
        if entry.draining {
            return Ok(());
        }
        let record = DrainRecord {
            requested_at: Utc::now(),
        };
        write_json(&entry.dir.join(DRAIN_FILE), &record).map_err(|error| {
            unavailable(format!(
                "cannot record the drain of pool member {member}: {error}"
            ))
        })?;
        entry.draining = true;
        for agent in &entry.agents {
            if let Some(process) = agent.process {
                process.signal_group(Signal::SIGTERM);
            }
        }
        tracing::info!(%member, "pool member draining: each agent stops after its current job");
        Ok(())
    }

    async fn remove(&self, member: &MemberName) -> Result<(), BackendError> {
        let removed = {
            let mut members = self.lock();
            let Some(entry) = members.get(member) else {
                return Ok(());
            };
            if entry.agents.iter().any(Agent::is_alive) {
                return Err(BackendError::Invalid {
                    backend: BACKEND,
                    name: member.to_string(),
                    detail: "its agents are still running; drain it and wait for them to exit"
                        .into(),
                });
            }
            members.remove(member).expect("found above")
        };
        for n in 1..=removed.record.agents {
            signal_each(&processes_marked(&member.agent_name(n)), Signal::SIGKILL);
        }
        match fs::remove_dir_all(&removed.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(unavailable(format!(
                    "cannot remove {}: {error}",
                    removed.dir.display()
                )))
            }
        }
        tracing::info!(%member, "pool member removed");
        Ok(())
    }
}
