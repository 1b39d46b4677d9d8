//! The `[scheduler]` settings, and the schedule kind every job's setting uses.

use chrono_tz::Tz;

use crate::config::setting::{Kind, parsed, settings, text};

settings! {
    /// Where job schedules are read.
    pub struct SchedulerConfig in "scheduler" {
        /// Time zone of every job schedule (an IANA name).
        timezone: Tz = parsed("UTC", "an IANA time zone", super::parse_timezone), env "TELLTALE_SCHEDULER_TIMEZONE";
    }
}

/// A job schedule: a cron expression, checked when the configuration is read so a typo fails
/// at start-up, not at the first tick.
pub fn schedule(default: &str) -> Kind<String> {
    text(default).check("a cron schedule (sec min hour day month weekday)", |expression| {
        super::parse_schedule(expression)
            .map(|_| ())
            .map_err(|m| format!("{expression:?}: {m}"))
    })
}
