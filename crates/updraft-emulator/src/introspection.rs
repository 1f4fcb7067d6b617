//! `/_emulator/…`: the emulator's own API for tests and benchmarks, outside Buildkite's.
//! Job timelines and accept/acquire attempts, counters, workloads, push targets, fault
//! injection, rate-limit presets, queue pause, the lost-agent timeout, and cancelling a
//! single job. No auth: it
//! binds to loopback, and secrets are never echoed back.

use crate::config::{
    ApiFaults, PushFaults, PushTargets, RateLimitConfig, WebhookAuth, WebhookTarget,
};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::model::Job;
use crate::store::State as World;
use crate::workload::{self, WorkloadRequest};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use updraft_model::{JobState, Secret};
use uuid::Uuid;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(job_detail))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/counters", get(counters))
        .route("/workload", post(start_workload))
        .route("/push", get(get_push).put(set_push))
        .route("/faults", get(get_faults).put(set_faults))
        .route("/rate-limits", get(get_rate_limits).put(set_rate_limits))
        .route("/queues/{key}/pause", put(pause_queue))
        .route("/queues/{key}/resume", put(resume_queue))
        .route(
            "/agents/lost-after",
            get(get_agent_lost_after).put(set_agent_lost_after),
        )
}

/// A job's timeline and every accept/acquire attempt (`GET /_emulator/jobs/{id}`).
pub fn job_detail_json(world: &World, job: &Job) -> Value {
    let build = world.builds.get(&job.build_id);
    json!({
        "id": job.id,
        "state": job.state.as_str(),
        "type": job.kind.as_str(),
        "label": job.step.label,
        "step_key": job.step.key,
        "queue": job.step.agents.queue(),
        "agent_query_rules": job.step.agents.to_strings(),
        "pipeline": build.map(|b| b.pipeline.clone()),
        "build_number": build.map(|b| b.number),
        "build_id": job.build_id,
        "agent_id": job.agent_id,
        "reserved_by": job.reservation.as_ref().map(|r| r.stack.clone()),
        "exit_status": job.exit_status,
        "signal_reason": job.signal_reason,
        "stack_finish_detail": job.stack_finish_detail,
        "retried_in_job_id": job.retried_in,
        "history": job.history,
        "attempts": job.attempts,
        "notifications": job.notifications,
        "log_bytes": job.log.size(),
        "log_chunks_received": job.log.chunks_received,
        "chunks_failed_count": job.chunks_failed_count,
        "accepts": world.counters.accepts_by_job.get(&job.id).copied().unwrap_or(0),
        "acquires": world.counters.acquires_by_job.get(&job.id).copied().unwrap_or(0),
    })
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
}

async fn list_jobs(
    State(app): State<SharedApp>,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<JobState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
        ),
    };
    let jobs = app.store.read(|s| {
        let mut jobs: Vec<&Job> = s.jobs.values().filter(|j| state.is_none_or(|st| j.state == st)).collect();
        jobs.sort_by_key(|j| (j.created_at, j.id));
        jobs.iter()
            .map(|j| {
                let build = s.builds.get(&j.build_id);
                json!({"id": j.id, "state": j.state.as_str(), "type": j.kind.as_str(), "queue": j.step.agents.queue(),
                       "pipeline": build.map(|b| b.pipeline.clone()), "build_number": build.map(|b| b.number), "step_key": j.step.key})
            })
            .collect::<Vec<_>>()
    });
    Ok(Json(json!(jobs)))
}

fn job_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("No job found with id {raw:?}")))
}

async fn job_detail(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    app.store
        .read(|s| s.jobs.get(&id).map(|j| Json(job_detail_json(s, j))))
        .ok_or_else(|| ApiError::not_found(format!("No job found with id {id}")))
}

/// Stands in for GraphQL `jobTypeCommandCancel`, which the REST API lacks (reference §3.4).
async fn cancel_job(
    State(app): State<SharedApp>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    let state = app
        .store
        .with(|s| s.cancel_job(id, "canceled through /_emulator"))?;
    Ok(Json(json!({"id": id, "state": state.as_str()})))
}

async fn counters(State(app): State<SharedApp>) -> Json<Value> {
    Json(app.store.read(counters_json))
}

