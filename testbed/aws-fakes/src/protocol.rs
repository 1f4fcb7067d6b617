//! The AWS JSON 1.1 protocol as the stand-ins speak it: `POST /` with
//! `X-Amz-Target: <Service>.<Operation>`, JSON bodies, errors as `{"__type", "message"}` with
//! the matching status, plus what every call goes through first (verbatim recording and
//! fault injection).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An error as an AWS JSON service returns it. Public so tests can inject one.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: u16,
    /// The error shape's name, e.g. `ResourceNotFoundException`.
    pub code: String,
    pub message: String,
    /// More members of the error body, e.g. ECS's `resourceIds` on ConflictException (boxed:
    /// rarely set, and it would make every `Result` carrying this error large).
    pub extra: Box<serde_json::Map<String, Value>>,
}

impl AwsError {
    /// A client error (HTTP 400), the status of every modeled error of CodeBuild and ECS.
    pub fn client(code: &str, message: impl Into<String>) -> AwsError {
        AwsError {
            status: 400,
            code: code.to_owned(),
            message: message.into(),
            extra: Box::default(),
        }
    }

    /// The same error with one more member in its body.
    pub fn with(mut self, key: &str, value: Value) -> AwsError {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// `ThrottlingException` as both services send it when a caller exceeds its rate.
    pub fn throttling() -> AwsError {
        AwsError::client("ThrottlingException", "Rate exceeded")
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut body = *self.extra;
        body.insert("__type".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        let body = Value::Object(body);
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
        if let Ok(code) = HeaderValue::from_str(&self.code) {
            headers.insert("x-amzn-errortype", code);
        }
        headers.insert("x-amzn-requestid", request_id());
        response
    }
}

/// A successful JSON 1.1 answer.
pub fn ok(body: Value) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
    headers.insert("x-amzn-requestid", request_id());
    response
}

fn request_id() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a header value")
}

/// One request as it reached a stand-in, before anything interpreted it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The operation named by `X-Amz-Target`, e.g. `StartBuild`.
    pub operation: String,
    /// Every header, names lower-cased, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The body, lossily decoded.
    pub body: String,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    pub fn new(operation: &str, headers: &HeaderMap, body: &[u8]) -> RecordedRequest {
        RecordedRequest {
            operation: operation.to_owned(),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
            received_at: SystemTime::now(),
        }
    }

    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Whether `needle` appears in the body or in any header name or value.
    pub fn contains(&self, needle: &str) -> bool {
        self.body.contains(needle)
            || self
                .headers
                .iter()
                .any(|(name, value)| name.contains(needle) || value.contains(needle))
    }
}

/// What a stand-in does to calls before serving them: throttle a fraction of them, or answer
/// the next calls of an operation with a prepared error.
#[derive(Debug, Default)]
struct FaultPlan {
    throttle_fraction: f64,
    throttle_next: u32,
    injected: HashMap<String, VecDeque<AwsError>>,
}

/// The gate every call passes first, one per stand-in service: recording and fault injection.
#[derive(Debug, Clone, Default)]
pub struct RequestGate {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    faults: Arc<Mutex<FaultPlan>>,
}

impl RequestGate {
    /// Records the request, then applies the fault plan: `Some(error)` means answer with it.
    pub fn admit(&self, request: RecordedRequest) -> Option<AwsError> {
        let operation = request.operation.clone();
        self.requests.lock().unwrap().push(request);
        let mut faults = self.faults.lock().unwrap();
        if let Some(error) = faults
            .injected
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            return Some(error);
        }
        if faults.throttle_next > 0 {
            faults.throttle_next -= 1;
            return Some(AwsError::throttling());
        }
        if faults.throttle_fraction > 0.0 && rand::random::<f64>() < faults.throttle_fraction {
            return Some(AwsError::throttling());
        }
        None
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn throttle_fraction(&self, fraction: f64) {
        self.faults.lock().unwrap().throttle_fraction = fraction.clamp(0.0, 1.0);
    }

    pub fn throttle_next(&self, calls: u32) {
        self.faults.lock().unwrap().throttle_next = calls;
    }

    pub fn inject_error(&self, operation: &str, error: AwsError) {
        let mut faults = self.faults.lock().unwrap();
        let queue = faults.injected.entry(operation.to_owned()).or_default();
        queue.push_back(error);
    }
}

/// Reads an optional string member.
pub fn opt_str<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// Reads a required string member; a missing one is answered with `code` and the message AWS
/// uses for a null member.
pub fn req_str<'a>(body: &'a Value, key: &str, code: &str) -> Result<&'a str, AwsError> {
    opt_str(body, key).ok_or_else(|| {
        let message = format!(
            "1 validation error detected: Value null at '{key}' failed to satisfy constraint: \
             Member must not be null"
        );
        AwsError::client(code, message)
    })
}

/// Seconds since the epoch with millisecond precision: how JSON 1.1 encodes timestamps.
pub fn epoch_seconds(at: SystemTime) -> f64 {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    millis as f64 / 1000.0
}
