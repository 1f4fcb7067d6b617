//! The AWS backends' own durable state: one SQLite file per backend (WAL, `synchronous =
//! FULL`, the file and its directory readable only by Updraft) recording, for each launch,
//! the idempotency token and request it was started with and the build or task it became,
//! and for each relayed job the agent session, job token and log progress. Every row is
//! written before the outside call it protects, so a process killed anywhere is resumed
//! exactly by the next one. Tokens live here because a relay resumed after a crash needs
//! them; nothing else of theirs is ever written down or logged.

use rusqlite::{params, Connection, OptionalExtension, Row};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use updraft_backends::{LaunchName, LaunchPhase};

use crate::settings::RunMode;

/// A failure to read or write the state file (its path and SQLite's words).
#[derive(Debug, Clone, thiserror::Error)]
#[error("state file {path}: {detail}")]
pub struct StoreError {
    pub path: String,
    pub detail: String,
}

/// One launch as recorded.
#[derive(Debug, Clone)]
pub struct LaunchRow {
    pub name: LaunchName,
    pub fleet: String,
    pub mode: RunMode,
    /// The idempotency token (CodeBuild) or client token (ECS) every start of it uses.
    pub token: String,
    /// The platform request (JSON, no secret in it), recorded before it is sent.
    pub request: Option<String>,
    /// The build id or task ARN, once the platform answered.
    pub platform_id: Option<String>,
    /// SSM parameters holding the launch's secrets (deleted with the launch).
    pub parameters: Vec<String>,
    /// Anything else the launch made that must go with it (an ECS task definition revision).
    pub extra: Option<String>,
    pub created_at_ms: i64,
    pub deadline_at_ms: i64,
    /// How it ended, once it has (or why it never could start).
    pub outcome: Option<LaunchPhase>,
    pub stop_requested: bool,
}

/// A relayed job's progress, as the resumed relay needs it.
#[derive(Clone, Default)]
pub struct RelayRow {
    pub endpoint: String,
    pub job_id: String,
    /// The agent tags to register with (comma-separated).
    pub tags: String,
    /// The job acquisition token, kept only until the agent is registered.
    pub acquisition_token: Option<String>,
    pub session_token: Option<String>,
    pub heartbeat_secs: u64,
    pub job_token: Option<String>,
    /// What the relay keeps of the Job JSON (JSON of `relay::JobRecord`).
    pub job: Option<String>,
    pub started: bool,
    pub sequence: u64,
    pub offset: u64,
    /// The CloudWatch Logs token the next unrelayed byte is read from (`None`: the head),
    /// and how many bytes from there are relayed already.
    pub log_token: Option<String>,
    pub log_skip: u64,
    /// The length of the chunk being uploaded when progress was last recorded.
    pub pending: Option<u64>,
    pub finished: bool,
}

