//! Ledger retention: the reconciler loop prunes jobs closed longer ago than
//! `[ledger] retention`, with their launches, reservations and transitions, so a scheduler
//! that runs for months keeps a ledger of bounded size. A prune runs at most every
//! `PRUNE_EVERY` and removes at most `PRUNE_BATCH` jobs in its one transaction: every
//! reservation and launch writes through the same ledger, so it is held only briefly. A
//! bigger backlog (the first prune of an old ledger) is worked off one batch per pass.

use crate::core::Core;
use crate::telemetry::labels;
use std::time::{Duration, Instant};

/// The least time between two prunes that found nothing more to do.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(300);
/// The most jobs one prune removes.
pub(crate) const PRUNE_BATCH: u32 = 20_000;

/// When the next prune is due.
#[derive(Debug, Default)]
pub(crate) struct PruneSchedule {
    /// `None` until the first prune, which is due at once.
    next: Option<Instant>,
}

impl PruneSchedule {
    pub fn is_due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// A prune that filled its batch left older jobs behind: the next pass prunes again.
    fn after_prune(&mut self, now: Instant, jobs: u64) {
        let full_batch = jobs >= u64::from(PRUNE_BATCH);
        self.next = Some(if full_batch { now } else { now + PRUNE_EVERY });
    }
}

/// Prune the ledger if `schedule` says it is time; `now_ms` is the wall clock the retention
/// is measured back from. A failed prune is logged and tried again `PRUNE_EVERY` later: it
/// loses nothing, the rows simply stay a while longer.
pub(crate) async fn prune_if_due(
    core: &Core,
    schedule: &mut PruneSchedule,
    now: Instant,
    now_ms: i64,
) {
    if !schedule.is_due(now) {
        return;
    }
    let retention_ms = i64::try_from(core.config.ledger.retention.as_millis()).unwrap_or(i64::MAX);
    let closed_before_ms = now_ms.saturating_sub(retention_ms);
    let ledger = core.ledger.clone();
    let result =
        tokio::task::spawn_blocking(move || ledger.prune_closed(closed_before_ms, PRUNE_BATCH))
            .await;
    match result {
        Ok(Ok(pruned)) => {
            for (table, rows) in pruned.by_table() {
                core.telemetry
                    .ledger_pruned
                    .get_or_create(&labels(&[("table", table)]))
                    .inc_by(rows);
            }
            if pruned.jobs > 0 {
                tracing::info!(
                    jobs = pruned.jobs,
                    rows = pruned.total(),
                    retention = ?core.config.ledger.retention,
                    "pruned closed jobs from the ledger"
                );
            }
            schedule.after_prune(now, pruned.jobs);
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "pruning the ledger failed; trying again later");
            schedule.after_prune(now, 0);
        }
        Err(error) => {
            tracing::warn!(%error, "the ledger pruner panicked; trying again later");
            schedule.after_prune(now, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::Parts;
    use crate::ledger::{Ledger, NewReservation};
    use crate::stackset::StackSet;
    use updraft_backends::JobContext;

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use uuid::Uuid;

    #[test]
    fn a_prune_is_due_at_first_then_every_few_minutes_or_at_once_after_a_full_batch() {
        let start = Instant::now();
        let mut schedule = PruneSchedule::default();
        assert!(schedule.is_due(start));
        schedule.after_prune(start, 3);
        assert!(!schedule.is_due(start + PRUNE_EVERY / 2));
        assert!(schedule.is_due(start + PRUNE_EVERY));
        schedule.after_prune(start, u64::from(PRUNE_BATCH));
        assert!(schedule.is_due(start));
    }

    #[tokio::test]
    async fn the_reconciler_prune_drops_closed_jobs_past_retention_and_counts_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "[buildkite]\nendpoint = \"http://127.0.0.1:9/v3\"\nagent_token = \"t\"\n[ledger]\nretention = \"1h\"\n[[fleet]]\nname = \"linux\"\nqueue = \"linux\"\n",
        )
        .unwrap();
        let stacks = StackSet::new(&config).unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("l.sqlite")).unwrap());
        let core = Core::new(Parts {
            config,
            buildkite: Arc::new(stacks),
            ledger: ledger.clone(),
            backends: BTreeMap::new(),
            fleet_backends: Vec::new(),
            pool_backends: Vec::new(),
            ledger_inline: false,
        })
        .0;
        let (closed, open) = (Uuid::new_v4(), Uuid::new_v4());
        let reservation = |id| NewReservation {
            id,
            fleet: "linux".into(),
            queue: "linux".into(),
            priority: 0,
            scheduled_at_ms: 1,
            source: "pull",
            expires_at_ms: 2,
            context: JobContext::default(),
        };
        ledger
            .record_reserved(&[reservation(closed), reservation(open)])
            .unwrap();
        ledger.record_done(&[(closed, "passed".into())]).unwrap();

        let mut schedule = PruneSchedule::default();
        let now = Instant::now();
        // Less than the retention later, nothing goes.
        prune_if_due(&core, &mut schedule, now, now_ms() + 1000).await;
        assert!(ledger.job(closed).unwrap().is_some());
        assert!(!schedule.is_due(now));

        let two_hours_later = now_ms() + 2 * 3600 * 1000;
        prune_if_due(&core, &mut schedule, now + PRUNE_EVERY, two_hours_later).await;
        assert!(ledger.job(closed).unwrap().is_none());
        assert!(ledger.job(open).unwrap().is_some());
        let metrics = core.telemetry.encode();
        for line in [
            "updraft_ledger_pruned_rows_total{table=\"jobs\"} 1",
            "updraft_ledger_pruned_rows_total{table=\"reservations\"} 1",
            "updraft_ledger_pruned_rows_total{table=\"transitions\"} 2",
        ] {
            assert!(metrics.contains(line), "missing {line:?} in {metrics}");
        }
    }
}
