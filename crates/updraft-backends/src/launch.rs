//! What a launch is: its name (derived from the job uuid), the spec the scheduler hands a
//! backend, and the status a backend reports back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use updraft_model::Secret;
use uuid::Uuid;

/// A launch's name: `updraft-<job uuid>` for a job launch. Valid as a Kubernetes object
/// name, a process-group tag and a CodeBuild idempotency token, so every backend can use it
/// to make launch idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaunchName(String);

pub const LAUNCH_PREFIX: &str = "updraft-";

impl LaunchName {
    pub fn for_job(job: Uuid) -> Self {
        LaunchName(format!("{LAUNCH_PREFIX}{job}"))
    }

    /// Parse a name a backend reported; `None` for names Updraft did not make.
    pub fn parse(raw: &str) -> Option<Self> {
        raw.strip_prefix(LAUNCH_PREFIX)?.parse::<Uuid>().ok()?;
        Some(LaunchName(raw.to_string()))
    }

    pub fn job_id(&self) -> Uuid {
        self.0[LAUNCH_PREFIX.len()..]
            .parse()
            .expect("a LaunchName always holds a uuid")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LaunchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What Buildkite says of the job a launch is for: enough to label, tag and attribute the
/// launch (pipeline, build, step, the job's agent tags) and, for a backend that asks
/// (`Backend::needs_job_details`), the job's environment and command, which carry per-step
/// settings such as the `kubernetes` plugin (`BUILDKITE_PLUGINS`), the step's `image`
/// (`BUILDKITE_IMAGE`) or CodeBuild overrides (`CB_IMAGE_OVERRIDE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobContext {
    pub queue: String,
    /// The job's agent query rules as Buildkite lists them (`["queue=linux",
    /// "resource_class=large"]`).
    pub agent_query_rules: Vec<String>,
    pub priority: i64,
    pub pipeline_slug: Option<String>,
    pub build_number: Option<u64>,
    pub build_branch: Option<String>,
    pub step_key: Option<String>,
    /// The job's environment from Buildkite; empty unless the backend asked for details.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The job's command; `None` unless the backend asked for details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl JobContext {
    /// The job's agent tags as `(key, value)` pairs (`resource_class=large` → `("resource_class",
    /// "large")`); rules that are not `key=value` are left out.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.agent_query_rules
            .iter()
            .filter_map(|rule| rule.split_once('='))
    }

    /// One agent tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Everything a backend needs to start one launch for one job.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub name: LaunchName,
    pub job_id: Uuid,
    pub fleet: String,
    /// The job the launch is for.
    pub job: JobContext,
    /// Plain environment for the launch (endpoint, job id, tags, …).
    pub env: BTreeMap<String, String>,
    /// Credentials, passed to the launch by the safest means the platform has (a Secret in
    /// Kubernetes, the process environment locally); never logged.
    pub secrets: BTreeMap<String, Secret>,
    /// The program and arguments to run (the agent command from the fleet's template).
    pub command: Vec<String>,
    /// The backend ends the launch after this long, whatever it is doing.
    pub deadline: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    Started,
    /// A launch with this name exists already; nothing new was started.
    AlreadyExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchPhase {
    Pending,
    Running,
    Succeeded,
    /// It ended badly; a launch that ends so before its agent took the job is relaunched
    /// within the fleet's budget (an evicted pod, a lost node, a crashed process).
    Failed {
        reason: String,
    },
    /// The platform will not run it as specified (an image that cannot be pulled, a pod that
    /// cannot be scheduled past its deadline): relaunching would fail the same way, so the job
    /// is failed at once with the reason.
    Refused {
        reason: String,
    },
}

impl LaunchPhase {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            LaunchPhase::Succeeded | LaunchPhase::Failed { .. } | LaunchPhase::Refused { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct LaunchStatus {
    pub name: LaunchName,
    pub fleet: String,
    pub phase: LaunchPhase,
    pub started_at: DateTime<Utc>,
    /// Why a launch is not running yet, in words for the build ("pulling image
    /// ghcr.io/acme/ci:3", "unschedulable: 0/3 nodes are available: 3 Insufficient cpu").
    /// The scheduler posts each new detail to the job once.
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_names_round_trip_and_reject_foreign_names() {
        let job = Uuid::new_v4();
        let name = LaunchName::for_job(job);
        assert_eq!(name.job_id(), job);
        assert_eq!(LaunchName::parse(name.as_str()), Some(name.clone()));
        assert!(name.as_str().len() <= 63);
        assert_eq!(LaunchName::parse("updraft-nope"), None);
        assert_eq!(LaunchName::parse("other-thing"), None);
    }
}
