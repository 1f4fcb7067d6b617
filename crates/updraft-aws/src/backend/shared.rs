//! What the backend, its ticker and its relays do together: start a recorded request
//! exactly once (also when its answer was lost), settle starts a previous process left half
//! done, refresh states and record how agent launches ended, enforce deadlines, stop.

use super::{Relaying, Shared, MISSING_GRACE};
use crate::errors::{AwsError, ErrorClass};
use crate::platform::Platform;
use crate::relay;
use crate::settings::RunMode;
use crate::store::{LaunchRow, StoreError};
use chrono::Utc;
use std::sync::{Arc, Weak};
use std::time::Duration;
use updraft_agent::{StopReason, StopSwitch};
use updraft_backends::{LaunchName, LaunchPhase};

impl AwsError {
    /// A failure inside Updraft (its state file) while doing AWS work.
    pub(crate) fn internal(what: &'static str, error: StoreError) -> AwsError {
        AwsError {
            operation: what,
            code: None,
            class: ErrorClass::Fatal,
            detail: error.to_string(),
        }
    }
}

/// Marks a launch as being started by this process for as long as it lives, so the ticker
/// settling interrupted starts and a retried `launch` never start it twice at once.
pub(super) struct Starting<'a, P: Platform> {
    shared: &'a Shared<P>,
    name: LaunchName,
}

