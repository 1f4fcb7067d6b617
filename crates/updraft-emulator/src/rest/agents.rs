//! REST agents: list (connected and stopping only), get, stop, pause and resume.

use super::{check_org, query_pairs, query_values};
use crate::auth::parse_uuid;
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::model::ConnectionState;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/organizations/{org}/agents", get(list))
        .route("/organizations/{org}/agents/", get(list))
        .route("/organizations/{org}/agents/{id}", get(show))
        .route("/organizations/{org}/agents/{id}/stop", put(stop))
        .route("/organizations/{org}/agents/{id}/pause", put(pause))
        .route("/organizations/{org}/agents/{id}/resume", put(resume))
}

async fn list(
    State(app): State<SharedApp>,
    Path(org): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    let pairs = query_pairs(&uri);
    let filter = |name: &str| {
        query_values(&pairs, name)
            .first()
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    };
    let (name, hostname, version) = (filter("name"), filter("hostname"), filter("version"));
    let items = app.store.read(|s| {
        s.agent_order
            .iter()
            .filter_map(|id| s.agents.get(id))
            .filter(|a| {
                matches!(
                    a.connection_state,
                    ConnectionState::Connected | ConnectionState::Stopping
                )
            })
            .filter(|a| name.as_ref().is_none_or(|n| a.name.contains(n.as_str())))
            .filter(|a| hostname.as_ref().is_none_or(|h| a.hostname == *h))
            .filter(|a| version.as_ref().is_none_or(|v| a.version == *v))
            .map(|a| s.rest_agent(a))
            .collect()
    });
    super::paginate(items, &uri, &app.base_url)
}

async fn show(
    State(app): State<SharedApp>,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    let id = parse_uuid("agent", &id)?;
    app.store
        .read(|s| s.agents.get(&id).map(|a| Json(s.rest_agent(a))))
        .ok_or_else(|| ApiError::not_found("No agent found"))
}

#[derive(Deserialize)]
#[serde(default)]
struct StopRequest {
    force: bool,
}

impl Default for StopRequest {
    fn default() -> Self {
        StopRequest { force: true }
    }
}

async fn stop(
    State(app): State<SharedApp>,
    Path((org, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_org(&app, &org)?;
    let id = parse_uuid("agent", &id)?;
    let request: StopRequest = parse_json("stop agent", &body)?;
    app.store.with(|s| s.stop_agent(id, request.force))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(app): State<SharedApp>,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_org(&app, &org)?;
    let id = parse_uuid("agent", &id)?;
    app.store.with(|s| s.pause_agent(id, true))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(
    State(app): State<SharedApp>,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_org(&app, &org)?;
    let id = parse_uuid("agent", &id)?;
    app.store.with(|s| s.pause_agent(id, false))?;
    Ok(StatusCode::NO_CONTENT)
}
