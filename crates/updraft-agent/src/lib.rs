//! A Buildkite-compatible agent. `agent` runs the agent's life (register, one-shot acquire
//! or pool mode, heartbeat, disconnect); `runner` runs one job locally (directory, env)
//! through `phases` (the `hooks`, the git `checkout`, the command); `driver` is the part
//! both the local runner and the `relay` executor share (start, log chunks, cancellation,
//! finish); `log_streamer` cuts and uploads the log; `process` owns pipes, process groups
//! and signals; `environment` lets a caller add to each job's environment (e.g. secrets).

pub mod agent;
mod checkout;
pub mod driver;
pub mod environment;
mod hooks;
pub mod log_streamer;
mod phases;
pub mod process;
pub mod relay;
pub mod runner;

pub use agent::{run_agent, AgentConfig, AgentError, AgentRun, Shutdown};
pub use driver::{CommandOutcome, DriveError, DriveOptions, JobReport, StopReason, StopSwitch};
pub use environment::{EnvironmentProvider, JobEnvironment, Provided};
pub use relay::RelayExecutor;
