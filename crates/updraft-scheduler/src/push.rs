//! The push source: `POST /webhooks/buildkite` and `POST /events/eventbridge`. Each request is
//! verified with the configured webhook token (shared token or HMAC signature, via
//! `updraft_buildkite::events`; EventBridge events without credentials only when
//! `[push] allow_unsigned_eventbridge` says so) and parsed; a "job scheduled" event goes straight into
//! intake — the same path as a poll result, so push and pull together still launch a job
//! once — and a job finishing wakes the reconciler so a cancel stops its launch promptly.

use crate::core::{Candidate, Core};
use crate::stats::Source;
use crate::telemetry::labels;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::sync::Arc;
use updraft_backends::JobContext;
use updraft_buildkite::events::{
    parse_eventbridge, parse_webhook, EventKind, PushEvent, Rejection, WebhookVerifier,
    SIGNATURE_HEADER, TOKEN_HEADER,
};
use uuid::Uuid;

pub(crate) fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .route("/webhooks/buildkite", post(webhook))
        .route("/events/eventbridge", post(eventbridge))
        .layer(axum::middleware::map_response(close_after_reply))
        .with_state(core)
}

/// Each push event comes on its own delivery, so its connection is closed after the reply: a
/// burst of thousands of webhooks would otherwise leave as many idle connections open, each
/// holding its buffers, until the sender's idle timeout.
async fn close_after_reply(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

fn is_credential_problem(rejection: &Rejection) -> bool {
    matches!(
        rejection,
        Rejection::MissingCredentials
            | Rejection::TokenMismatch
            | Rejection::MalformedSignature { .. }
            | Rejection::SignatureMismatch
            | Rejection::StaleSignature { .. }
            | Rejection::FutureSignature { .. }
            | Rejection::UnreadableHeader { .. }
    )
}

type Reply = (StatusCode, String);

fn verify(core: &Core, headers: &HeaderMap, body: &[u8]) -> Result<(), Reply> {
    if !core.is_leading() {
        // The leader takes the job in; Buildkite's poll is the safety net for this event.
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader; send push events to the leader\n".into(),
        ));
    }
    let Some(token) = &core.config.push.webhook_token else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "push is not configured: set [push] webhook_token to accept events\n".into(),
        ));
    };
    WebhookVerifier::new(token.clone())
        .verify(headers, body, chrono::Utc::now())
        .map_err(|rejection| {
            core.telemetry
                .push_events
                .get_or_create(&labels(&[("kind", "unverified"), ("result", "refused")]))
                .inc();
            (StatusCode::UNAUTHORIZED, format!("{rejection}\n"))
        })
}

fn parsed(core: &Core, result: Result<PushEvent, Rejection>) -> Result<PushEvent, Reply> {
    result.map_err(|rejection| {
        core.telemetry
            .push_events
            .get_or_create(&labels(&[("kind", "unparsed"), ("result", "refused")]))
            .inc();
        let status = if is_credential_problem(&rejection) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        (status, format!("{rejection}\n"))
    })
}

async fn webhook(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Reply {
    if let Err(reply) = verify(&core, &headers, &body) {
        return reply;
    }
    match parsed(&core, parse_webhook(&headers, &body)) {
        Ok(event) => handle(&core, event),
        Err(reply) => reply,
    }
}

async fn eventbridge(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Reply {
    let has_credentials =
        headers.contains_key(TOKEN_HEADER) || headers.contains_key(SIGNATURE_HEADER);
    if has_credentials || !core.config.push.allow_unsigned_eventbridge {
        if let Err(reply) = verify(&core, &headers, &body) {
            return reply;
        }
    }
    match parsed(&core, parse_eventbridge(&body)) {
        Ok(event) => handle(&core, event),
        Err(reply) => reply,
    }
}

/// A "job scheduled" event as a candidate for intake; `None` when its job id is not a UUID.
pub(crate) fn candidate(core: &Core, event: &PushEvent) -> Option<Candidate> {
    let job = event.job.as_ref()?;
    let id = job.id.parse::<Uuid>().ok()?;
    let scheduled_at_ms = job
        .runnable_at
        .or(event.time)
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| core.now_ms());
    let context = JobContext {
        agent_query_rules: job.agent_query_rules.to_strings(),
        pipeline_slug: event.pipeline.as_ref().and_then(|p| p.slug.clone()),
        build_number: event.build.as_ref().and_then(|b| b.number),
        build_branch: event.build.as_ref().and_then(|b| b.branch.clone()),
        step_key: job.step_key.clone(),
        ..JobContext::default()
    };
    Some(Candidate {
        id,
        rules: Ok(job.agent_query_rules.clone()),
        priority: job.priority.unwrap_or(0),
        scheduled_at_ms,
        source: Source::Push,
        context,
    })
}

fn handle(core: &Core, event: PushEvent) -> Reply {
    let kind = event.kind;
    let result = match (kind, &event.job) {
        (EventKind::JobScheduled, Some(job)) => match candidate(core, &event) {
            Some(candidate) => {
                let fresh = core.intake(vec![candidate]);
                if fresh == 1 {
                    "taken"
                } else {
                    "duplicate"
                }
            }
            None => {
                core.telemetry
                    .push_events
                    .get_or_create(&labels(&[("kind", kind.name()), ("result", "refused")]))
                    .inc();
                return (
                    StatusCode::BAD_REQUEST,
                    format!("job id {:?} is not a UUID\n", job.id),
                );
            }
        },
        (EventKind::JobFinished | EventKind::BuildFinished, _) => {
            core.wake_reconcile.notify_one();
            "reconcile"
        }
        _ => "ignored",
    };
    core.telemetry
        .push_events
        .get_or_create(&labels(&[("kind", kind.name()), ("result", result)]))
        .inc();
    (StatusCode::OK, format!("{result}\n"))
}
