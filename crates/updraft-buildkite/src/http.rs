//! The HTTP core every Buildkite client uses: one `reqwest::Client` with timeouts and our
//! `User-Agent`, the `Authorization` header built from a `Secret`, and the reference's retry
//! rule — retry 429, 5xx and network errors with exponential backoff and jitter, honour
//! `Retry-After` / `RateLimit-Reset`, stop at a bounded number of attempts or an overall
//! deadline, never retry any other 4xx. Errors carry method, path and the server's message,
//! never a token.

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use updraft_model::Secret;

/// Idle connections kept per host once a burst is over; the rest are closed, so a burst that
/// needed hundreds at once does not hold their buffers until the idle timeout.
const MAX_IDLE_CONNECTIONS: usize = 32;

pub fn user_agent() -> String {
    format!(
        "updraft/{} ({}; {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// One path segment, percent-escaped, with `.` escaped as `%2E` as the Go agent does (a
/// Rails server would otherwise read `a.json` as a format suffix; reference §1.1).
pub fn path_segment(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
        .replace('.', "%2E")
}

/// `Token` for the agent, Stacks and metrics APIs; `Bearer` for REST v2 (reference §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Token,
    Bearer,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The whole call, all attempts and waits included, gives up after this.
    pub deadline: Duration,
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1): exponential with full
    /// jitter in the upper half, so concurrent clients spread out without waiting for nothing.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            deadline: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{method} {path}: {detail}")]
    Network {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("{method} {path}: response was not the JSON expected: {detail}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("{last} (gave up after {attempts} attempts in {elapsed:?})")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: Box<ApiError>,
    },
    #[error("invalid client setting: {0}")]
    Config(String),
}

impl ApiError {
    /// The HTTP status behind this error, looking through `GaveUp`.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            ApiError::GaveUp { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// 429, 5xx and network errors are worth another try; every other 4xx is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            ApiError::Network { .. } => true,
            ApiError::Decode { .. } | ApiError::GaveUp { .. } | ApiError::Config(_) => false,
        }
    }
}

