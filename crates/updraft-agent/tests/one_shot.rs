//! One-shot (`--acquire-job`) runs against the in-process emulator: logs arrive byte for
//! byte, exit statuses are reported, refusals map to the agent's exit codes, and hooks,
//! checkout and plugin refusal behave as documented.

mod common;

use common::{agent_config, build, emulator, one_shot, pipeline};
use std::process::Command;
use std::time::Duration;
use updraft_agent::{run_agent, AgentError, Shutdown};
use updraft_buildkite::agent_api::AcquireError;
use updraft_buildkite::rest::{CreatePipeline, RestClient};
use updraft_buildkite::ClientOptions;
use updraft_emulator::JobState;

#[tokio::test]
async fn a_job_runs_and_its_log_is_byte_identical() {
    let emulator = emulator().await;
    let script = "printf 'out 1\\n'; printf 'err 1\\n' >&2; printf 'no newline at the end'";
    pipeline(&emulator, "hello", &[script]);
    let job = build(&emulator, "hello")[0];
    let builds = tempfile::tempdir().unwrap();
    let run = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    assert_eq!(run.jobs.len(), 1);
    assert_eq!(run.jobs[0].exit_status, "0");
    assert_eq!(emulator.job_state(job), Some(JobState::Passed));
    assert_eq!(
        emulator.job_log(job).unwrap(),
        b"out 1\nerr 1\nno newline at the end"
    );
    assert!(
        std::fs::read_dir(builds.path()).unwrap().next().is_none(),
        "the job directory is removed"
    );
}

#[tokio::test]
async fn a_failing_command_finishes_with_its_exit_status() {
    let emulator = emulator().await;
    pipeline(&emulator, "fails", &["echo about to fail; exit 3"]);
    let job = build(&emulator, "fails")[0];
    let builds = tempfile::tempdir().unwrap();
    let run = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    assert_eq!(run.last_exit_code(), Some(3));
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
    assert_eq!(emulator.job_timeline(job).unwrap()["exit_status"], 3);
}

#[tokio::test]
async fn output_larger_than_a_chunk_is_split_and_reassembled() {
    let emulator = emulator().await;
    // 3.5 MiB of numbered lines: several full 1 MiB chunks plus a partial one.
    pipeline(&emulator, "big", &["seq 1 500000 | head -c 3670016"]);
    let job = build(&emulator, "big")[0];
    let builds = tempfile::tempdir().unwrap();
    let run = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    let expected = Command::new("bash")
        .arg("-c")
        .arg("seq 1 500000 | head -c 3670016")
        .output()
        .unwrap()
        .stdout;
    assert_eq!(emulator.job_log(job).unwrap(), expected);
    assert!(run.jobs[0].log.chunks >= 4, "{:?}", run.jobs[0].log);
    assert_eq!(run.jobs[0].log.chunks_failed, 0);
}

#[tokio::test]
async fn acquiring_a_finished_job_is_refused_with_exit_code_27() {
    let emulator = emulator().await;
    pipeline(&emulator, "twice", &["true"]);
    let job = build(&emulator, "twice")[0];
    let builds = tempfile::tempdir().unwrap();
    run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    let error = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, AgentError::Acquire(AcquireError::Rejected { .. })),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), 27);
    let text = error.to_string();
    assert!(
        text.contains(&job.to_string()) && !text.contains('\n'),
        "{text}"
    );
}

#[tokio::test]
async fn a_job_that_never_becomes_runnable_exits_28() {
    let emulator = emulator().await;
    let yaml = "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: \"sleep 30\"\n  - wait\n  - command: \"true\"\n";
    emulator.create_pipeline("waits", yaml).unwrap();
    let jobs = build(&emulator, "waits");
    let behind_the_wait = *jobs.last().unwrap();
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), behind_the_wait);
    config.retries.acquire.max_attempts = 2;
    let error = run_agent(config, Shutdown::default()).await.unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::Acquire(AcquireError::StillLocked { attempts: 2, .. })
        ),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), 28);
}

#[tokio::test]
async fn wrong_token_and_unknown_job_give_one_line_errors() {
    let emulator = emulator().await;
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), uuid::Uuid::new_v4());
    config.token = updraft_model::Secret::new("bkct_wrong_token_value");
    let error = run_agent(config, Shutdown::default()).await.unwrap_err();
    assert!(
        matches!(error, AgentError::TokenRefused { .. }),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), 1);
    assert!(!error.to_string().contains("wrong_token_value"), "{error}");
    assert!(!error.to_string().contains('\n'));

    let unknown = uuid::Uuid::new_v4();
    let error = run_agent(
        one_shot(&emulator, builds.path(), unknown),
        Shutdown::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, AgentError::UnknownJob { .. }), "{error:?}");
    assert!(error.to_string().contains(&unknown.to_string()));
    assert_eq!(error.exit_code(), 1);
}

#[tokio::test]
async fn steps_with_plugins_are_refused_naming_the_plugin() {
    let emulator = emulator().await;
    let yaml = "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: \"echo should not run\"\n    plugins:\n      - docker#v5.12.0:\n          image: alpine\n";
    emulator.create_pipeline("plugins", yaml).unwrap();
    let job = build(&emulator, "plugins")[0];
    let builds = tempfile::tempdir().unwrap();
    let run = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    assert_eq!(run.jobs[0].exit_status, "-1");
    assert_eq!(run.jobs[0].signal_reason.as_deref(), Some("agent_refused"));
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert!(
        log.contains("docker#v5.12.0") && !log.contains("should not run"),
        "{log}"
    );
    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
}

