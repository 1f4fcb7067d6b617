//! Agent API v3, job-token calls (reference §1.6.8–1.6.14): start, log chunks, job state,
//! finish, meta-data, pipeline upload and annotations.

use crate::auth::{header_token, parse_uuid, require_job_token};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::steps;
use crate::store::model::Annotation;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use uuid::Uuid;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/jobs/{id}", get(job_state))
        .route("/jobs/{id}/start", put(start))
        .route("/jobs/{id}/chunks", post(chunks))
        .route("/jobs/{id}/finish", put(finish))
        .route("/jobs/{id}/pipelines", post(upload_pipeline))
        .route("/jobs/{id}/pipelines/{uuid}", get(upload_status))
        .route("/jobs/{id}/annotations", post(annotate))
        .route(
            "/jobs/{id}/annotations/{context}",
            delete(remove_annotation),
        )
        .route("/{scope}/{id}/data/set", post(meta_data_set))
        .route("/{scope}/{id}/data/set-batch", post(meta_data_set_batch))
        .route("/{scope}/{id}/data/get", post(meta_data_get))
        .route("/{scope}/{id}/data/exists", post(meta_data_exists))
        .route("/{scope}/{id}/data/keys", post(meta_data_keys))
}

fn authorized_job(app: &SharedApp, headers: &HeaderMap, id: &str) -> ApiResult<Uuid> {
    let job = parse_uuid("job", id)?;
    require_job_token(app, headers, job)?;
    Ok(job)
}

async fn job_state(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let job = authorized_job(&app, &headers, &id)?;
    let state = app
        .store
        .read(|s| s.job_state(job))
        .ok_or_else(|| ApiError::not_found("Job not found"))?;
    Ok(Json(json!({"state": state.as_str()})))
}

async fn start(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let job = authorized_job(&app, &headers, &id)?;
    let _: Value = parse_json("start", &body)?;
    app.store.with(|s| s.start_job(job))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ChunkQuery {
    sequence: Option<u64>,
    offset: Option<u64>,
    size: Option<u64>,
}

async fn chunks(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    query: Result<Query<ChunkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = authorized_job(&app, &headers, &id)?;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "chunks: query parameters sequence, offset and size must be integers: {e}"
        ))
    })?;
    let (Some(_sequence), Some(offset), Some(size)) = (query.sequence, query.offset, query.size)
    else {
        return Err(ApiError::bad_request(
            "chunks: query parameters sequence, offset and size are all required",
        ));
    };
    let max = app.chunks_max_size_bytes;
    if size as usize > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("chunks: size {size} is larger than chunks_max_size_bytes {max}"),
        ));
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let data = if gzip {
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .take(max as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| {
                ApiError::bad_request(format!("chunks: the body is not valid gzip: {e}"))
            })?;
        data
    } else {
        body.to_vec()
    };
    if data.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("chunks: the chunk is larger than chunks_max_size_bytes {max}"),
        ));
    }
    if data.len() as u64 != size {
        return Err(ApiError::bad_request(format!(
            "chunks: size says {size} bytes but the uncompressed body has {}",
            data.len()
        )));
    }
    app.store.with(|s| s.add_chunk(job, offset, data))?;
    Ok((StatusCode::CREATED, Json(json!({}))))
}

#[derive(Deserialize)]
struct FinishRequest {
    exit_status: Option<Value>,
    signal: Option<String>,
    signal_reason: Option<String>,
    #[serde(default)]
    chunks_failed_count: u64,
}

/// `exit_status` is a string on the wire ("0", "-1"); a number is accepted too.
fn exit_status(value: Option<&Value>) -> ApiResult<i64> {
    let parsed = match value {
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "finish: exit_status must be an integer string like \"0\", got {}",
            value.map_or("nothing".to_string(), Value::to_string)
        ))
    })
}

async fn finish(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let job = authorized_job(&app, &headers, &id)?;
    let request: FinishRequest = parse_json("finish", &body)?;
    let status = exit_status(request.exit_status.as_ref())?;
    let signal = request.signal.filter(|s| !s.is_empty());
    let reason = request.signal_reason.filter(|s| !s.is_empty());
    let failed_chunks = request.chunks_failed_count;
    app.store.with(|s| {
        let state = s.finish_job(job, status, signal, reason)?;
        if let Some(job) = s.jobs.get_mut(&job) {
            job.chunks_failed_count = failed_chunks;
        }
        Ok::<_, ApiError>(state)
    })?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct UploadRequest {
    uuid: String,
    pipeline: Value,
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(rename = "async")]
    is_async: Option<bool>,
}

