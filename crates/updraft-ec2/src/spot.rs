//! Spot with on-demand fallback, as a small state machine per fleet: after the pool raises
//! its spot group, the instances asked for must arrive within `spot_launch_timeout` (or the
//! group must not report a failed launch); otherwise the shortfall is bought on-demand and
//! spot is not tried again for `spot_retry_after`. Time comes in from the caller.

/// One fleet's spot requests and spot's availability.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SpotWatch {
    /// The spot group's desired count asked for and not yet filled, and since when.
    pending: Option<(u32, i64)>,
    /// Spot is not asked for again before this (ms).
    unavailable_until_ms: Option<i64>,
}

impl SpotWatch {
    /// Whether the pool should ask spot for capacity now.
    pub fn available(&self, now_ms: i64) -> bool {
        self.unavailable_until_ms
            .is_none_or(|until| now_ms >= until)
    }

    /// The spot group was raised to `desired`; an earlier unfilled request keeps its time.
    pub fn raised(&mut self, desired: u32, now_ms: i64) {
        let since = self.pending.map_or(now_ms, |(_, since)| since);
        self.pending = Some((desired, since));
    }

    /// An instance left the spot group with its desired count decremented.
    pub fn removed(&mut self) {
        if let Some((wanted, since)) = self.pending {
            self.pending = Some((wanted.saturating_sub(1), since));
        }
    }

    /// When the unfilled request was made, if there is one.
    pub fn pending_since(&self) -> Option<i64> {
        self.pending.map(|(_, since)| since)
    }

    /// Look at the spot group (`instances` in it now; `failed`: it reported a failed launch
    /// since the request). Returns how many instances to buy on-demand instead when spot has
    /// failed, and then keeps away from spot for `retry_after_ms`.
    pub fn check(
        &mut self,
        instances: u32,
        failed: bool,
        now_ms: i64,
        timeout_ms: i64,
        retry_after_ms: i64,
    ) -> Option<u32> {
        let (wanted, since) = self.pending?;
        if instances >= wanted {
            self.pending = None;
            return None;
        }
        if !failed && now_ms - since < timeout_ms {
            return None;
        }
        self.pending = None;
        self.unavailable_until_ms = Some(now_ms + retry_after_ms);
        Some(wanted - instances)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_requests_clear_and_unfilled_ones_fall_back_after_the_timeout() {
        let mut spot = SpotWatch::default();
        assert!(spot.available(0));
        spot.raised(3, 1_000);
        assert_eq!(spot.check(1, false, 2_000, 5_000, 60_000), None);
        spot.raised(4, 3_000);
        assert_eq!(
            spot.pending_since(),
            Some(1_000),
            "the first request's time counts"
        );
        assert_eq!(spot.check(2, false, 6_000, 5_000, 60_000), Some(2));
        assert!(!spot.available(30_000));
        assert!(spot.available(66_000));
        assert_eq!(
            spot.check(0, false, 70_000, 5_000, 60_000),
            None,
            "nothing pending"
        );

        spot.raised(2, 100_000);
        assert_eq!(spot.check(2, false, 100_500, 5_000, 60_000), None);
        assert_eq!(spot.pending_since(), None, "filled");
    }

    #[test]
    fn a_reported_failure_falls_back_at_once_and_removals_lower_the_request() {
        let mut spot = SpotWatch::default();
        spot.raised(3, 0);
        spot.removed();
        assert_eq!(
            spot.check(2, false, 1_000, 5_000, 60_000),
            None,
            "3 - 1 removed = 2 filled"
        );
        spot.raised(3, 2_000);
        assert_eq!(spot.check(2, true, 2_100, 5_000, 60_000), Some(1));
    }
}
