//! The `/status` page: plain HTML, no scripts — each fleet's load, the pools' decisions and
//! compute cost (`pool::status`), the jobs waiting and why, and the most recent launches. It shows names, counts and reasons only; no token or
//! secret is ever held where this page could read it.

use crate::core::{Core, Phase};
use crate::ledger::LaunchRow;
use chrono::{TimeZone, Utc};
use std::fmt::Write;

/// A fleet held back: its index, why, and until when.
type Hold = (usize, String, i64);
/// A job waiting on a lost agent: its id, what happened, and since when.
type Lost = (String, String, i64);

/// How many waiting jobs the page lists.
const WAITING_SHOWN: usize = 200;

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

pub(crate) fn render(core: &Core, recent: Result<Vec<LaunchRow>, String>) -> String {
    let now = core.now_ms();
    let (holds, lost): (Vec<Hold>, Vec<Lost>) = {
        let state = core.state();
        (
            state
                .holds
                .iter()
                .filter(|(_, h)| h.until_ms > now)
                .map(|(fleet, h)| (*fleet, h.reason.clone(), h.until_ms))
                .collect(),
            state
                .lost_agents
                .iter()
                .map(|(job, l)| (job.to_string(), l.reason.clone(), l.since_ms))
                .collect(),
        )
    };
    let (loads, mut waiting) = {
        let state = core.state();
        let waiting: Vec<(String, String, String, i64)> = state
            .jobs
            .iter()
            .filter(|(_, t)| t.phase != Phase::Owned)
            .map(|(id, t)| {
                let fleet = t
                    .fleet
                    .map(|i| core.fleet(i).name.clone())
                    .unwrap_or_else(|| "—".into());
                (
                    id.to_string(),
                    fleet,
                    t.reason.clone().unwrap_or_else(|| "about to launch".into()),
                    t.seen_at_ms,
                )
            })
            .collect();
        (state.limiter.loads(), waiting)
    };
    waiting.sort_by_key(|w| w.3);
    let stats = core.stats.snapshot();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Updraft status</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head><body>\
         <h1>Updraft</h1><p>stacks <b>{}-*</b> · {} jobs seen · {} launched · {} in flight · {} reconcile passes</p>",
        escape(&core.config.buildkite.stack_key),
        stats.jobs_seen,
        stats.launched,
        stats.in_flight,
        stats.reconcile_passes,
    );
    if let Some(message) = core.fatal.borrow().as_ref() {
        let _ = write!(page, "<p><b>Stopped:</b> {}</p>", escape(message));
    }
    if let Some(role) = core.role() {
        let _ = write!(
            page,
            "<p>Leader election: this replica is <b>{role}</b>.</p>"
        );
    }
    page.push_str("<h2>Fleets</h2><table><tr><th>fleet</th><th>serves</th><th>backend</th><th>in flight</th><th>waiting</th></tr>");
    for (fleet, load) in core.config.fleets.iter().zip(loads) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
            escape(&fleet.name),
            escape(&fleet.tags.to_strings().join(",")),
            escape(&fleet.backend),
            load.in_flight,
            load.max_in_flight,
            load.waiting
        );
    }
    page.push_str("</table>");
    crate::pool::status::render(&mut page, core);
    for (fleet, reason, until) in &holds {
        let _ = write!(
            page,
            "<p><b>Fleet {} held back</b> until {}: {}</p>",
            escape(&core.fleet(*fleet).name),
            time(*until),
            escape(reason)
        );
    }
    let _ = write!(page, "<h2>Waiting jobs ({})</h2>", waiting.len());
    if waiting.is_empty() {
        page.push_str("<p>None.</p>");
    } else {
        page.push_str(
            "<table><tr><th>job</th><th>fleet</th><th>why it waits</th><th>seen</th></tr>",
        );
        for (id, fleet, reason, seen) in waiting.iter().take(WAITING_SHOWN) {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(id),
                escape(fleet),
                escape(reason),
                time(*seen)
            );
        }
        page.push_str("</table>");
    }
    if !lost.is_empty() {
        let _ = write!(
            page,
            "<h2>Jobs waiting on a lost agent ({})</h2><p>Their launch ended while Buildkite \
             still shows an agent holding the job. Buildkite fails such a job once it marks the \
             agent lost (its lost-agent timeout); Updraft does not fail a job an agent holds.</p>\
             <table><tr><th>job</th><th>what happened</th><th>since</th></tr>",
            lost.len()
        );
        for (job, reason, since) in &lost {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(job),
                escape(reason),
                time(*since)
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Recent launches</h2>");
    match recent {
        Ok(rows) if rows.is_empty() => page.push_str("<p>None yet.</p>"),
        Ok(rows) => {
            page.push_str("<table><tr><th>launch</th><th>fleet</th><th>attempt</th><th>started</th><th>ended</th><th>outcome</th></tr>");
            for row in rows {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&row.name),
                    escape(&row.fleet),
                    row.attempt,
                    time(row.started_at_ms),
                    row.ended_at_ms.map(time).unwrap_or_default(),
                    escape(row.outcome.as_deref().unwrap_or("running"))
                );
            }
            page.push_str("</table>");
        }
        Err(error) => {
            let _ = write!(page, "<p>Could not read the ledger: {}</p>", escape(&error));
        }
    }
    page.push_str("</body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
