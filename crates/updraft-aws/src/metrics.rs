//! The AWS backends' metrics, typed label sets registering themselves under `updraft_aws_`:
//! failed AWS calls by backend, operation and error class; launches started; relayed log
//! bytes and chunks and relays running; SQS push messages by what became of them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallFailure {
    pub backend: &'static str,
    pub operation: &'static str,
    /// `unavailable`, `at_capacity`, `invalid` or `fatal`.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaunchKind {
    pub backend: &'static str,
    /// `acquire` or `relay`.
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Backend {
    pub backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushMessage {
    /// `recorded`, `duplicate`, `not_ours`, `gone`, `ignored`, `unreadable`, `retried`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct AwsMetrics {
    pub calls_failed: Family<CallFailure, Counter>,
    pub launches: Family<LaunchKind, Counter>,
    pub relay_bytes: Family<Backend, Counter>,
    pub relay_chunks: Family<Backend, Counter>,
    pub relays_running: Family<Backend, Gauge>,
    pub push_messages: Family<PushMessage, Counter>,
}

impl AwsMetrics {
    /// Register these metrics in `registry` (under the `updraft_aws` prefix).
    pub fn register_in(&self, registry: &mut Registry) {
        let metrics = self;
        let registry = registry.sub_registry_with_prefix("updraft_aws");
        registry.register(
            "call_failures",
            "AWS calls that failed, by backend, operation and error class",
            metrics.calls_failed.clone(),
        );
        registry.register(
            "launches",
            "Builds and tasks started, by backend and mode",
            metrics.launches.clone(),
        );
        registry.register(
            "relay_bytes",
            "Log bytes relayed from CloudWatch Logs into job logs",
            metrics.relay_bytes.clone(),
        );
        registry.register(
            "relay_chunks",
            "Log chunks relayed from CloudWatch Logs into job logs",
            metrics.relay_chunks.clone(),
        );
        registry.register(
            "relays_running",
            "Relayed jobs in progress",
            metrics.relays_running.clone(),
        );
        registry.register(
            "push_messages",
            "SQS push messages, by what became of them",
            metrics.push_messages.clone(),
        );
    }

    pub fn failed(&self, backend: &'static str, error: &crate::errors::AwsError) {
        self.calls_failed
            .get_or_create(&CallFailure {
                backend,
                operation: error.operation,
                class: error.class.label(),
            })
            .inc();
    }
}
