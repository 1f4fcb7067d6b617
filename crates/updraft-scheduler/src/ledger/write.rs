//! Writing the ledger: each call is one transaction, stamped with the ledger's clock, and
//! guarded by the stage the job must be in, so a late or repeated write cannot undo a later one.

use super::{LaunchRow, Ledger, LedgerError, NewReservation, Pruned};
use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

impl Ledger {
    /// Record reservations. A job already in the ledger keeps its history: it goes back to
    /// `reserved` only if it was `done` (Buildkite handed it out again, e.g. after a
    /// reservation expired) — never while a launch is open.
    pub fn record_reserved(&self, jobs: &[NewReservation]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.with_tx("recording reservations", |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, fleet, queue, priority, scheduled_at_ms, source, stage, stage_since_ms, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'reserved', ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET stage = 'reserved', stage_since_ms = ?7, fleet = ?2,
                     context = ?8, refused = NULL, agent_lost_ms = NULL
                 WHERE jobs.stage = 'done'",
            )?;
            let mut reservation =
                tx.prepare_cached("INSERT INTO reservations (job_id, reserved_at_ms, expires_at_ms) VALUES (?1, ?2, ?3)")?;
            let mut transition = tx.prepare_cached(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'reserved', ?3)",
            )?;
            for job in jobs {
                let id = job.id.to_string();
                let context = serde_json::to_string(&job.context).unwrap_or_default();
                insert.execute(params![id, job.fleet, job.queue, job.priority, job.scheduled_at_ms, job.source, now, context])?;
                reservation.execute(params![id, now, job.expires_at_ms])?;
                transition.execute(params![id, now, format!("via {} for fleet {}", job.source, job.fleet)])?;
            }
            Ok(())
        })
    }

    /// Write the intent to launch, before asking the backend; returns each job's attempt.
    ///
    /// The ledger is the last guard against a decision taken on an older read: a job already
    /// launched, closed, or refused by its backend is not moved (and so not launched).
    /// An intent found still `launching` is one whose launch never happened (a launch that
    /// did would have been listed and adopted): trying it again is the same attempt, so a
    /// crash before the backend call does not use up the relaunch budget.
    pub fn record_launching(&self, jobs: &[Uuid]) -> Result<Vec<(Uuid, u32)>, LedgerError> {
        let now = self.now();
        self.with_tx("recording launch intents", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET stage = 'launching', stage_since_ms = ?2,
                     attempts = CASE WHEN stage = 'launching' THEN MAX(attempts, 1) ELSE attempts + 1 END
                 WHERE id = ?1 AND stage IN ('reserved', 'launching') AND refused IS NULL
                 RETURNING attempts",
            )?;
            let mut transition = tx.prepare_cached(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'launching', ?3)",
            )?;
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let id = job.to_string();
                let attempt: Option<u32> = update.query_row(params![id, now], |row| row.get(0)).optional()?;
                if let Some(attempt) = attempt {
                    transition.execute(params![id, now, format!("attempt {attempt}")])?;
                    out.push((*job, attempt));
                }
            }
            Ok(out)
        })
    }

    /// The backend confirmed these launches.
    pub fn record_launched(&self, launches: &[LaunchRow]) -> Result<(), LedgerError> {
        if launches.is_empty() {
            return Ok(());
        }
        self.with_tx("recording launches", |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO launches (name, job_id, fleet, attempt, started_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job_id, attempt) DO NOTHING",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET stage = 'launched', stage_since_ms = ?2 WHERE id = ?1 AND stage IN ('reserved', 'launching')",
            )?;
            let mut transition = tx.prepare_cached(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'launched', ?3)",
            )?;
            for launch in launches {
                let id = launch.job_id.to_string();
                insert.execute(params![launch.name, id, launch.fleet, launch.attempt, launch.started_at_ms])?;
                update.execute(params![id, launch.started_at_ms])?;
                transition.execute(params![id, launch.started_at_ms, launch.name])?;
            }
            Ok(())
        })
    }

    /// A launch attempt failed before it started: back to `reserved` for the reconciler. The
    /// attempt is not counted against the relaunch budget (that is for launches that started
    /// and died); how soon it is tried again is the caller's backoff.
    pub fn record_launch_failed(&self, job: Uuid, detail: &str) -> Result<(), LedgerError> {
        let now = self.now();
        self.with_tx("recording a failed launch", |tx| {
            tx.execute(
                "UPDATE jobs SET attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND stage = 'launching'",
                params![job.to_string()],
            )?;
            back_to_reserved(
                tx,
                job,
                now,
                "stage = 'launching'",
                &format!("launch failed: {detail}"),
            )
        })
    }

    /// The backend refused the launch as specified: the job must be failed with `reason` and
    /// never launched again.
    pub fn record_refused(&self, job: Uuid, reason: &str) -> Result<(), LedgerError> {
        let now = self.now();
        self.with_tx("recording a refused launch", |tx| {
            tx.execute(
                "UPDATE jobs SET refused = ?2 WHERE id = ?1 AND stage != 'done'",
                params![job.to_string(), reason],
            )?;
            back_to_reserved(
                tx,
                job,
                now,
                "stage = 'launching'",
                &format!("launch refused: {reason}"),
            )
        })
    }

    /// The job's launch is gone while Buildkite still shows an agent holding the job: note
    /// it once; the job stays open until Buildkite ends it (its lost-agent timeout).
    pub fn record_agent_lost(&self, job: Uuid, reason: &str) -> Result<bool, LedgerError> {
        let now = self.now();
        self.with_tx("recording a lost agent", |tx| {
            let changed = tx.execute(
                "UPDATE jobs SET agent_lost_ms = ?2 WHERE id = ?1 AND stage != 'done' AND agent_lost_ms IS NULL",
                params![job.to_string(), now],
            )?;
            if changed > 0 {
                tx.execute(
                    "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'agent_lost', ?3)",
                    params![job.to_string(), now, reason],
                )?;
            }
            Ok(changed > 0)
        })
    }

    /// A note in the job's history that changes nothing else (e.g. Buildkite refusing a
    /// `finish` because an agent holds the job).
    pub fn record_note(&self, job: Uuid, note: &str) -> Result<(), LedgerError> {
        let now = self.now();
        self.with_tx("recording a note", |tx| {
            tx.execute(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'note', ?3)",
                params![job.to_string(), now, note],
            )?;
            Ok(())
        })
    }

    /// Take in launches the backends list for live jobs the ledger has no open row of (a
    /// ledger lost or deleted, a new leader): they become `launched` rows, so they are
    /// reconciled, counted against their fleet and never launched a second time.
    pub fn record_adopted(&self, jobs: &[(NewReservation, LaunchRow)]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.with_tx("adopting launches", |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, fleet, queue, priority, scheduled_at_ms, source, stage, stage_since_ms, attempts, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'launched', ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET stage = 'launched', stage_since_ms = ?7, fleet = ?2,
                     refused = NULL, agent_lost_ms = NULL
                 WHERE jobs.stage = 'done'",
            )?;
            let mut launch = tx.prepare_cached(
                "INSERT INTO launches (name, job_id, fleet, attempt, started_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job_id, attempt) DO NOTHING",
            )?;
            let mut transition = tx.prepare_cached(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'launched', ?3)",
            )?;
            for (job, row) in jobs {
                let id = job.id.to_string();
                let context = serde_json::to_string(&job.context).unwrap_or_default();
                let attempt = row.attempt.max(1);
                if insert.execute(params![id, job.fleet, job.queue, job.priority, job.scheduled_at_ms, job.source, now, attempt, context])? > 0 {
                    launch.execute(params![row.name, id, row.fleet, attempt, row.started_at_ms])?;
                    transition.execute(params![id, now, format!("adopted {}", row.name)])?;
                }
            }
            Ok(())
        })
    }

    /// The launch ended (it was stopped, failed, or is being replaced); `outcome` says how.
    pub fn record_launch_ended(&self, job: Uuid, outcome: &str) -> Result<(), LedgerError> {
        let now = self.now();
        self.with_tx("recording a launch's end", |tx| {
            tx.execute(
                "UPDATE launches SET ended_at_ms = ?2, outcome = ?3
                 WHERE job_id = ?1 AND ended_at_ms IS NULL",
                params![job.to_string(), now, outcome],
            )?;
            Ok(())
        })
    }

    /// Send a job whose launch died before its agent took it back to `reserved`.
    pub fn record_relaunch(&self, job: Uuid, detail: &str) -> Result<(), LedgerError> {
        let now = self.now();
        self.with_tx("recording a relaunch", |tx| {
            back_to_reserved(
                tx,
                job,
                now,
                "stage != 'done'",
                &format!("relaunch: {detail}"),
            )
        })
    }

    pub fn record_running(&self, jobs: &[Uuid]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.with_tx("recording running jobs", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET running_since_ms = ?2 WHERE id = ?1 AND running_since_ms IS NULL",
            )?;
            for job in jobs {
                update.execute(params![job.to_string(), now])?;
            }
            Ok(())
        })
    }

    /// Close jobs for good, each with the reason.
    pub fn record_done(&self, jobs: &[(Uuid, String)]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.with_tx("closing jobs", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET stage = 'done', stage_since_ms = ?2, outcome = ?3 WHERE id = ?1 AND stage != 'done'",
            )?;
            let mut end_launch = tx.prepare_cached(
                "UPDATE launches SET ended_at_ms = ?2, outcome = ?3 WHERE job_id = ?1 AND ended_at_ms IS NULL",
            )?;
            let mut transition =
                tx.prepare_cached("INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'done', ?3)")?;
            for (job, outcome) in jobs {
                let id = job.to_string();
                if update.execute(params![id, now, outcome])? > 0 {
                    end_launch.execute(params![id, now, outcome])?;
                    transition.execute(params![id, now, outcome])?;
                }
            }
            Ok(())
        })
    }

    /// Buildkite would not reserve these jobs: close those still only `reserved` (a job the
    /// reconciler meanwhile reserved again and launched keeps its launch). Returns the jobs
    /// closed.
    pub fn record_not_reserved(
        &self,
        jobs: &[Uuid],
        detail: &str,
    ) -> Result<Vec<Uuid>, LedgerError> {
        let now = self.now();
        self.with_tx("recording refused reservations", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET stage = 'done', stage_since_ms = ?2, outcome = ?3 WHERE id = ?1 AND stage = 'reserved'",
            )?;
            let mut transition =
                tx.prepare_cached("INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'done', ?3)")?;
            let mut closed = Vec::new();
            for job in jobs {
                let id = job.to_string();
                if update.execute(params![id, now, detail])? > 0 {
                    transition.execute(params![id, now, detail])?;
                    closed.push(*job);
                }
            }
            Ok(closed)
        })
    }

    /// Delete jobs closed before `closed_before_ms` — the oldest first, at most `max_jobs` —
    /// with their launches, reservations and transitions, in one transaction. Only `done`
    /// jobs are ever chosen, so an open job keeps every row. Returns the rows removed; fewer
    /// than `max_jobs` jobs means nothing older is left.
    pub fn prune_closed(
        &self,
        closed_before_ms: i64,
        max_jobs: u32,
    ) -> Result<Pruned, LedgerError> {
        self.with_tx("pruning closed jobs", |tx| {
            let ids: Vec<String> = {
                let mut select = tx.prepare_cached(
                    "SELECT id FROM jobs WHERE stage = 'done' AND stage_since_ms < ?1
                     ORDER BY stage_since_ms LIMIT ?2",
                )?;
                let rows =
                    select.query_map(params![closed_before_ms, max_jobs], |row| row.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut launches = tx.prepare_cached("DELETE FROM launches WHERE job_id = ?1")?;
            let mut reservations =
                tx.prepare_cached("DELETE FROM reservations WHERE job_id = ?1")?;
            let mut transitions = tx.prepare_cached("DELETE FROM transitions WHERE job_id = ?1")?;
            let mut jobs =
                tx.prepare_cached("DELETE FROM jobs WHERE id = ?1 AND stage = 'done'")?;
            let mut pruned = Pruned::default();
            for id in &ids {
                pruned.launches += launches.execute([id])? as u64;
                pruned.reservations += reservations.execute([id])? as u64;
                pruned.transitions += transitions.execute([id])? as u64;
                pruned.jobs += jobs.execute([id])? as u64;
            }
            Ok(pruned)
        })
    }
}

/// Send a job back to `reserved` (if it is in a stage `stage_guard` allows) and record why,
/// so the reconciler launches it again.
fn back_to_reserved(
    tx: &rusqlite::Transaction,
    job: Uuid,
    now: i64,
    stage_guard: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        &format!("UPDATE jobs SET stage = 'reserved', stage_since_ms = ?2 WHERE id = ?1 AND {stage_guard}"),
        params![job.to_string(), now],
    )?;
    tx.execute(
        "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'reserved', ?3)",
        params![job.to_string(), now, detail],
    )?;
    Ok(())
}
