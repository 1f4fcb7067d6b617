//! Buildkite job states (reference §3.5) and the questions the rest of Updraft asks of them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every job state the reference lists. `Passed`/`Failed` are the REST spellings of the
/// internal `finished` state; the emulator stores them directly so each job has one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Waiting,
    WaitingFailed,
    Blocked,
    BlockedFailed,
    Unblocked,
    UnblockedFailed,
    Limiting,
    Limited,
    Scheduled,
    Reserved,
    Assigned,
    Accepted,
    Running,
    Finished,
    Passed,
    Failed,
    Canceling,
    Canceled,
    TimingOut,
    TimedOut,
    Expired,
    Skipped,
    Broken,
}

impl JobState {
    pub const ALL: [JobState; 24] = [
        JobState::Pending,
        JobState::Waiting,
        JobState::WaitingFailed,
        JobState::Blocked,
        JobState::BlockedFailed,
        JobState::Unblocked,
        JobState::UnblockedFailed,
        JobState::Limiting,
        JobState::Limited,
        JobState::Scheduled,
        JobState::Reserved,
        JobState::Assigned,
        JobState::Accepted,
        JobState::Running,
        JobState::Finished,
        JobState::Passed,
        JobState::Failed,
        JobState::Canceling,
        JobState::Canceled,
        JobState::TimingOut,
        JobState::TimedOut,
        JobState::Expired,
        JobState::Skipped,
        JobState::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Waiting => "waiting",
            JobState::WaitingFailed => "waiting_failed",
            JobState::Blocked => "blocked",
            JobState::BlockedFailed => "blocked_failed",
            JobState::Unblocked => "unblocked",
            JobState::UnblockedFailed => "unblocked_failed",
            JobState::Limiting => "limiting",
            JobState::Limited => "limited",
            JobState::Scheduled => "scheduled",
            JobState::Reserved => "reserved",
            JobState::Assigned => "assigned",
            JobState::Accepted => "accepted",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Canceling => "canceling",
            JobState::Canceled => "canceled",
            JobState::TimingOut => "timing_out",
            JobState::TimedOut => "timed_out",
            JobState::Expired => "expired",
            JobState::Skipped => "skipped",
            JobState::Broken => "broken",
        }
    }

    /// No further transition happens from a terminal state (a retry makes a new job).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished
                | JobState::Passed
                | JobState::Failed
                | JobState::Canceled
                | JobState::TimedOut
                | JobState::Expired
                | JobState::Skipped
                | JobState::Broken
                | JobState::WaitingFailed
                | JobState::BlockedFailed
                | JobState::UnblockedFailed
        )
    }

    /// The job wants its agent to stop: the agent API's cancellation signal (reference §1.6.10).
    pub fn is_stopping(self) -> bool {
        matches!(
            self,
            JobState::Canceling | JobState::Canceled | JobState::TimingOut | JobState::TimedOut
        )
    }

    /// An agent holds or is about to hold the job.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Assigned
                | JobState::Accepted
                | JobState::Running
                | JobState::Canceling
                | JobState::TimingOut
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}; expected one of the states in the Buildkite reference, e.g. \"scheduled\" or \"running\"")]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownJobState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_string_and_serde() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn unknown_state_names_the_value() {
        let err = "flying".parse::<JobState>().unwrap_err();
        assert!(err.to_string().contains("flying"));
    }

    #[test]
    fn terminal_and_stopping_states() {
        assert!(JobState::Passed.is_terminal());
        assert!(!JobState::Running.is_terminal());
        assert!(JobState::Canceling.is_stopping());
        assert!(!JobState::Scheduled.is_stopping());
    }
}
