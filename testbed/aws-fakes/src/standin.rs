//! The execution stand-in's HTTP server: one endpoint speaking AWS JSON 1.1 for CodeBuild
//! (`CodeBuild_20161006.*`) and ECS (`AmazonEC2ContainerServiceV20141113.*`), each call
//! recorded verbatim and passed through fault injection before it is served.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::codebuild::{CodeBuild, CodeBuildSettings};
use crate::ecs::{Ecs, EcsSettings};
use crate::process::Supervisor;
use crate::protocol::{ok, AwsError, RecordedRequest, RequestGate};
use crate::sdk::sdk_config;

const CODEBUILD_TARGET: &str = "CodeBuild_20161006";
const ECS_TARGET: &str = "AmazonEC2ContainerServiceV20141113";

/// The running stand-in. Dropping it (or [`StandIn::shut_down`]) kills every process it
/// started and stops the server.
pub struct StandIn {
    endpoint: String,
    codebuild: CodeBuild,
    ecs: Ecs,
    supervisor: Supervisor,
    stop_server: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Services {
    codebuild: CodeBuild,
    ecs: Ecs,
}

/// The service an `X-Amz-Target` names.
#[derive(Clone, Copy)]
enum Target {
    CodeBuild,
    Ecs,
}

impl Services {
    fn gate(&self, target: Target) -> &RequestGate {
        match target {
            Target::CodeBuild => self.codebuild.gate(),
            Target::Ecs => self.ecs.gate(),
        }
    }

    fn call(&self, target: Target, operation: &str, body: &Value) -> Result<Value, AwsError> {
        match target {
            Target::CodeBuild => self.codebuild.call(operation, body),
            Target::Ecs => self.ecs.call(operation, body),
        }
    }
}

impl StandIn {
    /// Serves on `listen` (port 0 picks a free one), reading secrets from and writing logs to
    /// the moto server at `moto_endpoint`.
    pub async fn start(
        listen: SocketAddr,
        moto_endpoint: &str,
        codebuild_settings: CodeBuildSettings,
        ecs_settings: EcsSettings,
    ) -> std::io::Result<StandIn> {
        let moto = sdk_config(moto_endpoint);
        let supervisor = Supervisor::default();
        let codebuild = CodeBuild::new(
            moto.clone(),
            moto_endpoint,
            supervisor.clone(),
            codebuild_settings,
        );
        let ecs = Ecs::new(moto, moto_endpoint, supervisor.clone(), ecs_settings);
        let services = Services {
            codebuild: codebuild.clone(),
            ecs: ecs.clone(),
        };
        let app = Router::new()
            .route("/", post(serve))
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(services);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (stop_server, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = server.await {
                tracing::warn!(%error, "the stand-in server stopped with an error");
            }
        });
        Ok(StandIn {
            endpoint,
            codebuild,
            ecs,
            supervisor,
            stop_server: Some(stop_server),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:40124`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn codebuild(&self) -> &CodeBuild {
        &self.codebuild
    }

    pub fn ecs(&self) -> &Ecs {
        &self.ecs
    }

    /// How many process groups of builds and tasks are alive.
    pub fn live_process_groups(&self) -> usize {
        self.supervisor.live_groups()
    }

    /// Kills every build and task process, stops their runners and the server. Idempotent.
    pub fn shut_down(&mut self) {
        self.supervisor.shut_down();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shut_down();
    }
}

async fn serve(State(services): State<Services>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let Some((service, operation)) = target.split_once('.') else {
        return AwsError::client(
            "UnknownOperationException",
            format!("Unknown target {target:?}"),
        )
        .into_response();
    };
    let service = match service {
        CODEBUILD_TARGET => Target::CodeBuild,
        ECS_TARGET => Target::Ecs,
        _ => {
            return AwsError::client(
                "UnknownOperationException",
                format!("The stand-in serves CodeBuild and ECS, not {service}"),
            )
            .into_response()
        }
    };
    let gate = services.gate(service);
    if let Some(error) = gate.admit(RecordedRequest::new(operation, &headers, &body)) {
        return error.into_response();
    }
    let parsed: Value = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(error) => {
                return AwsError::client(
                    "SerializationException",
                    format!("The body is not JSON: {error}"),
                )
                .into_response()
            }
        }
    };
    match services.call(service, operation, &parsed) {
        Ok(reply) => ok(reply),
        Err(error) => error.into_response(),
    }
}
