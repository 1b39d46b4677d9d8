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

/// `ACTIVE` while the source's last event is within `period + grace` of `now`; a source that
/// never delivered is `WAITING` until `period + grace` after it was set up (`created_at`);
/// otherwise `STALE`.
pub fn source_status(
    last_event_at: Option<UtcTime>,
    created_at: UtcTime,
    period: Duration,
    grace: Duration,
    now: UtcTime,
) -> SourceStatus {
    let allowed = chrono::Duration::from_std(period + grace).unwrap_or(chrono::Duration::MAX);
    match last_event_at {
        Some(last) if now.0 - last.0 <= allowed => SourceStatus::Active,
        None if now.0 - created_at.0 <= allowed => SourceStatus::Waiting,
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
        let set_up = ago(5000).unwrap();
        assert_eq!(
            source_status(ago(1200), set_up, period, grace, now),
            SourceStatus::Active
        );
        assert_eq!(
            source_status(ago(1201), set_up, period, grace, now),
            SourceStatus::Stale
        );
        assert_eq!(
            source_status(None, set_up, period, grace, now),
            SourceStatus::Stale
        );
        let new = ago(1200).unwrap();
        assert_eq!(
            source_status(None, new, period, grace, now),
            SourceStatus::Waiting,
            "set up within its period and grace, nothing yet: waiting, not stale"
        );
        assert_eq!(
            source_status(None, ago(1201).unwrap(), period, grace, now),
            SourceStatus::Stale
        );
    }
}