impl<'a, P: Platform> Starting<'a, P> {
    /// The mark, unless another task holds it.
    pub(super) fn try_claim(shared: &'a Shared<P>, name: &LaunchName) -> Option<Starting<'a, P>> {
        let claimed = shared
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        claimed.then(|| Starting {
            shared,
            name: name.clone(),
        })
    }
}

impl<P: Platform> Drop for Starting<'_, P> {
    fn drop(&mut self) {
        self.shared
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl<P: Platform> Shared<P> {
    /// Start a recorded request under its token, unless a build or task of that name already
    /// exists (looked for only once the token may have expired); record what it became.
    pub(crate) async fn start_recorded(&self, row: &LaunchRow) -> Result<(), AwsError> {
        let request = row.request.as_deref().unwrap_or_default();
        let age = Duration::from_millis(
            (Utc::now().timestamp_millis() - row.created_at_ms).max(0) as u64
        );
        let found = if age > self.platform.token_lifetime() / 2 {
            self.platform.find(&row.fleet, &row.name).await?
        } else {
            None
        };
        let (id, extra) = match found {
            Some(id) => (id, None),
            None => {
                let started = self
                    .platform
                    .start(&row.name, &row.fleet, request, &row.token)
                    .await?;
                (started.id, started.extra)
            }
        };
        let name = row.name.clone();
        self.store
            .run(move |store| store.set_started(&name, &id, extra.as_deref()))
            .await
            .map_err(|e| AwsError::internal("recording the start", e))
    }

    /// Settle an agent launch a previous process began but never saw started (unless this
    /// process is starting it right now).
    pub(super) async fn recover_start(&self, row: &LaunchRow) -> Result<(), AwsError> {
        let Some(_starting) = Starting::try_claim(self, &row.name) else {
            return Ok(());
        };
        // Read again now that no one else is starting it: a start may have ended meanwhile.
        let name = row.name.clone();
        let row = self
            .store
            .run(move |store| store.launch(&name))
            .await
            .map_err(|e| AwsError::internal("reading the state file", e))?;
        let Some(row) = row.filter(|r| r.platform_id.is_none() && r.outcome.is_none()) else {
            return Ok(());
        };
        if row.request.is_none() {
            let name = row.name.clone();
            let outcome = LaunchPhase::Failed {
                reason: "interrupted before it was started".into(),
            };
            return self
                .store
                .run(move |store| store.set_outcome(&name, &outcome))
                .await
                .map_err(|e| AwsError::internal("recording an interrupted launch", e));
        }
        self.start_recorded(&row).await
    }

    /// Undo a start that failed for good: its parameters and its record.
    pub(super) async fn forget_failed_start(&self, row: &LaunchRow) {
        if let Err(error) = self.parameters.delete_all(&row.parameters).await {
            tracing::warn!(launch = %row.name, %error, "cannot delete the parameters of a launch that failed to start");
        }
        let name = row.name.clone();
        if let Err(error) = self.store.run(move |store| store.delete(&name)).await {
            tracing::warn!(launch = %row.name, %error, "cannot forget a launch that failed to start");
        }
    }

    pub(crate) fn spawn_relay(self: &Arc<Self>, name: &LaunchName) {
        let stop = StopSwitch::default();
        let task = tokio::spawn(relay::run(self.clone(), name.clone(), stop.clone()));
        self.relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Relaying { stop, task });
    }

    /// Called by a relay as it ends.
    pub(crate) fn relay_ended(&self, name: &LaunchName) {
        self.relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Refresh the board if it is older than the status interval; then record how finished
    /// agent launches ended and stop launches past their deadline.
    pub(crate) async fn refresh(&self) -> Result<(), AwsError> {
        let rows = self
            .store
            .run(|store| store.launches())
            .await
            .map_err(|e| AwsError::internal("reading the state file", e))?;
        let live: Vec<&LaunchRow> = rows.iter().filter(|r| r.outcome.is_none()).collect();
        let ids: Vec<String> = live.iter().filter_map(|r| r.platform_id.clone()).collect();
        let read = self
            .board
            .refresh(&self.platform, ids, self.options.status_interval)
            .await
            .inspect_err(|error| self.metrics.failed(self.platform.kind(), error))?;
        if !read {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        for row in live {
            if row.mode == RunMode::Acquire {
                self.settle_agent(row, now).await;
            }
            if now > row.deadline_at_ms && !row.stop_requested {
                let limit =
                    Duration::from_millis((row.deadline_at_ms - row.created_at_ms).max(0) as u64);
                let reason = format!("deadline of {limit:?} passed");
                if let Err(error) = self.stop(&row.name, &reason).await {
                    tracing::warn!(launch = %row.name, %error, "cannot stop a launch past its deadline; will retry");
                }
            }
        }
        Ok(())
    }

    /// Record how an agent launch ended, or that its start was interrupted and needs settling.
    async fn settle_agent(&self, row: &LaunchRow, now: i64) {
        let outcome = match &row.platform_id {
            None if row.request.is_some() => {
                if let Err(error) = self.recover_start(row).await {
                    tracing::warn!(launch = %row.name, %error, "cannot settle an interrupted start yet; will retry");
                }
                return;
            }
            None => return,
            Some(id) => match self.board.get(id) {
                Some(observed) if observed.phase.is_finished() => observed.phase,
                Some(_) => return,
                None if now - row.created_at_ms > MISSING_GRACE.as_millis() as i64 => {
                    LaunchPhase::Failed {
                        reason: format!("{} no longer knows {id}", self.platform.kind()),
                    }
                }
                None => return,
            },
        };
        let name = row.name.clone();
        if let Err(error) = self
            .store
            .run(move |store| store.set_outcome(&name, &outcome))
            .await
        {
            tracing::warn!(launch = %row.name, %error, "cannot record how a launch ended");
        }
    }

    pub(super) async fn stop(&self, name: &LaunchName, reason: &str) -> Result<(), AwsError> {
        let key = name.clone();
        let row = self
            .store
            .run(move |store| {
                let row = store.launch(&key)?;
                if row.as_ref().is_some_and(|r| r.outcome.is_none()) {
                    store.set_stop_requested(&key)?;
                }
                Ok(row)
            })
            .await
            .map_err(|e| AwsError::internal("recording a stop", e))?;
        let Some(row) = row.filter(|r| r.outcome.is_none()) else {
            return Ok(());
        };
        tracing::info!(launch = %name, reason, "stopping launch");
        if let Some(relaying) = self
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            relaying.stop.request(StopReason::Cancel);
        }
        if let Some(id) = &row.platform_id {
            self.platform.stop(&row.fleet, id, reason).await?;
        }
        Ok(())
    }
}

/// Refresh states (and so deadlines) while the backend lives, whether or not anyone lists.
pub(super) async fn tick_forever<P: Platform>(shared: Weak<Shared<P>>) {
    loop {
        let interval = match shared.upgrade() {
            Some(shared) => {
                if let Err(error) = shared.refresh().await {
                    tracing::debug!(backend = shared.platform.kind(), %error, "refreshing launch states failed; trying again");
                }
                shared.options.status_interval
            }
            None => return,
        };
        tokio::time::sleep(interval).await;
    }
}
