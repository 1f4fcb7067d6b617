//! `updraft bench relay`: log throughput of relay mode from CloudWatch Logs into Buildkite.
//! moto (started here, from the Python that has `moto[server]`) holds the logs; the emulator
//! (in process) is Buildkite. Each job's log is written into a stream first; then an AWS
//! backend in relay mode over a platform that runs nothing (`updraft_aws::replay`) acquires
//! the jobs, reads their streams from the head and uploads them as chunks, recording its
//! progress around every chunk as it does for real. The figures are MB/s for one job and for
//! `--jobs` at once, each checked byte for byte; the serverless-agent seed relayed 1 MB per
//! 10 s per job.

use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::replay::write_stream;
use updraft_aws::settings::AwsSettings;
use updraft_aws::{AwsBackend, AwsClients, BackendOptions};
use updraft_backends::{Backend, JobContext, LaunchName, LaunchSpec};
use updraft_buildkite::stacks::{RegisterStack, StacksClient};
use updraft_buildkite::ClientOptions;
use updraft_emulator::{EmulatorConfig, EmulatorHandle, JobState};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: super::Common,
    /// The single job's log, in MiB.
    #[arg(long, default_value_t = 20)]
    pub megabytes: u64,
    /// How many jobs relay at once in the second run.
    #[arg(long, default_value_t = 20)]
    pub jobs: u32,
    /// Each of those jobs' log, in MiB.
    #[arg(long, default_value_t = 5)]
    pub megabytes_each: u64,
    /// A Python with `moto[server]` (default: $UPDRAFT_PYTHON, else .venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

const MIB: f64 = 1024.0 * 1024.0;
const GROUP: &str = "/updraft/bench-relay";
const QUEUE: &str = "bench";
/// The serverless agent's rate: one GetLogEvents page (at most 1 MB) per 10 s check.
const SEED_MB_PER_S: f64 = 0.1;

