//! The one error type handlers return: an HTTP status and a `{"message"}` body, as every
//! Buildkite API answers errors (reference §1.4), plus the extra fields and headers a 429 or
//! 423 carries.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Rarely needed additions, boxed to keep the error small.
    pub details: Option<Box<ErrorDetails>>,
}

#[derive(Debug, Clone, Default)]
pub struct ErrorDetails {
    /// Fields added next to `message` (a 429's `scope`, `limit`, …).
    pub extra: Map<String, Value>,
    pub headers: HeaderMap,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// 423: the job exists but cannot run yet; come back after `retry_after` seconds.
    pub fn locked(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::LOCKED, message);
        e.retry_after = Some(retry_after);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ErrorDetails { mut extra, headers } = self.details.map(|d| *d).unwrap_or_default();
        extra.insert("message".to_string(), Value::String(self.message));
        let mut response = (self.status, Json(Value::Object(extra))).into_response();
        response.headers_mut().extend(headers);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}

/// Parse a JSON body, answering malformed input with 400 and the parser's explanation. An
/// empty body reads as `{}` (agents send none on some calls).
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> ApiResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{what}: malformed JSON body: {e}")))
}