impl std::fmt::Debug for RelayRow {
    /// Tokens are never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRow")
            .field("job_id", &self.job_id)
            .field("registered", &self.session_token.is_some())
            .field("acquired", &self.job_token.is_some())
            .field("started", &self.started)
            .field("sequence", &self.sequence)
            .field("offset", &self.offset)
            .field("pending", &self.pending)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// The state file. Cheap to clone; calls block briefly (use [`Store::run`] from async code).
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS launches (
    name TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    mode TEXT NOT NULL,
    token TEXT NOT NULL,
    request TEXT,
    platform_id TEXT,
    parameters TEXT NOT NULL,
    extra TEXT,
    created_at_ms INTEGER NOT NULL,
    deadline_at_ms INTEGER NOT NULL,
    outcome TEXT,
    outcome_reason TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS relays (
    name TEXT PRIMARY KEY REFERENCES launches(name) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '',
    acquisition_token TEXT,
    session_token TEXT,
    heartbeat_secs INTEGER NOT NULL DEFAULT 0,
    job_token TEXT,
    job TEXT,
    started INTEGER NOT NULL DEFAULT 0,
    sequence INTEGER NOT NULL DEFAULT 1,
    byte_offset INTEGER NOT NULL DEFAULT 0,
    log_token TEXT,
    log_skip INTEGER NOT NULL DEFAULT 0,
    pending INTEGER,
    finished INTEGER NOT NULL DEFAULT 0
);
";

impl Store {
    /// Open (or create) `<dir>/<file>`; the directory is made 0700 and the file 0600.
    pub fn open(dir: &Path, file: &str) -> Result<Store, StoreError> {
        let path = dir.join(file);
        let error = |detail: String| StoreError {
            path: path.display().to_string(),
            detail,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| error(format!("cannot create its directory: {e}")))?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| error(format!("cannot create it: {e}")))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| error(format!("cannot make it private: {e}")))?;
        let connection = Connection::open(&path).map_err(|e| error(e.to_string()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            )
            .and_then(|()| connection.execute_batch(SCHEMA))
            .map_err(|e| error(e.to_string()))?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `work` on the connection off the async threads.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError {
                path: self.path.display().to_string(),
                detail: format!("the state writer crashed: {e}"),
            })?
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&connection).map_err(|e| StoreError {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// Record a new launch (and, for a relay, its relay row) in one transaction; `false` if
    /// a launch of that name is recorded already.
    pub fn insert(&self, launch: &LaunchRow, relay: Option<&RelayRow>) -> Result<bool, StoreError> {
        let connection = &mut *self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fail = |e: rusqlite::Error| StoreError {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        };
        let transaction = connection.transaction().map_err(fail)?;
        let inserted = transaction
            .execute(
                "INSERT OR IGNORE INTO launches (name, fleet, mode, token, request, platform_id, \
                 parameters, extra, created_at_ms, deadline_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    launch.name.as_str(),
                    launch.fleet,
                    mode_text(launch.mode),
                    launch.token,
                    launch.request,
                    launch.platform_id,
                    serde_json::to_string(&launch.parameters).unwrap_or_default(),
                    launch.extra,
                    launch.created_at_ms,
                    launch.deadline_at_ms,
                ],
            )
            .map_err(fail)?
            == 1;
        if inserted {
            if let Some(relay) = relay {
                transaction
                    .execute(
                        "INSERT INTO relays (name, endpoint, job_id, tags, acquisition_token) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![launch.name.as_str(), relay.endpoint, relay.job_id, relay.tags, relay.acquisition_token],
                    )
                    .map_err(fail)?;
            }
        }
        transaction.commit().map_err(fail)?;
        Ok(inserted)
    }

    pub fn launches(&self) -> Result<Vec<LaunchRow>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare("SELECT * FROM launches ORDER BY created_at_ms, name")?;
            let rows = statement.query_map([], launch_row)?;
            Ok(rows.flatten().flatten().collect())
        })
    }

    pub fn launch(&self, name: &LaunchName) -> Result<Option<LaunchRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT * FROM launches WHERE name = ?1",
                [name.as_str()],
                launch_row,
            )
            .optional()
            .map(Option::flatten)
        })
    }

    pub fn set_request(
        &self,
        name: &LaunchName,
        request: &str,
        parameters: &[String],
    ) -> Result<(), StoreError> {
        let parameters = serde_json::to_string(parameters).unwrap_or_default();
        self.update(
            "UPDATE launches SET request = ?2, parameters = ?3 WHERE name = ?1",
            params![name.as_str(), request, parameters],
        )
    }

    pub fn set_started(
        &self,
        name: &LaunchName,
        platform_id: &str,
        extra: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update(
            "UPDATE launches SET platform_id = ?2, extra = COALESCE(?3, extra) WHERE name = ?1",
            params![name.as_str(), platform_id, extra],
        )
    }

    pub fn set_outcome(&self, name: &LaunchName, outcome: &LaunchPhase) -> Result<(), StoreError> {
        let (kind, reason) = outcome_text(outcome);
        self.update(
            "UPDATE launches SET outcome = ?2, outcome_reason = ?3 WHERE name = ?1 AND outcome IS NULL",
            params![name.as_str(), kind, reason],
        )
    }

    pub fn set_stop_requested(&self, name: &LaunchName) -> Result<(), StoreError> {
        self.update(
            "UPDATE launches SET stop_requested = 1 WHERE name = ?1",
            params![name.as_str()],
        )
    }

    /// Forget a launch and its relay.
    pub fn delete(&self, name: &LaunchName) -> Result<(), StoreError> {
        self.update(
            "DELETE FROM launches WHERE name = ?1",
            params![name.as_str()],
        )
    }

    pub fn relay(&self, name: &LaunchName) -> Result<Option<RelayRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT * FROM relays WHERE name = ?1",
                [name.as_str()],
                relay_row,
            )
            .optional()
        })
    }

    /// The agent registered: keep its session and the endpoint it uses, forget the
    /// acquisition token.
    pub fn set_session(
        &self,
        name: &LaunchName,
        endpoint: &str,
        session_token: &str,
        heartbeat_secs: u64,
    ) -> Result<(), StoreError> {
        self.update(
            "UPDATE relays SET endpoint = ?2, session_token = ?3, heartbeat_secs = ?4, acquisition_token = NULL WHERE name = ?1",
            params![name.as_str(), endpoint, session_token, heartbeat_secs as i64],
        )
    }

    /// The job was acquired: its token, what is kept of it and the platform request built
    /// from it (none when the relay refuses the job), in one write.
    pub fn set_acquired(
        &self,
        name: &LaunchName,
        job_token: &str,
        job: &str,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        let connection = &mut *self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fail = |e: rusqlite::Error| StoreError {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        };
        let transaction = connection.transaction().map_err(fail)?;
        transaction
            .execute(
                "UPDATE relays SET job_token = ?2, job = ?3 WHERE name = ?1",
                params![name.as_str(), job_token, job],
            )
            .map_err(fail)?;
        transaction
            .execute(
                "UPDATE launches SET request = ?2 WHERE name = ?1",
                params![name.as_str(), request],
            )
            .map_err(fail)?;
        transaction.commit().map_err(fail)
    }

    pub fn set_job_started(&self, name: &LaunchName) -> Result<(), StoreError> {
        self.update(
            "UPDATE relays SET started = 1 WHERE name = ?1",
            params![name.as_str()],
        )
    }

    pub fn set_pending(&self, name: &LaunchName, len: u64) -> Result<(), StoreError> {
        self.update(
            "UPDATE relays SET pending = ?2 WHERE name = ?1",
            params![name.as_str(), len as i64],
        )
    }

    /// A chunk is done: the next sequence and offset, and where the log reading stands.
    pub fn set_uploaded(
        &self,
        name: &LaunchName,
        sequence: u64,
        offset: u64,
        log_token: Option<&str>,
        log_skip: u64,
    ) -> Result<(), StoreError> {
        self.update(
            "UPDATE relays SET sequence = ?2, byte_offset = ?3, log_token = ?4, log_skip = ?5, pending = NULL WHERE name = ?1",
            params![name.as_str(), sequence as i64, offset as i64, log_token, log_skip as i64],
        )
    }

    /// The relay is over (the job finished, or it gave up): its tokens are forgotten.
    pub fn set_relay_finished(&self, name: &LaunchName) -> Result<(), StoreError> {
        self.update(
            "UPDATE relays SET finished = 1, session_token = NULL, job_token = NULL, acquisition_token = NULL WHERE name = ?1",
            params![name.as_str()],
        )
    }

    fn update(&self, sql: &str, values: impl rusqlite::Params) -> Result<(), StoreError> {
        self.with(|c| c.execute(sql, values).map(drop))
    }
}