/// A `moto_server` child, stopped on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start(python: &std::path::Path) -> anyhow::Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting moto with {} (pip install 'moto[server]==5.2.5')",
                    python.display()
                )
            })?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let probe = reqwest::Client::new();
        let give_up = Instant::now() + Duration::from_secs(30);
        while probe
            .get(format!("{}/moto-api/", moto.endpoint))
            .send()
            .await
            .is_err()
        {
            anyhow::ensure!(
                Instant::now() < give_up,
                "moto did not answer on {}",
                moto.endpoint
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lines` of 100 bytes, numbered so that any loss or repeat shows.
fn log_of(job: usize, megabytes: u64) -> Vec<u8> {
    let lines = megabytes * 1024 * 1024 / 100;
    let mut out = Vec::with_capacity(lines as usize * 100);
    for line in 0..lines {
        let text = format!("job {job:03} line {line:09} ");
        out.extend_from_slice(text.as_bytes());
        out.extend(std::iter::repeat_n(b'.', 99 - text.len()));
        out.push(b'\n');
    }
    out
}

/// Reserve `jobs` and make a relay launch spec for each, as the scheduler does.
async fn specs(emulator: &EmulatorHandle, jobs: &[Uuid]) -> anyhow::Result<Vec<LaunchSpec>> {
    let stacks = StacksClient::new(
        &emulator.agent_endpoint(),
        &emulator.agent_token(),
        "bench-relay",
        ClientOptions::default(),
    )?;
    stacks
        .register(&RegisterStack {
            key: "bench-relay".into(),
            stack_type: "custom".into(),
            queue_key: QUEUE.into(),
            metadata: BTreeMap::new(),
        })
        .await?;
    stacks.batch_reserve(jobs, None).await?;
    let issued = stacks
        .issue_job_acquisition_tokens(jobs, Duration::from_secs(3600))
        .await?;
    Ok(issued
        .job_acquisition_tokens
        .into_iter()
        .map(|token| LaunchSpec {
            name: LaunchName::for_job(token.job_uuid),
            job_id: token.job_uuid,
            fleet: QUEUE.into(),
            job: JobContext {
                queue: QUEUE.into(),
                ..JobContext::default()
            },
            env: [
                (
                    "BUILDKITE_AGENT_ENDPOINT".to_string(),
                    emulator.agent_endpoint(),
                ),
                ("BUILDKITE_AGENT_TAGS".to_string(), format!("queue={QUEUE}")),
            ]
            .into(),
            secrets: [(
                "BUILDKITE_AGENT_TOKEN".to_string(),
                token.job_acquisition_token,
            )]
            .into(),
            command: vec!["relayed".into()],
            deadline: Duration::from_secs(3600),
        })
        .collect())
}

/// Relay `count` jobs of `megabytes` each at once; (bytes, seconds).
async fn relay_run(
    emulator: &EmulatorHandle,
    clients: &AwsClients,
    state: &std::path::Path,
    label: &str,
    count: usize,
    megabytes: u64,
) -> anyhow::Result<(u64, f64)> {
    let yaml = format!(
        "steps:\n  - command: relayed\n    parallelism: {count}\n    agents: {{queue: {QUEUE}}}\n"
    );
    emulator.create_pipeline(label, &yaml)?;
    let jobs = emulator.create_build(label)?.job_ids;
    let mut logs = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let log = log_of(i, megabytes);
        write_stream(&clients.logs(), GROUP, &job.to_string(), &log).await?;
        logs.push(log);
    }
    let settings = AwsSettings {
        state_dir: state.join(label).display().to_string(),
        ..AwsSettings::default()
    };
    let mut options = BackendOptions::from_settings(&settings);
    options.status_interval = Duration::from_millis(100);
    options.log_poll_interval = Duration::from_millis(50);
    options.log_settle = Duration::from_millis(1);
    let backend = AwsBackend::replay(
        clients,
        &settings,
        GROUP,
        vec![QUEUE.into()],
        options,
        AwsMetrics::default(),
    )
    .await?;
    let specs = specs(emulator, &jobs).await?;
    let started = Instant::now();
    for spec in &specs {
        backend.launch(spec).await?;
    }
    let give_up = Instant::now() + Duration::from_secs(600);
    while !jobs
        .iter()
        .all(|j| emulator.job_state(*j) == Some(JobState::Passed))
    {
        anyhow::ensure!(
            Instant::now() < give_up,
            "the relays did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut bytes = 0;
    for (job, log) in jobs.iter().zip(&logs) {
        let relayed = emulator.job_log(*job).context("a job has no log")?;
        anyhow::ensure!(relayed == *log, "job {job}'s log differs from its stream");
        bytes += relayed.len() as u64;
    }
    Ok((bytes, seconds))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.megabytes > 0 && args.megabytes_each > 0 && args.jobs > 0,
        "sizes and --jobs must be at least 1"
    );
    let python = args
        .python
        .clone()
        .or_else(|| {
            std::env::var_os("UPDRAFT_PYTHON")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    let moto = Moto::start(&python).await?;
    let emulator = updraft_emulator::start(EmulatorConfig::default()).await?;
    let clients = AwsClients::for_emulator(&moto.endpoint);
    let state = std::env::temp_dir().join(format!("updraft-bench-relay-{}", std::process::id()));

    let single = relay_run(&emulator, &clients, &state, "relay-one", 1, args.megabytes).await;
    let parallel = match &single {
        Ok(_) => {
            relay_run(
                &emulator,
                &clients,
                &state,
                "relay-many",
                args.jobs as usize,
                args.megabytes_each,
            )
            .await
        }
        Err(_) => Err(anyhow::anyhow!("skipped")),
    };
    let _ = std::fs::remove_dir_all(&state);
    let (one_bytes, one_seconds) = single?;
    let (many_bytes, many_seconds) = parallel?;
    let one_rate = one_bytes as f64 / MIB / one_seconds;
    let many_rate = many_bytes as f64 / MIB / many_seconds;
    let figures = serde_json::json!({
        "single": {"megabytes": args.megabytes, "seconds": one_seconds, "mb_per_s": one_rate},
        "parallel": {
            "jobs": args.jobs,
            "megabytes_each": args.megabytes_each,
            "seconds": many_seconds,
            "mb_per_s_total": many_rate,
            "mb_per_s_per_job": many_rate / args.jobs as f64,
        },
        "seed_mb_per_s_per_job": SEED_MB_PER_S,
        "source": "moto 5.2.5 CloudWatch Logs on loopback; Buildkite is the in-process emulator",
    });
    let human = format!(
        "relay from CloudWatch Logs into Buildkite (moto, emulator), byte-identical:\n  one job:  {} MiB in {one_seconds:.2} s = {one_rate:.1} MB/s ({:.0}x the seed's 1 MB per 10 s)\n  {} jobs:  {} MiB each, {:.0} MiB in {many_seconds:.2} s = {many_rate:.1} MB/s total, {:.2} MB/s per job",
        args.megabytes,
        one_rate / SEED_MB_PER_S,
        args.jobs,
        args.megabytes_each,
        many_bytes as f64 / MIB,
        many_rate / args.jobs as f64,
    );
    args.common.report("relay", &human, &figures)?;
    Ok(ExitCode::SUCCESS)
}
