//! When a Milesight device counts as offline: the interval it is expected to report at,
//! learned from the gaps between its readings, and the deadline after its last reading past
//! which silence means offline. Plain functions; storage writes the deadlines they give.

use crate::storage::UtcTime;

/// The granularity of stored offline deadlines (see `OfflinePolicy::deadline`).
const DEADLINE_STEP_SECS: i64 = 10;

/// When a device that stops reporting counts as offline: its learned interval (else the
/// default) times the factor after its last reading. Ingest writes the resulting deadline into
/// `devices.offline_after`, so the offline check reads only the devices past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflinePolicy {
    pub default_interval_secs: i64,
    pub factor: i64,
}

impl Default for OfflinePolicy {
    /// The `[milesight]` defaults: ten minutes, twice.
    fn default() -> Self {
        OfflinePolicy {
            default_interval_secs: 600,
            factor: 2,
        }
    }
}

impl OfflinePolicy {
    /// The deadline stored for a device last seen at `last_seen` with `interval` learned (none
    /// for a device never heard from): `exact_deadline` rounded up to the next whole
    /// `DEADLINE_STEP_SECS`. A device reporting more often than that keeps the same deadline
    /// across its readings, so on PostgreSQL most of its updates leave every indexed column as
    /// it was and are HOT updates (no new entry in any of the table's eight indexes), and on
    /// SQLite they touch no index at all. Offline is decided at most one step later, well
    /// within the once-a-minute check.
    pub fn deadline(&self, last_seen: Option<UtcTime>, interval: Option<i64>) -> Option<UtcTime> {
        let exact = self.exact_deadline(last_seen, interval)?.0;
        let step = DEADLINE_STEP_SECS;
        let secs = exact.timestamp();
        let rounded = if exact.timestamp_subsec_nanos() == 0 && secs.rem_euclid(step) == 0 {
            secs
        } else {
            (secs.div_euclid(step) + 1).saturating_mul(step)
        };
        Some(chrono::DateTime::from_timestamp(rounded, 0).map_or(UtcTime(exact), UtcTime))
    }

    /// Last seen + the interval (learned, else the default) × the factor, to the microsecond.
    pub fn exact_deadline(&self, last_seen: Option<UtcTime>, interval: Option<i64>) -> Option<UtcTime> {
        let allowed = interval
            .unwrap_or(self.default_interval_secs)
            .saturating_mul(self.factor);
        last_seen.map(|seen| (seen.0 + chrono::TimeDelta::seconds(allowed)).into())
    }

    /// How the policy is remembered in `app_settings`, to notice when it changed.
    pub fn fingerprint(&self) -> String {
        format!("{}s x{}", self.default_interval_secs, self.factor)
    }
}

/// The interval a device is expected to report at, learned from the gaps between its
/// readings: a moving average that follows a changed interval within a few readings, bounded
/// so one long outage or a burst does not distort it.
pub fn learn_interval(previous: Option<i64>, gap_secs: i64) -> Option<i64> {
    const MIN: i64 = 30;
    const MAX: i64 = 86_400;
    if gap_secs <= 0 {
        return previous;
    }
    let gap = gap_secs.clamp(MIN, MAX);
    Some(match previous {
        None => gap,
        Some(p) => ((p * 3 + gap) / 4).clamp(MIN, MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::{OfflinePolicy, learn_interval};
    use crate::storage::UtcTime;

    #[test]
    fn stored_deadlines_round_up_to_the_next_ten_seconds() {
        let policy = OfflinePolicy::default();
        let at = |s: &str| Some(UtcTime::new(s.parse().unwrap()));
        assert_eq!(
            policy.deadline(at("2026-12-04T10:00:00Z"), None),
            at("2026-12-04T10:20:00Z"),
            "600 s × 2, already on a step"
        );
        assert_eq!(
            policy.deadline(at("2026-12-04T10:00:00.000001Z"), None),
            at("2026-12-04T10:20:10Z")
        );
        assert_eq!(
            policy.deadline(at("2026-12-04T10:00:09.5Z"), None),
            at("2026-12-04T10:20:10Z")
        );
        assert_eq!(
            policy.deadline(at("2026-12-04T23:59:54Z"), Some(30)),
            at("2026-12-05T00:01:00Z"),
            "30 s × 2 learned, across midnight"
        );
        assert_eq!(
            policy.exact_deadline(at("2026-12-04T10:00:09.5Z"), None),
            at("2026-12-04T10:20:09.5Z")
        );
        assert_eq!(policy.deadline(None, Some(30)), None, "never heard from");
    }

    #[test]
    fn learned_interval_follows_the_gaps_within_bounds() {
        assert_eq!(learn_interval(None, 600), Some(600));
        assert_eq!(learn_interval(Some(600), 600), Some(600));
        assert_eq!(
            learn_interval(Some(600), 200),
            Some(500),
            "moves a quarter of the way"
        );
        assert_eq!(
            learn_interval(Some(600), 0),
            Some(600),
            "a same-instant reading teaches nothing"
        );
        assert_eq!(learn_interval(None, 5), Some(30), "bounded below");
        assert_eq!(learn_interval(None, 10_000_000), Some(86_400), "bounded above");
        let mut interval = Some(600);
        for _ in 0..20 {
            interval = learn_interval(interval, 60);
        }
        assert!(
            interval.is_some_and(|i| i < 70),
            "converges on a new interval: {interval:?}"
        );
    }
}
