//! Starting and stopping the scheduler: check the config against the backends given,
//! register the stacks, open the ledger, bind the HTTP listeners, run one reconcile pass so
//! a restart picks up exactly where the last process stopped and one poll so every job
//! scheduled now is taken in, then start the sources and the pipeline. `SchedulerHandle` is what callers hold: addresses, progress, and shutdown.

use crate::config::Config;
use crate::core::Core;
use crate::ledger::Ledger;
use crate::stackset::StackSet;
use crate::stats::StatsSnapshot;
use crate::{http, pipeline, pull, push, queue_metrics, reconciler};
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use updraft_backends::Backend;

/// How long `shutdown` waits for tasks to finish their current step.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Scheduler;

impl Scheduler {
    /// Start a scheduler. `backends` maps the names fleets use in `backend = "…"` to
    /// implementations. Fails (without starting anything) on a fleet naming a backend not
    /// given, a listener that cannot bind, an unreadable ledger, or Buildkite refusing the
    /// agent token.
    pub async fn start(
        config: Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
    ) -> anyhow::Result<SchedulerHandle> {
        let mut fleet_backends = Vec::new();
        for (i, fleet) in config.fleets.iter().enumerate() {
            let backend = backends.get(&fleet.backend).with_context(|| {
                format!(
                    "fleet[{i}].backend: no backend named {:?} is available (available: {})",
                    fleet.backend,
                    backends.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            fleet_backends.push(backend.clone());
        }
        let stacks = StackSet::new(&config)?;
        stacks.register_all().await.map_err(|(key, error)| match error.status().map(|s| s.as_u16()) {
            Some(401) => anyhow::anyhow!(
                "Buildkite refused the agent token (401 Unauthorized) when registering stack {key:?}; check [buildkite] agent_token: {error}"
            ),
            _ => anyhow::anyhow!("registering stack {key:?}: {error}"),
        })?;
        let ledger_path = config.ledger.path.clone();
        let ledger = tokio::task::spawn_blocking(move || Ledger::open(&ledger_path)).await??;
        let ledger = Arc::new(ledger);

        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
        let http_addr = http_listener.local_addr()?;
        let push_listener = match config.push.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("push.listen: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let push_addr = match &push_listener {
            Some(listener) => listener.local_addr()?,
            None => http_addr,
        };

        let (core, inboxes) = Core::new(config, stacks, ledger.clone(), backends, fleet_backends);
        let core = Arc::new(core);
        let open = {
            let ledger = ledger.clone();
            tokio::task::spawn_blocking(move || ledger.open_jobs()).await??
        };
        if !open.is_empty() {
            tracing::info!(jobs = open.len(), "resuming jobs the ledger holds open");
        }
        core.adopt_ledger_jobs(&open);

        let mut tasks = JoinSet::new();
        let app = http::routes(core.clone(), push_listener.is_none());
        tasks.spawn(serve(http_listener, app, core.clone()));
        if let Some(listener) = push_listener {
            tasks.spawn(serve(listener, push::routes(core.clone()), core.clone()));
        }
        tasks.spawn(pipeline::dispatcher(core.clone()));
        tasks.spawn(pipeline::reserver(core.clone(), inboxes.to_reserve));
        tasks.spawn(pipeline::launcher(core.clone(), inboxes.to_launch));
        tasks.spawn(pipeline::notifier(core.clone(), inboxes.to_notify));

        if let Err(error) = reconciler::pass(&core).await {
            tracing::warn!("start-up reconcile pass did not complete: {error}");
        }
        pull::poll_all(&core).await;
        if let Some(message) = core.fatal.borrow().clone() {
            tasks.shutdown().await;
            anyhow::bail!(message);
        }
        tasks.spawn(reconciler::run(core.clone()));
        tasks.spawn(pull::poller(core.clone()));
        tasks.spawn(queue_metrics::poller(core.clone()));
        let _ = core.ready.send(true);
        tracing::info!(%http_addr, %push_addr, fleets = core.config.fleets.len(), "scheduler started");
        Ok(SchedulerHandle {
            core,
            tasks,
            http_addr,
            push_addr,
        })
    }
}

async fn serve(listener: TcpListener, app: axum::Router, core: Arc<Core>) {
    let stopping = core.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopping.stopped().await })
        .await;
    if let Err(error) = result {
        core.fail(format!("HTTP server stopped: {error}"));
    }
}

/// A running scheduler.
pub struct SchedulerHandle {
    core: Arc<Core>,
    tasks: JoinSet<()>,
    http_addr: SocketAddr,
    push_addr: SocketAddr,
}

impl SchedulerHandle {
    /// Where `/metrics`, `/status`, `/healthz` and `/readyz` are served (and the push
    /// routes, unless `[push] listen` gives them their own address).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `POST /webhooks/buildkite` and `POST /events/eventbridge` are served.
    pub fn push_addr(&self) -> SocketAddr {
        self.push_addr
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats.snapshot()
    }

    /// Ask for a reconcile pass now rather than at the next interval.
    pub fn reconcile_now(&self) {
        self.core.wake_reconcile.notify_one();
    }

    /// Resolves when the scheduler stops by itself, with the reason (e.g. a revoked token).
    pub async fn stopped(&self) -> String {
        let mut fatal = self.core.fatal.subscribe();
        let message = match fatal.wait_for(|f| f.is_some()).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => "the scheduler stopped".to_string(),
        };
        message
    }

    /// Stop every task (launches keep running: the next start finds them again). Returns
    /// the fatal error if the scheduler had already stopped on one.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.core.stop.send_replace(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
        match self.core.fatal.borrow().clone() {
            Some(message) => Err(anyhow::anyhow!(message)),
            None => Ok(()),
        }
    }
}
