//! REST jobs of a build: get, log (JSON, text or HTML by `Accept`; delete), env, retry and
//! unblock.

use super::builds::find_build;
use super::{check_org, query_pairs, query_values};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::State as World;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

const JOB: &str = "/organizations/{org}/pipelines/{slug}/builds/{number}/jobs/{id}";

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route(
            "/organizations/{org}/pipelines/{slug}/builds/{number}/jobs",
            get(list),
        )
        .route(JOB, get(show))
        .route(&format!("{JOB}/log"), get(log).delete(delete_log))
        .route(&format!("{JOB}/log.txt"), get(raw_log))
        .route(&format!("{JOB}/env"), get(env))
        .route(&format!("{JOB}/retry"), put(retry))
        .route(&format!("{JOB}/unblock"), put(unblock))
        .route("/organizations/{org}/jobs/{id}", get(show_by_id))
}

type JobPath = Path<(String, String, String, String)>;

/// `GET …/builds/{n}/jobs`: cursor pagination (reference §3.2): `{items, links: {self,
/// next?}}`, `after=<job id>`, `per_page` ≤ 100, filters `state[]`, `step_key`,
/// `include_retried_jobs` (default true).
async fn list(
    State(app): State<SharedApp>,
    Path((org, slug, number)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    let pairs = query_pairs(&uri);
    let first = |name: &str| {
        query_values(&pairs, name)
            .first()
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty())
    };
    let per_page = match first("per_page") {
        None => 30,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "per_page must be an integer from 1 to 100, got {raw:?}"
                ))
            })?,
    };
    let states: Vec<String> = query_values(&pairs, "state")
        .into_iter()
        .map(str::to_string)
        .collect();
    let step_key = first("step_key");
    let include_retried = first("include_retried_jobs").is_none_or(|v| v != "false");
    let after = first("after");
    let (items, more) = app.store.read(|s| {
        let build = find_build(s, &slug, &number)?;
        let jobs = s
            .builds
            .get(&build)
            .map(|b| b.jobs.clone())
            .unwrap_or_default();
        let matching: Vec<&crate::store::model::Job> = jobs
            .iter()
            .filter_map(|id| s.jobs.get(id))
            .filter(|j| include_retried || j.retried_in.is_none())
            .filter(|j| states.is_empty() || states.iter().any(|st| st == j.state.as_str()))
            .filter(|j| {
                step_key
                    .as_ref()
                    .is_none_or(|k| j.step.key.as_ref() == Some(k))
            })
            .collect();
        let start = match &after {
            None => 0,
            Some(cursor) => matching
                .iter()
                .position(|j| j.id.to_string() == *cursor)
                .map(|p| p + 1)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("after {cursor:?} is not a job of this build"))
                })?,
        };
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(per_page)
            .map(|j| s.rest_job(j))
            .collect();
        let more = matching.len() > start + per_page;
        Ok::<_, ApiError>((page, more))
    })?;
    let self_url = format!("{}{}", app.base_url, uri);
    let mut links = json!({"self": self_url});
    if let Some(last) = items.last().and_then(|j| j["id"].as_str()).filter(|_| more) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != "after") {
            query.append_pair(k, v);
        }
        query.append_pair("after", last);
        links["next"] = json!(format!("{}{}?{}", app.base_url, uri.path(), query.finish()));
    }
    Ok(Json(json!({"items": items, "links": links})))
}

/// The job `id` of build `number` of pipeline `slug`, or 404.
fn find_job(world: &World, slug: &str, number: &str, id: &str) -> ApiResult<Uuid> {
    let build = find_build(world, slug, number)?;
    let job = Uuid::parse_str(id)
        .ok()
        .filter(|j| world.builds.get(&build).is_some_and(|b| b.jobs.contains(j)));
    job.ok_or_else(|| ApiError::not_found(format!("No job found with id {id:?} in build {number}")))
}

fn job_json(world: &World, id: Uuid) -> ApiResult<Json<Value>> {
    world
        .jobs
        .get(&id)
        .map(|j| Json(world.rest_job(j)))
        .ok_or_else(|| ApiError::not_found("Job not found"))
}

async fn show(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store
        .read(|s| job_json(s, find_job(s, &slug, &number, &id)?))
}

async fn show_by_id(
    State(app): State<SharedApp>,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found(format!("No job found with id {id:?}")))?;
    app.store.read(|s| job_json(s, id))
}

fn log_text(app: &SharedApp, slug: &str, number: &str, id: &str) -> ApiResult<(Uuid, String)> {
    app.store.read(|s| {
        let job = find_job(s, slug, number, id)?;
        let content = s
            .jobs
            .get(&job)
            .map(|j| String::from_utf8_lossy(&j.log.content()).into_owned())
            .unwrap_or_default();
        Ok((job, content))
    })
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn log(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    let (job, content) = log_text(&app, &slug, &number, &id)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.starts_with("text/plain") {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            content,
        )
            .into_response());
    }
    if accept.starts_with("text/html") {
        return Ok((
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!("<pre class=\"term\">{}</pre>", html_escape(&content)),
        )
            .into_response());
    }
    let url = app.store.read(|s| {
        s.jobs
            .get(&job)
            .and_then(|j| s.builds.get(&j.build_id))
            .map(|b| format!("{}/jobs/{job}/log", s.build_url(b)))
    });
    Ok(
        Json(json!({"url": url, "content": content, "size": content.len(), "header_times": []}))
            .into_response(),
    )
}

async fn raw_log(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    let (_, content) = log_text(&app, &slug, &number, &id)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        content,
    )
        .into_response())
}

async fn delete_log(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
) -> ApiResult<StatusCode> {
    check_org(&app, &org)?;
    app.store.with(|s| {
        let job = find_job(s, &slug, &number, &id)?;
        let job = s
            .jobs
            .get_mut(&job)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        if !job.state.is_terminal() {
            return Err(ApiError::unprocessable(
                "A log can only be deleted once its job has finished",
            ));
        }
        job.log.clear();
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn env(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store.read(|s| {
        let job = find_job(s, &slug, &number, &id)?;
        let job = s
            .jobs
            .get(&job)
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        let agent = job.agent_id.and_then(|a| s.agents.get(&a));
        Ok(Json(json!({"env": s.job_env(job, agent)})))
    })
}

async fn retry(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store.with(|s| {
        let job = find_job(s, &slug, &number, &id)?;
        let new = s.retry_job(job)?;
        job_json(s, new)
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UnblockRequest {
    unblocker: Option<String>,
}

async fn unblock(
    State(app): State<SharedApp>,
    Path((org, slug, number, id)): JobPath,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    let request: UnblockRequest = parse_json("unblock", &body)?;
    let by = request.unblocker.unwrap_or_else(|| "api".to_string());
    app.store.with(|s| {
        let job = find_job(s, &slug, &number, &id)?;
        s.unblock_job(job, &by)?;
        job_json(s, job)
    })
}
