//! Updraft's EC2 pools: each pool fleet on the `ec2` backend is an Auto Scaling group (two
//! when it buys spot: one for spot, one for on-demand) whose launch template's user data
//! starts the fleet's agents. Every EC2 and Auto Scaling SDK dependency of Updraft lives here.
//!
//! # Layout
//!
//! - [`settings`]: `[ec2]` and `[fleet.ec2]`, read with `updraft_config`.
//! - [`Ec2Clients`] (`clients`): one SDK configuration, every client built from it.
//! - [`Ec2Pool`] (`pool`): the `PoolBackend`: add, list, drain, remove.
//! - `groups`: the launch templates and groups, protected from scale-in from launch.
//! - [`user_data`]: the boot script (agents, one SIGTERM on the drain tag, the exit tag).
//! - `spot`: on-demand fallback when spot capacity does not arrive.
//! - [`notices`]: spot interruption and rebalance notices from SQS, onto the instance.
//! - [`tags`]: the tags for cost attribution and for the scale-in protocol.
//! - `errors`: AWS errors in the scheduler's classes.
//!
//! # Busy-safe scale-in on EC2
//!
//! Instances are protected from scale-in from launch and the group's desired count is never
//! lowered onto them, so the group never picks one to terminate. The pool manager drains an
//! idle instance by tagging it; the instance's boot script sends each agent one SIGTERM (each
//! finishes its job, then disconnects) and tags the instance once they have all exited; the
//! manager then confirms in Buildkite that its agents are gone and terminates it with
//! `TerminateInstanceInAutoScalingGroup` and the decrement.

mod clients;
mod errors;
mod groups;
pub mod notices;
mod pool;
pub mod settings;
mod spot;
pub mod tags;
pub mod user_data;

pub use clients::Ec2Clients;
pub use groups::{group_name, Capacity};
pub use pool::{Ec2Fleet, Ec2Pool};
pub use settings::{Ec2FleetSettings, Ec2Settings};
