//! Runs one job on this machine: a fresh directory under the build path, the job's
//! environment plus the `BUILDKITE_*` variables an agent sets, the `environment` hook, a git
//! checkout of `BUILDKITE_REPO`, the command through the shell, the `pre-exit` hook. Steps
//! that ask for plugins are refused with a message naming them. Everything the steps print
//! goes to the job log through `driver::drive`.

#[cfg(test)]
use crate::driver::MAX_CHUNK_BYTES;
use crate::driver::{drive, CommandOutcome, DriveError, DriveOptions, JobReport, StopSwitch};
use crate::process::{output_pipe, run_step, OutputWriter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use updraft_buildkite::agent_api::{Job, JobClient};
use updraft_model::Secret;

/// Settings for running jobs locally.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub build_path: PathBuf,
    pub hooks_path: Option<PathBuf>,
    /// The shell and its flags; the command is appended as the last argument.
    pub shell: Vec<String>,
    pub cancel_grace_period: Duration,
    /// The endpoint and identity the job sees in its environment.
    pub endpoint: String,
    pub agent_name: String,
    pub agent_id: String,
    pub tags: Vec<String>,
    pub upload_workers: usize,
    pub output_drain_timeout: Duration,
    pub ignore_agent_in_dispatches: bool,
    /// Cap on the interval at which the job's state is polled for cancellation.
    pub max_status_poll_interval: Duration,
    /// Remove the job's directory when the job ends.
    pub remove_build_dir: bool,
    /// Values that must never reach a job's environment (the agent's registration token):
    /// inherited variables holding one of them are dropped.
    pub withheld: Vec<Secret>,
}

impl RunnerConfig {
    pub fn new(build_path: PathBuf, endpoint: &str) -> Self {
        RunnerConfig {
            build_path,
            hooks_path: None,
            shell: vec!["/bin/bash".into(), "-e".into(), "-c".into()],
            cancel_grace_period: Duration::from_secs(10),
            endpoint: endpoint.to_string(),
            agent_name: String::new(),
            agent_id: String::new(),
            tags: Vec::new(),
            upload_workers: 3,
            output_drain_timeout: Duration::from_secs(2),
            ignore_agent_in_dispatches: false,
            max_status_poll_interval: Duration::from_secs(1),
            remove_build_dir: true,
            withheld: Vec::new(),
        }
    }
}

/// The driver settings for a job: the server's numbers, with this config's limits.
pub fn drive_options(job: &Job, job_status_interval: Duration, config: &RunnerConfig) -> DriveOptions {
    let mut options = DriveOptions::for_job(job, job_status_interval);
    options.status_poll_interval = options.status_poll_interval.min(config.max_status_poll_interval);
    options.upload_workers = config.upload_workers;
    options.output_drain_timeout = config.output_drain_timeout;
    options.ignore_agent_in_dispatches = config.ignore_agent_in_dispatches;
    options
}

/// Run `job` here and report it to Buildkite. `access_token` is what the job gets as
/// `BUILDKITE_AGENT_ACCESS_TOKEN`; `server_headers` become `BUILDKITE_REQUEST_HEADER_*`.
pub async fn run_local_job(
    client: &JobClient,
    job: &Job,
    access_token: &Secret,
    job_status_interval: Duration,
    config: &RunnerConfig,
    stop: &StopSwitch,
) -> Result<JobReport, DriveError> {
    let options = drive_options(job, job_status_interval, config);
    let job_dir = config.build_path.join(sanitize(&job.id));
    let headers = client.server_headers().snapshot();
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let env = job_environment(job, access_token, &job_dir, &header_pairs, config);
    let (reader, writer) = match output_pipe() {
        Ok(pipe) => pipe,
        Err(error) => {
            let why = format!("could not create the output pipe: {error}");
            return drive(client, &options, tokio::io::empty(), async { CommandOutcome::FailedToStart(why) }, stop)
                .await;
        }
    };
    let steps = run_steps(job, env, job_dir.clone(), config, writer, stop);
    let report = drive(client, &options, reader, steps, stop).await;
    if config.remove_build_dir {
        if let Err(error) = tokio::fs::remove_dir_all(&job_dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %job_dir.display(), "could not remove the job directory");
            }
        }
    }
    report
}

