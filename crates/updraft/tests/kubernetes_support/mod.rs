//! The world of the Kubernetes end-to-end tests: the emulator (Buildkite), the Kubernetes fake
//! whose kubelet runs each pod's `updraft agent` as a local process (the alias table maps the
//! fleet's `updraft` command to the binary under test), and `updraft run` as a child process
//! that can be killed. Jobs must end with exactly one acquire each (the emulator counts them).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use updraft_emulator::{
    BuildRef, EmulatorConfig, EmulatorHandle, JobState, PushTargets, WebhookAuth, WebhookTarget,
};
use updraft_kube_fake::{KubeFake, KubeFakeHandle, KubeFakeOptions, Resource};
use updraft_model::Secret;
use uuid::Uuid;

pub const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
pub const NAMESPACE: &str = "ci";
pub const QUEUE: &str = "k8s";

/// The agent command every fleet here runs, as a Kubernetes container would name it.
pub const AGENT_COMMAND: &str = r#"["updraft", "agent", "start", "--acquire-job", "{job_id}"]"#;

pub struct World {
    pub emulator: EmulatorHandle,
    pub fake: KubeFakeHandle,
    pub state: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub webhook_token: Secret,
    pipelines: Mutex<u32>,
}

/// A TOML string literal.
pub fn quote(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

impl World {
    /// The emulator and a fake with the namespace `ci`, quick back-offs and `edit`.
    pub async fn new(edit: impl FnOnce(&mut KubeFakeOptions)) -> World {
        let emulator = updraft_emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let mut options = KubeFakeOptions {
            namespaces: vec![NAMESPACE.into()],
            image_pull_backoff: Duration::from_millis(500),
            crash_loop_backoff: Duration::from_millis(100),
            job_backoff: Duration::from_millis(100),
            aliases: [("updraft".to_string(), vec![UPDRAFT.to_string()])].into(),
            ..KubeFakeOptions::default()
        };
        edit(&mut options);
        let fake = KubeFake::start(options).expect("kube fake");
        let state = tempfile::tempdir().expect("temp dir");
        let kubeconfig = state.path().join("kubeconfig");
        fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        World {
            emulator,
            fake,
            state,
            kubeconfig,
            webhook_token: Secret::new("k8s-e2e-webhook-token"),
            pipelines: Mutex::new(0),
        }
    }

    /// A scheduler config: the Buildkite and HTTP sections, `[kubernetes]` with `kubernetes`
    /// added, and the fleets (TOML).
    pub fn config(&self, ledger: &str, kubernetes: &str, fleets: &str) -> String {
        format!(
            "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"k8s-e2e\"\nreservation_expiry = \"20s\"\n\n\
             [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
             [reconcile]\ninterval_ms = 500\n\n[kubernetes]\nkubeconfig = {}\nnamespace = \"{NAMESPACE}\"\n{kubernetes}\n\n{fleets}",
            quote(&self.emulator.agent_endpoint()),
            quote(self.emulator.agent_token().expose()),
            quote(self.webhook_token.expose()),
            quote(&self.state.path().join(ledger).to_string_lossy()),
            quote(&self.kubeconfig.to_string_lossy()),
        )
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.state.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    pub fn push_to(&self, addr: std::net::SocketAddr) {
        self.emulator.set_push_targets(PushTargets {
            webhook: Some(WebhookTarget {
                url: format!("http://{addr}/webhooks/buildkite"),
                auth: WebhookAuth::Token(self.webhook_token.clone()),
            }),
            eventbridge_url: None,
        });
    }

    /// A new pipeline with `yaml` and one build of it.
    pub fn build(&self, yaml: &str) -> BuildRef {
        let slug = {
            let mut count = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
            *count += 1;
            format!("k8s-e2e-{count}")
        };
        self.emulator
            .create_pipeline(&slug, yaml)
            .expect("pipeline");
        self.emulator.create_build(&slug).expect("build")
    }

    pub fn timeline(&self, job: Uuid) -> Value {
        self.emulator.job_timeline(job).expect("job timeline")
    }

    pub fn log(&self, job: Uuid) -> String {
        String::from_utf8_lossy(&self.emulator.job_log(job).unwrap_or_default()).to_string()
    }

    /// Wait until every job of `jobs` is in a final state; panics with what is stuck.
    pub async fn wait_until_final(&self, jobs: &[Uuid], patience: Duration) {
        let give_up = Instant::now() + patience;
        loop {
            let open: Vec<Uuid> = jobs
                .iter()
                .copied()
                .filter(|j| {
                    !self
                        .emulator
                        .job_state(*j)
                        .is_some_and(JobState::is_terminal)
                })
                .collect();
            if open.is_empty() {
                return;
            }
            if Instant::now() > give_up {
                let mut states: BTreeMap<String, usize> = BTreeMap::new();
                for job in jobs {
                    *states
                        .entry(format!("{:?}", self.emulator.job_state(*job)))
                        .or_default() += 1;
                }
                let sample: Vec<String> = open
                    .iter()
                    .take(3)
                    .map(|j| format!("{:#}", self.timeline(*j)))
                    .collect();
                panic!(
                    "{} jobs still open after {patience:?} ({states:?}); some of them:\n{}\nscheduler logs in {}",
                    open.len(),
                    sample.join("\n"),
                    self.state.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the schedulers logged about a job (every `*.log` in the state directory).
    pub fn logged_about(&self, job: Uuid) -> String {
        let id = job.to_string();
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.state.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                lines.extend(
                    text.lines()
                        .filter(|l| l.contains(&id))
                        .map(|l| format!("{name}: {l}")),
                );
            }
        }
        lines.join("\n")
    }

    /// Every job passed and was acquired exactly once.
    pub fn assert_each_passed_once(&self, jobs: &[Uuid]) {
        for job in jobs {
            let timeline = self.timeline(*job);
            assert_eq!(
                self.emulator.job_state(*job),
                Some(JobState::Passed),
                "job {job} did not pass; log: {}\n{timeline:#}\nthe schedulers said:\n{}",
                self.log(*job),
                self.logged_about(*job)
            );
            assert_eq!(
                timeline["acquires"].as_u64(),
                Some(1),
                "job {job} was acquired other than once: {timeline:#}"
            );
        }
    }

    /// The Jobs and Secrets Updraft has in the fake now.
    pub fn leftovers(&self) -> (usize, usize) {
        let ours = |object: &Value| {
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "updraft"
        };
        let jobs = self
            .fake
            .list(Resource::Jobs, Some(NAMESPACE))
            .iter()
            .filter(|o| ours(o))
            .count();
        let secrets = self
            .fake
            .list(Resource::Secrets, Some(NAMESPACE))
            .iter()
            .filter(|o| ours(o))
            .count();
        (jobs, secrets)
    }

    /// Agent containers started for a job (one per launch), whatever became of their pods.
    pub fn agents_started(&self, job: Uuid) -> usize {
        let prefix = format!("updraft-{job}-");
        self.fake
            .processes_started()
            .iter()
            .filter(|p| p.container == "agent" && p.pod.starts_with(&prefix))
            .count()
    }
}
