//! Two tower layers under the `kube` client: a token bucket holding requests to `qps` per
//! second with bursts of `burst` (client-go's limiter, so a scheduler cannot flood the API
//! server; lifted when `qps` is 0), and a counter of every request by verb, resource and
//! status, with its latency.

use crate::metrics::{Metrics, RequestLabels, VerbLabels};
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Holds requests to a rate with bursts.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl RateLimitLayer {
    pub fn new(qps: u32, burst: u32) -> RateLimitLayer {
        RateLimitLayer {
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(burst.max(1)),
                burst: f64::from(burst.max(1)),
                per_second: f64::from(qps.max(1)),
                refilled: Instant::now(),
            })),
        }
    }
}

struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled: Instant,
}

impl Bucket {
    /// Take a token now, or say how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            holding: false,
        }
    }
}

/// A service whose `poll_ready` waits for a token. `kube::Client` puts a buffer in front, so
/// waiting requests queue there rather than spinning.
pub struct RateLimited<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    wait: Option<Pin<Box<Sleep>>>,
    /// A token was taken for the next call.
    holding: bool,
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.holding {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(Instant::now());
            match taken {
                Ok(()) => self.holding = true,
                Err(delay) => self.wait = Some(Box::pin(tokio::time::sleep(delay))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.holding = false;
        self.inner.call(request)
    }
}

/// Counts requests into [`Metrics`].
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Metrics,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Metrics) -> RequestMetricsLayer {
        RequestMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

pub struct RequestMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (verb, resource) = describe(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics
                .api_request_seconds
                .get_or_create(&VerbLabels {
                    verb,
                    resource: resource.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .api_requests
                .get_or_create(&RequestLabels {
                    verb,
                    resource,
                    code,
                })
                .inc();
            metrics.requests_sent.inc();
            result
        })
    }
}

/// The Kubernetes verb and resource of a request: `POST /apis/batch/v1/namespaces/ci/jobs` is
/// `create jobs`; `GET …/pods?watch=true` is `watch pods`.
pub fn describe(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return (verb_of(method, true, false), "other".into()),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        [] => ("other".to_string(), false),
    };
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    (verb_of(method, named, watch), resource)
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named, watch) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_described_by_verb_and_resource() {
        let cases = [
            (
                Method::POST,
                "/apis/batch/v1/namespaces/ci/jobs",
                None,
                ("create", "jobs"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ci/pods",
                Some("labelSelector=a%3Db&watch=true"),
                ("watch", "pods"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ci/pods",
                Some("limit=500"),
                ("list", "pods"),
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/ci/jobs/updraft-x",
                None,
                ("delete", "jobs"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ci/leases/updraft",
                None,
                ("update", "leases"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ci",
                None,
                ("get", "namespaces"),
            ),
            (Method::GET, "/version", None, ("get", "other")),
        ];
        for (method, path, query, (verb, resource)) in cases {
            assert_eq!(
                describe(&method, path, query),
                (verb, resource.to_string()),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let layer = RateLimitLayer::new(10, 3);
        let mut bucket = layer.bucket.lock().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
    }
}