/// A job id as a directory name: anything but letters, digits, `-` and `_` becomes `_`.
fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The environment a job's steps run with (reference §2.2).
pub fn job_environment(
    job: &Job,
    access_token: &Secret,
    job_dir: &Path,
    server_headers: &[(String, String)],
    config: &RunnerConfig,
) -> BTreeMap<String, String> {
    let withheld = |value: &str| config.withheld.iter().any(|s| !s.is_empty() && s.expose() == value);
    let mut env: BTreeMap<String, String> = std::env::vars().filter(|(_, value)| !withheld(value)).collect();
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut ignored = Vec::new();
    let mut set = |env: &mut BTreeMap<String, String>, key: &str, value: String| {
        if job.env.contains_key(key) {
            ignored.push(key.to_string());
        }
        env.insert(key.to_string(), value);
    };
    set(&mut env, "BUILDKITE_AGENT_ACCESS_TOKEN", access_token.expose().to_string());
    set(&mut env, "BUILDKITE_AGENT_ENDPOINT", config.endpoint.clone());
    set(&mut env, "BUILDKITE_AGENT_PID", std::process::id().to_string());
    set(&mut env, "BUILDKITE_BUILD_PATH", config.build_path.display().to_string());
    set(&mut env, "BUILDKITE_BUILD_CHECKOUT_PATH", job_dir.display().to_string());
    if let Some(hooks) = &config.hooks_path {
        set(&mut env, "BUILDKITE_HOOKS_PATH", hooks.display().to_string());
    }
    let mut default = |key: &str, value: String| {
        env.entry(key.to_string()).or_insert(value);
    };
    default("BUILDKITE", "true".into());
    default("CI", "true".into());
    default("BUILDKITE_JOB_ID", job.id.clone());
    default("BUILDKITE_AGENT_NAME", config.agent_name.clone());
    default("BUILDKITE_AGENT_ID", config.agent_id.clone());
    for tag in &config.tags {
        if let Some((key, value)) = tag.split_once('=') {
            default(&format!("BUILDKITE_AGENT_META_DATA_{}", env_name(key)), value.to_string());
        }
    }
    for (name, value) in server_headers {
        env.insert(format!("BUILDKITE_REQUEST_HEADER_{}", env_name(name)), value.clone());
    }
    env.remove("BUILDKITE_AGENT_TOKEN");
    if !ignored.is_empty() {
        env.insert("BUILDKITE_IGNORED_ENV".into(), ignored.join(","));
    }
    env
}

