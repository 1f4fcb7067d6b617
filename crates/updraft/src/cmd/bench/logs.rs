//! `updraft bench logs`: log throughput through `updraft agent start` into an in-process
//! emulator. One job writes `--megabytes` MiB of text; the agent (this binary, as a child
//! process) streams it in gzip chunks; the figure is MB/s from agent start to exit, with the
//! agent's peak memory and a check that the stored log is byte-identical.

use anyhow::Context;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use updraft_emulator::EmulatorConfig;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// How much log output the job writes, in MiB.
    #[arg(long, default_value_t = 100)]
    pub megabytes: u64,
}

const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.megabytes > 0, "--megabytes must be at least 1");
    let bytes = args.megabytes * 1024 * 1024;
    let emulator = updraft_emulator::start(EmulatorConfig::default()).await?;
    let script =
        format!("yes 'a line of build output for the log throughput benchmark' | head -c {bytes}");
    let yaml = format!(
        "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: {}\n",
        serde_json::to_string(&script)?
    );
    emulator.create_pipeline("bench-logs", &yaml)?;
    let job = *emulator
        .create_build("bench-logs")?
        .job_ids
        .first()
        .context("the benchmark build has no job")?;
    let build_path =
        std::env::temp_dir().join(format!("updraft-bench-logs-{}", std::process::id()));

    let started = Instant::now();
    let mut agent = tokio::process::Command::new(
        std::env::current_exe().context("finding the updraft binary")?,
    )
    .args([
        "agent",
        "start",
        "--acquire-job",
        &job.to_string(),
        "--build-path",
    ])
    .arg(&build_path)
    .env("BUILDKITE_AGENT_TOKEN", emulator.agent_token().expose())
    .env("BUILDKITE_AGENT_ENDPOINT", emulator.agent_endpoint())
    .env("UPDRAFT_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .context("starting `updraft agent start`")?;
    let pid = agent.id().context("the agent exited at once")?;
    let mut peak_rss_kb = 0;
    let status = loop {
        if let Some(kb) = peak_rss_kb_of(pid) {
            peak_rss_kb = peak_rss_kb.max(kb);
        }
        tokio::select! {
            status = agent.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&build_path);
    anyhow::ensure!(status.success(), "the agent failed ({status})");

    let stored = emulator.job_log(job).context("the job has no log")?;
    let expected = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()?
        .stdout;
    let identical = stored == expected;
    let chunks = emulator
        .job_timeline(job)
        .and_then(|t| t["log_chunks_received"].as_u64())
        .unwrap_or(0);
    emulator.shutdown().await;

    let mb_per_s = bytes as f64 / MIB / elapsed.as_secs_f64();
    let figures = serde_json::json!({
        "megabytes": args.megabytes,
        "seconds": elapsed.as_secs_f64(),
        "mb_per_s": mb_per_s,
        "agent_peak_rss_mb": peak_rss_kb as f64 / 1024.0,
        "chunks_received": chunks,
        "byte_identical": identical,
    });
    let human = format!(
        "log throughput: {} MiB in {:.2} s = {mb_per_s:.1} MB/s through `updraft agent` (peak agent RSS {:.1} MB, {chunks} chunks, byte-identical: {identical})",
        args.megabytes,
        elapsed.as_secs_f64(),
        peak_rss_kb as f64 / 1024.0,
    );
    args.common.report("logs", &human, &figures)?;
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Peak resident memory of a live process (VmHWM), in kB.
fn peak_rss_kb_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
