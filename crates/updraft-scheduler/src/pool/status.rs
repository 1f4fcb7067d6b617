//! The pools' part of `/status`: each pool's last decision with its reason, members and
//! agents, boot times and recent actions; then compute and cost by fleet, queue, pipeline and
//! kind, and the most recent jobs' cost.

use super::board::PoolSnapshot;
use crate::core::Core;
use crate::status::{escape, time};
use std::fmt::Write;

/// How many jobs' costs the page lists.
const JOBS_SHOWN: usize = 50;

fn pool_section(page: &mut String, pool: &PoolSnapshot) {
    let count = |state: &str| pool.members.iter().filter(|m| m.state == state).count();
    let busy: u32 = pool.members.iter().map(|m| m.busy).sum();
    let connected: u32 = pool.members.iter().map(|m| m.connected).sum();
    let _ = write!(
        page,
        "<h3>Pool {}</h3><p>policy <b>{}</b> · desired <b>{}</b> at {} · {} ready, {} booting, \
         {} draining, {} exited · agents {} busy, {} idle · boot estimate {:.1} s</p>\
         <p>Why: {}</p>",
        escape(&pool.fleet),
        pool.policy,
        pool.desired,
        time(pool.decided_at_ms),
        count("ready"),
        count("booting"),
        count("draining"),
        count("exited"),
        busy,
        connected.saturating_sub(busy),
        pool.boot_estimate.as_secs_f64(),
        escape(&pool.reason),
    );
    if let Some(error) = &pool.error {
        let _ = write!(page, "<p><b>Last step failed:</b> {}</p>", escape(error));
    }
    if !pool.members.is_empty() {
        page.push_str(
            "<table><tr><th>member</th><th>state</th><th>agents connected</th><th>busy</th>\
             <th>capacity</th><th>notice</th></tr>",
        );
        for member in &pool.members {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&member.name),
                member.state,
                member.connected,
                member.agents,
                member.busy,
                member.capacity,
                escape(member.notice.as_deref().unwrap_or("")),
            );
        }
        page.push_str("</table>");
    }
    if !pool.actions.is_empty() {
        page.push_str("<p>Recent actions:</p><ul>");
        for action in pool.actions.iter().rev() {
            let _ = write!(page, "<li>{}</li>", escape(action));
        }
        page.push_str("</ul>");
    }
}

pub(crate) fn render(page: &mut String, core: &Core) {
    let pools = core.pools.snapshots();
    if !pools.is_empty() {
        page.push_str("<h2>Pools</h2>");
        for pool in &pools {
            pool_section(page, pool);
        }
    }
    let lines = core.pools.cost_lines();
    if lines.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Compute and cost</h2><table><tr><th>fleet</th><th>queue</th><th>pipeline</th>\
         <th>kind</th><th>seconds</th><th>dollars</th></tr>",
    );
    for line in &lines {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.4}</td></tr>",
            escape(&line.fleet),
            escape(&line.queue),
            escape(&line.pipeline),
            line.kind,
            line.spent.seconds,
            line.spent.dollars,
        );
    }
    page.push_str("</table>");
    let jobs = core.pools.recent_job_costs(JOBS_SHOWN);
    if !jobs.is_empty() {
        page.push_str(
            "<p>Recent jobs:</p><table><tr><th>job</th><th>fleet</th><th>queue</th>\
             <th>pipeline</th><th>seconds</th><th>dollars</th></tr>",
        );
        for job in &jobs {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.4}</td></tr>",
                job.job,
                escape(&job.fleet),
                escape(&job.queue),
                escape(&job.pipeline),
                job.spent.seconds,
                job.spent.dollars,
            );
        }
        page.push_str("</table>");
    }
}