/// How long the server asked us to wait: `Retry-After` (seconds), else `RateLimit-Reset`
/// on a 429.
fn server_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let secs = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    secs(RETRY_AFTER.as_str())
        .or_else(|| {
            (status == StatusCode::TOO_MANY_REQUESTS)
                .then(|| secs("ratelimit-reset"))
                .flatten()
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// A client bound to one base URL and one credential.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    options: ClientOptions,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(
        base: &str,
        token: &Secret,
        scheme: AuthScheme,
        options: ClientOptions,
    ) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .user_agent(user_agent())
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build()
            .map_err(|e| ApiError::Config(format!("building the HTTP client: {e}")))?;
        Self::with_http(http, base, token, scheme, options)
    }

    /// Share one connection pool between several clients (e.g. many job tokens).
    pub fn with_http(
        http: reqwest::Client,
        base: &str,
        token: &Secret,
        scheme: AuthScheme,
        options: ClientOptions,
    ) -> Result<Self, ApiError> {
        let prefix = match scheme {
            AuthScheme::Token => "Token",
            AuthScheme::Bearer => "Bearer",
        };
        let mut auth =
            HeaderValue::from_str(&format!("{prefix} {}", token.expose())).map_err(|_| {
                ApiError::Config(format!(
                    "token {token} contains characters not allowed in a header"
                ))
            })?;
        auth.set_sensitive(true);
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::Config(format!(
                "endpoint {base:?} must start with http:// or https://"
            )));
        }
        Ok(ApiClient {
            http,
            base,
            auth,
            options,
        })
    }

    /// The same credential and settings against another base URL (a server-sent endpoint).
    pub fn with_base(&self, base: &str) -> Result<Self, ApiError> {
        let trimmed = base.trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(ApiError::Config(format!(
                "endpoint {trimmed:?} must start with http:// or https://"
            )));
        }
        Ok(ApiClient {
            base: trimmed.to_string(),
            ..self.clone()
        })
    }

    /// The same endpoint and settings with another credential.
    pub fn with_token(&self, token: &Secret, scheme: AuthScheme) -> Result<Self, ApiError> {
        Self::with_http(
            self.http.clone(),
            &self.base,
            token,
            scheme,
            self.options.clone(),
        )
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// A request to `path` (relative to the base) with our auth header; add a body or query
    /// and hand it to `send`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(AUTHORIZATION, self.auth.clone())
    }

    /// A request to an absolute URL the server handed us (a `Link` or `Location`). Our
    /// credential only goes back to the origin it belongs to.
    pub fn request_url(&self, method: Method, url: &str) -> Result<RequestBuilder, ApiError> {
        let origin = |u: &str| url::Url::parse(u).ok().map(|u| u.origin());
        match (origin(url), origin(&self.base)) {
            (Some(theirs), Some(ours)) if theirs == ours => Ok(self
                .http
                .request(method, url)
                .header(AUTHORIZATION, self.auth.clone())),
            _ => Err(ApiError::Config(format!(
                "refusing to follow {url:?}: it is not on {}",
                self.base
            ))),
        }
    }

    /// Send once and turn any non-2xx into `ApiError::Status` with the server's message.
    pub async fn send_once(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        let request = request
            .build()
            .map_err(|e| ApiError::Config(e.without_url().to_string()))?;
        let method = request.method().clone();
        let path = request.url().path().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| ApiError::Network {
                method: method.clone(),
                path: path.clone(),
                detail: describe_reqwest_error(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = server_wait(status, response.headers());
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        Err(ApiError::Status {
            method,
            path,
            status,
            message,
            retry_after,
        })
    }

    /// Send with the client's retry policy.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        self.send_with(request, &self.options.retry).await
    }

    /// Send with an explicit retry policy. The request must be cloneable (no streaming body).
    pub async fn send_with(
        &self,
        request: RequestBuilder,
        policy: &RetryPolicy,
    ) -> Result<Response, ApiError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let this = request.try_clone().ok_or_else(|| {
                ApiError::Config("a streaming request body cannot be retried".into())
            })?;
            let error = match self.send_once(this).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if !error.is_retryable() {
                return Err(error);
            }
            let wait = error
                .retry_after()
                .unwrap_or_else(|| policy.backoff(attempt));
            let elapsed = started.elapsed();
            if attempt >= policy.max_attempts || elapsed + wait > policy.deadline {
                return Err(if attempt == 1 {
                    error
                } else {
                    ApiError::GaveUp {
                        attempts: attempt,
                        elapsed,
                        last: Box::new(error),
                    }
                });
            }
            tracing::debug!(%error, attempt, wait_ms = wait.as_millis() as u64, "retrying Buildkite request");
            tokio::time::sleep(wait).await;
        }
    }

    /// Send with retries and decode a JSON body.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ApiError> {
        let response = self.send(request).await?;
        decode_json(response).await
    }
}

pub async fn decode_json<T: DeserializeOwned>(response: Response) -> Result<T, ApiError> {
    let method = Method::GET;
    let path = response.url().path().to_string();
    let bytes = response.bytes().await.map_err(|e| ApiError::Network {
        method: method.clone(),
        path: path.clone(),
        detail: describe_reqwest_error(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
        method,
        path,
        detail: e.to_string(),
    })
}

/// reqwest's messages include the URL; ours carry the path already, and a URL may one day
/// carry a credential, so describe the error without it.
fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "failed reading the response body"
    } else {
        "request failed"
    };
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = policy.backoff(10);
            assert!(late >= Duration::from_millis(400) && late <= Duration::from_millis(800));
        }
    }

    #[test]
    fn retry_after_and_ratelimit_reset_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(
            server_wait(StatusCode::TOO_MANY_REQUESTS, &headers),
            Some(Duration::from_secs(3))
        );
        assert_eq!(server_wait(StatusCode::SERVICE_UNAVAILABLE, &headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        assert_eq!(
            server_wait(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn only_429_5xx_and_network_errors_retry() {
        let status = |s: u16| ApiError::Status {
            method: Method::GET,
            path: "/".into(),
            status: StatusCode::from_u16(s).unwrap(),
            message: String::new(),
            retry_after: None,
        };
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(422).is_retryable());
    }

    #[test]
    fn path_segments_escape_dots_spaces_and_slashes() {
        assert_eq!(
            path_segment("deploy.notes v1/x+y"),
            "deploy%2Enotes%20v1%2Fx%2By"
        );
        assert_eq!(path_segment("0190f6a4-1c2d"), "0190f6a4-1c2d");
    }

    #[test]
    fn user_agent_names_version_os_and_arch() {
        let ua = user_agent();
        assert!(ua.starts_with("updraft/0."), "{ua}");
        assert!(ua.contains(std::env::consts::OS));
    }
}
