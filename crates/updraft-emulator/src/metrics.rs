//! `GET /v3/metrics` and `/v3/metrics/queue?name=Q` in the shape buildkite-agent-metrics
//! reads (reference §5). `jobs.total` counts scheduled + running + waiting.

use crate::auth::require_agent_token;
use crate::error::{ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::model::ConnectionState;
use crate::store::State as World;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use updraft_model::JobState;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/metrics", get(all_queues))
        .route("/metrics/queue", get(one_queue))
}

#[derive(Default, Clone, Copy)]
struct Agents {
    idle: u64,
    busy: u64,
}

#[derive(Default, Clone, Copy)]
struct Jobs {
    scheduled: u64,
    running: u64,
    waiting: u64,
}

impl Agents {
    fn json(self) -> Value {
        json!({"idle": self.idle, "busy": self.busy, "total": self.idle + self.busy})
    }
}

impl Jobs {
    fn json(self) -> Value {
        json!({"scheduled": self.scheduled, "running": self.running, "waiting": self.waiting, "total": self.scheduled + self.running + self.waiting})
    }
}

fn count(world: &World) -> (BTreeMap<String, Agents>, BTreeMap<String, Jobs>) {
    let mut agents: BTreeMap<String, Agents> = BTreeMap::new();
    for agent in world.agents.values().filter(|a| {
        matches!(
            a.connection_state,
            ConnectionState::Connected | ConnectionState::Stopping
        )
    }) {
        let entry = agents.entry(agent.tags.queue().to_string()).or_default();
        if agent.job_id.is_some() {
            entry.busy += 1;
        } else {
            entry.idle += 1;
        }
    }
    let mut jobs: BTreeMap<String, Jobs> = BTreeMap::new();
    for job in world
        .jobs
        .values()
        .filter(|j| j.kind == crate::store::model::JobKind::Script)
    {
        let entry = jobs.entry(job.step.agents.queue().to_string()).or_default();
        match job.state {
            JobState::Scheduled | JobState::Reserved | JobState::Assigned => entry.scheduled += 1,
            JobState::Accepted | JobState::Running | JobState::Canceling | JobState::TimingOut => {
                entry.running += 1
            }
            JobState::Waiting | JobState::Pending | JobState::Blocked | JobState::Limited => {
                entry.waiting += 1
            }
            _ => {}
        }
    }
    (agents, jobs)
}

fn with_poll_header(body: Value) -> Response {
    ([("buildkite-agent-metrics-poll-duration", "1")], Json(body)).into_response()
}

async fn all_queues(State(app): State<SharedApp>, headers: HeaderMap) -> ApiResult<Response> {
    require_agent_token(&app, &headers)?;
    let (agents, jobs) = app.store.read(count);
    let agent_total = agents.values().fold(Agents::default(), |a, b| Agents {
        idle: a.idle + b.idle,
        busy: a.busy + b.busy,
    });
    let job_total = jobs.values().fold(Jobs::default(), |a, b| Jobs {
        scheduled: a.scheduled + b.scheduled,
        running: a.running + b.running,
        waiting: a.waiting + b.waiting,
    });
    let mut agents_json = agent_total.json();
    agents_json["queues"] = agents
        .iter()
        .map(|(q, a)| (q.clone(), a.json()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut jobs_json = job_total.json();
    jobs_json["queues"] = jobs
        .iter()
        .map(|(q, j)| (q.clone(), j.json()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok(with_poll_header(json!({
        "agents": agents_json,
        "jobs": jobs_json,
        "organization": {"slug": app.org},
        "cluster": {"name": "Default cluster"},
    })))
}

#[derive(Deserialize)]
struct QueueQuery {
    name: Option<String>,
}

async fn one_queue(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    Query(query): Query<QueueQuery>,
) -> ApiResult<Response> {
    require_agent_token(&app, &headers)?;
    let name = query
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("metrics/queue needs ?name=<queue>"))?;
    let queue = crate::store::stacks::normalize_queue(&name).to_string();
    let (agents, jobs) = app.store.read(count);
    Ok(with_poll_header(json!({
        "agents": agents.get(&queue).copied().unwrap_or_default().json(),
        "jobs": jobs.get(&queue).copied().unwrap_or_default().json(),
        "organization": {"slug": app.org},
        "cluster": {"name": "Default cluster"},
    })))
}
