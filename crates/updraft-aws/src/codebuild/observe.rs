//! A build as the scheduler and a relay see it: pending while queued or provisioning (with
//! the phase in words for the build), running, or ended with its status and failing phase
//! (`CodeBuild build ci:1f… FAILED in phase BUILD: COMMAND_EXECUTION_ERROR: …`), and the
//! relayed command's exit status from the variable the buildspec exports (or, failing that,
//! from the BUILD phase's "exit status N").

use super::request::EXIT_STATUS_VARIABLE;
use crate::platform::{LogLocation, Observed};
use aws_sdk_codebuild::types::{Build, BuildPhase};
use updraft_agent::CommandOutcome;
use updraft_backends::LaunchPhase;

/// Phases whose failure means the build could not even begin (an image that cannot be
/// pulled, a buildspec that does not parse): running it again fails the same way.
const REFUSING_PHASES: [&str; 2] = ["PROVISIONING", "DOWNLOAD_SOURCE"];

pub fn observe(build: &Build) -> Observed {
    let id = build.id().unwrap_or("(unknown)");
    let logs = build.logs().and_then(|logs| {
        Some(LogLocation {
            group: logs.group_name()?.to_string(),
            stream: logs.stream_name()?.to_string(),
        })
    });
    if !build.build_complete() {
        let phase = build.current_phase().unwrap_or("SUBMITTED");
        let (phase_now, detail) = match phase {
            "SUBMITTED" | "QUEUED" => (
                LaunchPhase::Pending,
                Some(format!("CodeBuild build {id} is queued")),
            ),
            "PROVISIONING" => (
                LaunchPhase::Pending,
                Some(format!("CodeBuild build {id} is provisioning")),
            ),
            _ => (LaunchPhase::Running, None),
        };
        return Observed {
            phase: phase_now,
            detail,
            outcome: None,
            epilogue: None,
            logs,
        };
    }
    let status = build
        .build_status()
        .map(|s| s.as_str())
        .unwrap_or("UNKNOWN");
    let exit = exit_status(build);
    let failing = build.phases().iter().find(|phase| {
        phase
            .phase_status()
            .is_some_and(|status| status.as_str() != "SUCCEEDED")
    });
    let reason = match failing {
        Some(phase) => format!(
            "CodeBuild build {id} {status} in phase {}{}",
            phase.phase_type().map(|t| t.as_str()).unwrap_or("?"),
            context(phase).map(|c| format!(": {c}")).unwrap_or_default()
        ),
        None => format!("CodeBuild build {id} {status}"),
    };
    let phase = match status {
        "SUCCEEDED" => LaunchPhase::Succeeded,
        _ if failing
            .and_then(|p| p.phase_type())
            .is_some_and(|t| REFUSING_PHASES.contains(&t.as_str())) =>
        {
            LaunchPhase::Refused {
                reason: reason.clone(),
            }
        }
        _ => LaunchPhase::Failed {
            reason: reason.clone(),
        },
    };
    let outcome = match (status, exit) {
        (_, Some(code)) => CommandOutcome::Exited(code),
        ("SUCCEEDED", None) => CommandOutcome::Exited(0),
        ("STOPPED" | "TIMED_OUT", None) => CommandOutcome::Signaled("SIGTERM".into()),
        (_, None) => CommandOutcome::FailedToStart(reason.clone()),
    };
    let epilogue =
        (exit.is_none() && status != "SUCCEEDED").then(|| format!("\nupdraft: {reason}\n"));
    Observed {
        phase,
        detail: None,
        outcome: Some(outcome),
        epilogue,
        logs,
    }
}

/// The phase's first context as `STATUS_CODE: message`.
fn context(phase: &BuildPhase) -> Option<String> {
    let context = phase.contexts().first()?;
    let code = context.status_code().unwrap_or_default();
    let message = context.message().unwrap_or_default().trim();
    match (code.is_empty(), message.is_empty()) {
        (true, true) => None,
        (false, true) => Some(code.to_string()),
        (true, false) => Some(message.to_string()),
        (false, false) => Some(format!("{code}: {message}")),
    }
}