fn env_name(raw: &str) -> String {
    raw.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

fn is_true(env: &BTreeMap<String, String>, key: &str) -> bool {
    env.get(key).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
}

/// The steps, in order, stopping at the first that fails or at a stop request.
async fn run_steps(
    job: &Job,
    mut env: BTreeMap<String, String>,
    job_dir: PathBuf,
    config: &RunnerConfig,
    mut output: OutputWriter,
    stop: &StopSwitch,
) -> CommandOutcome {
    let plugins = job.plugin_names();
    if !plugins.is_empty() {
        return CommandOutcome::Refused(format!(
            "updraft agent does not run plugins, and this step uses {}; run it on a buildkite-agent or remove the plugin",
            plugins.join(", ")
        ));
    }
    let Some(command) = job.command() else {
        return CommandOutcome::FailedToStart(format!("job {} has no command (BUILDKITE_COMMAND is empty)", job.id));
    };
    if let Err(error) = prepare_dir(&job_dir).await {
        return CommandOutcome::FailedToStart(format!(
            "could not create the job directory {}: {error}",
            job_dir.display()
        ));
    }
    let grace = config.cancel_grace_period;
    let mut announced = false;

    if let Some(hook) = hook_file(config, "environment") {
        output.line("~~~ Running the environment hook");
        announced = true;
        let env_file = job_dir.with_extension("env");
        let mut step = Command::new(&config.shell[0]);
        step.arg("-c")
            .arg(r#"set -e; . "$1"; env -0 > "$2""#)
            .arg("environment-hook")
            .arg(&hook)
            .arg(&env_file)
            .current_dir(&config.build_path)
            .env_clear()
            .envs(&env);
        let outcome = run_step(step, &output, stop, grace).await;
        let captured = tokio::fs::read(&env_file).await;
        let _ = tokio::fs::remove_file(&env_file).await;
        if outcome != CommandOutcome::Exited(0) || stop.reason().is_some() {
            return outcome;
        }
        match captured {
            Ok(bytes) => env = parse_env0(&bytes),
            Err(error) => {
                return CommandOutcome::FailedToStart(format!(
                    "the environment hook's variables could not be read: {error}"
                ))
            }
        }
    }

    let repo = env.get("BUILDKITE_REPO").cloned().unwrap_or_default();
    if !repo.trim().is_empty() && !is_true(&env, "BUILDKITE_SKIP_CHECKOUT") {
        output.line("~~~ Preparing working directory");
        announced = true;
        let outcome = checkout(&repo, &env, &job_dir, &mut output, stop, grace).await;
        if outcome != CommandOutcome::Exited(0) || stop.reason().is_some() {
            return outcome;
        }
    }

    if announced {
        output.line("~~~ Running commands");
        output.line(&format!("$ {command}"));
    }
    let mut step = Command::new(&config.shell[0]);
    step.args(&config.shell[1..]).arg(&command).current_dir(&job_dir).env_clear().envs(&env);
    let outcome = run_step(step, &output, stop, grace).await;
    if stop.reason().is_some() {
        return outcome;
    }

    match hook_file(config, "pre-exit") {
        Some(hook) => {
            output.line("~~~ Running the pre-exit hook");
            let mut step = Command::new(&config.shell[0]);
            step.arg(&hook)
                .current_dir(&job_dir)
                .env_clear()
                .envs(&env)
                .env("BUILDKITE_COMMAND_EXIT_STATUS", exit_text(&outcome));
            let hook_outcome = run_step(step, &output, stop, grace).await;
            // A failing pre-exit hook fails a job that had passed.
            if outcome == CommandOutcome::Exited(0) {
                hook_outcome
            } else {
                outcome
            }
        }
        None => outcome,
    }
}

fn exit_text(outcome: &CommandOutcome) -> String {
    match outcome {
        CommandOutcome::Exited(code) => code.to_string(),
        _ => "-1".into(),
    }
}

fn hook_file(config: &RunnerConfig, name: &str) -> Option<PathBuf> {
    let path = config.hooks_path.as_ref()?.join(name);
    path.is_file().then_some(path)
}

/// A fresh, empty directory.
async fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    tokio::fs::create_dir_all(dir).await
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

/// Clone the repository into the job directory and check out the commit (or the branch
/// when the commit is `HEAD` or empty).
async fn checkout(
    repo: &str,
    env: &BTreeMap<String, String>,
    job_dir: &Path,
    output: &mut OutputWriter,
    stop: &StopSwitch,
    grace: Duration,
) -> CommandOutcome {
    let commit = env.get("BUILDKITE_COMMIT").map(|c| c.trim()).unwrap_or_default();
    let branch = env.get("BUILDKITE_BRANCH").map(|b| b.trim()).unwrap_or_default();
    let mut steps: Vec<Vec<String>> = vec![vec!["clone".into(), "-v".into(), "--".into(), repo.into(), ".".into()]];
    if !commit.is_empty() && commit != "HEAD" {
        steps.push(vec!["checkout".into(), "-f".into(), commit.into()]);
    } else if !branch.is_empty() {
        steps.push(vec!["fetch".into(), "-v".into(), "--".into(), "origin".into(), branch.into()]);
        steps.push(vec!["checkout".into(), "-f".into(), "FETCH_HEAD".into()]);
    }
    for args in steps {
        let shown: Vec<String> = args.iter().map(|a| if a == repo { redact_userinfo(a) } else { a.clone() }).collect();
        output.line(&format!("$ git {}", shown.join(" ")));
        let mut step = Command::new("git");
        step.args(&args).current_dir(job_dir).env_clear().envs(env).env("GIT_TERMINAL_PROMPT", "0");
        let outcome = run_step(step, output, stop, grace).await;
        if outcome != CommandOutcome::Exited(0) {
            return outcome;
        }
    }
    CommandOutcome::Exited(0)
}

/// `https://user:pass@host/x` → `https://[redacted]@host/x`, so a credential in a repository
/// URL does not end up in the log.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Job {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn environment_sets_agent_variables_and_drops_the_registration_token() {
        let mut config = RunnerConfig::new(PathBuf::from("/builds"), "http://127.0.0.1:9/v3");
        config.tags = vec!["queue=linux".into(), "docker-version=27".into()];
        config.agent_name = "agent-1".into();
        config.withheld = vec![Secret::new("bkct_never_shown")];
        let job = job(
            r#"{"id":"j-1","env":{"BUILDKITE_AGENT_TOKEN":"bkct_never_shown","BUILDKITE_BUILD_PATH":"/elsewhere","FOO":"bar","BUILDKITE_AGENT_META_DATA_QUEUE":"server"}}"#,
        );
        let headers = vec![("buildkite-hint".to_string(), "h".to_string())];
        let env = job_environment(&job, &Secret::new("bkaj_job"), Path::new("/builds/j-1"), &headers, &config);
        assert_eq!(env["BUILDKITE_AGENT_ACCESS_TOKEN"], "bkaj_job");
        assert_eq!(env["BUILDKITE_BUILD_PATH"], "/builds");
        assert_eq!(env["BUILDKITE_BUILD_CHECKOUT_PATH"], "/builds/j-1");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["BUILDKITE_AGENT_META_DATA_QUEUE"], "server");
        assert_eq!(env["BUILDKITE_AGENT_META_DATA_DOCKER_VERSION"], "27");
        assert_eq!(env["BUILDKITE_REQUEST_HEADER_BUILDKITE_HINT"], "h");
        assert_eq!(env["BUILDKITE_IGNORED_ENV"], "BUILDKITE_BUILD_PATH");
        assert_eq!(env["BUILDKITE_AGENT_NAME"], "agent-1");
        assert!(!env.contains_key("BUILDKITE_AGENT_TOKEN"));
        assert!(env.values().all(|v| v != "bkct_never_shown"));
    }

    #[test]
    fn drive_options_cap_chunks_and_status_polling() {
        let config = RunnerConfig::new(PathBuf::from("/b"), "http://x/v3");
        let big = job(r#"{"id":"j","chunks_max_size_bytes":104857600,"chunks_interval_seconds":0}"#);
        let options = drive_options(&big, Duration::from_secs(5), &config);
        assert_eq!(options.chunk_max, MAX_CHUNK_BYTES);
        assert_eq!(options.flush_interval, Duration::from_secs(1));
        assert_eq!(options.status_poll_interval, Duration::from_secs(1));
        let small = job(r#"{"id":"j","chunks_max_size_bytes":1024}"#);
        assert_eq!(drive_options(&small, Duration::ZERO, &config).chunk_max, 1024);
    }

    #[test]
    fn env0_parsing_keeps_values_with_equals_and_newlines() {
        let env = parse_env0(b"A=1\0B=x=y\nz\0_=/bin/env\0SHLVL=1\0");
        assert_eq!(env.len(), 2);
        assert_eq!(env["B"], "x=y\nz");
    }

    #[test]
    fn repository_credentials_are_redacted() {
        assert_eq!(redact_userinfo("https://u:p@github.com/a/b.git"), "https://[redacted]@github.com/a/b.git");
        assert_eq!(redact_userinfo("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(redact_userinfo("https://github.com/a@b"), "https://github.com/a@b");
    }

    #[test]
    fn job_ids_become_safe_directory_names() {
        assert_eq!(sanitize("../etc/x"), "___etc_x");
        assert_eq!(sanitize("0190f6a4-1c2d"), "0190f6a4-1c2d");
    }
}
