//! REST pipelines: create from YAML `configuration` (or a `steps` array), list, get, delete.

use super::check_org;
use crate::error::{parse_json, ApiError, ApiResult};
use crate::server::SharedApp;
use crate::steps;
use crate::store::CreatePipeline;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

pub fn routes() -> Router<SharedApp> {
    Router::new()
        .route("/organizations/{org}/pipelines", get(list).post(create))
        .route("/organizations/{org}/pipelines/", get(list).post(create))
        .route(
            "/organizations/{org}/pipelines/{slug}",
            get(show).delete(remove),
        )
}

#[derive(Deserialize)]
struct CreateRequest {
    name: Option<String>,
    slug: Option<String>,
    repository: Option<String>,
    configuration: Option<String>,
    steps: Option<Value>,
    default_branch: Option<String>,
}

async fn create(
    State(app): State<SharedApp>,
    Path(org): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_org(&app, &org)?;
    let request: CreateRequest = parse_json("create pipeline", &body)?;
    let name = request
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::unprocessable("Validation failed: name can't be blank"))?;
    let (configuration, def) =
        match (request.configuration, request.steps) {
            (Some(yaml), _) => {
                let def = steps::parse_yaml(&yaml)
                    .map_err(|e| ApiError::unprocessable(format!("Validation failed: {e}")))?;
                (yaml, def)
            }
            (None, Some(steps)) => {
                let def = steps::parse_value("steps", &steps)
                    .map_err(|e| ApiError::unprocessable(format!("Validation failed: {e}")))?;
                (String::new(), def)
            }
            (None, None) => return Err(ApiError::unprocessable(
                "Validation failed: give the pipeline's steps as `configuration` (YAML) or `steps`",
            )),
        };
    let repository = request
        .repository
        .unwrap_or_else(|| format!("https://github.com/{}/{}.git", app.org, name));
    let req = CreatePipeline {
        name,
        slug: request.slug,
        repository,
        default_branch: request.default_branch,
        configuration,
        def,
    };
    let pipeline = app.store.with(|s| {
        let slug = s.create_pipeline(req)?;
        Ok::<_, ApiError>(
            s.pipelines
                .get(&slug)
                .map(|p| s.rest_pipeline(p))
                .unwrap_or_default(),
        )
    })?;
    Ok((StatusCode::CREATED, Json(pipeline)))
}

async fn list(
    State(app): State<SharedApp>,
    Path(org): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    check_org(&app, &org)?;
    let items = app
        .store
        .read(|s| s.pipelines.values().map(|p| s.rest_pipeline(p)).collect());
    super::paginate(items, &uri, &app.base_url)
}

async fn show(
    State(app): State<SharedApp>,
    Path((org, slug)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_org(&app, &org)?;
    app.store
        .read(|s| s.pipelines.get(&slug).map(|p| s.rest_pipeline(p)))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("No pipeline found with slug {slug:?}")))
}

async fn remove(
    State(app): State<SharedApp>,
    Path((org, slug)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_org(&app, &org)?;
    let removed = app.store.with(|s| s.pipelines.remove(&slug));
    removed
        .map(|_| StatusCode::NO_CONTENT)
        .ok_or_else(|| ApiError::not_found(format!("No pipeline found with slug {slug:?}")))
}
