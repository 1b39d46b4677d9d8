//! The `[milesight]` settings: webhook intake, device state, and the OpenAPI application.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::config::setting::{count, optional_text, secret, secs, settings, table_array};
use crate::config::{ConfigError, valid_source_name};
use crate::scheduler::settings::schedule;

settings! {
    /// Milesight webhook intake, device state and OpenAPI settings.
    pub struct MilesightConfig in "milesight" {
        /// The default webhook secret (source `default`, or the path's source).
        webhook_secret: Option<SecretString> = secret(1), env "MILESIGHT_WEBHOOK_SECRET";
        /// Also accepted for the default webhook while its secret is rotated (`previous_secret`
        /// in a `[[milesight.webhooks]]` entry does the same for that webhook).
        webhook_previous_secret: Option<SecretString> = secret(1), env "MILESIGHT_WEBHOOK_PREVIOUS_SECRET";
        /// `[[milesight.webhooks]]` entries (`uuid`, `secret`, `previous_secret`, `source`): one MDP
        /// webhook each, selected by `x-msc-webhook-uuid`; the default webhook joins them.
        webhooks: Vec<WebhookConfig> = table_array("an array of tables", show_webhooks);
        /// Accepted clock difference between the sender's timestamp and ours, both directions.
        timestamp_tolerance_secs: Duration = secs(300, 1..=86_400), env "MILESIGHT_WEBHOOK_TOLERANCE_SECS";
        /// Largest webhook body.
        max_body_bytes: usize = count(1024 * 1024, 1..=64 * 1024 * 1024), env "MILESIGHT_WEBHOOK_MAX_BODY_BYTES";
        /// Rejected requests kept for inspection.
        rejections_kept: i64 = count(1000, 1..=1_000_000), env "MILESIGHT_WEBHOOK_REJECTIONS_KEPT";
        /// A source is stale after period + grace without events.
        source_period_secs: Duration = secs(900, 1..=30 * 86_400), env "MILESIGHT_SOURCE_PERIOD_SECS";
        /// See `source_period_secs`.
        source_grace_secs: Duration = secs(300, 1..=30 * 86_400), env "MILESIGHT_SOURCE_GRACE_SECS";
        /// How often a device is expected to report until its own interval has been learned.
        device_interval_secs: Duration = secs(600, 1..=7 * 86_400), env "MILESIGHT_DEVICE_INTERVAL_SECS";
        /// A device is offline after interval × factor without data.
        offline_factor: u32 = count(2, 1..=100), env "MILESIGHT_OFFLINE_FACTOR";
        /// How long events (the readings time series) are kept.
        retention_days: u32 = count(90, 1..=3650), env "MILESIGHT_RETENTION_DAYS";
        /// Export `telltale_device_last_seen_age_seconds` for this many devices (those heard from
        /// longest ago); 0, the default, exports none. Each is one series per scrape (about 120
        /// bytes of `/metrics`): keep it to what Prometheus can hold (docs/metrics.md).
        per_device_metrics: usize = count(0, 0..=100_000), env "MILESIGHT_PER_DEVICE_METRICS";
        /// Webhook sources that get metric series of their own (`source` label), the oldest
        /// first; the rest share `other`, so a signed sender naming new sources in the URL
        /// cannot grow `/metrics` without bound.
        metric_sources: usize = count(100, 1..=10_000), env "MILESIGHT_METRIC_SOURCES";
        /// How old the fleet summary behind `/metrics` and the overview (device counts, last-seen
        /// windows, oldest device), and the webhooks page's events per source over the last hour
        /// and day, may get: each is one pass over every device or the day's events, read again
        /// in the background once this has passed. 0 reads them on every scrape and page.
        fleet_summary_max_age_secs: Duration = secs(30, 0..=3600), env "MILESIGHT_FLEET_SUMMARY_MAX_AGE_SECS";
        /// When the offline check runs.
        device_check_schedule: String = schedule("0 * * * * *"), env "MILESIGHT_DEVICE_CHECK_SCHEDULE";
        /// When event retention runs.
        retention_schedule: String = schedule("0 30 3 * * *"), env "MILESIGHT_RETENTION_SCHEDULE";
        /// The MDP OpenAPI's regional base URL, e.g. `https://eu-openapi.milesight.com`
        /// (with `client_id` and `client_secret`: all three or none).
        base_url: Option<String> = optional_text().check("an http(s) URL", check_base_url), env "MILESIGHT_BASE_URL";
        /// The OpenAPI application's client id.
        client_id: Option<String> = optional_text(), env "MILESIGHT_CLIENT_ID";
        /// The OpenAPI application's client secret.
        client_secret: Option<SecretString> = secret(1), env "MILESIGHT_CLIENT_SECRET";
        /// Refresh when the token expires within this much time.
        token_lead_secs: Duration = secs(300, 1..=86_400), env "MILESIGHT_TOKEN_LEAD_SECS";
        /// Timeout of each call to the Milesight OpenAPI (its token, the device inventory, the
        /// settings test).
        request_timeout_secs: Duration = secs(10, 1..=600), env "MILESIGHT_REQUEST_TIMEOUT_SECS";
        /// Upstream attempts per refresh (transient failures are retried with backoff).
        token_max_attempts: u32 = count(3, 1..=20), env "MILESIGHT_TOKEN_MAX_ATTEMPTS";
        /// When the device list is synced.
        inventory_schedule: String = schedule("0 */10 * * * *"), env "MILESIGHT_INVENTORY_SCHEDULE";
        /// Devices per search page.
        inventory_page_size: i64 = count(50, 1..=1000), env "MILESIGHT_INVENTORY_PAGE_SIZE";
        /// OpenAPI requests allowed per UTC day (the plan's quota), shared by all replicas.
        daily_request_budget: i64 = count(1000, 1..=100_000_000), env "MILESIGHT_DAILY_REQUEST_BUDGET";
    }
}

