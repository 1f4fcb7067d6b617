//! The scheduler's HTTP surface: `/metrics` (Prometheus text), `/healthz` (the process is
//! working: no fatal error), `/readyz` (start-up finished: stack registered, ledger
//! reconciled), `/status` (a plain HTML page), and the push routes unless they have their
//! own listener.

use crate::core::Core;
use crate::push;
use crate::status;
use crate::telemetry::labels;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub(crate) fn routes(core: Arc<Core>, with_push: bool) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_page))
        .with_state(core.clone());
    if with_push {
        router.merge(push::routes(core))
    } else {
        router
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> Response {
    let loads = core.state().limiter.loads();
    for load in loads {
        let fleet = labels(&[("fleet", &load.name)]);
        core.telemetry
            .in_flight
            .get_or_create(&fleet)
            .set(load.in_flight as i64);
        core.telemetry
            .waiting
            .get_or_create(&fleet)
            .set(load.waiting as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.telemetry.encode(),
    )
        .into_response()
}

async fn healthz(State(core): State<Arc<Core>>) -> (StatusCode, String) {
    match core.fatal.borrow().as_ref() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(message) => (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")),
    }
}

/// Ready once started; a follower (leader election) is ready too — it serves `/metrics`
/// and `/healthz` and takes over when the leader goes, so a rolling update must not wait on
/// it becoming leader.
async fn readyz(State(core): State<Arc<Core>>) -> (StatusCode, &'static str) {
    if core.fatal.borrow().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n")
    } else if core.role() == Some("following") {
        (StatusCode::OK, "following\n")
    } else if *core.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn status_page(State(core): State<Arc<Core>>) -> Html<String> {
    let ledger = core.ledger.clone();
    let recent = tokio::task::spawn_blocking(move || ledger.recent_launches(50)).await;
    let recent = match recent {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Html(status::render(&core, recent))
}
