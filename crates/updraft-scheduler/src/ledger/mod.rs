//! The ledger: a SQLite file (WAL) recording every job the scheduler reserved, its launches
//! and each stage transition with its time. It is what makes a restart exact: a job with a
//! launch recorded is never launched fresh again, and a job reserved but not launched is
//! found and launched. Writes come in batches, one transaction each, so a burst of
//! thousands of jobs costs a handful of commits. Closed jobs are pruned once older than the
//! configured retention (`prune_closed`), so a long-running scheduler's ledger stays flat.

mod read;
mod write;

use crate::clock::{Clock, SystemClock};
use rusqlite::Connection;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use updraft_backends::JobContext;
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
    /// The backend refused to launch the job as specified (the reason is shown in the build);
    /// it is never launched again.
    pub refused: Option<String>,
    /// When its launch was found gone while Buildkite still shows an agent holding the job:
    /// the job waits for Buildkite's lost-agent timeout.
    pub agent_lost_since_ms: Option<i64>,
}

/// An open job with what Buildkite said of it when it was taken in (tags, pipeline, build,
/// step): what a scheduler needs to launch it again after a restart or an adoption. The
/// reconciler's passes read jobs without it, so a pass over thousands of jobs does not hold
/// every job's context.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumableJob {
    pub job: LedgerJob,
    pub context: JobContext,
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
    pub context: JobContext,
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

/// A launch that ended, with what its job was (for charging its time to the job).
#[derive(Debug, Clone, PartialEq)]
pub struct EndedLaunch {
    pub job_id: Uuid,
    pub fleet: String,
    pub queue: String,
    pub pipeline: Option<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
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
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
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
    outcome TEXT,
    context TEXT,
    refused TEXT,
    agent_lost_ms INTEGER
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

/// Columns added after the first release, for ledgers created before them.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("context", "TEXT"),
    ("refused", "TEXT"),
    ("agent_lost_ms", "INTEGER"),
];

impl Ledger {
    /// Open (or create) the ledger file, on the system clock.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_with_clock(path, Arc::new(SystemClock::default()))
    }

    /// Open (or create) the ledger file; every timestamp it writes comes from `clock`.
    pub fn open_with_clock(path: &Path, clock: Arc<dyn Clock>) -> Result<Ledger, LedgerError> {
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
        Ledger::prepare(conn, shown, clock)
    }

    /// A ledger in memory, for simulations and tests: it survives a simulated crash as long
    /// as the value is kept, exactly like the file survives a real one.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Result<Ledger, LedgerError> {
        let conn = Connection::open_in_memory().map_err(|e| LedgerError {
            path: ":memory:".into(),
            detail: format!("opening: {e}"),
        })?;
        Ledger::prepare(conn, ":memory:".into(), clock)
    }

    fn prepare(
        conn: Connection,
        path: String,
        clock: Arc<dyn Clock>,
    ) -> Result<Ledger, LedgerError> {
        let err = |detail: String| LedgerError {
            path: path.clone(),
            detail,
        };
        conn.execute_batch(SCHEMA)
            .map_err(|e| err(format!("creating tables: {e}")))?;
        for (column, kind) in ADDED_COLUMNS {
            let present: bool = conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info('jobs') WHERE name = ?1",
                    [column],
                    |row| row.get(0),
                )
                .map_err(|e| err(format!("reading the jobs table's columns: {e}")))?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {kind}"))
                    .map_err(|e| err(format!("adding column {column}: {e}")))?;
            }
        }
        Ok(Ledger {
            conn: Mutex::new(conn),
            path,
            clock,
        })
    }

    /// The clock the ledger stamps its rows with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
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
}

#[cfg(test)]
mod tests;