/// The relayed command's exit status: the exported variable, else "exit status N" in the
/// BUILD phase's context.
fn exit_status(build: &Build) -> Option<i32> {
    let exported = build
        .exported_environment_variables()
        .iter()
        .find(|v| v.name() == Some(EXIT_STATUS_VARIABLE))
        .and_then(|v| v.value()?.trim().parse().ok());
    exported.or_else(|| {
        build
            .phases()
            .iter()
            .find(|p| p.phase_type().is_some_and(|t| t.as_str() == "BUILD"))
            .and_then(|p| p.contexts().first()?.message().map(str::to_string))
            .and_then(|message| {
                let rest = message.rsplit_once("exit status ")?.1;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_codebuild::types::{
        BuildPhaseType, ExportedEnvironmentVariable, LogsLocation, PhaseContext, StatusType,
    };

    fn phase(kind: &str, status: &str, code: &str, message: &str) -> BuildPhase {
        BuildPhase::builder()
            .phase_type(BuildPhaseType::from(kind))
            .phase_status(StatusType::from(status))
            .contexts(
                PhaseContext::builder()
                    .status_code(code)
                    .message(message)
                    .build(),
            )
            .build()
    }

    fn ended(
        status: &str,
        phases: Vec<BuildPhase>,
    ) -> aws_sdk_codebuild::types::builders::BuildBuilder {
        Build::builder()
            .id("ci:1")
            .build_complete(true)
            .build_status(StatusType::from(status))
            .set_phases(Some(phases))
            .logs(
                LogsLocation::builder()
                    .group_name("/aws/codebuild/ci")
                    .stream_name("1")
                    .build(),
            )
    }

    #[test]
    fn a_running_build_is_pending_until_it_has_provisioned() {
        let queued = Build::builder().id("ci:1").current_phase("QUEUED").build();
        let observed = observe(&queued);
        assert_eq!(observed.phase, LaunchPhase::Pending);
        assert_eq!(
            observed.detail.as_deref(),
            Some("CodeBuild build ci:1 is queued")
        );
        let building = Build::builder().id("ci:1").current_phase("BUILD").build();
        assert_eq!(observe(&building).phase, LaunchPhase::Running);
    }

    #[test]
    fn a_failed_build_names_its_status_and_failing_phase_and_keeps_the_exit_status() {
        let build = ended(
            "FAILED",
            vec![
                phase("INSTALL", "SUCCEEDED", "", ""),
                phase(
                    "BUILD",
                    "FAILED",
                    "COMMAND_EXECUTION_ERROR",
                    "Error while executing command: x. Reason: exit status 3",
                ),
            ],
        )
        .build();
        let observed = observe(&build);
        assert_eq!(
            observed.phase,
            LaunchPhase::Failed {
                reason: "CodeBuild build ci:1 FAILED in phase BUILD: COMMAND_EXECUTION_ERROR: Error while executing command: x. Reason: exit status 3".into()
            }
        );
        assert_eq!(observed.outcome, Some(CommandOutcome::Exited(3)));
        assert_eq!(observed.epilogue, None);
        assert_eq!(observed.logs.unwrap().stream, "1");

        let exported = ended("FAILED", vec![phase("BUILD", "FAILED", "", "")])
            .exported_environment_variables(
                ExportedEnvironmentVariable::builder()
                    .name(EXIT_STATUS_VARIABLE)
                    .value("42")
                    .build(),
            )
            .build();
        assert_eq!(observe(&exported).outcome, Some(CommandOutcome::Exited(42)));
    }

    #[test]
    fn a_build_that_could_not_begin_is_refused_and_explains_itself_in_the_log() {
        let build = ended(
            "FAILED",
            vec![phase(
                "PROVISIONING",
                "FAILED",
                "CLIENT_ERROR",
                "Failed to pull image x",
            )],
        )
        .build();
        let observed = observe(&build);
        assert!(matches!(observed.phase, LaunchPhase::Refused { .. }));
        assert!(matches!(
            observed.outcome,
            Some(CommandOutcome::FailedToStart(_))
        ));
        assert_eq!(
            observed.epilogue.as_deref(),
            Some("\nupdraft: CodeBuild build ci:1 FAILED in phase PROVISIONING: CLIENT_ERROR: Failed to pull image x\n")
        );
        let stopped = ended(
            "STOPPED",
            vec![phase(
                "BUILD",
                "STOPPED",
                "BUILD_STOPPED",
                "Build was stopped",
            )],
        )
        .build();
        assert_eq!(
            observe(&stopped).outcome,
            Some(CommandOutcome::Signaled("SIGTERM".into()))
        );
    }
}
