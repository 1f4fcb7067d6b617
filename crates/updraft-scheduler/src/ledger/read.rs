//! Reading the ledger: the open jobs the reconciler works on, one job, the recent launches
//! the status page shows, and the launches that ended lately (for per-job cost).

use super::{EndedLaunch, LaunchRow, Ledger, LedgerError, LedgerJob, ResumableJob, Stage};
use updraft_backends::JobContext;
use uuid::Uuid;

/// The columns `row_job` reads, in order; the queries for resumable jobs add `context`.
const JOB_COLUMNS: &str = "id, fleet, queue, priority, scheduled_at_ms, stage, stage_since_ms, attempts, running_since_ms, refused, agent_lost_ms";

impl Ledger {
    /// The rows `sql` selects, each mapped by `read` once its id and stage are known good.
    fn read_jobs<T>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        read: impl Fn(&rusqlite::Row, LedgerJob) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read_all = || -> rusqlite::Result<Vec<T>> {
            let mut statement = conn.prepare_cached(sql)?;
            let mut rows = statement.query(args)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let stage: String = row.get(5)?;
                // A row we cannot read is skipped with a log line rather than failing every
                // pass; it can only come from someone editing the file by hand.
                match (id.parse::<Uuid>(), stage.parse::<Stage>()) {
                    (Ok(id), Ok(stage)) => out.push(read(row, row_job(row, id, stage)?)?),
                    _ => tracing::warn!(id, stage, "skipping an unreadable ledger row"),
                }
            }
            Ok(out)
        };
        read_all().map_err(|e| self.fail("reading jobs", e))
    }

    /// Every job not yet `done`.
    pub fn open_jobs(&self) -> Result<Vec<LedgerJob>, LedgerError> {
        self.read_jobs(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE stage != 'done' ORDER BY rowid"),
            [],
            |_, job| Ok(job),
        )
    }

    /// Every job not yet `done`, with its context: what a scheduler resumes at start-up.
    pub fn open_jobs_to_resume(&self) -> Result<Vec<ResumableJob>, LedgerError> {
        self.read_jobs(
            &format!(
                "SELECT {JOB_COLUMNS}, context FROM jobs WHERE stage != 'done' ORDER BY rowid"
            ),
            [],
            with_context,
        )
    }

    pub fn job(&self, id: Uuid) -> Result<Option<LedgerJob>, LedgerError> {
        Ok(self
            .read_jobs(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id.to_string()],
                |_, job| Ok(job),
            )?
            .pop())
    }

    /// One job with its context, to resume it (a launch adopted from a backend's listing).
    pub fn job_to_resume(&self, id: Uuid) -> Result<Option<ResumableJob>, LedgerError> {
        Ok(self
            .read_jobs(
                &format!("SELECT {JOB_COLUMNS}, context FROM jobs WHERE id = ?1"),
                [id.to_string()],
                with_context,
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

    /// Launches that ended in `(from_ms, to_ms]`, with their job's queue and pipeline, for
    /// charging their time to the job.
    pub fn launches_ended_between(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<EndedLaunch>, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read = || -> rusqlite::Result<Vec<EndedLaunch>> {
            let mut statement = conn.prepare_cached(
                "SELECT l.job_id, l.fleet, l.started_at_ms, l.ended_at_ms, j.queue, j.context
                 FROM launches l JOIN jobs j ON j.id = l.job_id
                 WHERE l.ended_at_ms > ?1 AND l.ended_at_ms <= ?2",
            )?;
            let rows = statement.query_map([from_ms, to_ms], |row| {
                let job: String = row.get(0)?;
                let context: Option<String> = row.get(5)?;
                Ok(EndedLaunch {
                    job_id: job.parse().unwrap_or_default(),
                    fleet: row.get(1)?,
                    started_at_ms: row.get(2)?,
                    ended_at_ms: row.get(3)?,
                    queue: row.get(4)?,
                    pipeline: context
                        .and_then(|text| serde_json::from_str::<JobContext>(&text).ok())
                        .and_then(|c| c.pipeline_slug),
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| self.fail("reading ended launches", e))
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

/// A job row whose id and stage `read_jobs` has already read and checked.
fn row_job(row: &rusqlite::Row, id: Uuid, stage: Stage) -> rusqlite::Result<LedgerJob> {
    Ok(LedgerJob {
        id,
        fleet: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        scheduled_at_ms: row.get(4)?,
        stage,
        stage_since_ms: row.get(6)?,
        attempts: row.get(7)?,
        running_since_ms: row.get(8)?,
        refused: row.get(9)?,
        agent_lost_since_ms: row.get(10)?,
    })
}

fn with_context(row: &rusqlite::Row, job: LedgerJob) -> rusqlite::Result<ResumableJob> {
    let context = row
        .get::<_, Option<String>>("context")?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    Ok(ResumableJob { job, context })
}
