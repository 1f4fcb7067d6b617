//! Warm pools: long-lived agents that take jobs from Buildkite themselves, on *members* (a
//! local process group, a Kubernetes pod, an EC2 instance), each running a fixed number
//! of agents. `PoolBackend` is what a platform offers a pool: list the members, add some,
//! drain one, remove one. The scheduler's pool manager decides how many and which; the
//! backend never picks a member to stop by itself.
//!
//! Busy-safe scale-in is split between the two: `drain` asks a member's agents to stop after
//! their current job (one SIGTERM to each agent, the signal `buildkite-agent` and `updraft
//! agent` take as "finish the job, then disconnect"; never a second one, which would cancel
//! the job), and `remove` frees the member's compute only once its agents are gone. Each
//! agent is named `<member>-<n>` (n from 1), so the manager can match Buildkite's list of
//! agents to members.

use crate::BackendError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use updraft_model::Secret;

/// A member's name: unique in its backend, free of whitespace, and the prefix of its agents'
/// names (`<member>-<n>`). A local or Kubernetes member is `<fleet>-<8 hex digits>`; an EC2
/// member is its instance id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberName(String);

impl MemberName {
    pub fn new(name: impl Into<String>) -> Self {
        MemberName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the member's `n`th agent (from 1).
    pub fn agent_name(&self, n: u32) -> String {
        format!("{}-{n}", self.0)
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The member an agent of a pool belongs to, from the agent's name (`<member>-<n>`); `None`
/// for a name of another shape.
pub fn member_of_agent(agent_name: &str) -> Option<(MemberName, u32)> {
    let (member, n) = agent_name.rsplit_once('-')?;
    let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
    (!member.is_empty()).then(|| (MemberName::new(member), n))
}

/// What every member of a fleet runs.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub fleet: String,
    /// Agents per member; an agent is the command below, named `<member>-<n>`
    /// (`BUILDKITE_AGENT_NAME`).
    pub agents: u32,
    /// The agent program and its arguments (`updraft agent start`, `buildkite-agent start`).
    pub command: Vec<String>,
    /// Plain environment for every agent (endpoint, tags, fleet).
    pub env: BTreeMap<String, String>,
    /// The agent registration token and any other credential, handed over by the safest means
    /// the platform has (the process environment locally, SSM Parameter Store on EC2); never
    /// logged or written in plain text.
    pub secrets: BTreeMap<String, Secret>,
}

/// Where a member stands, as its backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberPhase {
    /// Launched; its agents are not started yet (an instance still pending or booting).
    Booting,
    /// Its agents are running.
    Running,
    /// Asked to drain: each agent had its one signal and stops after its current job.
    Draining,
    /// Every agent has exited: the member's compute may be removed.
    Exited { detail: String },
}

/// One member as listed.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub name: MemberName,
    pub fleet: String,
    pub phase: MemberPhase,
    pub launched_at: DateTime<Utc>,
    /// Agents it runs.
    pub agents: u32,
    /// Why the platform is about to take the member away (a spot interruption or
    /// rebalance notice): the pool drains it at once.
    pub notice: Option<String>,
    /// How it is bought, for the status page and cost attribution ("process", "spot",
    /// "on-demand").
    pub capacity: &'static str,
}

/// A platform that keeps pool members.
#[async_trait]
pub trait PoolBackend: Send + Sync {
    /// A short name for logs, metrics and the status page ("local", "ec2", …).
    fn kind(&self) -> &'static str;

    /// How long a member typically takes from launch to connected agents, until the pool
    /// has measured its own.
    fn typical_boot_time(&self) -> Duration;

    /// Every member of `fleet` that still holds compute, whatever its phase.
    async fn members(&self, fleet: &str) -> Result<Vec<MemberStatus>, BackendError>;

    /// Start `count` more members running `spec`. Their names show up in `members`.
    async fn add(&self, spec: &MemberSpec, count: u32) -> Result<(), BackendError>;

    /// Ask the member's agents to stop after their current job, once: asking again does
    /// nothing more.
    async fn drain(&self, member: &MemberName) -> Result<(), BackendError>;

    /// Free the member's compute. Call it only once the member's agents are gone (phase
    /// `Exited`, or Buildkite no longer lists the agents of a drained member); a backend
    /// refuses a member that was never drained and has not exited.
    async fn remove(&self, member: &MemberName) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_lead_back_to_their_member() {
        let member = MemberName::new("linux-pool-3fa9c1d2");
        assert_eq!(member.agent_name(2), "linux-pool-3fa9c1d2-2");
        assert_eq!(member_of_agent("linux-pool-3fa9c1d2-2"), Some((member, 2)));
        let instance = MemberName::new("i-0123456789abcdef0");
        assert_eq!(
            member_of_agent(&instance.agent_name(1)),
            Some((instance, 1))
        );
        for foreign in ["ci-agent", "agent-0", "-1", "host-x"] {
            assert_eq!(member_of_agent(foreign), None, "{foreign}");
        }
    }
}
