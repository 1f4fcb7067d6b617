//! The Stacks API (reference §1.7): register / deregister, scheduled-jobs, batch-reserve, job
//! acquisition tokens, get job, get-states, finish and notifications, each under its own
//! per-stack rate-limit scope.

use crate::auth::{parse_uuid, require_agent_token};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::model::Notification;
use crate::store::State as World;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const MAX_BATCH: usize = 1000;
const MAX_RESERVATION_SECONDS: u64 = 3600;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/stacks/register", post(register))
        .route("/stacks/{key}/deregister", post(deregister))
        .route("/stacks/{key}/scheduled-jobs", get(scheduled_jobs))
        .route(
            "/stacks/{key}/scheduled-jobs/batch-reserve",
            put(batch_reserve),
        )
        .route(
            "/stacks/{key}/job-acquisition-tokens",
            post(acquisition_tokens),
        )
        .route("/stacks/{key}/jobs/get-states", post(get_states))
        .route("/stacks/{key}/jobs/{id}", get(get_job))
        .route("/stacks/{key}/jobs/{id}/finish", post(finish))
        .route("/stacks/{key}/notifications", post(notifications))
}

/// Authenticate with the agent token and count the request against `scope` for this stack.
fn admit(app: &SharedApp, headers: &HeaderMap, scope: &str, key: &str) -> ApiResult<HeaderMap> {
    require_agent_token(app, headers)?;
    let mut out = HeaderMap::new();
    app.live
        .rate
        .check(scope, key, Duration::from_secs(1), "RateLimit", &mut out)?;
    Ok(out)
}

fn reply(headers: HeaderMap, status: StatusCode, body: Value) -> Response {
    (status, headers, Json(body)).into_response()
}

#[derive(Deserialize)]
struct RegisterRequest {
    key: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    queue_key: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

async fn register(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let request: RegisterRequest = parse_json("stacks register", &body)?;
    let rate = admit(&app, &headers, "default", &request.key)?;
    if request.key.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "stacks register: key must not be empty",
        ));
    }
    let kind = request.kind.unwrap_or_else(|| "custom".to_string());
    if !["kubernetes", "elastic", "custom"].contains(&kind.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "stacks register: type {kind:?} must be kubernetes, elastic or custom"
        )));
    }
    let metadata = request.metadata.unwrap_or_else(|| json!({}));
    let (created, stack) = app.store.with(|s| {
        s.register_stack(
            request.key,
            kind,
            request.queue_key.unwrap_or_default(),
            metadata,
        )
    });
    Ok(reply(
        rate,
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        stack,
    ))
}

async fn deregister(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "default", &key)?;
    app.store.with(|s| s.deregister_stack(&key))?;
    Ok((StatusCode::NO_CONTENT, rate).into_response())
}

#[derive(Deserialize)]
struct ScheduledQuery {
    queue_key: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

async fn scheduled_jobs(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    Query(query): Query<ScheduledQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "list-scheduled-jobs", &key)?;
    let limit = match query.limit.as_deref() {
        None | Some("") => 100,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_BATCH).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {MAX_BATCH}, got {raw:?}"
                ))
            })?,
    };
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("after {raw:?} is not a cursor this API returned"))
        })?),
    };
    let page = app
        .store
        .with(|s| s.scheduled_jobs(&key, query.queue_key.as_deref(), limit, after))?;
    // The jobs array arrives serialized; only the small rest is built here.
    let page_info = json!({"has_next_page": page.has_next_page, "end_cursor": page.end_cursor});
    let cluster_queue = World::cluster_queue_json(&page.queue, page.paused);
    let body = format!(
        "{{\"jobs\":{},\"page_info\":{page_info},\"cluster_queue\":{cluster_queue}}}",
        page.jobs_json
    );
    Ok((
        StatusCode::OK,
        rate,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

fn uuids(field: &str, raw: &[String]) -> ApiResult<Vec<Uuid>> {
    if raw.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "{field}: at most {MAX_BATCH} ids per request, got {}",
            raw.len()
        )));
    }
    raw.iter()
        .enumerate()
        .map(|(i, id)| {
            Uuid::parse_str(id)
                .map_err(|_| ApiError::bad_request(format!("{field}[{i}]: {id:?} is not a UUID")))
        })
        .collect()
}

#[derive(Deserialize)]
struct ReserveRequest {
    job_uuids: Vec<String>,
    reservation_expiry_seconds: Option<u64>,
}

