//! The `[local]` table: where the local backend keeps its launches and how it stops them.
//! Read by the binary with `updraft_config`, like every backend's settings.

use super::LocalOptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use updraft_config::{Duration, Settings};

/// The local backend: each launch is a process on this machine, in its own work directory.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Where launch directories live; launches keep running across a scheduler restart and
    /// are found here again.
    #[serde(default = "default_state_dir")]
    #[schemars(length(min = 1))]
    pub state_dir: String,
    /// Time between SIGTERM and SIGKILL when a launch is stopped.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Duration,
}

/// Where launch directories go when `[local] state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "updraft-local";

fn default_state_dir() -> String {
    DEFAULT_STATE_DIR.into()
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            state_dir: default_state_dir(),
            stop_grace: default_stop_grace(),
        }
    }
}

impl Settings for LocalSettings {}

impl LocalSettings {
    /// Options for `LocalBackend::open`; fleets' caps are added by the caller.
    pub fn options(&self) -> LocalOptions {
        let mut options = LocalOptions::new(&self.state_dir);
        options.stop_grace = self.stop_grace.get();
        options
    }
}
