//! Runs one job on this machine: the job's environment plus the `BUILDKITE_*` variables an
//! agent sets, its phases (`phases`: hooks, checkout, command) in a fresh directory under the
//! build path, and everything they print into the job log through `driver::drive`.

#[cfg(test)]
use crate::driver::MAX_CHUNK_BYTES;
use crate::driver::{drive, CommandOutcome, DriveError, DriveOptions, JobReport, StopSwitch};
use crate::environment::{make_private_dir, private_dir_for, EnvironmentProvider, JobEnvironment};
use crate::phases::run_phases;
use crate::process::output_pipe;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
    /// Adds to each job's environment before its hooks and checkout (e.g. secrets).
    pub environment: Option<Arc<dyn EnvironmentProvider>>,
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
            environment: None,
        }
    }
}

/// The driver settings for a job: the server's numbers, with this config's limits.
pub fn drive_options(
    job: &Job,
    job_status_interval: Duration,
    config: &RunnerConfig,
) -> DriveOptions {
    let mut options = DriveOptions::for_job(job, job_status_interval);
    options.status_poll_interval = options
        .status_poll_interval
        .min(config.max_status_poll_interval);
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
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    let mut env = job_environment(job, access_token, &job_dir, &header_pairs, config);
    let private_dir = private_dir_for(&job_dir);
    if let Some(provider) = &config.environment {
        let provided = match make_private_dir(&private_dir) {
            Ok(()) => {
                provider
                    .provide(JobEnvironment {
                        job_id: &job.id,
                        env: &env,
                        private_dir: &private_dir,
                    })
                    .await
            }
            Err(error) => Err(format!(
                "could not create {}: {error}",
                private_dir.display()
            )),
        };
        match provided {
            Ok(provided) => env.extend(provided.env),
            Err(why) => {
                remove_private_dir(&private_dir).await;
                let why =
                    format!("updraft agent: the job's environment could not be prepared: {why}");
                return drive(
                    client,
                    &options,
                    tokio::io::empty(),
                    async { CommandOutcome::FailedToStart(why) },
                    stop,
                )
                .await;
            }
        }
    }
    let (reader, writer) = match output_pipe() {
        Ok(pipe) => pipe,
        Err(error) => {
            let why = format!("could not create the output pipe: {error}");
            return drive(
                client,
                &options,
                tokio::io::empty(),
                async { CommandOutcome::FailedToStart(why) },
                stop,
            )
            .await;
        }
    };
    let steps = run_phases(job, env, job_dir.clone(), config, writer, stop);
    let report = drive(client, &options, reader, steps, stop).await;
    if config.environment.is_some() {
        remove_private_dir(&private_dir).await;
    }
    if config.remove_build_dir {
        if let Err(error) = tokio::fs::remove_dir_all(&job_dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %job_dir.display(), "could not remove the job directory");
            }
        }
    }
    report
}

/// Remove a job's private directory (its provided secrets) whatever became of the job.
async fn remove_private_dir(dir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%error, dir = %dir.display(), "could not remove the job's private directory");
        }
    }
}

/// A job id as a directory name: anything but letters, digits, `-` and `_` becomes `_`.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The environment a job's steps run with (reference §2.2).
pub fn job_environment(
    job: &Job,
    access_token: &Secret,
    job_dir: &Path,
    server_headers: &[(String, String)],
    config: &RunnerConfig,
) -> BTreeMap<String, String> {
    let withheld = |value: &str| {
        config
            .withheld
            .iter()
            .any(|s| !s.is_empty() && s.expose() == value)
    };
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(_, value)| !withheld(value))
        .collect();
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut ignored = Vec::new();
    let mut set = |env: &mut BTreeMap<String, String>, key: &str, value: String| {
        if job.env.contains_key(key) {
            ignored.push(key.to_string());
        }
        env.insert(key.to_string(), value);
    };
    set(
        &mut env,
        "BUILDKITE_AGENT_ACCESS_TOKEN",
        access_token.expose().to_string(),
    );
    set(
        &mut env,
        "BUILDKITE_AGENT_ENDPOINT",
        config.endpoint.clone(),
    );
    set(
        &mut env,
        "BUILDKITE_AGENT_PID",
        std::process::id().to_string(),
    );
    set(
        &mut env,
        "BUILDKITE_BUILD_PATH",
        config.build_path.display().to_string(),
    );
    set(
        &mut env,
        "BUILDKITE_BUILD_CHECKOUT_PATH",
        job_dir.display().to_string(),
    );
    if let Some(hooks) = &config.hooks_path {
        set(
            &mut env,
            "BUILDKITE_HOOKS_PATH",
            hooks.display().to_string(),
        );
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
            default(
                &format!("BUILDKITE_AGENT_META_DATA_{}", env_name(key)),
                value.to_string(),
            );
        }
    }
    for (name, value) in server_headers {
        env.insert(
            format!("BUILDKITE_REQUEST_HEADER_{}", env_name(name)),
            value.clone(),
        );
    }
    env.remove("BUILDKITE_AGENT_TOKEN");
    if !ignored.is_empty() {
        env.insert("BUILDKITE_IGNORED_ENV".into(), ignored.join(","));
    }
    env
}

fn env_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
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
        let env = job_environment(
            &job,
            &Secret::new("bkaj_job"),
            Path::new("/builds/j-1"),
            &headers,
            &config,
        );
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
        let big =
            job(r#"{"id":"j","chunks_max_size_bytes":104857600,"chunks_interval_seconds":0}"#);
        let options = drive_options(&big, Duration::from_secs(5), &config);
        assert_eq!(options.chunk_max, MAX_CHUNK_BYTES);
        assert_eq!(options.flush_interval, Duration::from_secs(1));
        assert_eq!(options.status_poll_interval, Duration::from_secs(1));
        let small = job(r#"{"id":"j","chunks_max_size_bytes":1024}"#);
        assert_eq!(
            drive_options(&small, Duration::ZERO, &config).chunk_max,
            1024
        );
    }

    #[test]
    fn job_ids_become_safe_directory_names() {
        assert_eq!(sanitize("../etc/x"), "___etc_x");
        assert_eq!(sanitize("0190f6a4-1c2d"), "0190f6a4-1c2d");
    }
}
