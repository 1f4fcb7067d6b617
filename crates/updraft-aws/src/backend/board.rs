//! The last known state of every live build or task of one backend, refreshed with one
//! batched describe call at most every `status_interval` (whoever asks first — `list()`, a
//! relay waiting for its build, or the backend's own ticker — does the call; the rest wait
//! for it), and a watch that wakes relays when it changes.

use crate::errors::AwsError;
use crate::platform::{Observed, Platform};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Board {
    observed: Mutex<HashMap<String, Observed>>,
    refreshed_at: Mutex<Option<Instant>>,
    /// Held while a refresh runs, so concurrent askers share one describe call.
    refreshing: tokio::sync::Mutex<()>,
    generation: watch::Sender<u64>,
}

impl Board {
    pub fn new() -> Board {
        Board {
            observed: Mutex::new(HashMap::new()),
            refreshed_at: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            generation: watch::channel(0).0,
        }
    }

    pub fn get(&self, id: &str) -> Option<Observed> {
        self.lock().get(id).cloned()
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A receiver that changes after every refresh.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observed>> {
        self.observed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fresh(&self, max_age: Duration) -> bool {
        let at = *self
            .refreshed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        at.is_some_and(|at| at.elapsed() < max_age)
    }

    /// Describe `ids` unless the board is younger than `max_age`; returns whether it read.
    pub async fn refresh<P: Platform>(
        &self,
        platform: &P,
        ids: Vec<String>,
        max_age: Duration,
    ) -> Result<bool, AwsError> {
        if self.fresh(max_age) {
            return Ok(false);
        }
        let _turn = self.refreshing.lock().await;
        if self.fresh(max_age) {
            return Ok(false);
        }
        let observed = if ids.is_empty() {
            HashMap::new()
        } else {
            platform.describe(&ids).await?
        };
        {
            let mut board = self.lock();
            board.retain(|id, _| ids.contains(id));
            board.extend(observed);
        }
        *self
            .refreshed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        self.generation.send_modify(|g| *g += 1);
        Ok(true)
    }
}
