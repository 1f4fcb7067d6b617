//! The reconciler's decision: a pure function from what the ledger holds, what Buildkite says
//! of each job and what the backends list, to the actions that converge them — one launch per
//! job, no more, no fewer. The scheduler runs it at start-up and every few seconds; any event
//! may have been lost in between, so it trusts nothing but these three observations, and it
//! takes nothing for proof that is not:
//!
//! - a launch is *gone* only when the ledger says it was confirmed **before** the listing
//!   began and the listing lacks it (a launch confirmed later may simply not be listed yet);
//! - a job Buildkite shows an agent holding (accepted, running, or later) is never finished
//!   by the scheduler: if its launch died, Buildkite fails it after its lost-agent timeout,
//!   and the job is reported as waiting for that (`AgentLost`);
//! - `Finish` and deadline stops are irreversible, so the executor re-reads the job's state
//!   right before them (`reconciler.rs`).

use crate::ledger::{LedgerJob, Stage};
use std::collections::HashMap;
use std::time::Duration;
use updraft_backends::LaunchPhase;
use updraft_model::JobState;
use uuid::Uuid;

/// What a backend reported for a job's launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchView {
    pub phase: LaunchPhase,
    pub started_at_ms: i64,
    /// Why it is not running yet, if the backend says.
    pub detail: Option<String>,
}

/// One open ledger job with its Buildkite state and its launch, if any.
#[derive(Debug, Clone)]
pub struct Observed {
    pub job: LedgerJob,
    pub state: Option<JobState>,
    pub launch: Option<LaunchView>,
}

/// A launch the backends list for a job the ledger has no open record of.
#[derive(Debug, Clone)]
pub struct Stray {
    pub job: Uuid,
    /// The fleet the backend says the launch belongs to.
    pub fleet: String,
    pub state: Option<JobState>,
    pub launch: LaunchView,
}

/// A fleet's deadlines and retry budget, as the decision needs them.
#[derive(Debug, Clone)]
pub struct FleetPolicy {
    pub pending_deadline: Duration,
    pub running_deadline: Duration,
    pub relaunch_budget: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Launch a reserved job that has no launch (crash between reserve and launch, a failed
    /// launch call, a lost event).
    Launch { job: Uuid },
    /// Record a launch the backend has but the ledger does not (crash right after launch).
    Adopt { job: Uuid },
    /// Take a listed launch of a live job the ledger has no row for (a lost ledger, a new
    /// leader) into the ledger, so it is reconciled and never launched twice.
    AdoptStray { job: Uuid, fleet: String },
    /// Note that the job's agent has taken it (starts the running deadline).
    MarkRunning { job: Uuid },
    /// Ask the launch to stop. With `unless_taken`, only if a fresh read shows no agent has
    /// the job yet (a pending deadline must never kill a job that just started).
    Stop {
        job: Uuid,
        reason: String,
        unless_taken: bool,
    },
    /// Remove a finished or orphaned launch.
    Delete { job: Uuid },
    /// Delete the dead launch and launch again: its agent never took the job.
    Relaunch { job: Uuid, reason: String },
    /// Fail the job in Buildkite with this reason (shown in the build), then close it — only
    /// if a fresh read shows no agent has taken it.
    Finish { job: Uuid, reason: String },
    /// The launch is gone while Buildkite shows an agent holding the job: say so (once) and
    /// wait for Buildkite to fail the job when it marks the agent lost.
    AgentLost { job: Uuid, reason: String },
    /// Close the job in the ledger and free its slot.
    Close { job: Uuid, outcome: String },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Launch { .. } => "launch",
            Action::Adopt { .. } => "adopt",
            Action::AdoptStray { .. } => "adopt_stray",
            Action::MarkRunning { .. } => "mark_running",
            Action::Stop { .. } => "stop",
            Action::Delete { .. } => "delete",
            Action::Relaunch { .. } => "relaunch",
            Action::Finish { .. } => "finish",
            Action::AgentLost { .. } => "agent_lost",
            Action::Close { .. } => "close",
        }
    }

    pub fn job(&self) -> Uuid {
        match self {
            Action::Launch { job }
            | Action::Adopt { job }
            | Action::AdoptStray { job, .. }
            | Action::MarkRunning { job }
            | Action::Stop { job, .. }
            | Action::Delete { job }
            | Action::Relaunch { job, .. }
            | Action::Finish { job, .. }
            | Action::AgentLost { job, .. }
            | Action::Close { job, .. } => *job,
        }
    }

    /// Whether the action changes anything outside the ledger's bookkeeping (counted as a
    /// correction in metrics).
    pub fn is_correction(&self) -> bool {
        !matches!(
            self,
            Action::MarkRunning { .. } | Action::Close { .. } | Action::AgentLost { .. }
        )
    }
}

