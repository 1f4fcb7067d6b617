//! Reading Updraft's settings files. Every setting is a typed struct deriving serde's
//! `Deserialize` and schemars' `JsonSchema`; reading one checks the raw value against the
//! struct's own JSON Schema first, so **every** structural mistake (a missing required key, an
//! unknown key, a wrong type, a value out of range) is reported at once with its path —
//! `fleet[1].max_in_flight: expected at least 1, got 0` — rather than the first one serde
//! trips over. Rules that span several keys live in [`Settings::validate`], which runs on the
//! typed value and reports with the same paths. The same schemas render the reference of
//! every key (`docs/configuration.md`), so the documentation cannot drift from the code.
//!
//! The crates that own settings (the scheduler, each backend, the scaling policies) depend on
//! this one; it knows nothing of them.

mod duration;
mod errors;
mod messages;
mod read;
pub mod reference;
mod schema;

pub use duration::Duration;
pub use errors::{ConfigError, ConfigErrors, Errors, Path};
pub use read::{read, read_toml_text, to_json, Settings};
pub use schema::{schema_for, EXPECTED};
