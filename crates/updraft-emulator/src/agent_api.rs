//! Agent API v3, agent-level calls (reference §1.6.1–1.6.7): register, connect, disconnect,
//! ping, heartbeat, accept and acquire.

use crate::auth::{header_token, parse_uuid, require_session};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::{Caller, RegisterCredential, RegisterRequest};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/register", post(register))
        .route("/connect", post(connect))
        .route("/disconnect", post(disconnect))
        .route("/ping", get(ping))
        .route("/heartbeat", post(heartbeat))
        .route("/jobs/{id}/accept", put(accept))
        .route("/jobs/{id}/acquire", put(acquire))
}

fn caller(headers: &HeaderMap, peer: SocketAddr) -> Caller {
    Caller {
        user_agent: headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        ip: peer.ip().to_string(),
    }
}

async fn register(
    State(app): State<SharedApp>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let token = header_token(&headers, "Token").ok_or_else(|| {
        ApiError::unauthorized("Missing Authorization header: expected \"Token <agent token>\"")
    })?;
    let credential = if token == app.agent_token.expose() {
        RegisterCredential::AgentToken
    } else if let Some(job) = app.store.read(|s| s.acquisition_token_job(token)) {
        RegisterCredential::AcquisitionToken(job)
    } else {
        return Err(ApiError::unauthorized("Invalid agent registration token"));
    };
    let request: RegisterRequest = parse_json("register", &body)?;
    let caller = caller(&headers, peer);
    app.store
        .with(|s| s.register_agent(credential, request, caller))
        .map(Json)
}

async fn connect(State(app): State<SharedApp>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    app.store.with(|s| s.connect_agent(agent))?;
    Ok(Json(json!({})))
}

async fn disconnect(State(app): State<SharedApp>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    app.store.with(|s| s.disconnect_agent(agent))?;
    Ok(Json(json!({})))
}

async fn ping(State(app): State<SharedApp>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    app.store.with(|s| s.ping(agent)).map(Json)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HeartbeatRequest {
    sent_at: Option<String>,
}

async fn heartbeat(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    let request: HeartbeatRequest = parse_json("heartbeat", &body)?;
    app.store
        .with(|s| s.heartbeat(agent, request.sent_at))
        .map(Json)
}

async fn accept(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    let job = parse_uuid("job", &id)?;
    app.store.with(|s| s.accept_job(agent, job)).map(Json)
}

async fn acquire(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let agent = require_session(&app, &headers)?;
    let job = parse_uuid("job", &id)?;
    let lock = headers
        .get("x-buildkite-lock-acquire-job")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("true"));
    app.store
        .with(|s| s.acquire_job(agent, job, lock))
        .map(Json)
}
