//! REST API v2 (reference §3) under `/v2`: Bearer API token, per-organization and per-token
//! rate limits, `Link` pagination, and the pipelines, builds, jobs and agents resources.

mod agents;
mod builds;
mod jobs;
mod pipelines;

use crate::auth::{header_token, require_api_token};
use crate::error::{ApiError, ApiResult};
use crate::server::SharedApp;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use std::time::Duration;

pub fn routes(app: SharedApp) -> Router<SharedApp> {
    pipelines::routes()
        .merge(builds::routes())
        .merge(jobs::routes())
        .merge(agents::routes())
        .route_layer(axum::middleware::from_fn_with_state(app, guard))
}

/// Bearer token, then the `rest` (organization) and `rest_user` (token) limits; the
/// `RateLimit-*` headers go on the answer either way.
async fn guard(State(app): State<SharedApp>, request: Request, next: Next) -> Response {
    if let Err(e) = require_api_token(&app, request.headers()) {
        return e.into_response();
    }
    let token = header_token(request.headers(), "Bearer")
        .unwrap_or_default()
        .to_string();
    let mut headers = HeaderMap::new();
    let minute = Duration::from_secs(60);
    if let Err(e) = app
        .live
        .rate
        .check("rest", &app.org, minute, "RateLimit", &mut headers)
    {
        return e.into_response();
    }
    let mut user_headers = HeaderMap::new();
    if let Err(e) = app.live.rate.check(
        "rest_user",
        &token,
        minute,
        "RateLimit-User",
        &mut user_headers,
    ) {
        let mut response = e.into_response();
        response.headers_mut().extend(headers);
        return response;
    }
    let mut response = next.run(request).await;
    response.headers_mut().extend(headers);
    response.headers_mut().extend(user_headers);
    response
}

pub(crate) fn check_org(app: &SharedApp, org: &str) -> ApiResult<()> {
    if org == app.org {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "No organization found with slug {org:?}"
        )))
    }
}

/// Query parameters as pairs, keeping repeats (`state[]=a&state[]=b`).
pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(crate) fn query_values<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    let array = format!("{name}[]");
    pairs
        .iter()
        .filter(|(k, _)| *k == name || *k == array)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn number(pairs: &[(String, String)], name: &str, default: usize, max: usize) -> ApiResult<usize> {
    match query_values(pairs, name).first() {
        None | Some(&"") => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1 && *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be an integer from 1 to {max}, got {raw:?}"
                ))
            }),
    }
}

/// One page of `items` (`?page=` from 1, `?per_page=` ≤ 100) and its `Link` header.
pub(crate) fn paginate(items: Vec<Value>, uri: &Uri, base_url: &str) -> ApiResult<Response> {
    let pairs = query_pairs(uri);
    // Clients such as pybuildkite send `page=0` for "the first page".
    let page = match query_values(&pairs, "page").first() {
        Some(&"0") => 1,
        _ => number(&pairs, "page", 1, usize::MAX)?,
    };
    let per_page = number(&pairs, "per_page", 30, 100)?;
    let last = items.len().div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    let kept: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "page" && k != "per_page")
        .collect();
    let link_to = |target: usize| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            query.append_pair(k, v);
        }
        query.append_pair("page", &target.to_string());
        query.append_pair("per_page", &per_page.to_string());
        format!("<{base_url}{}?{}>", uri.path(), query.finish())
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", link_to(1)));
        links.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
    }
    let mut response = axum::Json(Value::Array(page_items)).into_response();
    if !links.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
            response.headers_mut().insert("link", value);
        }
    }
    Ok(response)
}