#[tokio::test]
async fn environment_and_pre_exit_hooks_run_around_the_command() {
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "hooks",
        &["echo \"greeting=$GREETING agent=$BUILDKITE_AGENT_NAME\"; test -z \"$BUILDKITE_AGENT_TOKEN\""],
    );
    let job = build(&emulator, "hooks")[0];
    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(
        hooks.path().join("environment"),
        "echo setting up\nexport GREETING=hello\n",
    )
    .unwrap();
    std::fs::write(
        hooks.path().join("pre-exit"),
        "echo \"cleaning up after $BUILDKITE_COMMAND_EXIT_STATUS\"\n",
    )
    .unwrap();
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.hooks_path = Some(hooks.path().to_path_buf());
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(run.jobs[0].exit_status, "0", "{log}");
    assert!(log.contains("setting up\n"), "{log}");
    assert!(log.contains("greeting=hello agent="), "{log}");
    assert!(log.contains("cleaning up after 0\n"), "{log}");
    assert!(log.find("setting up").unwrap() < log.find("greeting=hello").unwrap());
}

#[tokio::test]
async fn a_failing_environment_hook_stops_the_job() {
    let emulator = emulator().await;
    pipeline(&emulator, "badhook", &["echo command ran"]);
    let job = build(&emulator, "badhook")[0];
    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(hooks.path().join("environment"), "echo nope; exit 4\n").unwrap();
    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), job);
    config.hooks_path = Some(hooks.path().to_path_buf());
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(run.jobs[0].exit_status, "4");
    assert!(!String::from_utf8(emulator.job_log(job).unwrap())
        .unwrap()
        .contains("command ran"));
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test]
async fn the_repository_is_checked_out_at_the_branch() {
    let root = tempfile::tempdir().unwrap();
    let bare = root.path().join("repo.git");
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        root.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("hello.txt"), "from the repository\n").unwrap();
    git(&work, &["add", "hello.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);

    let emulator = emulator().await;
    let rest = RestClient::new(
        &emulator.url(),
        &emulator.api_token(),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap();
    let created = rest
        .create_pipeline(&CreatePipeline {
            name: "checkout".into(),
            repository: bare.display().to_string(),
            configuration: "steps:\n  - command: \"cat hello.txt\"\n".into(),
            default_branch: Some("main".into()),
            cluster_id: None,
        })
        .await
        .unwrap();
    let job = build(&emulator, &created.slug)[0];
    let builds = tempfile::tempdir().unwrap();
    let run = run_agent(one_shot(&emulator, builds.path(), job), Shutdown::default())
        .await
        .unwrap();
    let log = String::from_utf8(emulator.job_log(job).unwrap()).unwrap();
    assert_eq!(run.jobs[0].exit_status, "0", "{log}");
    assert!(log.contains("~~~ Preparing working directory"), "{log}");
    assert!(
        log.ends_with("$ cat hello.txt\nfrom the repository\n"),
        "{log}"
    );
}

#[tokio::test]
async fn a_graceful_shutdown_before_the_job_is_acquired_exits_cleanly() {
    let emulator = emulator().await;
    let builds = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::default();
    shutdown.graceful.cancel();
    let mut config = agent_config(&emulator, builds.path());
    config.disconnect_after_idle_timeout = Some(Duration::from_secs(30));
    let run = run_agent(config, shutdown).await.unwrap();
    assert!(run.jobs.is_empty());
}

#[tokio::test]
async fn a_job_acquisition_token_registers_an_agent_for_that_one_job() {
    use updraft_buildkite::stacks::{RegisterStack, StacksClient};
    let emulator = emulator().await;
    pipeline(
        &emulator,
        "jat",
        &["echo with a job acquisition token", "echo other"],
    );
    let jobs = build(&emulator, "jat");
    let stacks = StacksClient::new(
        &emulator.agent_endpoint(),
        &emulator.agent_token(),
        "test-stack",
        ClientOptions::default(),
    )
    .unwrap();
    stacks
        .register(&RegisterStack {
            key: "test-stack".into(),
            stack_type: "custom".into(),
            queue_key: "default".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(
        stacks
            .batch_reserve(&jobs, None)
            .await
            .unwrap()
            .reserved
            .len(),
        2
    );
    let issued = stacks
        .issue_job_acquisition_tokens(&jobs[..1], Duration::from_secs(300))
        .await
        .unwrap();
    let token = issued.job_acquisition_tokens[0]
        .job_acquisition_token
        .clone();

    let builds = tempfile::tempdir().unwrap();
    let mut config = one_shot(&emulator, builds.path(), jobs[0]);
    config.token = token.clone();
    let run = run_agent(config, Shutdown::default()).await.unwrap();
    assert_eq!(run.jobs[0].exit_status, "0");
    assert_eq!(
        emulator.job_log(jobs[0]).unwrap(),
        b"with a job acquisition token\n"
    );

    // The same token cannot take another job.
    let mut config = one_shot(&emulator, builds.path(), jobs[1]);
    config.token = token;
    let error = run_agent(config, Shutdown::default()).await.unwrap_err();
    assert_eq!(error.exit_code(), 1, "{error}");
    assert_eq!(emulator.job_state(jobs[1]), Some(JobState::Reserved));
}
