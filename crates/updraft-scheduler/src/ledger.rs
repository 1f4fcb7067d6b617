//! The ledger: a SQLite file (WAL) recording every job the scheduler reserved, its launches
//! and each stage transition with its time. It is what makes a restart exact: a job with a
//! launch recorded is never launched fresh again, and a job reserved but not launched is
//! found and launched. Writes come in batches, one transaction each, so a burst of
//! thousands of jobs costs a handful of commits. Closed jobs are pruned once older than the
//! configured retention (`prune_closed`), so a long-running scheduler's ledger stays flat.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use uuid::Uuid;

/// Where a job stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reserved with Buildkite; no launch asked for yet.
    Reserved,
    /// A launch was asked of the backend (intent written before the call).
    Launching,
    /// The backend confirmed the launch.
    Launched,
    /// Nothing more to do: the job ended, or was handed back or finished by us.
    Done,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Reserved => "reserved",
            Stage::Launching => "launching",
            Stage::Launched => "launched",
            Stage::Done => "done",
        }
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "reserved" => Stage::Reserved,
            "launching" => Stage::Launching,
            "launched" => Stage::Launched,
            "done" => Stage::Done,
            other => return Err(format!("unknown ledger stage {other:?}")),
        })
    }
}

/// A job as the ledger holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerJob {
    pub id: Uuid,
    pub fleet: String,
    pub queue: String,
    pub priority: i64,
    pub scheduled_at_ms: i64,
    pub stage: Stage,
    pub stage_since_ms: i64,
    /// Launches asked for so far (1 after the first launch).
    pub attempts: u32,
    /// When the reconciler first saw the job taken by its agent.
    pub running_since_ms: Option<i64>,
}

/// What `record_reserved` needs about each job.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub id: Uuid,
    pub fleet: String,
    pub queue: String,
    pub priority: i64,
    pub scheduled_at_ms: i64,
    pub source: &'static str,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRow {
    pub name: String,
    pub job_id: Uuid,
    pub fleet: String,
    pub attempt: u32,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// Rows one `prune_closed` removed, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub launches: u64,
    pub reservations: u64,
    pub transitions: u64,
}

