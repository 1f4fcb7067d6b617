//! REST builds: create, get by number, list (all, per organization, per pipeline) with the
//! documented filters, cancel and rebuild.

use super::{check_org, query_pairs, query_values};
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::store::model::Build;
use crate::store::{CreateBuild, State as World};
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/builds", get(list_all))
        .route("/organizations/{org}/builds", get(list_org))
        .route(
            "/organizations/{org}/pipelines/{slug}/builds",
            get(list_pipeline).post(create),
        )
        .route(
            "/organizations/{org}/pipelines/{slug}/builds/{number}",
            get(show),
        )
        .route(
            "/organizations/{org}/pipelines/{slug}/builds/{number}/cancel",
            put(cancel),
        )
        .route(
            "/organizations/{org}/pipelines/{slug}/builds/{number}/rebuild",
            put(rebuild),
        )
}

/// The build `number` of pipeline `slug`, or 404.
pub(crate) fn find_build(world: &World, slug: &str, number: &str) -> ApiResult<Uuid> {
    let not_found = || {
        ApiError::not_found(format!(
            "No build found with number {number:?} in pipeline {slug:?}"
        ))
    };
    let number: u64 = number.parse().map_err(|_| not_found())?;
    world
        .builds_by_number
        .get(&(slug.to_string(), number))
        .copied()
        .ok_or_else(not_found)
}

/// The REST build with its jobs; retried jobs only with `include_retried_jobs=true`.
fn build_json(world: &World, build: &Build, uri: &Uri) -> Value {
    let pairs = query_pairs(uri);
    let include_retried = query_values(&pairs, "include_retried_jobs")
        .first()
        .is_some_and(|v| *v == "true");
    let exclude_jobs = query_values(&pairs, "exclude_jobs")
        .first()
        .is_some_and(|v| *v == "true");
    let mut value = world.rest_build(build, !exclude_jobs);
    if let Some(Value::Array(jobs)) = value.get_mut("jobs") {
        if !include_retried {
            jobs.retain(|j| j["retried"] != Value::Bool(true));
        }
    }
    value
}

#[derive(Deserialize)]
struct CreateRequest {
    commit: Option<String>,
    branch: Option<String>,
    message: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    meta_data: BTreeMap<String, String>,
}

async fn create(
    State(app): State<SharedApp>,
    Path((org, slug)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_org(&app, &org)?;
    let request: CreateRequest = parse_json("create build", &body)?;
    let commit = request
        .commit
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::unprocessable("Validation failed: commit can't be blank"))?;
    let branch = request
        .branch
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| ApiError::unprocessable("Validation failed: branch can't be blank"))?;
    let req = CreateBuild {
        commit,
        branch,
        message: request.message.unwrap_or_default(),
        env: request.env,
        meta_data: request.meta_data,
        source: "api".to_string(),
    };
    let build = app.store.with(|s| {
        let id = s.create_build(&slug, req)?;
        Ok::<_, ApiError>(
            s.builds
                .get(&id)
                .map(|b| build_json(s, b, &uri))
                .unwrap_or_default(),
        )
    })?;
    Ok((StatusCode::CREATED, Json(build)))
}

/// A build as the REST API shows it.
fn build_reply(s: &World, id: Uuid, uri: &Uri) -> ApiResult<Json<Value>> {
    s.builds
        .get(&id)
        .map(|b| Json(build_json(s, b, uri)))
        .ok_or_else(|| ApiError::not_found("Build not found"))
}

async fn show(
    State(app): State<SharedApp>,
    Path((org, slug, number)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store.read(|s| {
        let id = find_build(s, &slug, &number)?;
        build_reply(s, id, &uri)
    })
}

async fn cancel(
    State(app): State<SharedApp>,
    Path((org, slug, number)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store.with(|s| {
        let id = find_build(s, &slug, &number)?;
        s.cancel_build(id)?;
        build_reply(s, id, &uri)
    })
}

async fn rebuild(
    State(app): State<SharedApp>,
    Path((org, slug, number)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store.with(|s| {
        let id = find_build(s, &slug, &number)?;
        let new_id = s.rebuild(id)?;
        build_reply(s, new_id, &uri)
    })
}

/// Does the build pass the list filters (reference §3.4)?
struct Filters {
    states: Vec<String>,
    branches: Vec<String>,
    commits: Vec<String>,
    created_from: Option<chrono::DateTime<chrono::Utc>>,
    created_to: Option<chrono::DateTime<chrono::Utc>>,
    finished_from: Option<chrono::DateTime<chrono::Utc>>,
    meta_data: Vec<(String, String)>,
}

fn date(
    pairs: &[(String, String)],
    name: &str,
) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    match query_values(pairs, name).first() {
        None | Some(&"") => Ok(None),
        Some(raw) => chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "{name} must be an ISO 8601 time like 2026-01-02T03:04:05Z, got {raw:?}"
                ))
            }),
    }
}

impl Filters {
    fn parse(uri: &Uri) -> ApiResult<Self> {
        let pairs = query_pairs(uri);
        let own = |name: &str| {
            query_values(&pairs, name)
                .into_iter()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let meta_data = pairs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("meta_data[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .map(|key| (key.to_string(), v.clone()))
            })
            .collect();
        Ok(Filters {
            states: own("state"),
            branches: own("branch"),
            commits: own("commit"),
            created_from: date(&pairs, "created_from")?,
            created_to: date(&pairs, "created_to")?,
            finished_from: date(&pairs, "finished_from")?,
            meta_data,
        })
    }

    fn keeps(&self, build: &Build) -> bool {
        let state_ok = self.states.is_empty()
            || self.states.iter().any(|s| {
                s == build.state.as_str() || (s == "finished" && build.state.is_finished())
            });
        let branch_ok = self.branches.is_empty()
            || self
                .branches
                .iter()
                .any(|pattern| crate::steps::wildcard(pattern, &build.branch));
        let commit_ok = self.commits.is_empty() || self.commits.contains(&build.commit);
        let created_ok = self.created_from.is_none_or(|t| build.created_at >= t)
            && self.created_to.is_none_or(|t| build.created_at < t);
        let finished_ok = self
            .finished_from
            .is_none_or(|t| build.finished_at.is_some_and(|f| f >= t));
        let meta_ok = self
            .meta_data
            .iter()
            .all(|(k, v)| build.meta_data.get(k) == Some(v));
        state_ok && branch_ok && commit_ok && created_ok && finished_ok && meta_ok
    }
}

fn list(app: &SharedApp, uri: &Uri, pipeline: Option<&str>) -> ApiResult<Response> {
    let filters = Filters::parse(uri)?;
    let items = app.store.read(|s| {
        s.build_order
            .iter()
            .rev()
            .filter_map(|id| s.builds.get(id))
            .filter(|b| pipeline.is_none_or(|p| b.pipeline == p) && filters.keeps(b))
            .map(|b| build_json(s, b, uri))
            .collect()
    });
    super::paginate(items, uri, &app.base_url)
}

async fn list_all(
    State(app): State<SharedApp>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    list(&app, &uri, None)
}

async fn list_org(
    State(app): State<SharedApp>,
    Path(org): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    list(&app, &uri, None)
}

async fn list_pipeline(
    State(app): State<SharedApp>,
    Path((org, slug)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    if !app.store.read(|s| s.pipelines.contains_key(&slug)) {
        return Err(ApiError::not_found(format!(
            "No pipeline found with slug {slug:?}"
        )));
    }
    list(&app, &uri, Some(&slug))
}