fn mode_text(mode: RunMode) -> &'static str {
    match mode {
        RunMode::Acquire => "acquire",
        RunMode::Relay => "relay",
    }
}

fn outcome_text(outcome: &LaunchPhase) -> (&'static str, Option<String>) {
    match outcome {
        LaunchPhase::Pending => ("pending", None),
        LaunchPhase::Running => ("running", None),
        LaunchPhase::Succeeded => ("succeeded", None),
        LaunchPhase::Failed { reason } => ("failed", Some(reason.clone())),
        LaunchPhase::Refused { reason } => ("refused", Some(reason.clone())),
    }
}

fn outcome_from(kind: Option<String>, reason: Option<String>) -> Option<LaunchPhase> {
    let reason = reason.unwrap_or_default();
    Some(match kind?.as_str() {
        "succeeded" => LaunchPhase::Succeeded,
        "refused" => LaunchPhase::Refused { reason },
        _ => LaunchPhase::Failed { reason },
    })
}

/// A launch row; `None` for a name Updraft did not make (never written by this crate).
fn launch_row(row: &Row) -> rusqlite::Result<Option<LaunchRow>> {
    let name: String = row.get("name")?;
    let Some(name) = LaunchName::parse(&name) else {
        return Ok(None);
    };
    let mode: String = row.get("mode")?;
    let parameters: String = row.get("parameters")?;
    Ok(Some(LaunchRow {
        name,
        fleet: row.get("fleet")?,
        mode: if mode == "relay" {
            RunMode::Relay
        } else {
            RunMode::Acquire
        },
        token: row.get("token")?,
        request: row.get("request")?,
        platform_id: row.get("platform_id")?,
        parameters: serde_json::from_str(&parameters).unwrap_or_default(),
        extra: row.get("extra")?,
        created_at_ms: row.get("created_at_ms")?,
        deadline_at_ms: row.get("deadline_at_ms")?,
        outcome: outcome_from(row.get("outcome")?, row.get("outcome_reason")?),
        stop_requested: row.get::<_, i64>("stop_requested")? != 0,
    }))
}

