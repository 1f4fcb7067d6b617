//! Time as the scheduler reads it: one clock for the ledger's timestamps, deadlines and the
//! reconciler's listing times, so "confirmed before the listing" is a comparison of two
//! readings of the same clock. The system clock is made monotonic (a wall clock stepping back
//! would otherwise make a fresh launch look older than a listing); tests substitute a
//! virtual one.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch, never smaller than an earlier reading.
    fn now_ms(&self) -> i64;
}

/// The wall clock, held monotonic within this process.
#[derive(Debug, Default)]
pub struct SystemClock {
    last: AtomicI64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let wall = chrono::Utc::now().timestamp_millis();
        self.last.fetch_max(wall, Ordering::SeqCst).max(wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_never_goes_back() {
        let clock = SystemClock::default();
        clock.last.store(i64::MAX - 1, Ordering::SeqCst);
        assert_eq!(clock.now_ms(), i64::MAX - 1);
        let fresh = SystemClock::default();
        let (a, b) = (fresh.now_ms(), fresh.now_ms());
        assert!(b >= a && a > 1_700_000_000_000);
    }
}
