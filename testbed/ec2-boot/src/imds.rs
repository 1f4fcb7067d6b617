//! Instance metadata for the booted instances, IMDSv2-shaped, one path prefix per instance
//! (`<base>/<instance id>/latest/…`): a session token, the instance id, the region, and the
//! instance's tags, read from moto at each request so a tag the scheduler sets is seen at
//! once.

use aws_sdk_ec2::types::Filter;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;

pub(crate) fn routes(ec2: aws_sdk_ec2::Client) -> Router {
    Router::new()
        .route("/{instance}/latest/api/token", put(token))
        .route("/{instance}/latest/meta-data/instance-id", get(instance_id))
        .route("/{instance}/latest/meta-data/placement/region", get(region))
        .route("/{instance}/latest/meta-data/tags/instance/{key}", get(tag))
        .with_state(ec2)
}

async fn token() -> &'static str {
    "ec2-boot-imds-token"
}

async fn instance_id(Path(instance): Path<String>) -> String {
    instance
}

async fn region() -> &'static str {
    updraft_aws_fakes::sdk::REGION
}

async fn tag(
    State(ec2): State<aws_sdk_ec2::Client>,
    Path((instance, key)): Path<(String, String)>,
) -> Result<String, StatusCode> {
    let tags = ec2
        .describe_tags()
        .filters(
            Filter::builder()
                .name("resource-id")
                .values(&instance)
                .build(),
        )
        .filters(Filter::builder().name("key").values(&key).build())
        .send()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    tags.tags()
        .iter()
        .find(|t| t.key() == Some(key.as_str()))
        .and_then(|t| t.value())
        .map(str::to_string)
        .ok_or(StatusCode::NOT_FOUND)
}