/// The counters `GET /_emulator/counters` serves.
pub fn counters_json(s: &World) -> Value {
    let c = &s.counters;
    json!({
            "requests_by_route": c.requests_by_route,
            "responses_by_status": c.responses_by_status,
            "api_faults_injected": c.api_faults_injected,
            "rate_limited": c.rate_limited,
            "acquires_by_job": c.acquires_by_job,
            "accepts_by_job": c.accepts_by_job,
            "jobs_created": c.jobs_created,
            "jobs_finished": c.jobs_finished,
            "builds_created": c.builds_created,
            "builds_evicted": c.builds_evicted,
            "builds_kept": s.builds.len(),
            "jobs_kept": s.jobs.len(),
            "jobs_scheduled_now": s.scheduled.len(),
            "agents": s.agents.len(),
            "stack_finishes_of_held_jobs": c.stack_finishes_of_held_jobs,
            "push": {"sent": c.push_sent, "failed": c.push_failed, "dropped": c.push_dropped, "duplicated": c.push_duplicated, "delayed": c.push_delayed},
    })
}

async fn start_workload(
    State(app): State<SharedApp>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: WorkloadRequest = parse_json("workload", &body)?;
    let started = workload::start(&app, request.arrivals()?)?;
    let created: Vec<Value> = started
        .created
        .iter()
        .map(|(p, n)| json!({"pipeline": p, "number": n}))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"created": created, "pending": started.pending})),
    ))
}

/// Push targets as JSON: `{webhook_url, webhook_token | webhook_secret, eventbridge_url}`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PushRequest {
    pub webhook_url: Option<String>,
    pub webhook_token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    pub eventbridge_url: Option<String>,
}

impl PushRequest {
    pub fn into_targets(self) -> ApiResult<PushTargets> {
        let auth = match (self.webhook_token, self.webhook_secret) {
            (Some(_), Some(_)) => {
                return Err(ApiError::unprocessable(
                    "push: give webhook_token or webhook_secret, not both",
                ))
            }
            (Some(token), None) => Some(WebhookAuth::Token(token)),
            (None, Some(secret)) => Some(WebhookAuth::Signature(secret)),
            (None, None) => None,
        };
        let webhook = match (self.webhook_url.filter(|u| !u.is_empty()), auth) {
            (Some(url), Some(auth)) => Some(WebhookTarget {
                url: checked_url("webhook_url", url)?,
                auth,
            }),
            (Some(url), None) => Some(WebhookTarget {
                url: checked_url("webhook_url", url)?,
                auth: WebhookAuth::Token(Secret::default()),
            }),
            (None, Some(_)) => {
                return Err(ApiError::unprocessable(
                    "push: a webhook token or secret needs webhook_url",
                ))
            }
            (None, None) => None,
        };
        let eventbridge_url = self
            .eventbridge_url
            .filter(|u| !u.is_empty())
            .map(|u| checked_url("eventbridge_url", u))
            .transpose()?;
        Ok(PushTargets {
            webhook,
            eventbridge_url,
        })
    }
}

fn checked_url(field: &str, raw: String) -> ApiResult<String> {
    url::Url::parse(&raw)
        .map_err(|e| ApiError::unprocessable(format!("push: {field} {raw:?} is not a URL: {e}")))?;
    Ok(raw)
}

fn push_json(targets: &PushTargets) -> Value {
    let (url, auth) = match &targets.webhook {
        Some(w) => (
            Some(w.url.clone()),
            Some(match &w.auth {
                WebhookAuth::Token(_) => "token",
                WebhookAuth::Signature(_) => "signature",
            }),
        ),
        None => (None, None),
    };
    json!({"webhook_url": url, "webhook_auth": auth, "eventbridge_url": targets.eventbridge_url})
}

async fn get_push(State(app): State<SharedApp>) -> Json<Value> {
    Json(push_json(&app.push_targets()))
}

async fn set_push(State(app): State<SharedApp>, body: Bytes) -> ApiResult<Json<Value>> {
    let request: PushRequest = parse_json("push", &body)?;
    let targets = request.into_targets()?;
    app.set_push_targets(targets.clone());
    Ok(Json(push_json(&targets)))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ApiFaultsRequest {
    fraction: f64,
    seed: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PushFaultsRequest {
    drop: f64,
    duplicate: f64,
    delay: f64,
    delay_ms: Option<u64>,
    seed: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FaultsRequest {
    api: Option<ApiFaultsRequest>,
    push: Option<PushFaultsRequest>,
}

fn fraction(field: &str, value: f64) -> ApiResult<f64> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::unprocessable(format!(
            "faults: {field} must be a fraction from 0 to 1, got {value}"
        )))
    }
}

