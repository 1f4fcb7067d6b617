//! Agent-level hooks from the hooks directory (`environment`, `pre-checkout`, `checkout`,
//! `post-checkout`, `pre-command`, `command`, `post-command`, `pre-exit`). As in
//! buildkite-agent they are sourced: each runs as `. hook` in the shell, and the variables it
//! exports (or unsets) carry into every later phase.

use crate::driver::CommandOutcome;
use crate::process::{run_step, OutputWriter, StepLimit};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The hooks directory, if one was configured.
#[derive(Debug, Clone)]
pub struct Hooks<'a> {
    pub dir: Option<&'a Path>,
    /// The shell program hooks are sourced in (the first word of the agent's shell).
    pub shell: &'a str,
    /// Where a hook's resulting environment is written; outside the checkout, so a hook
    /// that runs before `git clone` does not leave a file in its way.
    pub env_file: &'a Path,
}

impl Hooks<'_> {
    /// The hook file called `name`, if the directory has one.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir?.join(name);
        path.is_file().then_some(path)
    }

    /// Source the hook `name` (if present) with `env` in `dir`, announcing it in the log.
    /// On success `env` becomes the environment the hook left behind. `None` when there is
    /// no such hook.
    pub async fn run(
        &self,
        name: &str,
        env: &mut BTreeMap<String, String>,
        dir: &Path,
        output: &mut OutputWriter,
        limit: StepLimit<'_>,
    ) -> Option<CommandOutcome> {
        let hook = self.find(name)?;
        output.line(&format!("~~~ Running the {name} hook"));
        let env_file = self.env_file;
        let mut step = Command::new(self.shell);
        step.arg("-c")
            .arg(r#"set -e; . "$1"; env -0 > "$2""#)
            .arg(format!("{name}-hook"))
            .arg(&hook)
            .arg(env_file)
            .current_dir(dir)
            .env_clear()
            .envs(&*env);
        let outcome = run_step(step, output, limit).await;
        let captured = tokio::fs::read(env_file).await;
        if let Err(error) = tokio::fs::remove_file(env_file).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, file = %env_file.display(), "could not remove a hook's environment file");
            }
        }
        if outcome != CommandOutcome::Exited(0) {
            return Some(outcome);
        }
        match captured {
            Ok(bytes) => {
                *env = parse_env0(&bytes);
                Some(outcome)
            }
            Err(error) => Some(CommandOutcome::FailedToStart(format!(
                "the {name} hook's variables could not be read from {}: {error}",
                env_file.display()
            ))),
        }
    }
}

/// `env -0` output: `NAME=value` records separated by NUL. Shell bookkeeping is dropped.
fn parse_env0(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|record| {
            let text = String::from_utf8_lossy(record);
            let (name, value) = text.split_once('=')?;
            (!name.is_empty() && !matches!(name, "_" | "SHLVL" | "PWD" | "OLDPWD"))
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env0_parsing_keeps_values_with_equals_and_newlines() {
        let env = parse_env0(b"A=1\0B=x=y\nz\0_=/bin/env\0SHLVL=1\0");
        assert_eq!(env.len(), 2);
        assert_eq!(env["B"], "x=y\nz");
    }

    #[test]
    fn only_hook_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pre-command"), "true\n").unwrap();
        std::fs::create_dir(dir.path().join("checkout")).unwrap();
        let env_file = dir.path().join("env");
        let hooks = Hooks {
            dir: Some(dir.path()),
            shell: "/bin/bash",
            env_file: &env_file,
        };
        assert_eq!(
            hooks.find("pre-command"),
            Some(dir.path().join("pre-command"))
        );
        assert_eq!(hooks.find("checkout"), None);
        assert_eq!(hooks.find("post-command"), None);
        assert_eq!(Hooks { dir: None, ..hooks }.find("pre-command"), None);
    }
}