fn describe(phase: &LaunchPhase) -> String {
    match phase {
        LaunchPhase::Pending => "pending".into(),
        LaunchPhase::Running => "running".into(),
        LaunchPhase::Succeeded => "exited".into(),
        LaunchPhase::Failed { reason } => format!("failed: {reason}"),
        LaunchPhase::Refused { reason } => format!("was refused: {reason}"),
    }
}

/// Not yet taken by an agent: a launch may still (re)start it, and the scheduler may fail it.
pub fn awaiting_agent(state: JobState) -> bool {
    matches!(state, JobState::Scheduled | JobState::Reserved)
}

/// The actions for one pass. `policies` is keyed by fleet name; `listed_at_ms` is when the
/// listing of the backends' launches began (before the ledger and Buildkite were read). A job
/// of a fleet no longer configured is still reconciled with default deadlines, but never
/// launched again: where it would be, it is finished with that reason instead. Actions come in
/// the order of `observed`, then `strays`.
pub fn decide(
    observed: &[Observed],
    strays: &[Stray],
    policies: &HashMap<String, FleetPolicy>,
    now_ms: i64,
    listed_at_ms: i64,
) -> Vec<Action> {
    let fallback = FleetPolicy {
        pending_deadline: Duration::from_secs(300),
        running_deadline: Duration::from_secs(3 * 3600),
        relaunch_budget: 0,
    };
    let mut actions = Vec::new();
    for item in observed {
        match policies.get(&item.job.fleet) {
            Some(policy) => decide_job(item, policy, now_ms, listed_at_ms, &mut actions),
            None => {
                let mut own = Vec::new();
                decide_job(item, &fallback, now_ms, listed_at_ms, &mut own);
                let reason = format!("fleet {} is no longer configured", item.job.fleet);
                actions.extend(own.into_iter().map(|action| match action {
                    Action::Launch { job } | Action::Relaunch { job, .. } => Action::Finish {
                        job,
                        reason: reason.clone(),
                    },
                    other => other,
                }));
            }
        }
    }
    for stray in strays {
        let alive = stray.state.is_some_and(|s| !s.is_terminal());
        if alive && policies.contains_key(&stray.fleet) {
            actions.push(Action::AdoptStray {
                job: stray.job,
                fleet: stray.fleet.clone(),
            });
        } else if stray.launch.phase.is_finished() {
            actions.push(Action::Delete { job: stray.job });
        } else if !alive {
            actions.push(Action::Stop {
                job: stray.job,
                reason: "launch has no live job".into(),
                unless_taken: false,
            });
        }
    }
    actions
}

