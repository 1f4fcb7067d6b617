use super::*;

const NOW: i64 = 1_000_000_000;
const ID: Uuid = Uuid::from_u128(7);

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
        id: ID,
        fleet: "linux".into(),
        queue: "linux".into(),
        priority: 0,
        scheduled_at_ms: NOW - 10_000,
        stage,
        stage_since_ms: NOW - 5_000,
        attempts,
        running_since_ms: None,
        refused: None,
        agent_lost_since_ms: None,
    }
}

fn launch(phase: LaunchPhase, age_ms: i64) -> Option<LaunchView> {
    Some(LaunchView {
        phase,
        started_at_ms: NOW - age_ms,
        detail: None,
    })
}

fn decide_at(
    job: LedgerJob,
    state: Option<JobState>,
    launch: Option<LaunchView>,
    listed_at_ms: i64,
) -> Vec<Action> {
    decide(
        &[Observed { job, state, launch }],
        &[],
        &policies(),
        NOW,
        listed_at_ms,
    )
}

fn one(job: LedgerJob, state: Option<JobState>, launch: Option<LaunchView>) -> Vec<Action> {
    decide_at(job, state, launch, NOW)
}

fn stop(reason: &str, unless_taken: bool) -> Action {
    Action::Stop {
        job: ID,
        reason: reason.into(),
        unless_taken,
    }
}

#[test]
fn a_canceled_job_stops_its_launch() {
    for state in [JobState::Canceling, JobState::Canceled] {
        let actions = one(
            job(Stage::Launched, 1),
            Some(state),
            launch(LaunchPhase::Running, 1000),
        );
        assert_eq!(actions, vec![stop(&format!("job {state}"), false)]);
    }
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
fn a_refused_launch_fails_the_job_at_once_without_a_relaunch() {
    let refused = LaunchPhase::Refused {
        reason: "image ghcr.io/acme/nope:1 cannot be pulled: ErrImagePull".into(),
    };
    let actions = one(
        job(Stage::Launched, 1),
        Some(JobState::Reserved),
        launch(refused, 100),
    );
    assert_eq!(
        actions,
        vec![
            Action::Delete { job: ID },
            Action::Finish {
                job: ID,
                reason: "image ghcr.io/acme/nope:1 cannot be pulled: ErrImagePull".into()
            }
        ]
    );
}

#[test]
fn a_job_the_backend_refused_to_launch_is_finished_never_launched_again() {
    let mut refused = job(Stage::Reserved, 0);
    refused.refused = Some("CB_IMAGE_OVERRIDE=evil:1 is not allowed".into());
    assert_eq!(
        one(refused, Some(JobState::Reserved), None),
        vec![Action::Finish {
            job: ID,
            reason: "CB_IMAGE_OVERRIDE=evil:1 is not allowed".into()
        }]
    );
}

#[test]
fn a_launch_that_died_mid_job_is_reported_lost_never_finished_by_the_scheduler() {
    let failed = LaunchPhase::Failed {
        reason: "killed by signal 9".into(),
    };
    let mut running = job(Stage::Launched, 1);
    running.running_since_ms = Some(NOW - 1000);
    let actions = one(running, Some(JobState::Running), launch(failed, 5000));
    assert_eq!(
        actions,
        vec![
            Action::Delete { job: ID },
            Action::AgentLost {
                job: ID,
                reason: "the launch failed: killed by signal 9 while the job was running".into()
            }
        ]
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Finish { .. })));
}

#[test]
fn deadlines_stop_launches_and_a_pending_one_only_if_still_untaken() {
    let actions = one(
        job(Stage::Launched, 1),
        Some(JobState::Reserved),
        launch(LaunchPhase::Running, 61_000),
    );
    assert!(
        matches!(&actions[..], [Action::Stop { reason, unless_taken: true, .. }] if reason.contains("pending_deadline"))
    );
    let mut running = job(Stage::Launched, 1);
    running.running_since_ms = Some(NOW - 601_000);
    let actions = one(
        running,
        Some(JobState::Running),
        launch(LaunchPhase::Running, 700_000),
    );
    assert!(
        matches!(&actions[..], [Action::Stop { reason, unless_taken: false, .. }] if reason.contains("running_deadline")),
        "{actions:?}"
    );
}

#[test]
fn stray_launches_are_adopted_while_their_job_lives_else_stopped_then_deleted() {
    let stray = |state, phase, fleet: &str| Stray {
        job: ID,
        fleet: fleet.into(),
        state,
        launch: LaunchView {
            phase,
            started_at_ms: NOW,
            detail: None,
        },
    };
    let policies = policies();
    let run = |s: Stray| decide(&[], &[s], &policies, NOW, NOW);
    assert_eq!(
        run(stray(Some(JobState::Passed), LaunchPhase::Running, "linux")),
        vec![stop("launch has no live job", false)]
    );
    assert_eq!(
        run(stray(None, LaunchPhase::Succeeded, "linux")),
        vec![Action::Delete { job: ID }]
    );
    assert_eq!(
        run(stray(
            Some(JobState::Running),
            LaunchPhase::Running,
            "linux"
        )),
        vec![Action::AdoptStray {
            job: ID,
            fleet: "linux".into()
        }]
    );
    assert!(run(stray(Some(JobState::Running), LaunchPhase::Running, "gone")).is_empty());
}

#[test]
fn a_job_of_a_removed_fleet_is_finished_not_launched() {
    let mut orphan = job(Stage::Reserved, 0);
    orphan.fleet = "gone".into();
    assert_eq!(
        one(orphan, Some(JobState::Reserved), None),
        vec![Action::Finish {
            job: ID,
            reason: "fleet gone is no longer configured".into()
        }]
    );
}

/// The race of issue 10: the ledger row was still `reserved` (the reserve call was being
/// retried), the listing ran before the launch was spawned, and the slower state read then
/// saw the job accepted by the agent of that new launch. Nothing proves the launch gone.
#[test]
fn a_launch_not_yet_confirmed_is_never_taken_for_gone() {
    for stage in [Stage::Reserved, Stage::Launching] {
        for state in [JobState::Accepted, JobState::Running] {
            let actions = one(job(stage, 1), Some(state), None);
            assert_eq!(
                actions,
                vec![Action::MarkRunning { job: ID }],
                "{stage:?} {state}"
            );
        }
    }
}

#[test]
fn a_launch_confirmed_after_the_listing_began_is_not_taken_for_gone() {
    let mut fresh = job(Stage::Launched, 1);
    fresh.stage_since_ms = NOW - 10;
    assert!(decide_at(fresh.clone(), Some(JobState::Reserved), None, NOW - 20).is_empty());
    // The same millisecond proves nothing either.
    assert!(decide_at(fresh.clone(), Some(JobState::Reserved), None, NOW - 10).is_empty());
    assert_eq!(
        decide_at(fresh, Some(JobState::Running), None, NOW - 20),
        vec![Action::MarkRunning { job: ID }]
    );
    let gone = one(job(Stage::Launched, 1), Some(JobState::Reserved), None);
    assert!(matches!(&gone[..], [Action::Relaunch { .. }]), "{gone:?}");
}

#[test]
fn a_confirmed_launch_missing_while_an_agent_holds_the_job_is_an_agent_lost() {
    let actions = one(job(Stage::Launched, 1), Some(JobState::Canceling), None);
    assert_eq!(
        actions,
        vec![Action::AgentLost {
            job: ID,
            reason: "the launch disappeared while the job was canceling".into()
        }]
    );
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
