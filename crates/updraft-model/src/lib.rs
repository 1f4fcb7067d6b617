//! Plain types and pure policy shared by every Updraft crate: job states, agent tags and
//! query rules, and the `Secret` wrapper that keeps tokens out of logs. Nothing here does I/O.

pub mod job_state;
pub mod rules;
pub mod secret;

pub use job_state::JobState;
pub use rules::{AgentTags, QueryRule, QueryRules, RuleError};
pub use secret::Secret;
