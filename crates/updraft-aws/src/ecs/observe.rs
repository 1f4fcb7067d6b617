//! A task as the scheduler and a relay see it: pending until it runs (its status in words),
//! running, or stopped with its stop code, stopped reason and the job container's exit code
//! (`ECS task 1f… stopped (SpotInterruption): Your Spot Task was interrupted.`); and where
//! its `awslogs` stream is.

use crate::platform::{LogLocation, Observed};
use aws_sdk_ecs::types::Task;
use updraft_agent::CommandOutcome;
use updraft_backends::LaunchPhase;

/// What a task's definition says of the job container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub container: String,
    /// `awslogs` group and stream prefix, when the container logs there.
    pub awslogs: Option<(String, Option<String>)>,
}

/// Stop reasons meaning the task can never start as defined (an image that cannot be
/// pulled): running it again fails the same way.
const REFUSALS: [&str; 2] = ["CannotPullContainerError", "CannotStartContainerError"];

pub fn observe(task: &Task, definition: &Definition) -> Observed {
    let arn = task.task_arn().unwrap_or_default();
    let id = arn.rsplit('/').next().unwrap_or(arn);
    let logs = definition
        .awslogs
        .as_ref()
        .map(|(group, prefix)| LogLocation {
            group: group.clone(),
            stream: match prefix {
                Some(prefix) => format!("{prefix}/{}/{id}", definition.container),
                None => id.to_string(),
            },
        });
    let status = task.last_status().unwrap_or("PROVISIONING");
    let phase = match status {
        "PROVISIONING" | "PENDING" | "ACTIVATING" => {
            return Observed {
                phase: LaunchPhase::Pending,
                detail: Some(format!("ECS task {id} is {}", status.to_ascii_lowercase())),
                outcome: None,
                epilogue: None,
                logs,
            }
        }
        "STOPPED" => None,
        _ => Some(LaunchPhase::Running),
    };
    if let Some(phase) = phase {
        return Observed {
            phase,
            detail: None,
            outcome: None,
            epilogue: None,
            logs,
        };
    }
    let container = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(definition.container.as_str()));
    let exit = container.and_then(|c| c.exit_code());
    let code = task.stop_code().map(|c| c.as_str()).unwrap_or("Stopped");
    let mut reason = format!("ECS task {id} stopped ({code})");
    if let Some(stopped) = task.stopped_reason().filter(|r| !r.is_empty()) {
        reason.push_str(&format!(": {stopped}"));
    }
    if let Some(exit) = exit {
        reason.push_str(&format!(
            "; container {} exited with status {exit}",
            definition.container
        ));
    }
    if let Some(why) = container.and_then(|c| c.reason()).filter(|r| !r.is_empty()) {
        if !reason.contains(why) {
            reason.push_str(&format!("; {why}"));
        }
    }
    let refused = code == "TaskFailedToStart" && REFUSALS.iter().any(|r| reason.contains(r));
    let phase = match exit {
        Some(0) if code == "EssentialContainerExited" => LaunchPhase::Succeeded,
        _ if refused => LaunchPhase::Refused {
            reason: reason.clone(),
        },
        _ => LaunchPhase::Failed {
            reason: reason.clone(),
        },
    };
    let outcome = match exit {
        Some(exit) => CommandOutcome::Exited(exit),
        None if code == "TaskFailedToStart" => CommandOutcome::FailedToStart(reason.clone()),
        None => CommandOutcome::Signaled("SIGTERM".into()),
    };
    Observed {
        phase,
        detail: None,
        outcome: Some(outcome),
        epilogue: exit.is_none().then(|| format!("\nupdraft: {reason}\n")),
        logs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Container, TaskStopCode};

    fn definition() -> Definition {
        Definition {
            container: "agent".into(),
            awslogs: Some(("/ecs/ci".into(), Some("job".into()))),
        }
    }

    fn stopped(code: &str, reason: &str, exit: Option<i32>) -> Task {
        Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:123456789012:task/ci/abc")
            .last_status("STOPPED")
            .stop_code(TaskStopCode::from(code))
            .stopped_reason(reason)
            .containers(
                Container::builder()
                    .name("agent")
                    .set_exit_code(exit)
                    .build(),
            )
            .build()
    }

    #[test]
    fn a_task_that_stops_with_a_reason_says_it_and_a_clean_exit_succeeds() {
        let observed = observe(
            &stopped("SpotInterruption", "Your Spot Task was interrupted.", None),
            &definition(),
        );
        assert_eq!(
            observed.phase,
            LaunchPhase::Failed {
                reason: "ECS task abc stopped (SpotInterruption): Your Spot Task was interrupted."
                    .into()
            }
        );
        assert_eq!(observed.logs.unwrap().stream, "job/agent/abc");
        let clean = observe(
            &stopped(
                "EssentialContainerExited",
                "Essential container in task exited",
                Some(0),
            ),
            &definition(),
        );
        assert_eq!(clean.phase, LaunchPhase::Succeeded);
        assert_eq!(clean.outcome, Some(CommandOutcome::Exited(0)));
        let failing = observe(
            &stopped(
                "EssentialContainerExited",
                "Essential container in task exited",
                Some(3),
            ),
            &definition(),
        );
        assert_eq!(failing.outcome, Some(CommandOutcome::Exited(3)));
        assert!(
            matches!(failing.phase, LaunchPhase::Failed { reason } if reason.ends_with("container agent exited with status 3"))
        );
    }

    #[test]
    fn a_task_whose_image_cannot_be_pulled_is_refused() {
        let observed = observe(
            &stopped(
                "TaskFailedToStart",
                "CannotPullContainerError: pull image manifest has been retried 5 time(s)",
                None,
            ),
            &definition(),
        );
        assert!(matches!(observed.phase, LaunchPhase::Refused { .. }));
        assert!(matches!(
            observed.outcome,
            Some(CommandOutcome::FailedToStart(_))
        ));
        let pending = Task::builder()
            .task_arn("arn:x/ci/abc")
            .last_status("PENDING")
            .build();
        assert_eq!(
            observe(&pending, &definition()).detail.as_deref(),
            Some("ECS task abc is pending")
        );
    }
}
