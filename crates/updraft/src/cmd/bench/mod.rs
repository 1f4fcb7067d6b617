//! `updraft bench …`: benchmarks that print their figures and write them to
//! `bench-results/<name>.json` (or `--out`). With `--json` the last line printed is one JSON
//! object with the figures.

mod chaos;
mod emulator;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod logs;
mod pickup;
#[cfg(feature = "aws")]
mod relay;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// The scheduler SIGKILLed again and again, agents killed, API faults and push lost,
    /// repeated and late: nothing lost, nothing run twice, no healthy job failed.
    Chaos(chaos::Args),
    /// Request rate of `updraft emulator` on loopback (agent ping, Stacks scheduled-jobs).
    Emulator(emulator::Args),
    /// Log throughput through `updraft agent` into the emulator, in MB/s.
    Logs(logs::Args),
    /// The Kubernetes backend: push pickup to Job created, a 10 000-job burst, peak RSS.
    #[cfg(feature = "kubernetes")]
    Kubernetes(kubernetes::Args),
    /// Relay mode's log throughput from CloudWatch Logs (moto) into Buildkite, in MB/s.
    #[cfg(feature = "aws")]
    Relay(relay::Args),
    /// Pickup latency from job scheduled to launch, push vs pull.
    Pickup(pickup::PickupArgs),
    /// A burst of jobs with a no-op launch: time to launch all, CPU, peak RSS.
    Burst(pickup::BurstArgs),
    /// Simulator throughput: 1 000 000 jobs through `updraft sim`'s core, jobs per second.
    Sim(sim::Args),
}

/// Options every benchmark takes.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Print the figures as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Where to write the figures (JSON); default bench-results/<bench>.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Common {
    /// Print a human summary and the JSON line (with `--json`), and write the JSON file.
    pub fn report(
        &self,
        bench: &str,
        human: &str,
        figures: &serde_json::Value,
    ) -> anyhow::Result<()> {
        println!("{human}");
        let path = self
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("bench-results/{bench}.json")));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(figures)? + "\n")?;
        eprintln!("figures written to {}", path.display());
        if self.json {
            println!("{}", serde_json::to_string(figures)?);
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.bench {
        Bench::Chaos(args) => chaos::run(args).await,
        Bench::Emulator(args) => emulator::run(args).await,
        Bench::Logs(args) => logs::run(args).await,
        #[cfg(feature = "kubernetes")]
        Bench::Kubernetes(args) => kubernetes::run(args).await,
        #[cfg(feature = "aws")]
        Bench::Relay(args) => relay::run(args).await,
        Bench::Pickup(args) => pickup::pickup(args).await,
        Bench::Burst(args) => pickup::burst(args).await,
        Bench::Sim(args) => sim::run(args).await,
    }
}
