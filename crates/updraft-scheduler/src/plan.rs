//! `updraft plan`: list the jobs scheduled now on every queue the config serves and say which
//! fleet would take each, or why none would; queues no fleet serves are read from the agent
//! metrics endpoint, since the Stacks API lists a queue only to a stack of that queue.
//! Nothing is reserved or launched; the only write is registering the stacks (idempotent),
//! which Buildkite requires before listing.

use crate::config::Config;
use crate::pull::list_queue;
use crate::router::{route, Route};
use crate::stackset::StackSet;
use std::fmt;
use updraft_buildkite::metrics::MetricsClient;
use updraft_buildkite::ClientOptions;
use updraft_model::QueryRules;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub id: Uuid,
    pub queue: String,
    pub rules: String,
    pub priority: i64,
    /// The fleet that would launch it, or why none would.
    pub decision: Result<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub jobs: Vec<PlannedJob>,
    /// Queues whose listing hit the page cap: more jobs wait than are shown.
    pub truncated_queues: Vec<String>,
    pub paused_queues: Vec<String>,
    /// Queues with scheduled jobs that no fleet serves, with how many wait there.
    pub unserved_queues: Vec<(String, u64)>,
}

pub async fn plan(config: &Config) -> anyhow::Result<Plan> {
    let stacks = StackSet::new(config)?;
    // Buildkite lists a queue's jobs only to a registered stack; registering is idempotent.
    stacks
        .register_all()
        .await
        .map_err(|(key, e)| anyhow::anyhow!("registering stack {key:?}: {e}"))?;
    let mut out = Plan::default();
    for (queue, stack) in stacks.iter() {
        let queue = queue.clone();
        let (jobs, complete, paused) = list_queue(stack, &queue, config.buildkite.page_limit)
            .await
            .map_err(|e| anyhow::anyhow!("listing scheduled jobs of queue {queue:?}: {e}"))?;
        if !complete {
            out.truncated_queues.push(queue.clone());
        }
        if paused {
            out.paused_queues.push(queue.clone());
        }
        for job in jobs {
            let decision = match QueryRules::parse("agent_query_rules", &job.agent_query_rules) {
                Ok(rules) => match route(&config.fleets, &rules) {
                    Route::Fleet(index) => Ok(config.fleets[index].name.clone()),
                    Route::Unserved(reason) => Err(reason),
                },
                Err(e) => Err(format!("unreadable agent_query_rules: {e}")),
            };
            out.jobs.push(PlannedJob {
                id: job.id,
                queue: queue.clone(),
                rules: job.agent_query_rules.join(","),
                priority: job.priority.unwrap_or(0),
                decision,
            });
        }
    }
    let metrics = MetricsClient::new(
        &config.buildkite.endpoint,
        &config.buildkite.agent_token,
        ClientOptions::default(),
    )?;
    let reading = metrics
        .all_queues()
        .await
        .map_err(|e| anyhow::anyhow!("reading queue metrics: {e}"))?;
    out.unserved_queues = reading
        .metrics
        .jobs
        .queues
        .iter()
        .filter(|(queue, counts)| {
            counts.scheduled > 0 && !config.fleets.iter().any(|f| &f.queue == *queue)
        })
        .map(|(queue, counts)| (queue.clone(), counts.scheduled))
        .collect();
    Ok(out)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.jobs.is_empty() {
            writeln!(f, "No jobs are scheduled on the served queues.")?;
        }
        for (queue, scheduled) in &self.unserved_queues {
            writeln!(
                f,
                "queue {queue}: {scheduled} scheduled job(s) ✗ no fleet serves queue={queue}"
            )?;
        }
        for job in &self.jobs {
            let decision = match &job.decision {
                Ok(fleet) => format!("→ fleet {fleet}"),
                Err(reason) => format!("✗ {reason}"),
            };
            writeln!(
                f,
                "{}  queue={}  priority={}  [{}]  {decision}",
                job.id, job.queue, job.priority, job.rules
            )?;
        }
        for queue in &self.paused_queues {
            writeln!(f, "queue {queue}: dispatch is paused; nothing would launch")?;
        }
        for queue in &self.truncated_queues {
            writeln!(f, "queue {queue}: more jobs are scheduled than listed here")?;
        }
        Ok(())
    }
}