/// Milesight Development Platform OpenAPI application credentials.
#[derive(Clone)]
pub struct MilesightApi {
    /// Regional base URL, e.g. `https://eu-openapi.milesight.com`, without a trailing slash.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

/// One configured MDP webhook; a webhook without uuid is the default, used for any uuid not listed.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(deserialize_with = "crate::config::setting::secret_text")]
    pub secret: SecretString,
    /// Still accepted while a rotation is under way (MDP signs with the new secret once it
    /// is regenerated there; requests in flight or retried may carry the old one).
    #[serde(default, deserialize_with = "crate::config::setting::optional_secret_text")]
    pub previous_secret: Option<SecretString>,
    pub source: String,
}

fn show_webhooks(hooks: &[WebhookConfig]) -> String {
    let entries: Vec<String> = hooks
        .iter()
        .filter(|h| h.uuid.is_some())
        .map(|h| {
            format!(
                "{{ uuid = {:?}, secret = \"********\", {}source = {:?} }}",
                h.uuid.as_deref().unwrap_or_default(),
                if h.previous_secret.is_some() {
                    "previous_secret = \"********\", "
                } else {
                    ""
                },
                h.source
            )
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

fn check_base_url(url: &Option<String>) -> Result<(), String> {
    let Some(url) = url else { return Ok(()) };
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(_) => Err("expected an http:// or https:// URL".into()),
        Err(_) => Err(format!(
            "expected a URL such as https://eu-openapi.milesight.com, got {url:?}"
        )),
    }
}

impl MilesightConfig {
    /// When a quiet device counts as offline, as the database applies it.
    pub fn offline_policy(&self) -> crate::milesight::offline::OfflinePolicy {
        crate::milesight::offline::OfflinePolicy {
            default_interval_secs: self.device_interval_secs.as_secs() as i64,
            factor: i64::from(self.offline_factor),
        }
    }

    /// Checks the webhook entries and adds the default webhook (from `webhook_secret`) to them;
    /// the OpenAPI needs its three settings together.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            let at = |problem: &str| Self::key_error("webhooks", format!("entry {}: {problem}", i + 1));
            let uuid = hook.uuid.as_deref().unwrap_or_default();
            if uuid.trim().is_empty() {
                return Err(at("uuid must not be empty"));
            }
            if secrecy::ExposeSecret::expose_secret(&hook.secret).is_empty() {
                return Err(at("secret must not be empty"));
            }
            if !valid_source_name(&hook.source) {
                return Err(at("source must be 1-64 letters, digits, '-' or '_'"));
            }
            if seen.contains(&uuid) {
                return Err(at("uuid is listed twice"));
            }
            seen.push(uuid);
        }
        match (&self.webhook_secret, &self.webhook_previous_secret) {
            (Some(secret), previous) => self.webhooks.push(WebhookConfig {
                uuid: None,
                secret: secret.clone(),
                previous_secret: previous.clone(),
                source: "default".into(),
            }),
            (None, Some(_)) => {
                return Err(Self::key_error(
                    "webhook_previous_secret",
                    "set only together with milesight.webhook_secret",
                ));
            }
            (None, None) => {}
        }
        match (&self.base_url, &self.client_id, &self.client_secret) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => Ok(()),
            (base, id, _) => {
                let missing = if base.is_none() {
                    "base_url"
                } else if id.is_none() {
                    "client_id"
                } else {
                    "client_secret"
                };
                Err(Self::key_error(
                    missing,
                    "the Milesight OpenAPI needs base_url, client_id and client_secret together; this one is missing",
                ))
            }
        }
    }

    /// The OpenAPI application, when configured.
    pub fn api(&self) -> Option<MilesightApi> {
        match (&self.base_url, &self.client_id, &self.client_secret) {
            (Some(base_url), Some(client_id), Some(client_secret)) => Some(MilesightApi {
                base_url: base_url.trim_end_matches('/').to_owned(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
            }),
            _ => None,
        }
    }
}
