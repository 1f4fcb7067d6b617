//! From builds to jobs: an emulator build trace says when each pipeline's build arrives;
//! a pipelines file (TOML) says which jobs such a build runs, on which queue, for how long:
//!
//! ```toml
//! [pipeline.app]
//! job = [
//!   { queue = "default", count = 6, duration = { kind = "lognormal", median = "4m", p95 = "12m" } },
//!   { queue = "arm", duration = { kind = "constant", value = "90s" } },
//! ]
//! ```
//!
//! Every job of a build arrives with the build: wait steps and dependencies, which would
//! stagger them, are not modelled.

use super::JobArrival;
use crate::backend::DurationDistribution;
use rand::SeedableRng;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One build arrival of the emulator's workload trace; its other fields (branch, commit,
/// env) do not change the jobs and are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct BuildArrival {
    pub at_ms: u64,
    pub pipeline: String,
}

/// The emulator trace as a file: a bare list of arrivals, or the `POST /_emulator/workload`
/// body with its `trace`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BuildTrace {
    List(Vec<BuildArrival>),
    Request { trace: Vec<BuildArrival> },
}

/// Which jobs one pipeline's build runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineJobs {
    pub job: Vec<JobSpec>,
}

/// A group of identical jobs in a build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default = "default_queue")]
    pub queue: String,
    /// How many such jobs (a step's `parallelism`). Default 1.
    #[serde(default = "one")]
    pub count: u32,
    pub duration: DurationDistribution,
    #[serde(default)]
    pub priority: i64,
}

fn default_queue() -> String {
    "default".into()
}
fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelinesFile {
    pipeline: BTreeMap<String, PipelineJobs>,
}

/// Parse a pipelines file.
pub fn parse_pipelines(text: &str) -> Result<BTreeMap<String, PipelineJobs>, String> {
    let file: PipelinesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(file.pipeline)
}

/// Parse an emulator build trace (JSON).
pub fn parse_build_trace(text: &str) -> Result<Vec<BuildArrival>, String> {
    match serde_json::from_str::<BuildTrace>(text).map_err(|e| e.to_string())? {
        BuildTrace::List(list) | BuildTrace::Request { trace: list } => Ok(list),
    }
}

/// The jobs of every build, with durations drawn from a seeded generator.
pub fn expand(
    builds: &[BuildArrival],
    pipelines: &BTreeMap<String, PipelineJobs>,
    seed: u64,
) -> Result<Vec<JobArrival>, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut jobs = Vec::new();
    for build in builds {
        let pipeline = pipelines.get(&build.pipeline).ok_or_else(|| {
            format!(
                "the trace has a build of pipeline {:?}, which the pipelines file does not define",
                build.pipeline
            )
        })?;
        for spec in &pipeline.job {
            for _ in 0..spec.count {
                jobs.push(JobArrival {
                    at_ms: build.at_ms,
                    queue: spec.queue.clone(),
                    duration_ms: spec.duration.sample_ms(&mut rng) as u64,
                    pipeline: Some(build.pipeline.clone()),
                    priority: spec.priority,
                });
            }
        }
    }
    jobs.sort_by_key(|j| j.at_ms);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulator_trace_becomes_jobs() {
        let pipelines = parse_pipelines(
            r#"
            [pipeline.app]
            job = [
              { count = 3, duration = { kind = "constant", value = "4m" } },
              { queue = "arm", duration = { kind = "constant", value = "90s" }, priority = 2 },
            ]
            "#,
        )
        .unwrap();
        let builds = parse_build_trace(
            r#"{"trace": [{"at_ms": 1000, "pipeline": "app", "branch": "main"}, {"at_ms": 0, "pipeline": "app"}]}"#,
        )
        .unwrap();
        let jobs = expand(&builds, &pipelines, 1).unwrap();
        assert_eq!(jobs.len(), 8);
        assert_eq!(jobs[0].at_ms, 0);
        assert_eq!(jobs.iter().filter(|j| j.queue == "arm").count(), 2);
        assert!(jobs.iter().any(|j| j.duration_ms == 240_000));
        let missing = parse_build_trace(r#"[{"at_ms": 0, "pipeline": "web"}]"#).unwrap();
        assert!(expand(&missing, &pipelines, 1)
            .unwrap_err()
            .contains("\"web\""));
    }
}
