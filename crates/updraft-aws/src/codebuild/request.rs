//! The StartBuild request a launch sends, as recorded before it is sent (JSON, no secret):
//! the buildspec (an agent for one job, or the job's own command with its exit status
//! exported), the variables (plain values, and `PARAMETER_STORE` names for secrets), and the
//! per-job overrides a job asks for with the serverless agent's variables
//! (`CB_IMAGE_OVERRIDE`, `CB_COMPUTE_TYPE_OVERRIDE`, `CB_PRIVILEGED_MODE_OVERRIDE`), each
//! checked against what the fleet allows.

use crate::platform::LaunchLabels;
use crate::settings::CodeBuildFleetSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub const IMAGE_OVERRIDE: &str = "CB_IMAGE_OVERRIDE";
pub const COMPUTE_TYPE_OVERRIDE: &str = "CB_COMPUTE_TYPE_OVERRIDE";
pub const PRIVILEGED_MODE_OVERRIDE: &str = "CB_PRIVILEGED_MODE_OVERRIDE";
/// The relayed command reaches the build in this variable.
pub const COMMAND_VARIABLE: &str = "UPDRAFT_COMMAND";
/// The buildspec exports the relayed command's exit status in this variable.
pub const EXIT_STATUS_VARIABLE: &str = "UPDRAFT_EXIT_STATUS";
/// Every build carries its launch name here, so a build whose start answer was lost can be
/// found again.
pub const LAUNCH_VARIABLE: &str = "UPDRAFT_LAUNCH";

/// CodeBuild's build timeout bounds, in minutes.
const TIMEOUT_MINUTES: (u64, u64) = (5, 2160);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub value: String,
    /// `PARAMETER_STORE`: `value` is a parameter name the build resolves itself.
    #[serde(default)]
    pub from_parameter_store: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub project: String,
    pub buildspec: String,
    pub variables: Vec<Variable>,
    pub image: Option<String>,
    pub compute_type: Option<String>,
    pub privileged_mode: Option<bool>,
    pub timeout_minutes: Option<i32>,
}

/// The overrides a job asks for, once allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub image: Option<String>,
    pub compute_type: Option<String>,
    pub privileged_mode: Option<bool>,
}

/// Read and check a job's `CB_*` variables against the fleet. The error names the variable,
/// the value and what the fleet allows.
pub fn overrides(
    fleet_name: &str,
    fleet: &CodeBuildFleetSettings,
    env: &BTreeMap<String, String>,
) -> Result<Overrides, String> {
    let asked = |key: &str| env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let allowed = |key: &str, value: &str, list: &[String], default: &Option<String>| {
        if list.iter().any(|a| a == value) || default.as_deref() == Some(value) {
            Ok(value.to_string())
        } else if list.is_empty() {
            Err(format!(
                "{key}={value:?} is not allowed: fleet {fleet_name} allows no {key} (set allowed_{}s in [fleet.codebuild])",
                if key == IMAGE_OVERRIDE { "image" } else { "compute_type" }
            ))
        } else {
            Err(format!(
                "{key}={value:?} is not allowed for fleet {fleet_name}; allowed: {}",
                list.join(", ")
            ))
        }
    };
    let image = asked(IMAGE_OVERRIDE)
        .map(|v| allowed(IMAGE_OVERRIDE, v, &fleet.allowed_images, &fleet.image))
        .transpose()?
        .or_else(|| fleet.image.clone());
    let compute_type = asked(COMPUTE_TYPE_OVERRIDE)
        .map(|v| {
            allowed(
                COMPUTE_TYPE_OVERRIDE,
                v,
                &fleet.allowed_compute_types,
                &fleet.compute_type,
            )
        })
        .transpose()?
        .or_else(|| fleet.compute_type.clone());
    let privileged_mode = match asked(PRIVILEGED_MODE_OVERRIDE) {
        None => None,
        Some(raw) => match parse_bool(raw) {
            None => {
                return Err(format!(
                    "{PRIVILEGED_MODE_OVERRIDE}={raw:?} is not allowed: expected true or false"
                ))
            }
            Some(true) if !fleet.allow_privileged_mode => {
                return Err(format!(
                    "{PRIVILEGED_MODE_OVERRIDE}={raw:?} is not allowed: fleet {fleet_name} does not allow privileged mode (allow_privileged_mode = false)"
                ))
            }
            Some(value) => Some(value),
        },
    };
    Ok(Overrides {
        image,
        compute_type,
        privileged_mode,
    })
}

