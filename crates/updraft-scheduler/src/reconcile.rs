//! The reconciler's decision: a pure function from what the ledger holds, what Buildkite
//! says of each job and what the backends list, to the actions that converge them — one
//! launch per job, no more, no fewer. The scheduler runs it at start-up and every few
//! seconds; any event may have been lost in between, so it trusts nothing but these three
//! observations.

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
    /// Note that the job's agent has taken it (starts the running deadline).
    MarkRunning { job: Uuid },
    /// Ask the launch to stop.
    Stop { job: Uuid, reason: String },
    /// Remove a finished or orphaned launch.
    Delete { job: Uuid },
    /// Delete the dead launch and launch again: its agent never took the job.
    Relaunch { job: Uuid, reason: String },
    /// Finish the job in Buildkite with this reason (shown in the build), then close it.
    Finish { job: Uuid, reason: String },
    /// Close the job in the ledger and free its slot.
    Close { job: Uuid, outcome: String },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Launch { .. } => "launch",
            Action::Adopt { .. } => "adopt",
            Action::MarkRunning { .. } => "mark_running",
            Action::Stop { .. } => "stop",
            Action::Delete { .. } => "delete",
            Action::Relaunch { .. } => "relaunch",
            Action::Finish { .. } => "finish",
            Action::Close { .. } => "close",
        }
    }

    /// Whether the action changes anything outside the ledger's bookkeeping (counted as a
    /// correction in metrics).
    pub fn is_correction(&self) -> bool {
        !matches!(self, Action::MarkRunning { .. } | Action::Close { .. })
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

/// Not yet taken by an agent: a launch may still (re)start it.
fn awaiting_agent(state: JobState) -> bool {
    matches!(state, JobState::Scheduled | JobState::Reserved)
}

/// A launch confirmed less than this before the backends were listed may be missing from
/// the listing only because the two crossed; its absence proves nothing yet.
pub const LISTING_MARGIN_MS: i64 = 1000;

/// The actions for one pass. `policies` is keyed by fleet name; `listed_at_ms` is when the
/// backends' launches were listed (before the ledger and Buildkite were read). A job of a
/// fleet no longer configured is still reconciled with default deadlines, but never launched
/// again: where it would be, it is finished with that reason instead.
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
        match (&stray.launch.phase, alive) {
            (phase, _) if phase.is_finished() => actions.push(Action::Delete { job: stray.job }),
            (_, false) => actions.push(Action::Stop {
                job: stray.job,
                reason: "launch has no live job".into(),
            }),
            _ => {}
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
    // No launch listed, and the ledger's last change is old enough that the launch would
    // have been listed if it existed.
    let vanished =
        item.launch.is_none() && item.job.stage_since_ms <= listed_at_ms - LISTING_MARGIN_MS;
    let launch_running = item.launch.as_ref().is_some_and(|l| !l.phase.is_finished());
    let age = |since_ms: i64| Duration::from_millis((now_ms - since_ms).max(0) as u64);
    let Some(state) = item.state else {
        // Buildkite no longer reports the job: nothing can run it any more.
        if launch_running {
            actions.push(Action::Stop {
                job,
                reason: "Buildkite no longer reports the job".into(),
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

    if state.is_stopping() {
        if launch_running {
            actions.push(Action::Stop {
                job,
                reason: format!("job {state}"),
            });
        } else if item.launch.is_some() || vanished {
            if item.launch.is_some() {
                actions.push(Action::Delete { job });
            }
            actions.push(Action::Finish {
                job,
                reason: format!("the launch ended while the job was {state}"),
            });
        }
        return;
    }

    if awaiting_agent(state) {
        match (&item.launch, item.job.stage) {
            (None, Stage::Reserved | Stage::Launching) => actions.push(Action::Launch { job }),
            (None, _) if vanished => relaunch_or_finish(
                item,
                policy,
                "the launch disappeared before its agent took the job",
                actions,
            ),
            (None, _) => {}
            (Some(launch), _) if launch.phase.is_finished() => relaunch_or_finish(
                item,
                policy,
                &format!(
                    "the launch {} before its agent took the job",
                    describe(&launch.phase)
                ),
                actions,
            ),
            (Some(launch), stage) => {
                if stage != Stage::Launched {
                    actions.push(Action::Adopt { job });
                }
                if age(launch.started_at_ms) > policy.pending_deadline {
                    actions.push(Action::Stop {
                        job,
                        reason: format!(
                            "its agent did not take the job within pending_deadline {:?}",
                            policy.pending_deadline
                        ),
                    });
                }
            }
        }
        return;
    }

    if state.is_active() {
        if item.job.running_since_ms.is_none() {
            actions.push(Action::MarkRunning { job });
        }
        match &item.launch {
            None if vanished => actions.push(Action::Finish {
                job,
                reason: format!("the launch disappeared while the job was {state}"),
            }),
            None => {}
            Some(launch) if launch.phase.is_finished() => {
                actions.push(Action::Delete { job });
                actions.push(Action::Finish {
                    job,
                    reason: format!(
                        "the launch {} while the job was {state}",
                        describe(&launch.phase)
                    ),
                });
            }
            Some(_) => {
                if item.job.stage != Stage::Launched {
                    actions.push(Action::Adopt { job });
                }
                let running_for = item.job.running_since_ms.map(age).unwrap_or_default();
                if running_for > policy.running_deadline {
                    let reason = format!(
                        "the job ran past running_deadline {:?}",
                        policy.running_deadline
                    );
                    actions.push(Action::Stop {
                        job,
                        reason: reason.clone(),
                    });
                    actions.push(Action::Finish { job, reason });
                }
            }
        }
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
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn policies() -> HashMap<String, FleetPolicy> {
        HashMap::from([(
            "linux".to_string(),
            FleetPolicy {
                pending_deadline: Duration::from_secs(60),
                running_deadline: Duration::from_secs(600),
                relaunch_budget: 1,
            },
        )])
    }

    fn job(stage: Stage, attempts: u32) -> LedgerJob {
        LedgerJob {
            id: Uuid::from_u128(7),
            fleet: "linux".into(),
            queue: "linux".into(),
            priority: 0,
            scheduled_at_ms: NOW - 10_000,
            stage,
            stage_since_ms: NOW - 5_000,
            attempts,
            running_since_ms: None,
        }
    }

    fn launch(phase: LaunchPhase, age_ms: i64) -> Option<LaunchView> {
        Some(LaunchView {
            phase,
            started_at_ms: NOW - age_ms,
        })
    }

    fn one(job: LedgerJob, state: Option<JobState>, launch: Option<LaunchView>) -> Vec<Action> {
        decide(
            &[Observed { job, state, launch }],
            &[],
            &policies(),
            NOW,
            NOW,
        )
    }

    const ID: Uuid = Uuid::from_u128(7);

    #[test]
    fn a_canceled_job_stops_its_launch() {
        let actions = one(
            job(Stage::Launched, 1),
            Some(JobState::Canceling),
            launch(LaunchPhase::Running, 1000),
        );
        assert_eq!(
            actions,
            vec![Action::Stop {
                job: ID,
                reason: "job canceling".into()
            }]
        );
        let actions = one(
            job(Stage::Launched, 1),
            Some(JobState::Canceled),
            launch(LaunchPhase::Running, 1000),
        );
        assert_eq!(
            actions,
            vec![Action::Stop {
                job: ID,
                reason: "job canceled".into()
            }]
        );
    }

    #[test]
    fn a_finished_job_with_an_exited_launch_is_deleted_and_closed() {
        let actions = one(
            job(Stage::Launched, 1),
            Some(JobState::Passed),
            launch(LaunchPhase::Succeeded, 1000),
        );
        assert_eq!(
            actions,
            vec![
                Action::Delete { job: ID },
                Action::Close {
                    job: ID,
                    outcome: "passed".into()
                }
            ]
        );
    }

    #[test]
    fn a_passed_job_whose_agent_is_still_exiting_is_left_alone() {
        assert!(one(
            job(Stage::Launched, 1),
            Some(JobState::Passed),
            launch(LaunchPhase::Running, 1000)
        )
        .is_empty());
    }

    #[test]
    fn a_reserved_job_without_a_launch_is_launched() {
        assert_eq!(
            one(job(Stage::Reserved, 0), Some(JobState::Reserved), None),
            vec![Action::Launch { job: ID }]
        );
        assert_eq!(
            one(job(Stage::Launching, 1), Some(JobState::Reserved), None),
            vec![Action::Launch { job: ID }]
        );
    }

    #[test]
    fn a_launch_found_after_a_crash_is_adopted_not_repeated() {
        let actions = one(
            job(Stage::Launching, 1),
            Some(JobState::Reserved),
            launch(LaunchPhase::Running, 100),
        );
        assert_eq!(actions, vec![Action::Adopt { job: ID }]);
        let actions = one(
            job(Stage::Launching, 1),
            Some(JobState::Running),
            launch(LaunchPhase::Running, 100),
        );
        assert_eq!(
            actions,
            vec![Action::MarkRunning { job: ID }, Action::Adopt { job: ID }]
        );
    }

    #[test]
    fn a_launch_that_died_before_acquiring_is_relaunched_within_budget_then_finished() {
        let failed = LaunchPhase::Failed {
            reason: "exit 1".into(),
        };
        let actions = one(
            job(Stage::Launched, 1),
            Some(JobState::Reserved),
            launch(failed.clone(), 100),
        );
        assert!(matches!(&actions[..], [Action::Relaunch { .. }]));
        let actions = one(
            job(Stage::Launched, 2),
            Some(JobState::Reserved),
            launch(failed, 100),
        );
        assert_eq!(actions[0], Action::Delete { job: ID });
        match &actions[1] {
            Action::Finish { reason, .. } => {
                assert!(reason.contains("relaunch budget of 1 used up"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_launch_that_died_mid_job_finishes_the_job_with_the_reason() {
        let failed = LaunchPhase::Failed {
            reason: "killed by signal 9".into(),
        };
        let mut running = job(Stage::Launched, 1);
        running.running_since_ms = Some(NOW - 1000);
        let actions = one(running, Some(JobState::Running), launch(failed, 5000));
        assert_eq!(actions[0], Action::Delete { job: ID });
        assert_eq!(
            actions[1],
            Action::Finish {
                job: ID,
                reason: "the launch failed: killed by signal 9 while the job was running".into()
            }
        );
    }

    #[test]
    fn deadlines_stop_launches() {
        let actions = one(
            job(Stage::Launched, 1),
            Some(JobState::Reserved),
            launch(LaunchPhase::Running, 61_000),
        );
        assert!(
            matches!(&actions[..], [Action::Stop { reason, .. }] if reason.contains("pending_deadline"))
        );
        let mut running = job(Stage::Launched, 1);
        running.running_since_ms = Some(NOW - 601_000);
        let actions = one(
            running,
            Some(JobState::Running),
            launch(LaunchPhase::Running, 700_000),
        );
        assert!(
            matches!(&actions[..], [Action::Stop { .. }, Action::Finish { reason, .. }] if reason.contains("running_deadline"))
        );
    }

    #[test]
    fn stray_launches_without_a_live_job_are_stopped_then_deleted() {
        let stray = |state, phase| Stray {
            job: ID,
            state,
            launch: LaunchView {
                phase,
                started_at_ms: NOW,
            },
        };
        let policies = policies();
        assert_eq!(
            decide(
                &[],
                &[stray(Some(JobState::Passed), LaunchPhase::Running)],
                &policies,
                NOW,
                NOW
            ),
            vec![Action::Stop {
                job: ID,
                reason: "launch has no live job".into()
            }]
        );
        assert_eq!(
            decide(
                &[],
                &[stray(None, LaunchPhase::Succeeded)],
                &policies,
                NOW,
                NOW
            ),
            vec![Action::Delete { job: ID }]
        );
        assert!(decide(
            &[],
            &[stray(Some(JobState::Running), LaunchPhase::Running)],
            &policies,
            NOW,
            NOW
        )
        .is_empty());
    }

    #[test]
    fn a_job_of_a_removed_fleet_is_finished_not_launched() {
        let mut orphan = job(Stage::Reserved, 0);
        orphan.fleet = "gone".into();
        assert_eq!(
            decide(
                &[Observed {
                    job: orphan,
                    state: Some(JobState::Reserved),
                    launch: None
                }],
                &[],
                &policies(),
                NOW,
                NOW
            ),
            vec![Action::Finish {
                job: ID,
                reason: "fleet gone is no longer configured".into()
            }]
        );
    }

    #[test]
    fn a_launch_confirmed_after_the_listing_is_not_taken_for_lost() {
        let mut fresh = job(Stage::Launched, 1);
        fresh.stage_since_ms = NOW - 10;
        let listed_just_before = decide(
            &[Observed {
                job: fresh.clone(),
                state: Some(JobState::Reserved),
                launch: None,
            }],
            &[],
            &policies(),
            NOW,
            NOW - 20,
        );
        assert!(listed_just_before.is_empty(), "{listed_just_before:?}");
        let running = decide(
            &[Observed {
                job: fresh,
                state: Some(JobState::Running),
                launch: None,
            }],
            &[],
            &policies(),
            NOW,
            NOW - 20,
        );
        assert_eq!(running, vec![Action::MarkRunning { job: ID }]);
        let old = job(Stage::Launched, 1);
        let gone = decide(
            &[Observed {
                job: old,
                state: Some(JobState::Reserved),
                launch: None,
            }],
            &[],
            &policies(),
            NOW,
            NOW,
        );
        assert!(matches!(&gone[..], [Action::Relaunch { .. }]), "{gone:?}");
    }

    #[test]
    fn a_job_buildkite_forgot_is_closed() {
        assert_eq!(
            one(job(Stage::Reserved, 0), None, None),
            vec![Action::Close {
                job: ID,
                outcome: "unknown to Buildkite".into()
            }]
        );
    }
}
