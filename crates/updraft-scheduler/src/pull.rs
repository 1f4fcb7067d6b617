//! The pull source: every `poll_interval` (≥ 1 s) list each served queue's scheduled jobs
//! through the Stacks API, page by page, and take them in. Pull is the safety net under
//! push: whatever an event missed, the next poll finds. A full listing also tells intake
//! which waiting jobs are gone (taken elsewhere, canceled).

use crate::core::{Candidate, Core};
use crate::stackset::StackSet;
use crate::stats::Source;
use std::collections::HashSet;
use std::sync::Arc;
use updraft_backends::JobContext;
use updraft_buildkite::stacks::{ScheduledJob, StacksClient};
use updraft_buildkite::ApiError;
use updraft_model::QueryRules;

/// At most this many pages per queue per poll, so one deep queue cannot spend the whole
/// list-scheduled-jobs rate limit.
const MAX_PAGES_PER_POLL: usize = 20;

pub(crate) fn candidate(job: &ScheduledJob, source: Source) -> Candidate {
    Candidate {
        id: job.id,
        rules: QueryRules::parse("agent_query_rules", &job.agent_query_rules)
            .map_err(|e| e.to_string()),
        priority: job.priority.unwrap_or(0),
        scheduled_at_ms: job.scheduled_at.timestamp_millis(),
        source,
        context: JobContext {
            agent_query_rules: job.agent_query_rules.clone(),
            pipeline_slug: Some(job.pipeline.slug.clone()).filter(|s| !s.is_empty()),
            build_number: job.build.number,
            build_branch: job.build.branch.clone(),
            step_key: job.step.key.clone(),
            ..JobContext::default()
        },
    }
}

/// Every scheduled job of `queue` (up to the page cap), and whether the listing was complete.
pub(crate) async fn list_queue(
    stacks: &StacksClient,
    queue: &str,
    page_limit: u32,
) -> Result<(Vec<ScheduledJob>, bool, bool), ApiError> {
    let mut jobs = Vec::new();
    let mut after: Option<String> = None;
    let mut paused = false;
    for _ in 0..MAX_PAGES_PER_POLL {
        let page = stacks
            .scheduled_jobs(queue, page_limit, after.as_deref())
            .await?;
        paused |= page.cluster_queue.is_paused();
        jobs.extend(page.jobs);
        match page
            .page_info
            .end_cursor
            .filter(|_| page.page_info.has_next_page)
        {
            Some(cursor) => after = Some(cursor),
            None => return Ok((jobs, true, paused)),
        }
    }
    Ok((jobs, false, paused))
}

/// Poll every `poll_interval`, starting one interval from now (start-up runs `poll_all`
/// itself before returning).
pub(crate) async fn poller(core: Arc<Core>, stacks: StackSet) {
    let interval = core.config.buildkite.poll_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = core.stopped() => return,
        }
        if !poll_all(&core, &stacks).await {
            return;
        }
        core.forget_old_unserved(core.now_ms());
    }
}

/// One poll of every served queue; `false` when the scheduler must stop.
pub(crate) async fn poll_all(core: &Core, stacks: &StackSet) -> bool {
    for queue in core.config.queues() {
        let started = core.now_ms();
        match list_queue(
            stacks.for_queue(&queue),
            &queue,
            core.config.buildkite.page_limit,
        )
        .await
        {
            Ok((jobs, complete, paused)) => {
                if paused {
                    tracing::debug!(
                        queue,
                        "dispatch is paused for this queue; not taking its jobs"
                    );
                    continue;
                }
                take_in_listing(core, &queue, &jobs, complete, started);
            }
            Err(error) => {
                if core.check_fatal("polling scheduled jobs", &error) {
                    return false;
                }
                tracing::warn!(%error, queue, "polling scheduled jobs failed; trying again next interval");
            }
        }
    }
    true
}

/// Take in one queue's listing; a complete one also tells intake which waiting jobs are gone.
pub(crate) fn take_in_listing(
    core: &Core,
    queue: &str,
    jobs: &[ScheduledJob],
    complete: bool,
    started_ms: i64,
) {
    let listed: HashSet<_> = jobs.iter().map(|j| j.id).collect();
    core.intake(jobs.iter().map(|j| candidate(j, Source::Pull)).collect());
    if complete {
        core.forget_unlisted(queue, &listed, started_ms);
    }
}
