//! The default checkout: `git clone` of `BUILDKITE_REPO` into the job directory, then the
//! commit (or the branch when the commit is `HEAD` or empty). Credentials in the repository
//! URL are kept out of the log.

use crate::driver::{CommandOutcome, StopSwitch};
use crate::process::{run_step, OutputWriter, StepLimit};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// Clone the repository into the job directory and check out the commit (or the branch
/// when the commit is `HEAD` or empty).
pub async fn checkout(
    repo: &str,
    env: &BTreeMap<String, String>,
    job_dir: &Path,
    output: &mut OutputWriter,
    stop: &StopSwitch,
    grace: Duration,
) -> CommandOutcome {
    let commit = env
        .get("BUILDKITE_COMMIT")
        .map(|c| c.trim())
        .unwrap_or_default();
    let branch = env
        .get("BUILDKITE_BRANCH")
        .map(|b| b.trim())
        .unwrap_or_default();
    let mut steps: Vec<Vec<String>> = vec![vec![
        "clone".into(),
        "-v".into(),
        "--".into(),
        repo.into(),
        ".".into(),
    ]];
    if !commit.is_empty() && commit != "HEAD" {
        steps.push(vec!["checkout".into(), "-f".into(), commit.into()]);
    } else if !branch.is_empty() {
        steps.push(vec![
            "fetch".into(),
            "-v".into(),
            "--".into(),
            "origin".into(),
            branch.into(),
        ]);
        steps.push(vec!["checkout".into(), "-f".into(), "FETCH_HEAD".into()]);
    }
    for args in steps {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a == repo {
                    redact_userinfo(a)
                } else {
                    a.clone()
                }
            })
            .collect();
        output.line(&format!("$ git {}", shown.join(" ")));
        let mut step = Command::new("git");
        step.args(&args)
            .current_dir(job_dir)
            .env_clear()
            .envs(env)
            .env("GIT_TERMINAL_PROMPT", "0");
        let outcome = run_step(step, output, StepLimit::Stoppable { stop, grace }).await;
        if outcome != CommandOutcome::Exited(0) {
            return outcome;
        }
    }
    CommandOutcome::Exited(0)
}

/// `https://user:pass@host/x` → `https://[redacted]@host/x`, so a credential in a repository
/// URL does not end up in the log.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_credentials_are_redacted() {
        assert_eq!(
            redact_userinfo("https://u:p@github.com/a/b.git"),
            "https://[redacted]@github.com/a/b.git"
        );
        assert_eq!(redact_userinfo("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(
            redact_userinfo("https://github.com/a@b"),
            "https://github.com/a@b"
        );
    }
}
