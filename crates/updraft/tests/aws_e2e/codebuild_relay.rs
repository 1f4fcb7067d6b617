//! `updraft run` with a CodeBuild fleet in relay mode, end to end: the scheduler acquires
//! each job itself, the build on the CodeBuild stand-in runs only the command (no Buildkite
//! credential in its environment), and the build's CloudWatch Logs (in moto) are relayed into
//! the job log. A 20 MB log arrives byte-identical while the scheduler is SIGKILLed three
//! times mid-stream, with no byte repeated; the command's exit status 3 ends the job failed
//! with 3; a cancel stops the build and the job reads canceled within 2 s.

use crate::support::{start_scheduler, AwsWorld, SERIAL};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use updraft_emulator::JobState;

/// Lines of 100 bytes (20 MB), then a last line without a newline, then exit 3.
const LINES: u32 = 200_000;

fn command() -> String {
    let pad = "x".repeat(87);
    format!("i=0; while [ $i -lt {LINES} ]; do printf 'line %06d {pad}\\n' $i; i=$((i+1)); done; printf 'the end'; exit 3")
}

fn expected() -> Vec<u8> {
    let pad = "x".repeat(87);
    let mut out = Vec::with_capacity(LINES as usize * 100 + 7);
    for i in 0..LINES {
        out.extend_from_slice(format!("line {i:06} {pad}\n").as_bytes());
    }
    out.extend_from_slice(b"the end");
    out
}

fn fleets(world: &AwsWorld) -> String {
    format!(
        "[[fleet]]\nname = \"relay\"\nqueue = \"relay\"\nbackend = \"codebuild\"\n{}\n\
         [fleet.codebuild]\nproject = \"jobs\"\nmode = \"relay\"\ncancel_grace = \"1s\"\n",
        world.agent_template()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_log_survives_three_sigkills_byte_for_byte_and_exit_status_3_fails_the_job() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    world.create_project("jobs").await;
    let config = world.config(&fleets(&world), "");
    let log = world.path("scheduler.log");
    let began = Instant::now();
    let mut scheduler = start_scheduler(&config, &log).await;
    let jobs = world.build(
        "relay",
        "relay",
        &[(&command(), &[("PIPELINE_SETTING", "kept")], 1)],
    );
    let expected = expected();

    for kill in 1..=3u64 {
        let moment = kill * expected.len() as u64 / 4;
        let give_up = Instant::now() + crate::support::PATIENCE;
        while (world.emulator.job_log(jobs[0]).unwrap_or_default().len() as u64) < moment {
            assert!(
                Instant::now() < give_up,
                "the log stalled before {moment} bytes; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        scheduler.kill(Signal::SIGKILL).await;
        scheduler = start_scheduler(&config, &log).await;
    }
    world.wait_until_final(&jobs, &log).await;
    let took = began.elapsed();
    scheduler.kill(Signal::SIGTERM).await;

    let timeline = world.timeline(jobs[0]);
    assert_eq!(
        world.emulator.job_state(jobs[0]),
        Some(JobState::Failed),
        "{timeline:#}"
    );
    assert_eq!(timeline["exit_status"], 3, "{timeline:#}");
    assert_eq!(timeline["acquires"], 1);
    assert_eq!(timeline["chunks_failed_count"], 0);
    let relayed = world.emulator.job_log(jobs[0]).unwrap();
    assert_eq!(relayed.len(), expected.len(), "no byte lost or repeated");
    assert!(
        relayed == expected,
        "the job log is byte-identical to the command's output"
    );

    let builds = world.bed.builds();
    assert_eq!(builds.len(), 1, "one build across three restarts");
    let environment = builds[0]["environment"]["environmentVariables"].to_string();
    assert!(
        environment.contains("PIPELINE_SETTING"),
        "the job's environment reached the build"
    );
    for token in [
        "bkjat_",
        "bkaa_",
        "bkaj_",
        world.emulator.agent_token().expose(),
    ] {
        assert!(
            !environment.contains(token),
            "a Buildkite credential ({token}…) in the build's environment"
        );
    }
    println!(
        "20 MB relayed through 3 SIGKILLs in {took:?} ({} chunk uploads, {} bytes kept)",
        timeline["log_chunks_received"], timeline["log_bytes"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_build_and_the_job_reads_canceled_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    world.create_project("jobs").await;
    let config = world.config(&fleets(&world), "");
    let log = world.path("scheduler.log");
    let scheduler = start_scheduler(&config, &log).await;
    let jobs = world.build("cancel", "relay", &[("echo started; sleep 120", &[], 1)]);
    let give_up = Instant::now() + crate::support::PATIENCE;
    while !world
        .emulator
        .job_log(jobs[0])
        .is_some_and(|l| l.starts_with(b"started\n"))
    {
        assert!(
            Instant::now() < give_up,
            "the job never started; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let canceled_at = Instant::now();
    world.emulator.cancel_job(jobs[0]).unwrap();
    while world.emulator.job_state(jobs[0]) != Some(JobState::Canceled) {
        assert!(
            canceled_at.elapsed() < Duration::from_secs(10),
            "{:#}",
            world.timeline(jobs[0])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = canceled_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the job read canceled after {took:?}"
    );
    let give_up = Instant::now() + Duration::from_secs(10);
    while world.bed.builds()[0]["buildStatus"] != "STOPPED" {
        assert!(
            Instant::now() < give_up,
            "the build was not stopped: {:#}",
            world.bed.builds()[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduler.kill(Signal::SIGTERM).await;
    println!("canceled job finished in {took:?}");
}
