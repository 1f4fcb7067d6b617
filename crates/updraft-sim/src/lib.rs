//! `updraft sim`: a virtual-time simulator that runs Updraft's scaling policies and the
//! scheduler's limiter against a workload, with each backend's boot time and price as
//! distributions, and reports for each policy the jobs, wait percentiles, busy and idle
//! agent-seconds and cost — what a setting will cost, and how long jobs will wait, before
//! anyone changes it.
//!
//! - `settings`: the TOML the simulator reads (fleets, pools, backends), errors by path;
//! - `workload`: job traces, the emulator's build traces, and generators;
//! - `engine`: the discrete-event core (no I/O);
//! - `compare`: the side-by-side runs of `--compare`;
//! - `report`, `output`, `plot`: numbers, table/JSON/CSV, and SVG plots.

pub mod backend;
pub mod compare;
mod engine;
pub mod output;
pub mod plot;
pub mod report;
pub mod settings;
pub mod workload;

pub use backend::{BackendModel, BackendPreset, DurationDistribution, Price};
pub use engine::simulate;
pub use report::{FleetReport, Report, Sample, WaitStats};
pub use settings::{FleetSettings, SimSettings};