/// Go's `strconv.ParseBool`, which the serverless agent used for these variables.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The build timeout for a launch deadline, within CodeBuild's bounds.
pub fn timeout_minutes(deadline: Duration) -> i32 {
    let minutes = deadline.as_secs().div_ceil(60);
    minutes.clamp(TIMEOUT_MINUTES.0, TIMEOUT_MINUTES.1) as i32
}

/// A name CodeBuild accepts for a variable (it reserves `CODEBUILD_`).
fn acceptable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("CODEBUILD_")
}

fn plain(name: &str, value: &str) -> Variable {
    Variable {
        name: name.to_string(),
        value: value.to_string(),
        from_parameter_store: false,
    }
}

/// Variables for a build: `env` (names CodeBuild would refuse are left out), the labels,
/// and the secrets by parameter name.
pub fn variables(
    env: &BTreeMap<String, String>,
    labels: &LaunchLabels,
    secrets: &BTreeMap<String, String>,
) -> Vec<Variable> {
    let mut variables: Vec<Variable> = env
        .iter()
        .filter(|(name, _)| acceptable_name(name) && !secrets.contains_key(*name))
        .map(|(name, value)| plain(name, value))
        .collect();
    variables.push(plain(LAUNCH_VARIABLE, &labels.launch));
    variables.push(plain("UPDRAFT_FLEET", &labels.fleet));
    variables.extend(secrets.iter().map(|(name, parameter)| Variable {
        name: name.clone(),
        value: parameter.clone(),
        from_parameter_store: true,
    }));
    variables
}

/// A buildspec that runs `command` (program and arguments) after the fleet's install
/// commands.
pub fn agent_buildspec(fleet: &CodeBuildFleetSettings, command: &[String]) -> String {
    let line = command
        .iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ");
    buildspec(fleet, &[], &line)
}

/// A buildspec that runs the relayed command (from [`COMMAND_VARIABLE`]) with the fleet's
/// shell and exports its exit status, so the build's record carries the real one.
pub fn relay_buildspec(fleet: &CodeBuildFleetSettings) -> String {
    let shell = fleet
        .shell
        .iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!(
        "{shell} \"${COMMAND_VARIABLE}\"; export {EXIT_STATUS_VARIABLE}=$?; exit ${EXIT_STATUS_VARIABLE}"
    );
    buildspec(fleet, &[EXIT_STATUS_VARIABLE], &line)
}

fn buildspec(fleet: &CodeBuildFleetSettings, exported: &[&str], build_command: &str) -> String {
    // Every scalar is written as a JSON string, which YAML reads as a double-quoted scalar.
    let quoted = |text: &str| serde_json::Value::String(text.to_string()).to_string();
    let mut yaml = String::from("version: 0.2\n");
    if !exported.is_empty() {
        yaml.push_str("env:\n  exported-variables:\n");
        for name in exported {
            yaml.push_str(&format!("    - {}\n", quoted(name)));
        }
    }
    yaml.push_str("phases:\n");
    if !fleet.install_commands.is_empty() {
        yaml.push_str("  install:\n    commands:\n");
        for command in &fleet.install_commands {
            yaml.push_str(&format!("      - {}\n", quoted(command)));
        }
    }
    yaml.push_str(&format!(
        "  build:\n    commands:\n      - {}\n",
        quoted(build_command)
    ));
    yaml
}