async fn upload_pipeline(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let job = authorized_job(&app, &headers, &id)?;
    let request: UploadRequest = parse_json("pipeline upload", &body)?;
    if request.uuid.trim().is_empty() {
        return Err(ApiError::unprocessable("pipeline upload: uuid must be set"));
    }
    let def = steps::parse_value("pipeline", &request.pipeline)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    app.store
        .with(|s| s.upload_pipeline(job, &request.uuid, &def.steps))?;
    if !query.is_async.unwrap_or(false) {
        return Ok(Json(json!({})).into_response());
    }
    let location = format!("{}/v3/jobs/{job}/pipelines/{}", app.base_url, request.uuid);
    let mut response = (StatusCode::ACCEPTED, Json(json!({}))).into_response();
    let value = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::unprocessable("pipeline upload: uuid must be printable"))?;
    response.headers_mut().insert("location", value);
    Ok(response)
}

async fn upload_status(
    State(app): State<SharedApp>,
    Path((id, upload)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let job = authorized_job(&app, &headers, &id)?;
    if app.store.read(|s| s.upload_applied(job, &upload)) {
        Ok(Json(json!({"state": "applied", "message": ""})))
    } else {
        Err(ApiError::not_found(format!(
            "No pipeline upload {upload:?} for this job"
        )))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnnotateRequest {
    body: String,
    context: String,
    style: String,
    append: bool,
    priority: Option<u8>,
    scope: String,
}

async fn annotate(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = authorized_job(&app, &headers, &id)?;
    let request: AnnotateRequest = parse_json("annotate", &body)?;
    let context = if request.context.is_empty() {
        "default".to_string()
    } else {
        request.context
    };
    if context.chars().count() > 100 {
        return Err(ApiError::unprocessable(
            "annotate: context must be at most 100 characters",
        ));
    }
    let style = if request.style.is_empty() {
        "default".to_string()
    } else {
        request.style
    };
    if !["default", "success", "info", "warning", "error"].contains(&style.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "annotate: style {style:?} must be one of success, info, warning, error"
        )));
    }
    let priority = request.priority.unwrap_or(3);
    if !(1..=10).contains(&priority) {
        return Err(ApiError::unprocessable(
            "annotate: priority must be from 1 to 10",
        ));
    }
    if request.body.len() > 1024 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "annotate: body must be at most 1 MiB",
        ));
    }
    let scope = if request.scope.is_empty() {
        "build".to_string()
    } else {
        request.scope
    };
    if scope != "build" && scope != "job" {
        return Err(ApiError::unprocessable(format!(
            "annotate: scope {scope:?} must be build or job"
        )));
    }
    let annotation = Annotation {
        context,
        body: request.body,
        style,
        priority,
        scope,
        job_id: Some(job),
    };
    app.store
        .with(|s| s.annotate(job, annotation, request.append))?;
    Ok((StatusCode::CREATED, Json(json!({"id": Uuid::new_v4()}))))
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope: Option<String>,
}

async fn remove_annotation(
    State(app): State<SharedApp>,
    Path((id, context)): Path<(String, String)>,
    Query(query): Query<ScopeQuery>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let job = authorized_job(&app, &headers, &id)?;
    let scope = query.scope.unwrap_or_else(|| "build".to_string());
    app.store
        .with(|s| s.remove_annotation(job, &scope, &context))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resolve `{scope}/{id}` to the build whose meta-data it means, checking the job token.
fn meta_data_build(app: &SharedApp, headers: &HeaderMap, scope: &str, id: &str) -> ApiResult<Uuid> {
    match scope {
        "jobs" => {
            let job = authorized_job(app, headers, id)?;
            app.store
                .read(|s| s.jobs.get(&job).map(|j| j.build_id))
                .ok_or_else(|| ApiError::not_found("Job not found"))
        }
        "builds" => {
            let build = parse_uuid("build", id)?;
            let token = header_token(headers, "Token").ok_or_else(|| {
                ApiError::unauthorized(
                    "Missing Authorization header: expected \"Token <job token>\"",
                )
            })?;
            let ok = app
                .store
                .read(|s| s.job_by_token(token).is_some_and(|j| j.build_id == build));
            if ok {
                Ok(build)
            } else {
                Err(ApiError::unauthorized("Invalid job token for this build"))
            }
        }
        other => Err(ApiError::not_found(format!(
            "No meta-data scope {other:?} (expected jobs or builds)"
        ))),
    }
}

#[derive(Deserialize)]
struct MetaItem {
    key: String,
    value: String,
}

fn valid_item(path: &str, item: &MetaItem) -> ApiResult<()> {
    if item.key.trim().is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{path}.key must not be empty"
        )));
    }
    if item.value.trim().is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{path}.value must not be empty"
        )));
    }
    Ok(())
}

