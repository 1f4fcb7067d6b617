//! Typed clients for Buildkite's APIs (agent API v3, Stacks API, REST v2, metrics), the push
//! event types (webhooks and EventBridge) and their verification. Every client shares one
//! HTTP core (`http`) that owns timeouts, retries and token redaction.

pub mod agent_api;
pub mod events;
pub mod http;
pub mod metrics;
pub mod rest;
pub mod stacks;

pub use http::{ApiClient, ApiError, AuthScheme, ClientOptions, RetryPolicy};
pub use updraft_model::Secret;