/// `text` as one single-quoted shell word.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> CodeBuildFleetSettings {
        serde_json::from_value(serde_json::json!({
            "project": "ci",
            "allowed_images": ["aws/codebuild/standard:7.0"],
            "allowed_compute_types": ["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_LARGE"],
        }))
        .unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_overrides_are_taken_and_the_privileged_one_is_applied() {
        let mut fleet = fleet();
        fleet.allow_privileged_mode = true;
        let taken = overrides(
            "cb",
            &fleet,
            &env(&[
                (IMAGE_OVERRIDE, "aws/codebuild/standard:7.0"),
                (COMPUTE_TYPE_OVERRIDE, "BUILD_GENERAL1_LARGE"),
                (PRIVILEGED_MODE_OVERRIDE, "true"),
            ]),
        )
        .unwrap();
        assert_eq!(taken.image.as_deref(), Some("aws/codebuild/standard:7.0"));
        assert_eq!(taken.compute_type.as_deref(), Some("BUILD_GENERAL1_LARGE"));
        assert_eq!(
            taken.privileged_mode,
            Some(true),
            "the seed never applied it; we do"
        );
        assert_eq!(
            overrides("cb", &fleet, &env(&[])).unwrap(),
            Overrides::default()
        );
    }

    #[test]
    fn a_value_not_allowed_names_the_variable_the_value_and_what_is_allowed() {
        let error = overrides(
            "cb",
            &fleet(),
            &env(&[(COMPUTE_TYPE_OVERRIDE, "BUILD_GENERAL1_2XLARGE")]),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "CB_COMPUTE_TYPE_OVERRIDE=\"BUILD_GENERAL1_2XLARGE\" is not allowed for fleet cb; allowed: BUILD_GENERAL1_SMALL, BUILD_GENERAL1_LARGE"
        );
        let error =
            overrides("cb", &fleet(), &env(&[(PRIVILEGED_MODE_OVERRIDE, "TRUE")])).unwrap_err();
        assert!(error.contains("does not allow privileged mode"), "{error}");
        let error =
            overrides("cb", &fleet(), &env(&[(PRIVILEGED_MODE_OVERRIDE, "yes")])).unwrap_err();
        assert!(error.contains("expected true or false"), "{error}");
        let mut strict = fleet();
        strict.allowed_images.clear();
        let error = overrides("cb", &strict, &env(&[(IMAGE_OVERRIDE, "evil:latest")])).unwrap_err();
        assert!(error.contains("allows no CB_IMAGE_OVERRIDE"), "{error}");
    }

    #[test]
    fn buildspecs_quote_commands_and_export_the_exit_status() {
        let mut fleet = fleet();
        fleet.install_commands = vec!["echo 'hi' \"there\"".into()];
        let agent = agent_buildspec(
            &fleet,
            &["/opt/updraft".into(), "agent".into(), "it's".into()],
        );
        assert!(
            agent.contains(r#"- "/opt/updraft agent 'it'\\''s'""#),
            "{agent}"
        );
        assert!(agent.contains(r#"- "echo 'hi' \"there\"""#), "{agent}");
        let relay = relay_buildspec(&fleet);
        assert!(
            relay.contains("exported-variables:\n    - \"UPDRAFT_EXIT_STATUS\""),
            "{relay}"
        );
        assert!(
            relay
                .contains(r#"/bin/bash -e -c \"$UPDRAFT_COMMAND\"; export UPDRAFT_EXIT_STATUS=$?"#),
            "{relay}"
        );
    }

    #[test]
    fn variables_leave_out_names_codebuild_refuses_and_carry_secrets_by_name() {
        let labels = LaunchLabels {
            launch: "updraft-x".into(),
            fleet: "cb".into(),
            ..LaunchLabels::default()
        };
        let secrets = [(
            "BUILDKITE_AGENT_TOKEN".to_string(),
            "/updraft/launches/updraft-x/BUILDKITE_AGENT_TOKEN".to_string(),
        )]
        .into_iter()
        .collect();
        let vars = variables(
            &env(&[
                ("CODEBUILD_X", "1"),
                ("BAD-NAME", "1"),
                ("OK", "1"),
                ("BUILDKITE_AGENT_TOKEN", "leak"),
            ]),
            &labels,
            &secrets,
        );
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "OK",
                "UPDRAFT_LAUNCH",
                "UPDRAFT_FLEET",
                "BUILDKITE_AGENT_TOKEN"
            ]
        );
        assert!(vars.iter().all(|v| v.value != "leak"));
        assert!(vars.last().unwrap().from_parameter_store);
        assert_eq!(timeout_minutes(Duration::from_secs(61)), 5);
        assert_eq!(timeout_minutes(Duration::from_secs(3 * 3600 + 1)), 181);
    }
}