async fn batch_reserve(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "batch-reserve", &key)?;
    let request: ReserveRequest = parse_json("batch-reserve", &body)?;
    let ids = uuids("job_uuids", &request.job_uuids)?;
    let expiry = match request.reservation_expiry_seconds {
        None => app.default_reservation,
        Some(s) if (1..=MAX_RESERVATION_SECONDS).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "reservation_expiry_seconds must be from 1 to {MAX_RESERVATION_SECONDS}, got {s}"
            )))
        }
    };
    let (reserved, not_reserved) = app.store.with(|s| s.reserve(&key, &ids, expiry))?;
    Ok(reply(
        rate,
        StatusCode::OK,
        json!({"reserved": reserved, "not_reserved": not_reserved}),
    ))
}

#[derive(Deserialize)]
struct TokensRequest {
    job_uuids: Vec<String>,
    token_lifetime_seconds: Option<u64>,
}

async fn acquisition_tokens(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "default", &key)?;
    let request: TokensRequest = parse_json("job-acquisition-tokens", &body)?;
    let ids = uuids("job_uuids", &request.job_uuids)?;
    let lifetime = Duration::from_secs(
        request
            .token_lifetime_seconds
            .unwrap_or(600)
            .clamp(1, 24 * 3600),
    );
    let (issued, not_issued) = app
        .store
        .with(|s| s.issue_acquisition_tokens(&key, &ids, lifetime))?;
    Ok(reply(
        rate,
        StatusCode::CREATED,
        json!({"job_acquisition_tokens": issued, "not_issued": not_issued}),
    ))
}

async fn get_job(
    State(app): State<SharedApp>,
    Path((key, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "show-job", &key)?;
    let id = parse_uuid("job", &id)?;
    let job = app
        .store
        .read(|s| s.stack(&key).and_then(|_| s.stack_job(id)))?;
    Ok(reply(rate, StatusCode::OK, job))
}

#[derive(Deserialize)]
struct StatesRequest {
    job_uuids: Vec<String>,
}

async fn get_states(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "batch-load-job-states", &key)?;
    let request: StatesRequest = parse_json("get-states", &body)?;
    let ids = uuids("job_uuids", &request.job_uuids)?;
    let states = app.store.with(|s| {
        s.sweep(World::now());
        s.stack(&key)?;
        Ok::<_, ApiError>(
            ids.iter()
                .filter_map(|id| {
                    s.job_state(*id)
                        .map(|st| (id.to_string(), json!(st.as_str())))
                })
                .collect::<serde_json::Map<_, _>>(),
        )
    })?;
    Ok(reply(rate, StatusCode::OK, json!({"states": states})))
}

#[derive(Deserialize)]
struct StackFinishRequest {
    exit_status: Option<i64>,
    #[serde(default)]
    detail: String,
}

async fn finish(
    State(app): State<SharedApp>,
    Path((key, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "finish-job", &key)?;
    let id = parse_uuid("job", &id)?;
    let request: StackFinishRequest = parse_json("stack finish", &body)?;
    if request.detail.len() > 4096 {
        return Err(ApiError::bad_request(format!(
            "detail must be at most 4 KB, got {} bytes",
            request.detail.len()
        )));
    }
    app.store
        .with(|s| s.stack_finish(&key, id, request.exit_status.unwrap_or(-1), request.detail))?;
    Ok(reply(rate, StatusCode::OK, json!({})))
}

#[derive(Deserialize)]
struct NotificationItem {
    job_uuid: String,
    detail: String,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct NotificationsRequest {
    notifications: Vec<NotificationItem>,
}

async fn notifications(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rate = admit(&app, &headers, "stack-notification", &key)?;
    let request: NotificationsRequest = parse_json("notifications", &body)?;
    if request.notifications.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "notifications: at most {MAX_BATCH} per request"
        )));
    }
    let errors = app.store.with(|s| {
        s.stack(&key)?;
        let mut errors: std::collections::BTreeMap<String, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, item) in request.notifications.into_iter().enumerate() {
            let problem = if item.detail.chars().count() > 256 {
                Some("detail is longer than 256 characters")
            } else {
                match Uuid::parse_str(&item.job_uuid)
                    .ok()
                    .and_then(|id| s.jobs.get_mut(&id))
                {
                    Some(job) => {
                        job.notifications.push(Notification {
                            stack: key.clone(),
                            detail: item.detail,
                            timestamp: item.timestamp,
                            received_at: World::now(),
                        });
                        None
                    }
                    None => Some("job not found"),
                }
            };
            if let Some(problem) = problem {
                errors.entry(problem.to_string()).or_default().push(i);
            }
        }
        Ok::<_, ApiError>(
            errors
                .into_iter()
                .map(|(error, indexes)| json!({"error": error, "indexes": indexes}))
                .collect::<Vec<_>>(),
        )
    })?;
    Ok(reply(rate, StatusCode::OK, json!({"errors": errors})))
}
