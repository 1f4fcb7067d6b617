//! Updraft's scheduler core: learn of every Buildkite job (push events and Stacks API
//! polling), route it to a fleet, hold it to the fleet's limits, reserve it, issue a job
//! acquisition token and launch exactly one agent for it on the fleet's backend — and keep
//! that true through lost events and crashes with a durable ledger and a reconciler.
//!
//! ```text
//! push (webhook / EventBridge) ─┐
//! pull (scheduled-jobs ≥ 1 s) ──┴─► intake (dedupe by job id) ─► router ─► limiter
//!   ─► ledger + batch-reserve ─► job acquisition token ─► backend.launch
//! reconciler (start-up + every interval): ledger ⇄ Buildkite job states ⇄ backend.list()
//!   └─ at most every 5 min: prune ledger jobs closed longer ago than [ledger] retention
//! ```
//!
//! # Using it
//!
//! ```no_run
//! # async fn example(backend: std::sync::Arc<dyn updraft_backends::Backend>) -> anyhow::Result<()> {
//! use updraft_scheduler::{Config, Scheduler};
//! let config = Config::load(std::path::Path::new("updraft.toml"))?;
//! let backends = [("local".to_string(), backend)].into_iter().collect();
//! let handle = Scheduler::start(config, backends).await?;
//! println!("status page: http://{}/status", handle.http_addr());
//! let stats = handle.stats(); // jobs seen, launched, in flight, pickups with their times
//! println!("{} launched", stats.launched);
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The public surface is: [`Config`] (`load`, `parse`, `parse_with_env`, `parse_checked`;
//! the format is shown in `updraft.example.toml` next to this crate's `Cargo.toml`),
//! [`Scheduler::start`], [`SchedulerHandle`] (`http_addr`, `push_addr`, `stats`,
//! `reconcile_now`, `stopped`, `shutdown`), [`StatsSnapshot`], and [`plan()`] for
//! `updraft plan`. The decision functions ([`reconcile::decide`], [`router::route`],
//! [`limiter::Limiter`]) and the [`ledger`] are public for reading and testing.
//!
//! # Rules it keeps
//!
//! - One Stacks API stack per served queue, keyed `<stack_key>-<queue>`: a stack reserves and
//!   issues tokens only for its own queue.
//! - The ledger records a reservation before Buildkite is asked, and a launch intent before
//!   the backend is; a crash anywhere leaves a row the reconciler resolves from Buildkite's
//!   job state and the backend's listing.
//! - A job acquisition token is issued right before each launch; a job Buildkite issues no
//!   token for is not launched. A relaunch happens only while Buildkite still shows the job
//!   untaken, so no job is ever acquired twice.
//! - `start` returns after one reconcile pass and one poll: everything scheduled at start-up
//!   has been taken in.

pub mod clock;
pub mod config;
mod core;
mod http;
pub mod ledger;
mod listener;
pub use updraft_model::limiter;
mod pipeline;
pub mod plan;
pub mod pool;
pub mod ports;
mod pull;
mod push;
mod queue_metrics;
pub mod reconcile;
mod reconciler;
mod retention;
pub mod router;
mod scheduler;
#[cfg(test)]
mod simulation;
pub mod stackset;
pub mod stats;
mod status;
mod telemetry;

pub use config::{Config, ConfigError, ConfigErrors, FleetConfig};
pub use plan::{plan, Plan, PlannedJob};
pub use pool::{CostLine, JobCost, MemberSnapshot, PoolSnapshot, Spent};
pub use scheduler::{Scheduler, SchedulerHandle, TakeIn};
pub use stats::{Pickup, Source, StatsSnapshot};
