//! The environment hook: what a provider adds reaches the job (variables, and files in the
//! job's private directory, which is gone once the job ends), and a provider that fails
//! fails the job before anything of it runs, with its reason in the log.

mod common;

use common::{build, emulator, one_shot, pipeline};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use updraft_agent::{run_agent, EnvironmentProvider, JobEnvironment, Provided, Shutdown};
use updraft_emulator::JobState;

/// Adds `SECRET_FILE` (a file it writes) and `FROM_PROVIDER`, or fails when told to.
#[derive(Debug, Default)]
struct Provider {
    fail: bool,
    dirs: Mutex<Vec<std::path::PathBuf>>,
}

impl EnvironmentProvider for Provider {
    fn provide<'a>(&'a self, job: JobEnvironment<'a>) -> BoxFuture<'a, Result<Provided, String>> {
        Box::pin(async move {
            if self.fail {
                return Err("the secret store said no".into());
            }
            let file = job.private_dir.join("key");
            std::fs::write(&file, "key material").map_err(|e| e.to_string())?;
            self.dirs
                .lock()
                .unwrap()
                .push(job.private_dir.to_path_buf());
            let mut provided = Provided::default();
            provided
                .env
                .insert("FROM_PROVIDER".into(), format!("for {}", job.job_id));
            provided
                .env
                .insert("SECRET_FILE".into(), file.display().to_string());
            Ok(provided)
        })
    }
}

#[tokio::test]
async fn what_a_provider_adds_reaches_the_job_and_its_files_go_with_it() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "provided",
        &["echo \"$FROM_PROVIDER\"; wc -c < \"$SECRET_FILE\""],
    );
    let job = build(&emulator, "provided")[0];
    let builds = tempfile::tempdir().unwrap();
    let provider = Arc::new(Provider::default());
    let mut config = one_shot(&emulator, builds.path(), job);
    config.environment = Some(provider.clone());
    run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(emulator.job_state(job), Some(JobState::Passed));
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(log, format!("for {job}\n12\n"));
    let dirs = provider.dirs.lock().unwrap().clone();
    assert_eq!(dirs.len(), 1);
    assert!(
        !dirs[0].exists(),
        "the private directory is removed with the job"
    );
}

#[tokio::test]
async fn a_failing_provider_fails_the_job_before_it_runs() {
    let emulator = emulator().await;
    pipeline(&emulator, "refused", &["echo ran"]);
    let job = build(&emulator, "refused")[0];
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.environment = Some(Arc::new(Provider {
        fail: true,
        ..Provider::default()
    }));
    run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(
        log,
        "updraft agent: the job's environment could not be prepared: the secret store said no\n"
    );
}
