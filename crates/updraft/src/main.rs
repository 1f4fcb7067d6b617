//! The `updraft` binary: parses the command line and hands each subcommand to the crate that
//! does the work. No logic lives here beyond wiring.

mod backends;
mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "updraft",
    version,
    about = "Runs every Buildkite job on fresh, isolated compute that exists only while the job needs it.",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded demo: emulator + scheduler + local backend on a sample pipeline, no network.
    Demo(cmd::demo::Args),
    /// Run the scheduler with a fleet config file.
    Run(cmd::scheduler::RunArgs),
    /// Validate a fleet config file and explain every error with the field's path.
    Check(cmd::scheduler::CheckArgs),
    /// List the jobs scheduled now and which fleet would take each, or why none would.
    Plan(cmd::scheduler::PlanArgs),
    /// Run a Buildkite-compatible agent (same flags as `buildkite-agent start`).
    Agent(cmd::agent::Args),
    /// Serve an offline Buildkite-compatible control plane (agent API, Stacks API, REST v2, webhooks).
    Emulator(cmd::emulator::Args),
    /// Measure Updraft: each benchmark prints its figures and writes them to a file.
    Bench(cmd::bench::Args),
    /// Simulate fleets in virtual time: wait, idle agent time and cost per scaling policy.
    Sim(cmd::sim::Args),
}

/// glibc gives each thread that allocates under contention an arena of its own, up to eight
/// per core, and memory freed in one arena is not reused by another; and it raises its mmap
/// threshold each time a large block is freed, so later large blocks (a reconcile pass's
/// lists over thousands of jobs) come from the heap and leave holes there. One arena and a
/// fixed threshold of 128 KiB took the scheduler's peak RSS with 10 000 Kubernetes Jobs in
/// flight from 71 to 64 MB (`updraft bench kubernetes`), at the same speed. Either setting in
/// the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) still wins.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 * 1024),
        ];
        for (variable, parameter, value) in settings {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt only sets an allocator parameter; it is called before any
                // thread other than this one exists.
                unsafe {
                    libc::mallopt(parameter, value);
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    // kube (and the AWS SDK) pull in rustls with more than one crypto provider; pick one for
    // the whole process before any client is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tune_malloc();
    let cli = Cli::parse();
    // The demo and the benchmarks print their own progress; their logs would only be noise.
    let default_log = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    cmd::init_logging(default_log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Run(args) => cmd::scheduler::run(args).await,
            Command::Check(args) => cmd::scheduler::check(args).await,
            Command::Plan(args) => cmd::scheduler::plan(args).await,
            Command::Agent(args) => cmd::agent::run(args).await,
            Command::Emulator(args) => cmd::emulator::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Sim(args) => cmd::sim::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("updraft: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
