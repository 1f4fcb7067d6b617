//! The HTTP face of the fake: one handler that resolves each request the way the API server
//! does (path → resource, verb), counts it, and hands it to discovery, the CRUD verbs, list,
//! watch, patch or the pod subresources. Every failure is a `Status` body.

mod crud;
mod discovery;
mod list;
mod patch;
mod pods;
pub mod request;
mod watch;

use crate::cluster::Cluster;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use request::{Query, Route};
use serde_json::{json, Value};
use std::sync::Arc;

/// The API server's routes.
pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new().fallback(handle).with_state(cluster)
}

async fn handle(
    State(cluster): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = Query::parse(uri.query());
    let Some(route) = request::route(uri.path()) else {
        cluster
            .counts
            .record(&method.as_str().to_lowercase(), "unknown");
        return ApiError::unknown_path().into_response();
    };
    let Route::Resource(path) = route else {
        cluster.counts.record("get", "discovery");
        if method != Method::GET {
            return ApiError::method_not_allowed().into_response();
        }
        return discovery::serve(
            &route,
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        );
    };
    let verb = match request::verb(&method, &path, &query) {
        Ok(verb) => verb,
        Err(error) => return error.into_response(),
    };
    cluster.counts.record(verb, &path.counted_as());
    tracing::debug!(%method, %uri, verb, "request");
    let request = crud::Request {
        cluster,
        path,
        query,
        headers,
        body,
    };
    let outcome = match verb {
        "watch" => watch::serve(request).await,
        "list" => list::serve(&request),
        "get" => crud::get(request).await,
        "create" => crud::create(&request),
        "update" => crud::update(&request),
        "patch" => patch::serve(&request),
        "delete" => crud::delete(&request),
        _ => crud::delete_collection(&request),
    };
    outcome.unwrap_or_else(IntoResponse::into_response)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.to_status(),
        )
    }
}

/// A JSON body with the content type the API server sends.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut response = (code, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Adds `Warning: 299 - "..."` headers, as the API server does for deprecated behaviour.
pub fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Whether the client asked for `PartialObjectMetadata` instead of whole objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Full,
    Metadata,
}

impl Representation {
    pub fn from_headers(headers: &HeaderMap) -> Representation {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if accept.contains("as=PartialObjectMetadata") {
            Representation::Metadata
        } else {
            Representation::Full
        }
    }

    /// An object as sent to the client.
    pub fn render(self, object: &Value) -> Value {
        match self {
            Representation::Full => object.clone(),
            Representation::Metadata => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"],
            }),
        }
    }
}
