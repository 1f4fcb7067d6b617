//! Per-scope request limits with `RateLimit-*` headers (reference §1.7 and §3.3): a sliding
//! window per (scope, subject), where the subject is a stack key, the organization or a token.

use crate::config::RateLimitConfig;
use crate::error::{ApiError, ErrorDetails};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    config: Mutex<RateLimitConfig>,
    windows: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimiter {
            config: Mutex::new(config),
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_config(&self, config: RateLimitConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn config(&self) -> RateLimitConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Count one request. Returns the headers to add, or the 429 to answer. `header_prefix`
    /// is `RateLimit` or `RateLimit-User`.
    pub fn check(
        &self,
        scope: &str,
        subject: &str,
        window: Duration,
        header_prefix: &str,
        into: &mut HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(limit) = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .limit(scope)
        else {
            return Ok(());
        };
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let hits = windows
            .entry((scope.to_string(), subject.to_string()))
            .or_default();
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            hits.pop_front();
        }
        let reset = hits.front().map_or(window, |oldest| {
            window.saturating_sub(now.duration_since(*oldest))
        });
        let reset_secs = reset.as_secs_f64().ceil().max(1.0) as u64;
        let allowed = hits.len() < limit as usize;
        if allowed {
            hits.push_back(now);
        }
        let current = hits.len() as u64;
        let remaining = u64::from(limit).saturating_sub(current);
        let scope_header = if header_prefix == "RateLimit" {
            "RateLimit-Scope".to_string()
        } else {
            format!("{header_prefix}-Scope")
        };
        let mut set = |name: String, value: HeaderValue| {
            if let Ok(name) = axum::http::HeaderName::try_from(name) {
                into.insert(name, value);
            }
        };
        if let Ok(v) = HeaderValue::from_str(scope) {
            set(scope_header, v);
        }
        set(format!("{header_prefix}-Limit"), HeaderValue::from(limit));
        set(
            format!("{header_prefix}-Remaining"),
            HeaderValue::from(remaining),
        );
        set(
            format!("{header_prefix}-Reset"),
            HeaderValue::from(reset_secs),
        );
        if allowed {
            return Ok(());
        }
        set(
            format!("{header_prefix}-Warning"),
            HeaderValue::from_static("You have exceeded the rate limit"),
        );
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Rate limit exceeded for scope {scope:?}: {limit} requests per {}s",
                window.as_secs()
            ),
        );
        error.retry_after = Some(reset_secs);
        let mut details = ErrorDetails {
            headers: std::mem::take(into),
            ..Default::default()
        };
        if let serde_json::Value::Object(extra) =
            json!({"scope": scope, "limit": limit, "current": current, "reset": reset_secs})
        {
            details.extra = extra;
        }
        error.details = Some(Box::new(details));
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_subject_with_headers() {
        let limiter = RateLimiter::new(RateLimitConfig::reference());
        let mut headers = HeaderMap::new();
        for _ in 0..10 {
            limiter
                .check(
                    "batch-reserve",
                    "stack-a",
                    Duration::from_secs(1),
                    "RateLimit",
                    &mut headers,
                )
                .unwrap();
        }
        assert_eq!(headers["ratelimit-remaining"], "0");
        let err = limiter
            .check(
                "batch-reserve",
                "stack-a",
                Duration::from_secs(1),
                "RateLimit",
                &mut headers,
            )
            .unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            err.details.as_ref().unwrap().extra["scope"],
            "batch-reserve"
        );
        assert!(err.retry_after.is_some());
        limiter
            .check(
                "batch-reserve",
                "stack-b",
                Duration::from_secs(1),
                "RateLimit",
                &mut HeaderMap::new(),
            )
            .unwrap();
        limiter
            .check(
                "not-limited",
                "x",
                Duration::from_secs(1),
                "RateLimit",
                &mut HeaderMap::new(),
            )
            .unwrap();
    }
}
