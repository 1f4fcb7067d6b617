//! Acceptance: 100 jobs in several builds, each run by its own `updraft agent start
//! --acquire-job` process. All pass, every log read back through the REST API is exactly
//! what the command wrote, and no token shows up in anything the agents printed.

mod agent_common;

use agent_common::{agent_process, assert_no_token, emulator, pipeline, rest};
use std::sync::Arc;
use tokio::sync::Semaphore;

const PIPELINES: usize = 4;
const STEPS: usize = 25;

fn script(pipeline: usize, step: usize) -> String {
    format!(
        "echo \"pipeline {pipeline} step {step}\"; seq 1 {}; echo done >&2",
        100 * (step + 1)
    )
}

fn expected_log(pipeline: usize, step: usize) -> Vec<u8> {
    let mut log = format!("pipeline {pipeline} step {step}\n");
    for i in 1..=100 * (step + 1) {
        log.push_str(&format!("{i}\n"));
    }
    log.push_str("done\n");
    log.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_each_in_its_own_agent_process_all_pass_with_exact_logs() {
    let emulator = emulator().await;
    let rest = rest(&emulator);
    let builds_dir = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for p in 0..PIPELINES {
        let slug = format!("many-{p}");
        pipeline(
            &emulator,
            &slug,
            &(0..STEPS).map(|s| script(p, s)).collect::<Vec<_>>(),
        );
        let build = emulator.create_build(&slug).unwrap();
        assert_eq!(build.job_ids.len(), STEPS);
        for (s, job) in build.job_ids.iter().enumerate() {
            jobs.push((slug.clone(), build.number, *job, p, s));
        }
    }
    assert_eq!(jobs.len(), 100);

    let slots = Arc::new(Semaphore::new(8));
    let mut running = Vec::new();
    for (_, _, job, _, _) in &jobs {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let child = agent_process(&emulator, builds_dir.path(), *job)
            .spawn()
            .unwrap();
        running.push(tokio::spawn(async move {
            let output = child.wait_with_output().await.unwrap();
            drop(permit);
            output
        }));
    }
    let mut printed = String::new();
    for (task, (_, _, job, _, _)) in running.into_iter().zip(&jobs) {
        let output = task.await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "agent for {job} exited {:?}:\n{stderr}",
            output.status
        );
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        printed.push_str(&stderr);
    }
    assert_no_token(&printed, &emulator);

    for (slug, number, job, p, s) in &jobs {
        let log = rest.job_log(slug, *number, &job.to_string()).await.unwrap();
        assert_eq!(log, expected_log(*p, *s), "log of pipeline {p} step {s}");
    }
    for p in 0..PIPELINES {
        let build = rest.get_build(&format!("many-{p}"), 1).await.unwrap();
        assert_eq!(build.state, "passed");
        assert!(build
            .jobs
            .iter()
            .all(|j| j.state.as_deref() == Some("passed")));
    }
    assert!(
        std::fs::read_dir(builds_dir.path())
            .unwrap()
            .next()
            .is_none(),
        "job directories are removed"
    );
}
