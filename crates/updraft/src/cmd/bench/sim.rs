//! `updraft bench sim`: how fast the simulator runs. Generates a large weekday workload
//! (the 50-engineer shape scaled up until it has `--jobs` jobs, default 1 000 000), runs
//! one pool under `--policy` on `--backend`, and reports simulated jobs per second of wall
//! time for the simulation alone (generation is timed apart).

use std::process::ExitCode;
use std::time::Instant;
use updraft_sim::compare;
use updraft_sim::workload::generate::{generate, Shape};
use updraft_sim::{BackendPreset, SimSettings};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// Jobs to simulate.
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: u64,
    /// The pool's policy: elastic-ci, hpa or updraft.
    #[arg(long, default_value = "updraft")]
    pub policy: String,
    /// The backend preset.
    #[arg(long, default_value = "ec2")]
    pub backend: String,
    /// How many times the 50-engineer team's build rate (so 1 M jobs span a few days).
    #[arg(long, default_value_t = 100.0)]
    pub scale: f64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = BackendPreset::parse(&args.backend)
        .ok_or_else(|| anyhow::anyhow!("--backend {:?}: not a preset", args.backend))?;
    let policy = compare::policy_named(&args.policy, &SimSettings::with_fleets(Vec::new()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--policy {:?}: expected elastic-ci, hpa or updraft",
                args.policy
            )
        })?;
    let (jobs, scale) = (args.jobs, args.scale);
    let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let generating = Instant::now();
        let workload = generate(Shape::Weekday, 1, scale, Some(jobs));
        let generate_s = generating.elapsed().as_secs_f64();
        let settings = compare::with_policy(
            &compare::single_pool(backend, 0, 100_000, policy.clone()),
            policy,
        );
        let started = Instant::now();
        let report =
            updraft_sim::simulate(&settings, &workload, "bench").map_err(anyhow::Error::msg)?;
        let wall_s = started.elapsed().as_secs_f64();
        Ok(serde_json::json!({
            "bench": "sim",
            "jobs": report.jobs,
            "policy": settings.fleets[0].pool.as_ref().map(|p| p.policy.kind()),
            "backend": backend.name(),
            "scale": scale,
            "simulated_days": report.span_seconds / 86_400.0,
            "wall_seconds": wall_s,
            "jobs_per_second": report.jobs as f64 / wall_s,
            "generate_seconds": generate_s,
            "peak_agents": report.peak_agents,
            "wait_p95_s": report.wait.p95_s,
        }))
    })
    .await??;
    let human = format!(
        "simulated {} jobs ({:.1} days, {} policy on {}, peak {} agents) in {:.2} s: {:.0} jobs/s (workload generated in {:.2} s)",
        figures["jobs"],
        figures["simulated_days"].as_f64().unwrap_or(0.0),
        args.policy,
        args.backend,
        figures["peak_agents"],
        figures["wall_seconds"].as_f64().unwrap_or(0.0),
        figures["jobs_per_second"].as_f64().unwrap_or(0.0),
        figures["generate_seconds"].as_f64().unwrap_or(0.0),
    );
    args.common.report("sim", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}
