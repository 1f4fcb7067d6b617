//! The buildspec (YAML, version 0.2) as far as the stand-in runs it: `env` (variables,
//! parameter-store, secrets-manager, exported-variables, shell) and the four command phases
//! with `commands`, `finally` and `on-failure`. Other sections (artifacts, reports, cache,
//! run-as, runtime-versions) are accepted and ignored.

use serde_yaml_ng::Value;

/// The four phases whose commands come from the buildspec, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandPhase {
    Install,
    PreBuild,
    Build,
    PostBuild,
}

impl CommandPhase {
    pub const ALL: [CommandPhase; 4] = [
        CommandPhase::Install,
        CommandPhase::PreBuild,
        CommandPhase::Build,
        CommandPhase::PostBuild,
    ];

    fn key(self) -> &'static str {
        match self {
            CommandPhase::Install => "install",
            CommandPhase::PreBuild => "pre_build",
            CommandPhase::Build => "build",
            CommandPhase::PostBuild => "post_build",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// The default: the build goes on as CodeBuild's phase transitions say (see the runner).
    #[default]
    Abort,
    /// The next phase runs as if this one had succeeded; the build still fails.
    Continue,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseSpec {
    pub commands: Vec<String>,
    /// Commands run after `commands`, whether they failed or not.
    pub finally: Vec<String>,
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buildspec {
    /// `env.shell`: `bash` or `/bin/sh` (the default).
    pub shell: Option<String>,
    pub variables: Vec<(String, String)>,
    /// Variable name → SSM parameter name.
    pub parameter_store: Vec<(String, String)>,
    /// Variable name → `secret-id:json-key:version-stage:version-id`.
    pub secrets_manager: Vec<(String, String)>,
    pub exported_variables: Vec<String>,
    pub phases: Vec<(CommandPhase, PhaseSpec)>,
}

impl Buildspec {
    pub fn phase(&self, phase: CommandPhase) -> Option<&PhaseSpec> {
        self.phases
            .iter()
            .find(|(each, _)| *each == phase)
            .map(|(_, spec)| spec)
    }
}

/// Parses an inline buildspec; the error is the message of CodeBuild's `YAML_FILE_ERROR`.
pub fn parse(text: &str) -> Result<Buildspec, String> {
    let root: Value =
        serde_yaml_ng::from_str(text).map_err(|error| format!("invalid YAML: {error}"))?;
    if !root.is_mapping() {
        return Err("the buildspec is not a YAML mapping".into());
    }
    match root.get("version").map(scalar) {
        Some(Some(version)) if version == "0.2" => {}
        Some(Some(version)) => return Err(format!("invalid buildspec version: {version}")),
        _ => return Err("the buildspec has no version (0.2 expected)".into()),
    }
    let mut buildspec = Buildspec::default();
    if let Some(env) = root.get("env") {
        buildspec.shell = env.get("shell").and_then(scalar);
        buildspec.variables = string_map(env, "variables")?;
        buildspec.parameter_store = string_map(env, "parameter-store")?;
        buildspec.secrets_manager = string_map(env, "secrets-manager")?;
        buildspec.exported_variables = string_list(env, "exported-variables")?;
        if let Some(bad) = buildspec
            .exported_variables
            .iter()
            .find(|name| !is_variable_name(name))
        {
            return Err(format!(
                "env/exported-variables: invalid variable name {bad:?}"
            ));
        }
    }
    if let Some(phases) = root.get("phases") {
        for phase in CommandPhase::ALL {
            if let Some(spec) = phases.get(phase.key()) {
                buildspec.phases.push((phase, phase_spec(phase, spec)?));
            }
        }
    }
    Ok(buildspec)
}

fn phase_spec(phase: CommandPhase, spec: &Value) -> Result<PhaseSpec, String> {
    let on_failure = match spec.get("on-failure").and_then(scalar).as_deref() {
        None | Some("ABORT") => OnFailure::Abort,
        Some("CONTINUE") => OnFailure::Continue,
        Some(other) => {
            return Err(format!(
                "phases/{}/on-failure: unknown value {other} (ABORT or CONTINUE)",
                phase.key()
            ))
        }
    };
    Ok(PhaseSpec {
        commands: string_list(spec, "commands")
            .map_err(|e| format!("phases/{}/{e}", phase.key()))?,
        finally: string_list(spec, "finally").map_err(|e| format!("phases/{}/{e}", phase.key()))?,
        on_failure,
    })
}

fn string_map(parent: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    let Some(value) = parent.get(key) else {
        return Ok(Vec::new());
    };
    let Some(mapping) = value.as_mapping() else {
        return Err(format!("env/{key} must be a mapping"));
    };
    mapping
        .iter()
        .map(|(name, value)| {
            let name = scalar(name).ok_or_else(|| format!("env/{key}: a name is not a string"))?;
            let value = scalar(value)
                .ok_or_else(|| format!("env/{key}/{name}: the value is not a scalar"))?;
            Ok((name, value))
        })
        .collect()
}

fn string_list(parent: &Value, key: &str) -> Result<Vec<String>, String> {
    let Some(value) = parent.get(key) else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_sequence() else {
        return Err(format!("{key} must be a list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            scalar(item).ok_or_else(|| {
                format!("{key}[{index}]: expected a string, found subkeys or a list instead")
            })
        })
        .collect()
}

/// A YAML scalar as text (numbers and booleans as written, e.g. `0.2`, `true`).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_and_phases() {
        let spec = parse(
            r#"
version: 0.2
env:
  shell: bash
  variables: { A: "1", N: 2 }
  parameter-store: { TOKEN: /ci/token }
  secrets-manager: { KEY: "tok:password" }
  exported-variables: [EXIT_STATUS]
phases:
  build:
    on-failure: CONTINUE
    commands:
      - echo hi
      - |
        echo multi
        echo line
    finally:
      - echo done
  post_build:
    commands: [true]
"#,
        )
        .unwrap();
        assert_eq!(spec.shell.as_deref(), Some("bash"));
        assert_eq!(
            spec.variables,
            [("A".into(), "1".into()), ("N".into(), "2".into())]
        );
        assert_eq!(spec.parameter_store, [("TOKEN".into(), "/ci/token".into())]);
        assert_eq!(spec.exported_variables, ["EXIT_STATUS"]);
        let build = spec.phase(CommandPhase::Build).unwrap();
        assert_eq!(build.commands.len(), 2);
        assert_eq!(build.finally, ["echo done"]);
        assert_eq!(build.on_failure, OnFailure::Continue);
        assert_eq!(
            spec.phase(CommandPhase::PostBuild).unwrap().commands,
            ["true"]
        );
        assert!(spec.phase(CommandPhase::Install).is_none());
    }

    #[test]
    fn rejects_what_codebuild_rejects() {
        assert!(parse("version: 0.1\nphases: {}")
            .unwrap_err()
            .contains("version"));
        assert!(parse("phases: {}").unwrap_err().contains("no version"));
        let nested = "version: 0.2\nphases:\n  build:\n    commands:\n      - a: b\n";
        assert!(parse(nested).unwrap_err().contains("commands[0]"));
    }
}