fn faults_json(api: &ApiFaults, push: &PushFaults) -> Value {
    json!({
        "api": {"fraction": api.fraction, "seed": api.seed},
        "push": {"drop": push.drop_fraction, "duplicate": push.duplicate_fraction, "delay": push.delay_fraction, "delay_ms": push.delay.as_millis() as u64, "seed": push.seed},
    })
}

async fn get_faults(State(app): State<SharedApp>) -> Json<Value> {
    Json(faults_json(&app.api_faults(), &app.push_faults()))
}

async fn set_faults(State(app): State<SharedApp>, body: Bytes) -> ApiResult<Json<Value>> {
    let request: FaultsRequest = parse_json("faults", &body)?;
    let api = match request.api {
        Some(a) => Some(ApiFaults {
            fraction: fraction("api.fraction", a.fraction)?,
            seed: a.seed.unwrap_or(1),
        }),
        None => None,
    };
    let push = match request.push {
        Some(p) => Some(PushFaults {
            drop_fraction: fraction("push.drop", p.drop)?,
            duplicate_fraction: fraction("push.duplicate", p.duplicate)?,
            delay_fraction: fraction("push.delay", p.delay)?,
            delay: Duration::from_millis(p.delay_ms.unwrap_or(500)),
            seed: p.seed.unwrap_or(1),
        }),
        None => None,
    };
    if let Some(api) = api {
        app.set_api_faults(api);
    }
    if let Some(push) = push {
        app.set_push_faults(push);
    }
    Ok(Json(faults_json(&app.api_faults(), &app.push_faults())))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RateLimitsRequest {
    preset: Option<String>,
    limits: Option<BTreeMap<String, u32>>,
}

async fn get_rate_limits(State(app): State<SharedApp>) -> Json<Value> {
    Json(json!({"limits": app.live.rate.config().limits}))
}

async fn set_rate_limits(State(app): State<SharedApp>, body: Bytes) -> ApiResult<Json<Value>> {
    let request: RateLimitsRequest = parse_json("rate-limits", &body)?;
    let config = match (request.preset.as_deref(), request.limits) {
        (Some("reference"), None) => RateLimitConfig::reference(),
        (Some("off"), None) => RateLimitConfig::unlimited(),
        (None, Some(limits)) => RateLimitConfig { limits },
        _ => return Err(ApiError::unprocessable("rate-limits: give `preset` (\"reference\" or \"off\") or `limits` (scope → requests per window)")),
    };
    app.live.rate.set_config(config.clone());
    Ok(Json(json!({"limits": config.limits})))
}

async fn pause_queue(State(app): State<SharedApp>, Path(key): Path<String>) -> Json<Value> {
    let queue = crate::store::stacks::normalize_queue(&key).to_string();
    app.store.with(|s| s.paused_queues.insert(queue.clone()));
    Json(json!({"queue": queue, "dispatch_paused": true}))
}

async fn resume_queue(State(app): State<SharedApp>, Path(key): Path<String>) -> Json<Value> {
    let queue = crate::store::stacks::normalize_queue(&key).to_string();
    app.store.with(|s| s.paused_queues.remove(&queue));
    Json(json!({"queue": queue, "dispatch_paused": false}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentLostAfterRequest {
    seconds: f64,
}

fn agent_lost_after_json(after: Duration) -> Json<Value> {
    Json(json!({"seconds": after.as_secs_f64()}))
}

async fn get_agent_lost_after(State(app): State<SharedApp>) -> Json<Value> {
    agent_lost_after_json(app.store.read(|s| s.settings.agent_lost_after))
}

async fn set_agent_lost_after(State(app): State<SharedApp>, body: Bytes) -> ApiResult<Json<Value>> {
    let request: AgentLostAfterRequest = parse_json("agents/lost-after", &body)?;
    let after = Duration::try_from_secs_f64(request.seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::unprocessable(format!(
                "agents/lost-after: `seconds` must be a positive number, got {}",
                request.seconds
            ))
        })?;
    app.store.with(|s| s.set_agent_lost_after(after));
    Ok(agent_lost_after_json(after))
}
