//! What the pool end-to-end tests share: an emulator, a scheduler with a local pool of real
//! `updraft agent start` processes (and a local one-shot backend), pipelines of `sleep` jobs,
//! and readings of what happened from the emulator's introspection. Each test binary uses a
//! part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use updraft_backends::local::{LocalBackend, LocalOptions, LocalPool, LAUNCH_MARKER_VAR};
use updraft_backends::{Backend, PoolBackend};
use updraft_emulator::{
    EmulatorConfig, EmulatorHandle, JobState, PushTargets, WebhookAuth, WebhookTarget,
};
use updraft_model::Secret;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};
use uuid::Uuid;

pub const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
/// The pool's queue.
pub const QUEUE: &str = "pool";

/// An emulator, a state directory, and the scheduler run on them.
pub struct PoolWorld {
    pub emulator: EmulatorHandle,
    pub state: tempfile::TempDir,
    webhook_token: Secret,
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl PoolWorld {
    pub async fn new() -> PoolWorld {
        PoolWorld {
            emulator: updraft_emulator::start(EmulatorConfig::default())
                .await
                .expect("emulator"),
            state: tempfile::tempdir().expect("temp dir"),
            webhook_token: Secret::new("pool-e2e-webhook-token"),
        }
    }

    fn local_dir(&self) -> PathBuf {
        self.state.path().join("local")
    }

    /// A config with the pool fleet `warm` on queue `pool` (its `[fleet.pool]` table given
    /// as TOML) and `more` fleets after it.
    pub fn config(&self, pool: &str, more: &str) -> String {
        format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"pool-e2e\"\n\
             rest_endpoint = {}\napi_token = {}\nmetrics_interval = \"1s\"\n\n\
             [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [ledger]\npath = {}\n\n[reconcile]\ninterval_ms = 500\n\n\
             [[fleet]]\nname = \"warm\"\nqueue = \"{QUEUE}\"\nmode = \"pool\"\nprice_per_second = 0.001\n\
             [fleet.template]\ncommand = [{}, \"agent\", \"start\"]\nenv = {}\n\
             [fleet.pool]\n{pool}\n{more}",
            quote(&self.emulator.agent_endpoint()),
            quote(self.emulator.agent_token().expose()),
            quote(&self.emulator.rest_endpoint()),
            quote(self.emulator.api_token().expose()),
            quote(self.webhook_token.expose()),
            quote(&self.state.path().join("ledger.sqlite").to_string_lossy()),
            quote(UPDRAFT),
            self.agent_env(),
        )
    }

    /// The environment every agent (pool or one-shot) runs with.
    pub fn agent_env(&self) -> String {
        format!(
            "{{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}",
            quote(&self.state.path().join("builds").to_string_lossy())
        )
    }

    /// Start a scheduler on `text`, with the local backend for one-shot fleets and the local
    /// pool; push events go to it.
    pub async fn start(&self, text: &str) -> (SchedulerHandle, LocalPool) {
        let config = Config::parse(text).expect("valid config");
        let mut options = LocalOptions::new(self.local_dir());
        options.stop_grace = Duration::from_secs(2);
        let local = LocalBackend::open(options).await.expect("local backend");
        let pool = LocalPool::open(&self.local_dir()).expect("local pool");
        let backends: BTreeMap<String, Arc<dyn Backend>> =
            [("local".to_string(), Arc::new(local) as Arc<dyn Backend>)].into();
        let pools: BTreeMap<String, Arc<dyn PoolBackend>> = [(
            "local".to_string(),
            Arc::new(pool.clone()) as Arc<dyn PoolBackend>,
        )]
        .into();
        let scheduler = Scheduler::start_with_pools(config, backends, pools, None)
            .await
            .expect("scheduler starts");
        self.emulator.set_push_targets(PushTargets {
            webhook: Some(WebhookTarget {
                url: format!("http://{}/webhooks/buildkite", scheduler.push_addr()),
                auth: WebhookAuth::Token(self.webhook_token.clone()),
            }),
            eventbridge_url: None,
        });
        (scheduler, pool)
    }

    /// A pipeline `slug` whose build runs one job per entry of `sleeps` (seconds) on the
    /// pool's queue.
    pub fn pipeline(&self, slug: &str, sleeps: &[f64]) {
        let mut yaml = String::from("steps:\n");
        for (i, seconds) in sleeps.iter().enumerate() {
            yaml.push_str(&format!(
                "  - label: job-{i}\n    command: \"sleep {seconds}\"\n    agents: {{queue: {QUEUE}}}\n"
            ));
        }
        self.emulator
            .create_pipeline(slug, &yaml)
            .expect("pipeline");
    }

    /// Wait until every job has reached a final state.
    pub async fn wait_until_final(&self, jobs: &[Uuid], patience: Duration) {
        let give_up = Instant::now() + patience;
        loop {
            let open: Vec<(Uuid, Option<JobState>)> = jobs
                .iter()
                .map(|j| (*j, self.emulator.job_state(*j)))
                .filter(|(_, s)| !s.is_some_and(JobState::is_terminal))
                .collect();
            if open.is_empty() {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "jobs not final within {patience:?}: {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every job passed and ended on its own: no signal, no `signal_reason` (an agent stopped
    /// mid-job would leave `agent_stop`), taken exactly once.
    pub fn assert_each_passed_untouched(&self, jobs: &[Uuid]) {
        for job in jobs {
            let timeline = self.emulator.job_timeline(*job).expect("timeline");
            assert_eq!(
                self.emulator.job_state(*job),
                Some(JobState::Passed),
                "{timeline:#}"
            );
            assert!(timeline["signal_reason"].is_null(), "{timeline:#}");
            assert_eq!(timeline["exit_status"].as_i64(), Some(0), "{timeline:#}");
            let taken = timeline["accepts"].as_u64().unwrap_or(0)
                + timeline["acquires"].as_u64().unwrap_or(0);
            assert_eq!(taken, 1, "taken once: {timeline:#}");
        }
    }

    /// The name of the agent that took the job.
    pub fn agent_of(&self, job: Uuid) -> String {
        let timeline = self.emulator.job_timeline(job).expect("timeline");
        timeline["attempts"]
            .as_array()
            .and_then(|attempts| attempts.iter().find(|a| a["status"] == 200))
            .and_then(|a| a["agent_name"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// When the job entered `state` first (ms since the epoch).
    pub fn entered_ms(&self, job: Uuid, state: &str) -> Option<i64> {
        let timeline = self.emulator.job_timeline(job)?;
        timeline["history"].as_array()?.iter().find_map(|entry| {
            (entry["state"] == state)
                .then(|| entry["at"].as_str())
                .flatten()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
        })
    }
}

/// Live processes (zombies excluded) whose launch marker starts with `prefix`.
pub fn processes_marked_with(prefix: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = format!("{LAUNCH_MARKER_VAR}={prefix}");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var.starts_with(marker.as_bytes()))
            });
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            marked && !zombie
        })
        .collect()
}