/// The build whose meta-data a `data/{action}` call may write: writes go through a job
/// (its token), never straight to a build.
fn writable_meta_data_build(
    app: &SharedApp,
    headers: &HeaderMap,
    scope: &str,
    id: &str,
    action: &str,
) -> ApiResult<Uuid> {
    if scope != "jobs" {
        return Err(ApiError::not_found(format!(
            "meta-data can only be set through jobs/{{id}}/data/{action}"
        )));
    }
    meta_data_build(app, headers, scope, id)
}

/// Store already validated items in the build's meta-data, later keys replacing earlier ones.
fn store_meta_data(app: &SharedApp, build: Uuid, items: Vec<MetaItem>) -> ApiResult<Json<Value>> {
    app.store.with(|s| {
        s.meta_data(build)
            .map(|m| m.extend(items.into_iter().map(|i| (i.key, i.value))))
    })?;
    Ok(Json(json!({})))
}

async fn meta_data_set(
    State(app): State<SharedApp>,
    Path((scope, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let build = writable_meta_data_build(&app, &headers, &scope, &id, "set")?;
    let item: MetaItem = parse_json("meta-data set", &body)?;
    valid_item("meta-data", &item)?;
    store_meta_data(&app, build, vec![item])
}

#[derive(Deserialize)]
struct MetaBatch {
    items: Vec<MetaItem>,
}

async fn meta_data_set_batch(
    State(app): State<SharedApp>,
    Path((scope, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let build = writable_meta_data_build(&app, &headers, &scope, &id, "set-batch")?;
    let batch: MetaBatch = parse_json("meta-data set-batch", &body)?;
    for (i, item) in batch.items.iter().enumerate() {
        valid_item(&format!("items[{i}]"), item)?;
    }
    store_meta_data(&app, build, batch.items)
}

#[derive(Deserialize)]
struct MetaKey {
    key: String,
}

/// Answer a `{"key"}` question about the build's meta-data with `lookup`; returns the key
/// asked for and the answer. `what` names the call in errors.
fn look_up_meta_data<T>(
    app: &SharedApp,
    headers: &HeaderMap,
    (scope, id): (&str, &str),
    what: &str,
    body: &[u8],
    lookup: impl FnOnce(&BTreeMap<String, String>, &str) -> T,
) -> ApiResult<(String, T)> {
    let build = meta_data_build(app, headers, scope, id)?;
    let request: MetaKey = parse_json(what, body)?;
    let answer = app
        .store
        .with(|s| s.meta_data(build).map(|m| lookup(m, &request.key)))?;
    Ok((request.key, answer))
}

async fn meta_data_get(
    State(app): State<SharedApp>,
    Path((scope, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (key, value) = look_up_meta_data(
        &app,
        &headers,
        (&scope, &id),
        "meta-data get",
        &body,
        |m, key| m.get(key).cloned(),
    )?;
    let value =
        value.ok_or_else(|| ApiError::not_found(format!("No meta-data value for key {key:?}")))?;
    Ok(Json(json!({"key": key, "value": value})))
}

async fn meta_data_exists(
    State(app): State<SharedApp>,
    Path((scope, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (_, exists) = look_up_meta_data(
        &app,
        &headers,
        (&scope, &id),
        "meta-data exists",
        &body,
        |m, key| m.contains_key(key),
    )?;
    Ok(Json(json!({"exists": exists})))
}

async fn meta_data_keys(
    State(app): State<SharedApp>,
    Path((scope, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let build = meta_data_build(&app, &headers, &scope, &id)?;
    let keys: Vec<String> = app
        .store
        .with(|s| s.meta_data(build).map(|m| m.keys().cloned().collect()))?;
    Ok(Json(json!(keys)))
}
