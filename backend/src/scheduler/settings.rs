//! The `[scheduler]` settings, and the schedule kind every job's setting uses.

use chrono_tz::Tz;

use crate::config::setting::{Kind, parsed, settings};

settings! {
    /// Where job schedules are read.
    pub struct SchedulerConfig in "scheduler" {
        /// Time zone of every job schedule, and of the local times pages and emails show (an IANA name).
        timezone: Tz = parsed("UTC", "an IANA time zone", super::parse_timezone), env "TELLTALE_SCHEDULER_TIMEZONE";
    }
}

/// A job schedule: a cron expression, five fields as in crontab or six with seconds first,
/// checked when the configuration is read (so a typo fails at start-up, not at the first tick)
/// and kept in the six-field form.
pub fn schedule(default: &str) -> Kind<String> {
    parsed(
        default,
        "a cron schedule: `min hour day month weekday` as in crontab, or six fields with seconds first",
        normalize,
    )
}

fn normalize(expression: &str) -> Result<String, String> {
    super::normalize_schedule(expression).map_err(|m| format!("{expression:?}: {m}"))
}
