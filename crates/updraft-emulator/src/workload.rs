//! Workloads for tests and benchmarks: many builds created at given offsets from now, given
//! as "N builds every X ms", a list of offsets, or a trace of arrivals (one per build).

use crate::error::{ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::CreateBuild;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One build to create `at_ms` after the workload starts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Arrival {
    pub at_ms: u64,
    pub pipeline: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The request body of `POST /_emulator/workload`: either `trace`, or `pipeline` with
/// `builds` (+ `interval_ms`) or `offsets_ms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    pub pipeline: Option<String>,
    pub builds: Option<u64>,
    pub interval_ms: Option<u64>,
    pub offsets_ms: Option<Vec<u64>>,
    pub trace: Option<Vec<Arrival>>,
}

impl WorkloadRequest {
    pub(crate) fn arrivals(self) -> ApiResult<Vec<Arrival>> {
        let mut arrivals = match (self.trace, self.pipeline) {
            (Some(trace), None) => trace,
            (None, Some(pipeline)) => {
                let offsets = match (self.offsets_ms, self.builds) {
                    (Some(offsets), None) => offsets,
                    (None, Some(n)) => (0..n).map(|i| i * self.interval_ms.unwrap_or(0)).collect(),
                    _ => return Err(ApiError::unprocessable("workload: with `pipeline`, give either `builds` (and optionally `interval_ms`) or `offsets_ms`")),
                };
                offsets
                    .into_iter()
                    .map(|at_ms| Arrival {
                        at_ms,
                        pipeline: pipeline.clone(),
                        branch: None,
                        commit: None,
                        message: None,
                        env: BTreeMap::new(),
                    })
                    .collect()
            }
            _ => {
                return Err(ApiError::unprocessable(
                    "workload: give either `trace` (a list of arrivals) or `pipeline`",
                ))
            }
        };
        if arrivals.len() > 1_000_000 {
            return Err(ApiError::unprocessable("workload: at most 1000000 builds"));
        }
        arrivals.sort_by_key(|a| a.at_ms);
        Ok(arrivals)
    }
}

/// What starting a workload did.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadStarted {
    /// `(pipeline, build number)` of the builds created at offset 0.
    pub created: Vec<(String, u64)>,
    /// Builds still to be created later.
    pub pending: usize,
}

fn create(app: &SharedApp, arrival: &Arrival) -> ApiResult<(String, u64)> {
    let req = CreateBuild {
        commit: arrival.commit.clone().unwrap_or_default(),
        branch: arrival.branch.clone().unwrap_or_default(),
        message: arrival
            .message
            .clone()
            .unwrap_or_else(|| "workload".to_string()),
        env: arrival.env.clone(),
        meta_data: BTreeMap::new(),
        source: "workload".to_string(),
    };
    app.store.with(|s| {
        let id = s.create_build(&arrival.pipeline, req)?;
        Ok((
            arrival.pipeline.clone(),
            s.builds.get(&id).map_or(0, |b| b.number),
        ))
    })
}

/// Create the offset-0 builds now and the rest from a background task.
pub(crate) fn start(app: &SharedApp, arrivals: Vec<Arrival>) -> ApiResult<WorkloadStarted> {
    let missing = app.store.read(|s| {
        arrivals
            .iter()
            .find(|a| !s.pipelines.contains_key(&a.pipeline))
            .map(|a| a.pipeline.clone())
    });
    if let Some(pipeline) = missing {
        return Err(ApiError::unprocessable(format!(
            "workload: no pipeline with slug {pipeline:?}; create it first"
        )));
    }
    let split = arrivals.partition_point(|a| a.at_ms == 0);
    let (now, later) = arrivals.split_at(split);
    let created = now
        .iter()
        .map(|a| create(app, a))
        .collect::<ApiResult<Vec<_>>>()?;
    let later = later.to_vec();
    let pending = later.len();
    if !later.is_empty() {
        let app = app.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for arrival in later {
                tokio::time::sleep_until(start + Duration::from_millis(arrival.at_ms)).await;
                if let Err(error) = create(&app, &arrival) {
                    tracing::warn!(pipeline = %arrival.pipeline, message = %error.message, "workload build not created");
                }
            }
        });
    }
    Ok(WorkloadStarted { created, pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_interval_and_trace_are_sorted() {
        let req = WorkloadRequest {
            pipeline: Some("p".into()),
            builds: Some(3),
            interval_ms: Some(10),
            ..Default::default()
        };
        let at: Vec<u64> = req.arrivals().unwrap().iter().map(|a| a.at_ms).collect();
        assert_eq!(at, vec![0, 10, 20]);
        let trace = vec![
            Arrival {
                at_ms: 5,
                pipeline: "a".into(),
                branch: None,
                commit: None,
                message: None,
                env: BTreeMap::new(),
            },
            Arrival {
                at_ms: 1,
                pipeline: "b".into(),
                branch: None,
                commit: None,
                message: None,
                env: BTreeMap::new(),
            },
        ];
        let req = WorkloadRequest {
            trace: Some(trace),
            ..Default::default()
        };
        assert_eq!(req.arrivals().unwrap()[0].pipeline, "b");
        assert!(WorkloadRequest::default().arrivals().is_err());
    }
}
