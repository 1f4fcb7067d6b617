//! Plain types and pure policy shared by every Updraft crate: job states, agent tags and
//! query rules, the limiter that holds jobs to a fleet's caps, and the `Secret` wrapper that
//! keeps tokens out of logs. Nothing here does I/O.

pub mod job_state;
pub mod limiter;
pub mod rules;
pub mod scaling;
pub mod secret;

pub use job_state::JobState;
pub use limiter::{FleetLimits, Limiter, PriorityOrder};
pub use rules::{AgentTags, QueryRule, QueryRules, RuleError};
pub use secret::Secret;
