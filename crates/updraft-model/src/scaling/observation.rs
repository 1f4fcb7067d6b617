//! What a policy sees of its pool at one step, and what it answers. The scheduler's pool
//! mode and `updraft sim` fill an `Observation` from the same counts, so a policy cannot
//! tell a simulated pool from a real one.

/// Jobs on the pool's queue, as Buildkite's queue metrics count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Jobs ready to run that no agent has taken yet (`jobs.scheduled`).
    pub scheduled: u32,
    /// Jobs running on one of the pool's agents (`jobs.running`).
    pub running: u32,
    /// Jobs behind a wait step, not yet runnable (`jobs.waiting`).
    pub waiting: u32,
}

/// The pool's agents. Registered agents are `busy + idle`; booting ones are not yet
/// connected to Buildkite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentCounts {
    pub busy: u32,
    pub idle: u32,
    /// Agents on instances that are still booting.
    pub booting: u32,
}

impl AgentCounts {
    /// Agents connected to Buildkite (its `agents.total`).
    pub fn registered(&self) -> u32 {
        self.busy + self.idle
    }
}

/// The pool's instances (launch units: a pod, a VM, a task), each running
/// `agents_per_instance` agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// The count the pool was last asked for (an ASG's DesiredCapacity, a Deployment's
    /// replicas); it can be above what exists while launches are held back or booting.
    pub desired: u32,
    /// Booted instances whose agents are connected (an ASG's InService).
    pub in_service: u32,
    /// Instances launched and still booting (an ASG's Pending).
    pub booting: u32,
}

/// Everything a policy decides from at one step. Time comes in here; a policy reads no
/// clock.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Milliseconds since the Unix epoch (virtual time in the simulator). Scheduled minimums
    /// read the weekday and time of day from it.
    pub now_ms: i64,
    pub jobs: JobCounts,
    pub agents: AgentCounts,
    pub instances: InstanceCounts,
    /// Jobs for this pool's queue taken in since the pool started: a counter that only
    /// grows, so a policy can derive arrival rates from its differences.
    pub arrivals_total: u64,
    /// For each instance whose agents are all idle, when it became wholly idle (ms since the
    /// epoch). Scale-in stops the longest-idle instances first.
    pub idle_since_ms: &'a [i64],
    /// How long the pool's recent instances took from launch to a connected agent, in ms
    /// (measured by the pool from its own past boots).
    pub boot_time_ms: i64,
}

impl Observation<'_> {
    /// Instances that exist: booted or booting.
    pub fn instances_live(&self) -> u32 {
        self.instances.in_service + self.instances.booting
    }
}

/// A policy's answer: how many instances the pool should have, and why, in a few words
/// for the status page. The pool launches up to it, or stops idle instances down to it;
/// busy agents are never stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    pub desired: u32,
    pub reason: String,
}