fn relay_row(row: &Row) -> rusqlite::Result<RelayRow> {
    let pending: Option<i64> = row.get("pending")?;
    Ok(RelayRow {
        endpoint: row.get("endpoint")?,
        job_id: row.get("job_id")?,
        tags: row.get("tags")?,
        acquisition_token: row.get("acquisition_token")?,
        session_token: row.get("session_token")?,
        heartbeat_secs: row.get::<_, i64>("heartbeat_secs")?.max(0) as u64,
        job_token: row.get("job_token")?,
        job: row.get("job")?,
        started: row.get::<_, i64>("started")? != 0,
        sequence: row.get::<_, i64>("sequence")?.max(1) as u64,
        offset: row.get::<_, i64>("byte_offset")?.max(0) as u64,
        log_token: row.get("log_token")?,
        log_skip: row.get::<_, i64>("log_skip")?.max(0) as u64,
        pending: pending.map(|p| p.max(0) as u64),
        finished: row.get::<_, i64>("finished")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn launch(name: &LaunchName, mode: RunMode) -> LaunchRow {
        LaunchRow {
            name: name.clone(),
            fleet: "cb".into(),
            mode,
            token: format!("{name}-1"),
            request: None,
            platform_id: None,
            parameters: vec![],
            extra: None,
            created_at_ms: 1,
            deadline_at_ms: 2,
            outcome: None,
            stop_requested: false,
        }
    }

    #[test]
    fn launches_and_relays_survive_reopening_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let name = LaunchName::for_job(uuid::Uuid::new_v4());
        let store = Store::open(&dir.path().join("aws"), "codebuild.sqlite").unwrap();
        let relay = RelayRow {
            endpoint: "http://x/v3".into(),
            job_id: name.job_id().to_string(),
            acquisition_token: Some("bkjat_secret".into()),
            ..RelayRow::default()
        };
        assert!(store
            .insert(&launch(&name, RunMode::Relay), Some(&relay))
            .unwrap());
        assert!(!store
            .insert(&launch(&name, RunMode::Relay), Some(&relay))
            .unwrap());
        store
            .set_session(&name, "http://x/v3", "bkaa_session", 5)
            .unwrap();
        store.set_pending(&name, 100).unwrap();
        store.set_uploaded(&name, 2, 100, Some("f/123"), 7).unwrap();
        store.set_started(&name, "cb:1", None).unwrap();
        drop(store);

        let store = Store::open(&dir.path().join("aws"), "codebuild.sqlite").unwrap();
        let relay = store.relay(&name).unwrap().unwrap();
        assert_eq!(relay.acquisition_token, None);
        assert_eq!(relay.session_token.as_deref(), Some("bkaa_session"));
        assert_eq!(
            (relay.sequence, relay.offset, relay.log_skip, relay.pending),
            (2, 100, 7, None)
        );
        assert_eq!(relay.log_token.as_deref(), Some("f/123"));
        assert!(!format!("{relay:?}").contains("bkaa_session"));
        let row = store.launch(&name).unwrap().unwrap();
        assert_eq!(row.platform_id.as_deref(), Some("cb:1"));
        store
            .set_outcome(
                &name,
                &LaunchPhase::Failed {
                    reason: "why".into(),
                },
            )
            .unwrap();
        store.set_outcome(&name, &LaunchPhase::Succeeded).unwrap();
        assert_eq!(
            store.launch(&name).unwrap().unwrap().outcome,
            Some(LaunchPhase::Failed {
                reason: "why".into()
            }),
            "the first outcome recorded stays"
        );
        let mode = std::fs::metadata(store.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        store.delete(&name).unwrap();
        assert!(store.relay(&name).unwrap().is_none());
        assert!(store.launches().unwrap().is_empty());
    }
}
