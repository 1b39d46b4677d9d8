//! Milesight Development Platform: webhook intake and device state.

pub mod client;
pub mod group_commit;
pub mod housekeeping;
pub mod intake;
pub mod inventory;
pub mod offline;
pub mod payload;
pub mod settings;
pub mod token;
pub mod ui_webhooks;

use std::time::Duration;

use crate::storage::{SourceStatus, UtcTime};

/// `ACTIVE` while the source's last event is within `period + grace` of `now`, else `STALE`
/// (also when nothing ever arrived).
pub fn source_status(
    last_event_at: Option<UtcTime>,
    period: Duration,
    grace: Duration,
    now: UtcTime,
) -> SourceStatus {
    let allowed = chrono::Duration::from_std(period + grace).unwrap_or(chrono::Duration::MAX);
    match last_event_at {
        Some(last) if now.0 - last.0 <= allowed => SourceStatus::Active,
        _ => SourceStatus::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn source_goes_stale_after_period_plus_grace() {
        let now = UtcTime::new(chrono::Utc.timestamp_opt(10_000, 0).unwrap());
        let ago = |secs: i64| Some(UtcTime::new(now.0 - chrono::Duration::seconds(secs)));
        let (period, grace) = (Duration::from_secs(900), Duration::from_secs(300));
        assert_eq!(source_status(ago(1200), period, grace, now), SourceStatus::Active);
        assert_eq!(source_status(ago(1201), period, grace, now), SourceStatus::Stale);
        assert_eq!(source_status(None, period, grace, now), SourceStatus::Stale);
    }
}
