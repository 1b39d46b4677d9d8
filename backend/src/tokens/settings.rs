//! The `[tokens]` settings: the refresh engine for connected platforms.

use std::time::Duration;

use crate::config::setting::{count, days, optional_text, secs, settings};
use crate::scheduler::settings::schedule;

settings! {
    /// The refresh engine for connected platforms.
    pub struct TokensConfig in "tokens" {
        /// When the refresh sweep runs.
        sweep_schedule: String = schedule("0 * * * * *"), env "TELLTALE_TOKEN_SWEEP_SCHEDULE";
        /// Refreshes in flight at once per sweep.
        concurrency: usize = count(8, 1..=1000), env "TELLTALE_TOKEN_CONCURRENCY";
        /// Upstream attempts per refresh (transient failures retried with backoff).
        max_attempts: u32 = count(3, 1..=20), env "TELLTALE_TOKEN_MAX_ATTEMPTS";
        /// How long a claimed connection stays reserved for the claiming process; renewed every
        /// third of it while the refresh runs, so a killed process's claim is free this soon.
        lease_secs: Duration = secs(30, 3..=3600), env "TELLTALE_TOKEN_LEASE_SECS";
        /// Refresh a token not refreshed for this long even if it is not near expiry, so idle
        /// grants are not revoked.
        idle_refresh_days: Duration = days(7, 1..=365), env "TELLTALE_TOKEN_IDLE_REFRESH_DAYS";
        /// Timeout of each token request to a platform (refresh, code exchange, login); the
        /// Milesight token takes `milesight.request_timeout_secs` instead.
        request_timeout_secs: Duration = secs(10, 1..=600), env "TELLTALE_TOKEN_REQUEST_TIMEOUT_SECS";
        /// The longest `Retry-After` a refresh waits out before its next attempt; a platform
        /// asking for longer ends the refresh at once, and the connection is tried again when
        /// the platform said (so a sweep, the CLI and Refresh now return promptly).
        max_retry_wait_secs: Duration = secs(30, 1..=3600), env "TELLTALE_TOKEN_MAX_RETRY_WAIT_SECS";
        /// Transient failures in a row from one upstream (provider kind and host) that open its
        /// circuit: refreshes against it are then refused locally until it closes.
        circuit_failures: u32 = count(5, 1..=1000), env "TELLTALE_TOKEN_CIRCUIT_FAILURES";
        /// How long an opened circuit pauses calls; doubles each time it re-opens, up to 10×.
        circuit_open_secs: Duration = secs(30, 1..=3600), env "TELLTALE_TOKEN_CIRCUIT_OPEN_SECS";
        /// The ThingsBoard server of connections that name none (one shared server for every
        /// customer, as the original service had); a connection's own `base_url` wins.
        thingsboard_url: Option<String> = optional_text().check("an http(s) URL", check_url), env "THINGSBOARD_URL";
    }
}

fn check_url(url: &Option<String>) -> Result<(), String> {
    match url {
        Some(u) if !url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https")) => {
            Err(format!("{u:?} is not an http(s) URL"))
        }
        _ => Ok(()),
    }
}
