//! `updraft-emulator`: an offline, Buildkite-compatible control plane in one process — agent
//! API v3, Stacks API, metrics, REST v2, webhooks and EventBridge — built to
//! `reference/buildkite-api.md`, plus `/_emulator/` introspection for tests and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let emulator = updraft_emulator::start(updraft_emulator::EmulatorConfig::default()).await?;
//! println!("agent endpoint {}", emulator.agent_endpoint());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod agent_api;
mod auth;
pub mod config;
mod error;
mod faults;
mod introspection;
mod job_api;
mod log;
mod metrics;
mod push;
mod ratelimit;
mod rest;
mod server;
mod stacks_api;
pub mod steps;
mod store;
pub mod workload;

pub use config::{
    ApiFaults, EmulatorConfig, PushFaults, PushTargets, RateLimitConfig, WebhookAuth, WebhookTarget,
};
pub use push::signature_header;
pub use updraft_model::JobState;

use anyhow::Context;
use server::{App, SharedApp};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use updraft_model::Secret;
use uuid::Uuid;

/// A build created through the handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRef {
    pub id: Uuid,
    pub number: u64,
    /// Every job of the build (command, wait and block jobs) in step order.
    pub job_ids: Vec<Uuid>,
}

/// A running emulator. Dropping it stops the server too; `shutdown()` also waits for it.
pub struct EmulatorHandle {
    addr: SocketAddr,
    url: String,
    app: SharedApp,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Bind, start serving and return once requests are answered.
pub async fn start(config: EmulatorConfig) -> anyhow::Result<EmulatorHandle> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the emulator to {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the emulator's bound address")?;
    let url = format!("http://{addr}");
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let app: SharedApp = Arc::new(App::new(&config, url.clone(), events_tx));
    let (stop, stop_rx) = watch::channel(false);
    let router = server::router(app.clone());
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let serving = axum::serve(listener, service).with_graceful_shutdown(async move {
            // Either a shutdown request or the handle being dropped ends the server.
            let _ = server_stop.changed().await;
        });
        if let Err(error) = serving.await {
            tracing::error!(%error, "emulator server stopped with an error");
        }
    });
    let deadlines = tokio::spawn(server::run_deadlines(app.clone(), stop_rx.clone()));
    let push = tokio::spawn(push::run_push(app.clone(), events_rx, stop_rx));
    Ok(EmulatorHandle {
        addr,
        url,
        app,
        stop,
        tasks: vec![server, deadlines, push],
    })
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent API base: `url() + "/v3"`.
    pub fn agent_endpoint(&self) -> String {
        format!("{}/v3", self.url)
    }

    /// The REST API base: `url() + "/v2"`.
    pub fn rest_endpoint(&self) -> String {
        format!("{}/v2", self.url)
    }

    pub fn org(&self) -> String {
        self.app.org.clone()
    }

    pub fn agent_token(&self) -> Secret {
        self.app.agent_token.clone()
    }

    pub fn api_token(&self) -> Secret {
        self.app.api_token.clone()
    }

    /// Change where webhooks and EventBridge events go (e.g. once a receiver has its port).
    pub fn set_push_targets(&self, targets: PushTargets) {
        self.app.set_push_targets(targets);
    }

    pub fn set_push_faults(&self, faults: PushFaults) {
        self.app.set_push_faults(faults);
    }

    /// Answer a seeded fraction of `/v3` requests with 429 or 503 (no state change).
    pub fn set_api_faults(&self, faults: ApiFaults) {
        self.app.set_api_faults(faults);
    }

    pub fn set_rate_limits(&self, limits: RateLimitConfig) {
        self.app.live.rate.set_config(limits);
    }

    /// How long an agent may go without a heartbeat or ping before it is marked `lost`
    /// (default: three heartbeat intervals). Connected agents are judged by the new length
    /// from their last contact.
    pub fn set_agent_lost_after(&self, after: std::time::Duration) {
        self.app.store.with(|s| s.set_agent_lost_after(after));
    }

    /// Create a pipeline from YAML (as REST `configuration`). The slug is `slug`.
    pub fn create_pipeline(&self, slug: &str, yaml: &str) -> anyhow::Result<()> {
        let def = steps::parse_yaml(yaml)?;
        let req = store::CreatePipeline {
            name: slug.to_string(),
            slug: Some(slug.to_string()),
            repository: format!("https://github.com/{}/{slug}.git", self.app.org),
            default_branch: None,
            configuration: yaml.to_string(),
            def,
        };
        self.app
            .store
            .with(|s| s.create_pipeline(req))
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Create a build of `slug` on its default branch.
    pub fn create_build(&self, slug: &str) -> anyhow::Result<BuildRef> {
        self.app.store.with(|s| {
            let id = s
                .create_build(slug, store::CreateBuild::default())
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let build = s.builds.get(&id).context("the new build vanished")?;
            Ok(BuildRef {
                id,
                number: build.number,
                job_ids: build.jobs.clone(),
            })
        })
    }

    pub fn job_state(&self, job: Uuid) -> Option<JobState> {
        self.app.store.read(|s| s.job_state(job))
    }

    /// Cancel one job (running jobs go to `canceling` until their agent finishes them).
    pub fn cancel_job(&self, job: Uuid) -> anyhow::Result<JobState> {
        self.app
            .store
            .with(|s| s.cancel_job(job, "canceled through the emulator handle"))
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// The same JSON as `GET /_emulator/counters`.
    pub fn counters(&self) -> serde_json::Value {
        self.app.store.read(introspection::counters_json)
    }

    /// Stack `finish` calls that arrived for a job an agent held (see `Counters`).
    pub fn stack_finishes_of_held_jobs(&self) -> u64 {
        self.app
            .store
            .read(|s| s.counters.stack_finishes_of_held_jobs)
    }

    /// The job's log as reassembled so far.
    pub fn job_log(&self, job: Uuid) -> Option<Vec<u8>> {
        self.app
            .store
            .read(|s| s.jobs.get(&job).map(|j| j.log.content()))
    }

    /// Same JSON as `GET /_emulator/jobs/{id}`: state history and accept/acquire attempts.
    pub fn job_timeline(&self, job: Uuid) -> Option<serde_json::Value> {
        self.app.store.read(|s| {
            s.jobs
                .get(&job)
                .map(|j| introspection::job_detail_json(s, j))
        })
    }

    /// Start a workload (the body of `POST /_emulator/workload`): offset-0 builds exist on
    /// return, later ones are created on time by a background task.
    pub fn start_workload(
        &self,
        request: workload::WorkloadRequest,
    ) -> anyhow::Result<workload::WorkloadStarted> {
        let arrivals = request.arrivals().map_err(|e| anyhow::anyhow!(e.message))?;
        workload::start(&self.app, arrivals).map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Stop serving and wait for the server and background tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
