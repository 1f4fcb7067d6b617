//! Acceptance: a 100 MB log goes through `updraft agent start` byte for byte while the
//! agent's peak resident memory (VmHWM, sampled from /proc while it runs) stays under 64 MB.

mod agent_common;

use agent_common::{agent_process, assert_no_token, emulator, pipeline};
use std::time::Duration;

const LOG_BYTES: usize = 100 * 1024 * 1024;
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// The peak resident set of a live process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_log_is_relayed_exactly_in_bounded_memory() {
    let emulator = emulator().await;
    let script = format!("yes 'a line of build output, repeated until the log is large enough' | head -c {LOG_BYTES}");
    pipeline(&emulator, "big", std::slice::from_ref(&script));
    let job = emulator.create_build("big").unwrap().job_ids[0];
    let builds = tempfile::tempdir().unwrap();
    let mut command = agent_process(&emulator, builds.path(), job);
    command.env("UPDRAFT_LOG", "info");
    let child = command.spawn().unwrap();
    let pid = child.id().unwrap();
    let waiting = tokio::spawn(child.wait_with_output());
    let mut peak_kb = 0;
    while !waiting.is_finished() {
        if let Some(kb) = peak_rss_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = waiting.await.unwrap().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert_no_token(&printed, &emulator);
    assert!(peak_kb > 0, "the agent's memory was never sampled");
    eprintln!("agent peak RSS: {peak_kb} kB");
    assert!(
        peak_kb < RSS_LIMIT_KB,
        "agent peak RSS {peak_kb} kB is not under {RSS_LIMIT_KB} kB"
    );

    let expected = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(expected.len(), LOG_BYTES);
    let stored = emulator.job_log(job).unwrap();
    assert_eq!(stored.len(), LOG_BYTES);
    let first_difference = stored.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "the stored log differs from the output"
    );
    assert_eq!(
        emulator.job_state(job),
        Some(updraft_emulator::JobState::Passed)
    );
}