fn decide_job(
    item: &Observed,
    policy: &FleetPolicy,
    now_ms: i64,
    listed_at_ms: i64,
    actions: &mut Vec<Action>,
) {
    let job = item.job.id;
    // Gone only on proof: confirmed (ledger `launched`) before the listing began, yet not
    // listed. A launch confirmed in the same millisecond the listing began proves nothing.
    let vanished = item.launch.is_none()
        && item.job.stage == Stage::Launched
        && item.job.stage_since_ms < listed_at_ms;
    let launch_running = item.launch.as_ref().is_some_and(|l| !l.phase.is_finished());
    let age = |since_ms: i64| Duration::from_millis((now_ms - since_ms).max(0) as u64);
    let Some(state) = item.state else {
        // Buildkite no longer reports the job: nothing can run it any more.
        if launch_running {
            actions.push(Action::Stop {
                job,
                reason: "Buildkite no longer reports the job".into(),
                unless_taken: false,
            });
        } else {
            if item.launch.is_some() {
                actions.push(Action::Delete { job });
            }
            actions.push(Action::Close {
                job,
                outcome: "unknown to Buildkite".into(),
            });
        }
        return;
    };

    if state.is_terminal() {
        if launch_running {
            if state.is_stopping() {
                actions.push(Action::Stop {
                    job,
                    reason: format!("job {state}"),
                    unless_taken: false,
                });
            }
        } else {
            if item.launch.is_some() {
                actions.push(Action::Delete { job });
            }
            actions.push(Action::Close {
                job,
                outcome: state.to_string(),
            });
        }
        return;
    }

    if awaiting_agent(state) {
        decide_awaiting(item, policy, vanished, &age, actions);
        return;
    }

    if state.is_active() {
        if item.job.running_since_ms.is_none() && !state.is_stopping() {
            actions.push(Action::MarkRunning { job });
        }
        match &item.launch {
            None if vanished => actions.push(Action::AgentLost {
                job,
                reason: format!("the launch disappeared while the job was {state}"),
            }),
            None => {}
            Some(launch) if launch.phase.is_finished() => {
                actions.push(Action::Delete { job });
                actions.push(Action::AgentLost {
                    job,
                    reason: format!(
                        "the launch {} while the job was {state}",
                        describe(&launch.phase)
                    ),
                });
            }
            Some(_) if state.is_stopping() => actions.push(Action::Stop {
                job,
                reason: format!("job {state}"),
                unless_taken: false,
            }),
            Some(_) => {
                if item.job.stage != Stage::Launched {
                    actions.push(Action::Adopt { job });
                }
                let running_for = item.job.running_since_ms.map(age).unwrap_or_default();
                if running_for > policy.running_deadline {
                    actions.push(Action::Stop {
                        job,
                        reason: format!(
                            "the job ran past running_deadline {:?}",
                            policy.running_deadline
                        ),
                        unless_taken: false,
                    });
                }
            }
        }
    }
}

/// A job no agent has taken yet.
fn decide_awaiting(
    item: &Observed,
    policy: &FleetPolicy,
    vanished: bool,
    age: &dyn Fn(i64) -> Duration,
    actions: &mut Vec<Action>,
) {
    let job = item.job.id;
    if let Some(reason) = &item.job.refused {
        match &item.launch {
            Some(launch) if !launch.phase.is_finished() => actions.push(Action::Stop {
                job,
                reason: format!("the launch was refused: {reason}"),
                unless_taken: true,
            }),
            launch => {
                if launch.is_some() {
                    actions.push(Action::Delete { job });
                }
                actions.push(Action::Finish {
                    job,
                    reason: reason.clone(),
                });
            }
        }
        return;
    }
    match (&item.launch, item.job.stage) {
        (None, Stage::Reserved | Stage::Launching) => actions.push(Action::Launch { job }),
        (None, _) if vanished => relaunch_or_finish(
            item,
            policy,
            "the launch disappeared before its agent took the job",
            actions,
        ),
        (None, _) => {}
        (Some(launch), _) => match &launch.phase {
            LaunchPhase::Refused { reason } => {
                actions.push(Action::Delete { job });
                actions.push(Action::Finish {
                    job,
                    reason: reason.clone(),
                });
            }
            phase if phase.is_finished() => relaunch_or_finish(
                item,
                policy,
                &format!(
                    "the launch {} before its agent took the job",
                    describe(phase)
                ),
                actions,
            ),
            _ => {
                if item.job.stage != Stage::Launched {
                    actions.push(Action::Adopt { job });
                }
                if age(launch.started_at_ms) > policy.pending_deadline {
                    let why = launch
                        .detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    actions.push(Action::Stop {
                        job,
                        reason: format!(
                            "its agent did not take the job within pending_deadline {:?}{why}",
                            policy.pending_deadline
                        ),
                        unless_taken: true,
                    });
                }
            }
        },
    }
}

fn relaunch_or_finish(item: &Observed, policy: &FleetPolicy, why: &str, actions: &mut Vec<Action>) {
    let job = item.job.id;
    if item.job.attempts <= policy.relaunch_budget {
        actions.push(Action::Relaunch {
            job,
            reason: why.to_string(),
        });
    } else {
        if item.launch.is_some() {
            actions.push(Action::Delete { job });
        }
        actions.push(Action::Finish {
            job,
            reason: format!(
                "{why}; relaunch budget of {} used up",
                policy.relaunch_budget
            ),
        });
    }
}

#[cfg(test)]
mod tests;
