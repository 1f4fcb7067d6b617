//! What a launch is: its name (derived from the job uuid), the spec the scheduler hands a
//! backend, and the status a backend reports back.

use chrono::{DateTime, Utc};
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

/// Everything a backend needs to start one launch for one job.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub name: LaunchName,
    pub job_id: Uuid,
    pub fleet: String,
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
    Failed { reason: String },
}

impl LaunchPhase {
    pub fn is_finished(&self) -> bool {
        matches!(self, LaunchPhase::Succeeded | LaunchPhase::Failed { .. })
    }
}

#[derive(Debug, Clone)]
pub struct LaunchStatus {
    pub name: LaunchName,
    pub fleet: String,
    pub phase: LaunchPhase,
    pub started_at: DateTime<Utc>,
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
