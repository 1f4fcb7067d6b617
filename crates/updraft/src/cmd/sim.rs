//! `updraft sim`: run a workload through simulated fleets in virtual time — each scaling
//! policy, or one-shot launches — and print how long jobs waited, how much agent time sat
//! idle and what it cost; write JSON, CSV and SVG plots beside.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use updraft_sim::compare::{self, Scenario};
use updraft_sim::output::{self, RunInfo};
use updraft_sim::workload::generate::{generate, Shape};
use updraft_sim::workload::{self, pipelines, JobArrival};
use updraft_sim::{BackendPreset, Report, SimSettings};

#[derive(clap::Args)]
pub struct Args {
    /// A job trace: JSON Lines of {at_ms, queue, duration_ms, pipeline?, priority?}
    /// (gzipped if it ends in .gz), or an emulator build trace (.json) with --pipelines.
    #[arg(long, conflicts_with = "generate")]
    pub trace: Option<PathBuf>,
    /// For an emulator build trace: the TOML saying which jobs each pipeline's build runs.
    #[arg(long, requires = "trace")]
    pub pipelines: Option<PathBuf>,
    /// Generate the workload: steady, weekday, nightly or merge-queue.
    #[arg(long, value_parser = ["steady", "weekday", "nightly", "merge-queue"])]
    pub generate: Option<String>,
    /// Seed of the generator and of the simulation's draws (a settings file's `seed`
    /// wins for the simulation).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generate this many jobs (the shape repeated day after day); default one day.
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Multiply the generated build rates (a team this many times larger).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Save the workload as a job trace (JSON Lines, gzipped if it ends in .gz).
    #[arg(long)]
    pub write_trace: Option<PathBuf>,
    /// Run these policies (elastic-ci, hpa, updraft), comma-separated, on the first pool.
    #[arg(long, value_delimiter = ',', conflicts_with = "compare")]
    pub policy: Vec<String>,
    /// Put elastic-ci, hpa, updraft and one-shot launches side by side.
    #[arg(long)]
    pub compare: bool,
    /// Without --settings: the backend preset (local, kubernetes, ec2, ec2-spot, fargate,
    /// codebuild).
    #[arg(long, default_value = "ec2")]
    pub backend: String,
    /// Without --settings: the pool's most instances.
    #[arg(long, default_value_t = 1000)]
    pub max: u32,
    /// Without --settings: the pool's fewest instances.
    #[arg(long, default_value_t = 0)]
    pub min: u32,
    /// Fleets, pools and backends (TOML); errors are named by their path.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Where to write summary.json, summary.csv, series.csv and the SVG plots.
    #[arg(long, default_value = "sim-results")]
    pub out: PathBuf,
    /// Write no plots.
    #[arg(long)]
    pub no_plots: bool,
}

/// The workload the arguments ask for, and a name for it.
pub fn load_workload(args: &Args) -> anyhow::Result<(Vec<JobArrival>, String)> {
    match (&args.trace, &args.generate) {
        (Some(path), _) => {
            let jobs = match &args.pipelines {
                Some(pipelines_path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let builds = pipelines::parse_build_trace(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let defs = std::fs::read_to_string(pipelines_path)
                        .with_context(|| format!("reading {}", pipelines_path.display()))?;
                    let defs = pipelines::parse_pipelines(&defs)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", pipelines_path.display()))?;
                    pipelines::expand(&builds, &defs, args.seed).map_err(anyhow::Error::msg)?
                }
                None => workload::read_jobs(path).map_err(anyhow::Error::msg)?,
            };
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok((jobs, name))
        }
        (None, Some(name)) => {
            let shape = Shape::parse(name).context("unknown shape")?;
            anyhow::ensure!(args.scale > 0.0, "--scale must be above 0");
            let jobs = generate(shape, args.seed, args.scale, args.jobs);
            Ok((jobs, format!("{name} (seed {})", args.seed)))
        }
        (None, None) => anyhow::bail!("give a workload: --trace FILE or --generate SHAPE"),
    }
}

/// The settings to run: the file's, or one pool on `--backend` between `--min` and `--max`.
pub fn base_settings(args: &Args) -> anyhow::Result<SimSettings> {
    let settings = match &args.settings {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            SimSettings::from_toml(&text).map_err(|errors| {
                let lines: Vec<String> =
                    errors.iter().map(|(p, m)| format!("  {p}: {m}")).collect();
                anyhow::anyhow!(
                    "{}: {} error(s) in the settings:\n{}",
                    path.display(),
                    errors.len(),
                    lines.join("\n")
                )
            })?
        }
        None => {
            let backend = BackendPreset::parse(&args.backend).with_context(|| {
                format!(
                    "--backend {:?}: expected one of local, kubernetes, ec2, ec2-spot, fargate, codebuild",
                    args.backend
                )
            })?;
            let policy = compare::policy_named("updraft", &SimSettings::with_fleets(Vec::new()))
                .expect("a built-in policy");
            let mut settings = compare::single_pool(backend, args.min, args.max, policy);
            settings.seed = args.seed;
            settings
        }
    };
    let errors = settings.validate();
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|(p, m)| format!("  {p}: {m}")).collect();
        anyhow::bail!(
            "{} error(s) in the settings:\n{}",
            errors.len(),
            lines.join("\n")
        );
    }
    Ok(settings)
}

/// The runs the arguments ask for.
pub fn scenarios(args: &Args, base: &SimSettings) -> anyhow::Result<Vec<Scenario>> {
    let runs = if args.compare {
        let all = ["elastic-ci", "hpa", "updraft"].map(String::from);
        compare::scenarios(base, &all, true)
    } else if !args.policy.is_empty() {
        compare::scenarios(base, &args.policy, false)
    } else {
        let label = base
            .fleets
            .iter()
            .find_map(|f| f.pool.as_ref().map(|p| p.policy.kind().to_string()))
            .unwrap_or_else(|| "one-shot".into());
        Ok(vec![Scenario {
            label,
            settings: base.clone(),
        }])
    };
    runs.map_err(anyhow::Error::msg)
}

/// Run every scenario, two at a time.
pub fn run_all(runs: &[Scenario], jobs: &[JobArrival]) -> anyhow::Result<Vec<Report>> {
    let results: Vec<Result<Report, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|run| scope.spawn(move || updraft_sim::simulate(&run.settings, jobs, &run.label)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a simulation panicked".into()))
            })
            .collect()
    });
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (jobs, workload_name) = load_workload(&args)?;
    if let Some(path) = &args.write_trace {
        workload::write_jobs(path, &jobs).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("trace written to {} ({} jobs)", path.display(), jobs.len());
    }
    let base = base_settings(&args)?;
    let runs = scenarios(&args, &base)?;
    let reports = tokio::task::spawn_blocking(move || run_all(&runs, &jobs)).await??;
    let backend = base
        .fleets
        .iter()
        .map(|f| f.backend.name())
        .collect::<Vec<_>>()
        .join("+");
    println!("{workload_name} on {backend}:");
    print!("{}", output::table(&reports));
    let info = RunInfo {
        workload: workload_name.clone(),
        backend: backend.clone(),
        seed: base.seed,
    };
    let mut written = output::write_files(&args.out, &info, &reports)
        .with_context(|| format!("writing into {}", args.out.display()))?;
    if !args.no_plots {
        let title = format!("{workload_name} on {backend}");
        written.extend(
            updraft_sim::plot::write_plots(&args.out, &title, &reports)
                .map_err(anyhow::Error::msg)?,
        );
    }
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    eprintln!("written: {}", names.join(", "));
    Ok(ExitCode::SUCCESS)
}
