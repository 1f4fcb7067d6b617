//! Polls Buildkite's agent metrics endpoint and republishes the numbers on `/metrics` under
//! buildkite-agent-metrics' names, never faster than the server's
//! `Buildkite-Agent-Metrics-Poll-Duration` allows, and keeps the latest reading for the
//! pools (read as often as the most frequent pool steps).

use crate::core::Core;
use std::sync::Arc;
use updraft_buildkite::metrics::MetricsClient;
use updraft_buildkite::ClientOptions;

pub(crate) async fn poller(core: Arc<Core>) {
    let client = match MetricsClient::new(
        &core.config.buildkite.endpoint,
        &core.config.buildkite.agent_token,
        ClientOptions::default(),
    ) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "queue metrics are off: cannot build the metrics client");
            return;
        }
    };
    let interval = crate::pool::metrics_interval(&core.config);
    let mut wait = interval;
    loop {
        match client.all_queues().await {
            Ok(reading) => {
                core.telemetry.record_queue_metrics(&reading.metrics);
                core.metrics_reading
                    .send_replace(Some(std::sync::Arc::new(reading.metrics)));
                wait = reading
                    .min_poll_interval
                    .map_or(interval, |min| min.max(interval));
            }
            Err(error) => {
                if core.check_fatal("reading queue metrics", &error) {
                    return;
                }
                tracing::debug!(%error, "reading queue metrics failed; trying again next interval");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = core.stopped() => return,
        }
    }
}
