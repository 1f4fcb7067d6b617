//! The shell script one phase runs. CodeBuild (buildspec 0.2) runs a build's commands in one
//! shell session: a `cd` or an `export` carries over to later commands and phases. The
//! stand-in runs one shell per phase and carries the session over through a state directory:
//! on exit (also on `exit N` inside a command) the shell saves its exported variables, its
//! working directory, the values of the buildspec's exported-variables, and how far it got.

use std::path::Path;

/// Where the phase's shell left off: `done` commands succeeded, then it exited with `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptProgress {
    pub done: usize,
    pub status: i32,
}

impl ScriptProgress {
    /// Reads what the shell's exit trap wrote; `None` if it never ran (the shell was killed).
    pub fn read(state_dir: &Path) -> Option<ScriptProgress> {
        let text = std::fs::read_to_string(state_dir.join("status")).ok()?;
        let mut fields = text.split_whitespace();
        Some(ScriptProgress {
            done: fields.next()?.parse().ok()?,
            status: fields.next()?.parse().ok()?,
        })
    }
}

/// What a phase script needs to know.
pub struct ScriptSpec<'a> {
    pub commands: &'a [String],
    pub state_dir: &'a Path,
    pub exported_variables: &'a [String],
    /// `CODEBUILD_BUILD_SUCCEEDING` for this phase.
    pub succeeding: bool,
    /// Whether to print CodeBuild's `[Container] … Running command …` line before each command.
    pub container_lines: bool,
}

pub fn phase_script(spec: &ScriptSpec) -> String {
    let state = quote(&spec.state_dir.to_string_lossy());
    let mut script = String::new();
    script.push_str("exec 2>&1\n");
    script.push_str(&format!("__cb_state={state}\n"));
    script.push_str("if [ -f \"$__cb_state/env.sh\" ]; then . \"$__cb_state/env.sh\"; fi\n");
    script.push_str(
        "if [ -f \"$__cb_state/cwd\" ]; then cd \"$(cat \"$__cb_state/cwd\")\"; \
         else cd \"$CODEBUILD_SRC_DIR\"; fi\n",
    );
    script.push_str(&format!(
        "export CODEBUILD_BUILD_SUCCEEDING={}\n",
        u8::from(spec.succeeding)
    ));
    script.push_str("__cb_done=0\n__cb_finish() {\n  __cb_status=$?\n");
    for name in spec.exported_variables {
        script.push_str(&format!(
            "  if [ -n \"${{{name}+x}}\" ]; then export {name}; printf '%s' \"${name}\" > \"$__cb_state/exported/{name}\"; \
             else rm -f \"$__cb_state/exported/{name}\"; fi\n"
        ));
    }
    script.push_str("  export -p > \"$__cb_state/env.sh\"\n");
    script.push_str("  pwd > \"$__cb_state/cwd\"\n");
    script.push_str(
        "  printf '%s %s\\n' \"$__cb_done\" \"$__cb_status\" > \"$__cb_state/status\"\n}\n",
    );
    script.push_str("trap __cb_finish EXIT\n");
    for (index, command) in spec.commands.iter().enumerate() {
        if spec.container_lines {
            script.push_str(&format!(
                "printf '[Container] %s Running command %s\\n' \"$(date -u '+%Y/%m/%d %H:%M:%S.%6N')\" {}\n",
                quote(command)
            ));
        }
        script.push_str(command);
        script.push('\n');
        script.push_str(&format!(
            "__cb_rc=$?; [ \"$__cb_rc\" -eq 0 ] || exit \"$__cb_rc\"; __cb_done={}\n",
            index + 1
        ));
    }
    script.push_str("exit 0\n");
    script
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(shell: &str, state: &Path, commands: &[&str], exported: &[&str]) -> String {
        let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
        let exported: Vec<String> = exported.iter().map(|c| c.to_string()).collect();
        let script = phase_script(&ScriptSpec {
            commands: &commands,
            state_dir: state,
            exported_variables: &exported,
            succeeding: true,
            container_lines: false,
        });
        let output = Command::new(shell)
            .args(["-c", &script])
            .env("CODEBUILD_SRC_DIR", state)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn the_session_carries_over_and_failures_say_where() {
        for shell in ["sh", "bash"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("exported")).unwrap();
            let out = run(
                shell,
                dir.path(),
                &["export A='it''s'", "mkdir sub && cd sub", "echo err >&2"],
                &[],
            );
            assert_eq!(out, "err\n", "{shell}: stderr joins stdout");
            assert_eq!(
                ScriptProgress::read(dir.path()),
                Some(ScriptProgress { done: 3, status: 0 })
            );
            let out = run(
                shell,
                dir.path(),
                &["echo \"$A\" \"${PWD##*/}\"", "S=7; exit 3", "echo never"],
                &["S"],
            );
            assert_eq!(out, "its sub\n", "{shell}");
            assert_eq!(
                ScriptProgress::read(dir.path()),
                Some(ScriptProgress { done: 1, status: 3 })
            );
            let exported = std::fs::read_to_string(dir.path().join("exported/S")).unwrap();
            assert_eq!(exported, "7");
        }
    }
}
