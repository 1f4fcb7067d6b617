//! The HTTP server: shared application state, the router that mounts every API, the front
//! door middleware (API fault injection on `/v3`, request counters) and the deadline timer.

use crate::config::{ApiFaults, EmulatorConfig, PushFaults, PushTargets};
use crate::error::ApiError;
use crate::faults::Dice;
use crate::ratelimit::RateLimiter;
use crate::store::{Event, Settings, Store};
use crate::{agent_api, introspection, job_api, metrics, rest, stacks_api};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use updraft_model::Secret;

/// Settings that can change while the emulator runs.
pub struct Live {
    pub push: Mutex<PushTargets>,
    pub push_faults: Mutex<(PushFaults, Dice)>,
    pub api_faults: Mutex<(ApiFaults, Dice)>,
    pub rate: RateLimiter,
}

pub struct App {
    pub store: Store,
    pub live: Live,
    pub agent_token: Secret,
    pub api_token: Secret,
    pub org: String,
    pub base_url: String,
    pub default_reservation: Duration,
    pub chunks_max_size_bytes: usize,
}

pub type SharedApp = Arc<App>;

impl App {
    pub fn new(
        config: &EmulatorConfig,
        base_url: String,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let settings = Settings::new(config, base_url.clone());
        let chunks_max_size_bytes = settings.chunks_max_size_bytes;
        let app = App {
            store: Store::new(settings, events),
            live: Live {
                push: Mutex::new(PushTargets::default()),
                push_faults: Mutex::new((
                    config.push_faults.clone(),
                    Dice::new(config.push_faults.seed),
                )),
                api_faults: Mutex::new((
                    config.api_faults.clone(),
                    Dice::new(config.api_faults.seed),
                )),
                rate: RateLimiter::new(config.rate_limits.clone()),
            },
            agent_token: config.agent_token.clone(),
            api_token: config.api_token.clone(),
            org: config.org.clone(),
            base_url,
            default_reservation: config.default_reservation,
            chunks_max_size_bytes,
        };
        app.set_push_targets(config.push.clone());
        app
    }

    pub fn set_push_targets(&self, targets: PushTargets) {
        let enabled = targets.webhook.is_some() || targets.eventbridge_url.is_some();
        *self.live.push.lock().unwrap_or_else(|p| p.into_inner()) = targets;
        self.store.with(|s| s.push_enabled = enabled);
    }

    pub fn push_targets(&self) -> PushTargets {
        self.live
            .push
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_push_faults(&self, faults: PushFaults) {
        let dice = Dice::new(faults.seed);
        *self
            .live
            .push_faults
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (faults, dice);
    }

    pub fn set_api_faults(&self, faults: ApiFaults) {
        let dice = Dice::new(faults.seed);
        *self
            .live
            .api_faults
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (faults, dice);
    }

    pub fn api_faults(&self) -> ApiFaults {
        self.live
            .api_faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    pub fn push_faults(&self) -> PushFaults {
        self.live
            .push_faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Decide whether this `/v3` request is answered with an injected fault.
    fn injected_fault(&self) -> Option<StatusCode> {
        let mut guard = self
            .live
            .api_faults
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (faults, dice) = &mut *guard;
        let fraction = faults.fraction;
        if !dice.roll(fraction) {
            return None;
        }
        Some(if dice.roll(0.5) {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        })
    }
}

pub fn router(app: SharedApp) -> Router {
    Router::new()
        .route("/", axum::routing::get(root))
        .nest(
            "/v3",
            agent_api::routes()
                .merge(job_api::routes())
                .merge(stacks_api::routes())
                .merge(metrics::routes()),
        )
        .nest("/v2", rest::routes(app.clone()))
        .nest("/_emulator", introspection::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            front_door,
        ))
        .with_state(app)
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn root() -> Json<serde_json::Value> {
    Json(serde_json::json!({"message": "👋", "timestamp": chrono::Utc::now().timestamp()}))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// API faults first (a faulted request never reaches a handler, so it changes nothing), then
/// the request is counted by route and status.
async fn front_door(State(app): State<SharedApp>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} (unmatched)", request.method()),
    };
    let faultable = request.uri().path().starts_with("/v3/");
    let response = match faultable.then(|| app.injected_fault()).flatten() {
        Some(status) => {
            let mut error = ApiError::new(
                status,
                format!(
                    "Injected fault: the emulator answered {} on purpose",
                    status.as_u16()
                ),
            );
            error.retry_after = Some(1);
            app.store.with(|s| s.counters.api_faults_injected += 1);
            error.into_response()
        }
        None => next.run(request).await,
    };
    let status = response.status().as_u16();
    app.store.with(|s| {
        if status == 429 {
            s.counters.rate_limited += 1;
        }
        *s.counters.requests_by_route.entry(route).or_default() += 1;
        *s.counters.responses_by_status.entry(status).or_default() += 1;
    });
    response
}

/// Fire deadlines (expiry, reservation lapse, timeouts) when due; sleeps otherwise, so an
/// idle emulator uses no CPU.
pub async fn run_deadlines(app: SharedApp, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = chrono::Utc::now();
        let next = app.store.with(|s| s.sweep(now));
        let wait = next.map(|at| (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = app.store.deadline_wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