impl Pruned {
    /// Each table's name with the rows removed from it.
    pub fn by_table(&self) -> [(&'static str, u64); 4] {
        [
            ("jobs", self.jobs),
            ("launches", self.launches),
            ("reservations", self.reservations),
            ("transitions", self.transitions),
        ]
    }

    pub fn total(&self) -> u64 {
        self.jobs + self.launches + self.reservations + self.transitions
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {path}: {detail}")]
pub struct LedgerError {
    path: String,
    detail: String,
}

pub struct Ledger {
    conn: Mutex<Connection>,
    path: String,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    scheduled_at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    stage TEXT NOT NULL,
    stage_since_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    running_since_ms INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (stage) WHERE stage != 'done';
CREATE INDEX IF NOT EXISTS jobs_closed ON jobs (stage_since_ms) WHERE stage = 'done';
CREATE TABLE IF NOT EXISTS reservations (
    job_id TEXT NOT NULL,
    reserved_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_job ON reservations (job_id);
CREATE TABLE IF NOT EXISTS launches (
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fleet TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    outcome TEXT,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS transitions (
    job_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id);
";

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        let err = |detail: String| LedgerError {
            path: shown.clone(),
            detail,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("creating its directory: {e}")))?;
        }
        let conn = Connection::open(path).map_err(|e| err(format!("opening: {e}")))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(format!("enabling WAL: {e}")))?;
        // WAL with synchronous=NORMAL survives a process crash (our failure model); only a
        // power loss can drop the last commits, and the reconciler recovers those from
        // Buildkite's reservations and the backend's launches.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| err(format!("setting synchronous: {e}")))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| err(format!("setting busy timeout: {e}")))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| err(format!("creating tables: {e}")))?;
        Ok(Ledger {
            conn: Mutex::new(conn),
            path: shown,
        })
    }

    fn fail(&self, what: &str, e: rusqlite::Error) -> LedgerError {
        LedgerError {
            path: self.path.clone(),
            detail: format!("{what}: {e}"),
        }
    }

    fn with_tx<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| self.fail(what, e))?;
        let value = f(&tx).map_err(|e| self.fail(what, e))?;
        tx.commit().map_err(|e| self.fail(what, e))?;
        Ok(value)
    }

    /// Record reservations. A job already in the ledger keeps its history: it goes back to
    /// `reserved` only if it was `done` (Buildkite handed it out again, e.g. after a
    /// reservation expired) — never while a launch is open.
    pub fn record_reserved(&self, jobs: &[NewReservation]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.with_tx("recording reservations", |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, fleet, queue, priority, scheduled_at_ms, source, stage, stage_since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'reserved', ?7)
                 ON CONFLICT(id) DO UPDATE SET stage = 'reserved', stage_since_ms = ?7, fleet = ?2
                 WHERE jobs.stage = 'done'",
            )?;
            let mut reservation =
                tx.prepare_cached("INSERT INTO reservations (job_id, reserved_at_ms, expires_at_ms) VALUES (?1, ?2, ?3)")?;
            let mut transition = tx.prepare_cached(
                "INSERT INTO transitions (job_id, at_ms, stage, detail) VALUES (?1, ?2, 'reserved', ?3)",
            )?;
            for job in jobs {
                let id = job.id.to_string();
                insert.execute(params![id, job.fleet, job.queue, job.priority, job.scheduled_at_ms, job.source, now])?;
                reservation.execute(params![id, now, job.expires_at_ms])?;
                transition.execute(params![id, now, format!("via {} for fleet {}", job.source, job.fleet)])?;
            }
            Ok(())
        })
    }

    /// Write the intent to launch, before asking the backend; returns each job's attempt.
    pub fn record_launching(&self, jobs: &[Uuid]) -> Result<Vec<(Uuid, u32)>, LedgerError> {
        let now = now_ms();
        self.with_tx("recording launch intents", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET stage = 'launching', stage_since_ms = ?2, attempts = attempts + 1
                 WHERE id = ?1 AND stage IN ('reserved', 'launching') RETURNING attempts",
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

    /// A launch attempt failed before it started: back to `reserved` for the reconciler.
    pub fn record_launch_failed(&self, job: Uuid, detail: &str) -> Result<(), LedgerError> {
        let now = now_ms();
        self.with_tx("recording a failed launch", |tx| {
            back_to_reserved(
                tx,
                job,
                now,
                "stage = 'launching'",
                &format!("launch failed: {detail}"),
            )
        })
    }

    /// The launch ended (it was stopped, failed, or is being replaced); `outcome` says how.
    pub fn record_launch_ended(&self, job: Uuid, outcome: &str) -> Result<(), LedgerError> {
        let now = now_ms();
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
        let now = now_ms();
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
        let now = now_ms();
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
        let now = now_ms();
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
        let now = now_ms();
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

    fn read_jobs(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<LedgerJob>, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read = || -> rusqlite::Result<Vec<LedgerJob>> {
            let mut statement = conn.prepare_cached(sql)?;
            let rows = statement.query_map(args, |row| {
                let id: String = row.get(0)?;
                let stage: String = row.get(5)?;
                Ok((id, stage, row_job(row)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, stage, mut job) = row?;
                // A row we cannot read is skipped with a log line rather than failing every
                // pass; it can only come from someone editing the file by hand.
                match (id.parse::<Uuid>(), stage.parse::<Stage>()) {
                    (Ok(id), Ok(stage)) => {
                        job.id = id;
                        job.stage = stage;
                        out.push(job);
                    }
                    _ => tracing::warn!(id, stage, "skipping an unreadable ledger row"),
                }
            }
            Ok(out)
        };
        read().map_err(|e| self.fail("reading jobs", e))
    }

    /// Every job not yet `done`.
    pub fn open_jobs(&self) -> Result<Vec<LedgerJob>, LedgerError> {
        self.read_jobs(
            "SELECT id, fleet, queue, priority, scheduled_at_ms, stage, stage_since_ms, attempts, running_since_ms
             FROM jobs WHERE stage != 'done'",
            [],
        )
    }

    pub fn job(&self, id: Uuid) -> Result<Option<LedgerJob>, LedgerError> {
        Ok(self
            .read_jobs(
                "SELECT id, fleet, queue, priority, scheduled_at_ms, stage, stage_since_ms, attempts, running_since_ms
                 FROM jobs WHERE id = ?1",
                [id.to_string()],
            )?
            .pop())
    }

    /// The most recent launches, newest first, for the status page.
    pub fn recent_launches(&self, limit: u32) -> Result<Vec<LaunchRow>, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read = || -> rusqlite::Result<Vec<LaunchRow>> {
            let mut statement = conn.prepare_cached(
                "SELECT name, job_id, fleet, attempt, started_at_ms, ended_at_ms, outcome
                 FROM launches ORDER BY started_at_ms DESC LIMIT ?1",
            )?;
            let rows = statement.query_map([limit], |row| {
                let job: String = row.get(1)?;
                Ok(LaunchRow {
                    name: row.get(0)?,
                    job_id: job.parse().unwrap_or_default(),
                    fleet: row.get(2)?,
                    attempt: row.get(3)?,
                    started_at_ms: row.get(4)?,
                    ended_at_ms: row.get(5)?,
                    outcome: row.get(6)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| self.fail("reading launches", e))
    }

    /// How many launches were ever recorded for `job` (a test and operator check).
    pub fn launch_count(&self, job: Uuid) -> Result<u32, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row(
            "SELECT COUNT(*) FROM launches WHERE job_id = ?1",
            [job.to_string()],
            |row| row.get(0),
        )
        .map_err(|e| self.fail("counting launches", e))
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

fn row_job(row: &rusqlite::Row) -> rusqlite::Result<LedgerJob> {
    Ok(LedgerJob {
        id: Uuid::nil(),
        fleet: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        scheduled_at_ms: row.get(4)?,
        stage: Stage::Done,
        stage_since_ms: row.get(6)?,
        attempts: row.get(7)?,
        running_since_ms: row.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(id: Uuid) -> NewReservation {
        NewReservation {
            id,
            fleet: "linux".into(),
            queue: "linux".into(),
            priority: 0,
            scheduled_at_ms: 1,
            source: "pull",
            expires_at_ms: 2,
        }
    }

    #[test]
    fn a_job_walks_through_its_stages_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let job = Uuid::new_v4();
        {
            let ledger = Ledger::open(&path).unwrap();
            ledger.record_reserved(&[reservation(job)]).unwrap();
            assert_eq!(ledger.record_launching(&[job]).unwrap(), vec![(job, 1)]);
            ledger
                .record_launched(&[LaunchRow {
                    name: format!("updraft-{job}"),
                    job_id: job,
                    fleet: "linux".into(),
                    attempt: 1,
                    started_at_ms: 5,
                    ended_at_ms: None,
                    outcome: None,
                }])
                .unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        let open = ledger.open_jobs().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].stage, Stage::Launched);
        assert_eq!(open[0].attempts, 1);
        assert_eq!(ledger.launch_count(job).unwrap(), 1);
        ledger.record_done(&[(job, "passed".into())]).unwrap();
        assert!(ledger.open_jobs().unwrap().is_empty());
        assert_eq!(
            ledger.recent_launches(10).unwrap()[0].outcome.as_deref(),
            Some("passed")
        );
    }

    #[test]
    fn a_second_reservation_never_reopens_a_launched_job() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let job = Uuid::new_v4();
        ledger.record_reserved(&[reservation(job)]).unwrap();
        ledger.record_launching(&[job]).unwrap();
        ledger.record_reserved(&[reservation(job)]).unwrap();
        assert_eq!(ledger.job(job).unwrap().unwrap().stage, Stage::Launching);
        assert!(ledger
            .record_launching(&[Uuid::new_v4()])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_refused_reservation_closes_only_jobs_not_yet_launching() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let (idle, launching) = (Uuid::new_v4(), Uuid::new_v4());
        ledger
            .record_reserved(&[reservation(idle), reservation(launching)])
            .unwrap();
        ledger.record_launching(&[launching]).unwrap();
        assert_eq!(
            ledger
                .record_not_reserved(&[idle, launching], "taken")
                .unwrap(),
            vec![idle]
        );
        assert_eq!(
            ledger.job(launching).unwrap().unwrap().stage,
            Stage::Launching
        );
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;

    /// Reserve, launch and (when `close`) close a job, then move its last change `age_ms`
    /// into the past.
    fn job_aged(ledger: &Ledger, close: bool, age_ms: i64) -> Uuid {
        let job = Uuid::new_v4();
        ledger.record_reserved(&[reservation(job)]).unwrap();
        ledger.record_launching(&[job]).unwrap();
        ledger
            .record_launched(&[LaunchRow {
                name: format!("updraft-{job}"),
                job_id: job,
                fleet: "linux".into(),
                attempt: 1,
                started_at_ms: now_ms(),
                ended_at_ms: None,
                outcome: None,
            }])
            .unwrap();
        if close {
            ledger.record_done(&[(job, "passed".into())]).unwrap();
        }
        let conn = ledger.conn.lock().unwrap();
        conn.execute(
            "UPDATE jobs SET stage_since_ms = stage_since_ms - ?2 WHERE id = ?1",
            params![job.to_string(), age_ms],
        )
        .unwrap();
        job
    }

    /// Rows of `job` in each table: jobs, launches, reservations, transitions.
    fn rows_of(ledger: &Ledger, job: Uuid) -> [i64; 4] {
        let conn = ledger.conn.lock().unwrap();
        let count = |sql: &str| -> i64 {
            conn.query_row(sql, [job.to_string()], |row| row.get(0))
                .unwrap()
        };
        [
            count("SELECT COUNT(*) FROM jobs WHERE id = ?1"),
            count("SELECT COUNT(*) FROM launches WHERE job_id = ?1"),
            count("SELECT COUNT(*) FROM reservations WHERE job_id = ?1"),
            count("SELECT COUNT(*) FROM transitions WHERE job_id = ?1"),
        ]
    }

    #[test]
    fn pruning_removes_only_jobs_closed_before_the_retention_with_all_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let old_closed = job_aged(&ledger, true, 8 * DAY_MS);
        let recent_closed = job_aged(&ledger, true, DAY_MS);
        let old_open = job_aged(&ledger, false, 30 * DAY_MS);
        // reserved, launching, launched, done.
        assert_eq!(rows_of(&ledger, old_closed), [1, 1, 1, 4]);

        let pruned = ledger.prune_closed(now_ms() - 7 * DAY_MS, 1000).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                jobs: 1,
                launches: 1,
                reservations: 1,
                transitions: 4
            }
        );
        assert_eq!(pruned.total(), 7);
        assert_eq!(rows_of(&ledger, old_closed), [0, 0, 0, 0]);
        assert_eq!(rows_of(&ledger, recent_closed), [1, 1, 1, 4]);
        assert_eq!(rows_of(&ledger, old_open), [1, 1, 1, 3]);
        assert_eq!(
            ledger
                .open_jobs()
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect::<Vec<_>>(),
            vec![old_open]
        );
        assert_eq!(
            ledger.prune_closed(now_ms() - 7 * DAY_MS, 1000).unwrap(),
            Pruned::default()
        );
    }

    #[test]
    fn pruning_takes_the_oldest_closed_jobs_first_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let oldest = job_aged(&ledger, true, 10 * DAY_MS);
        let middle = job_aged(&ledger, true, 9 * DAY_MS);
        let youngest = job_aged(&ledger, true, 8 * DAY_MS);
        let cutoff = now_ms() - 7 * DAY_MS;
        assert_eq!(ledger.prune_closed(cutoff, 2).unwrap().jobs, 2);
        assert!(ledger.job(oldest).unwrap().is_none());
        assert!(ledger.job(middle).unwrap().is_none());
        assert!(ledger.job(youngest).unwrap().is_some());
        assert_eq!(ledger.prune_closed(cutoff, 2).unwrap().jobs, 1);
        assert!(ledger.job(youngest).unwrap().is_none());
    }

    #[test]
    fn a_job_reserved_again_after_closing_is_open_and_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let job = job_aged(&ledger, true, 8 * DAY_MS);
        ledger.record_reserved(&[reservation(job)]).unwrap();
        assert_eq!(
            ledger.prune_closed(now_ms() + DAY_MS, 1000).unwrap(),
            Pruned::default()
        );
        assert_eq!(ledger.job(job).unwrap().unwrap().stage, Stage::Reserved);
        assert_eq!(rows_of(&ledger, job), [1, 1, 2, 5]);
    }

    #[test]
    fn ten_thousand_reservations_fit_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let jobs: Vec<NewReservation> = (0..10_000).map(|_| reservation(Uuid::new_v4())).collect();
        ledger.record_reserved(&jobs).unwrap();
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ledger.record_launching(&ids).unwrap().len(), 10_000);
        assert_eq!(ledger.open_jobs().unwrap().len(), 10_000);
    }
}
