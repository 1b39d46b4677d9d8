//! The `[polling]` settings: how connected platforms' data is fetched.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::ConfigError;
use crate::config::setting::{count, limit, secs, settings, string_table};
use crate::scheduler::settings::schedule;

settings! {
    /// Polling connected platforms' data.
    pub struct PollingConfig in "polling" {
        /// When the poll sweep runs.
        sweep_schedule: String = schedule("0 * * * * *"), env "TELLTALE_POLL_SWEEP_SCHEDULE";
        /// Polls in flight at once per sweep.
        concurrency: usize = count(8, 1..=1000), env "TELLTALE_POLL_CONCURRENCY";
        /// Polls in flight at once per platform.
        per_platform_concurrency: usize = count(4, 1..=1000), env "TELLTALE_POLL_PER_PLATFORM_CONCURRENCY";
        /// Requests per second to one platform, across its connections (spaced, not bursted).
        requests_per_second: u32 = count(10, 1..=10_000), env "TELLTALE_POLL_REQUESTS_PER_SECOND";
        /// Pages followed per poll.
        max_pages: u32 = count(10, 1..=1000), env "TELLTALE_POLL_MAX_PAGES";
        /// Attempts per page for transient failures (5xx, timeouts, garbage).
        max_attempts: u32 = count(3, 1..=20), env "TELLTALE_POLL_MAX_ATTEMPTS";
        /// How long a claimed pair stays reserved; renewed every third of it while the poll
        /// runs, so a killed process's claim is free this soon.
        lease_secs: Duration = secs(60, 3..=3600), env "TELLTALE_POLL_LEASE_SECS";
        /// Longest `Retry-After` a poll waits for; longer ones fail the poll and pause the platform.
        max_retry_wait_secs: Duration = secs(60, 1..=3600), env "TELLTALE_POLL_MAX_RETRY_WAIT_SECS";
        /// Timeout of each request for a platform's data.
        request_timeout_secs: Duration = secs(10, 1..=600), env "TELLTALE_POLL_REQUEST_TIMEOUT_SECS";
        /// Stored payloads and poll runs are kept this long.
        retention_days: u32 = count(30, 1..=3650), env "TELLTALE_POLL_RETENTION_DAYS";
        /// Payloads kept per (connection, endpoint).
        keep_payloads: Option<u32> = limit(1..=1_000_000), env "TELLTALE_POLL_KEEP_PAYLOADS";
        /// When retention runs.
        retention_schedule: String = schedule("0 45 3 * * *"), env "TELLTALE_POLL_RETENTION_SCHEDULE";
        /// Schedule overrides by `platform` or `platform/endpoint` (`spotify = "0 */5 * * * *"`).
        schedules: BTreeMap<String, String> = string_table("a table of cron schedules");
    }
}

impl PollingConfig {
    /// Every override names a platform or endpoint the catalogue knows, with a valid schedule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Self::key_error("schedules", message);
        for (target, expression) in &self.schedules {
            if !super::catalogue::is_target(target) {
                return Err(fail(format!(
                    "unknown platform or endpoint {target:?}; expected e.g. \"spotify\" or \"spotify/recently_played\""
                )));
            }
            crate::scheduler::parse_schedule(expression)
                .map_err(|m| fail(format!("{target}: {expression:?}: {m}")))?;
        }
        Ok(())
    }
}
