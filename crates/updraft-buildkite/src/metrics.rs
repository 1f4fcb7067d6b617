//! The agent metrics client (reference §5): queue and agent counts per cluster, as
//! buildkite-agent-metrics reads them, plus the server's minimum poll interval
//! (`Buildkite-Agent-Metrics-Poll-Duration`).

use crate::http::{decode_json, ApiClient, ApiError, AuthScheme, ClientOptions};
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use updraft_model::Secret;

pub const POLL_DURATION_HEADER: &str = "buildkite-agent-metrics-poll-duration";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AgentCounts {
    #[serde(default)]
    pub idle: u64,
    #[serde(default)]
    pub busy: u64,
    #[serde(default)]
    pub total: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JobCounts {
    #[serde(default)]
    pub scheduled: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub waiting: u64,
    /// Reported by buildkite-agent-metrics as "UnfinishedJobsCount".
    #[serde(default)]
    pub total: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AgentSection {
    #[serde(flatten)]
    pub counts: AgentCounts,
    #[serde(default)]
    pub queues: BTreeMap<String, AgentCounts>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JobSection {
    #[serde(flatten)]
    pub counts: JobCounts,
    #[serde(default)]
    pub queues: BTreeMap<String, JobCounts>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Organization {
    pub slug: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Cluster {
    #[serde(default)]
    pub name: String,
}

/// The all-queues response; the one-queue response is the same without `queues`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QueueMetrics {
    #[serde(default)]
    pub agents: AgentSection,
    #[serde(default)]
    pub jobs: JobSection,
    /// buildkite-agent-metrics treats a missing slug as an error, and so do we.
    pub organization: Organization,
    #[serde(default)]
    pub cluster: Option<Cluster>,
}

impl QueueMetrics {
    pub fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or("")
    }

    /// Every queue named in either the agent or the job counts.
    pub fn queue_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .agents
            .queues
            .keys()
            .chain(self.jobs.queues.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Busy agents as a whole percentage of all agents, as buildkite-agent-metrics computes it.
pub fn busy_percentage(counts: &AgentCounts) -> u64 {
    (counts.busy * 100).checked_div(counts.total).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct MetricsReading {
    pub metrics: QueueMetrics,
    /// Do not poll again sooner than this, when the server says so.
    pub min_poll_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct MetricsClient {
    api: ApiClient,
}

impl MetricsClient {
    pub fn new(
        endpoint: &str,
        agent_token: &Secret,
        options: ClientOptions,
    ) -> Result<Self, ApiError> {
        Ok(MetricsClient {
            api: ApiClient::new(endpoint, agent_token, AuthScheme::Token, options)?,
        })
    }

    /// All queues of the token's cluster.
    pub async fn all_queues(&self) -> Result<MetricsReading, ApiError> {
        self.fetch(self.api.request(Method::GET, "metrics")).await
    }

    /// One queue.
    pub async fn queue(&self, name: &str) -> Result<MetricsReading, ApiError> {
        self.fetch(
            self.api
                .request(Method::GET, "metrics/queue")
                .query(&[("name", name)]),
        )
        .await
    }

    async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<MetricsReading, ApiError> {
        let response = self.api.send(request).await?;
        let min_poll_interval = response
            .headers()
            .get(POLL_DURATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().trim_end_matches('s').parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64);
        let metrics = decode_json(response).await?;
        Ok(MetricsReading {
            metrics,
            min_poll_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_queues_response_decodes_and_lists_queues() {
        let m: QueueMetrics = serde_json::from_str(
            r#"{"agents":{"idle":1,"busy":3,"total":4,"queues":{"linux":{"idle":1,"busy":3,"total":4}}},
                "jobs":{"scheduled":2,"running":3,"waiting":1,"total":6,"queues":{"gpu":{"scheduled":2,"running":0,"waiting":0,"total":2}}},
                "organization":{"slug":"acme"},"cluster":{"name":"main"}}"#,
        )
        .unwrap();
        assert_eq!(m.queue_names(), vec!["gpu", "linux"]);
        assert_eq!(m.cluster_name(), "main");
        assert_eq!(busy_percentage(&m.agents.counts), 75);
        assert_eq!(m.jobs.counts.total, 6);
    }

    #[test]
    fn missing_organization_slug_is_an_error() {
        assert!(serde_json::from_str::<QueueMetrics>(r#"{"agents":{},"jobs":{}}"#).is_err());
    }
}
