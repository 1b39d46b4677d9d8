//! Configuration: built-in defaults, overlaid by an optional TOML file, overlaid by
//! environment variables, then validated. Every error names the key (and the environment
//! variable) and says what is expected; secrets are never echoed back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::storage::{DatabaseTarget, PoolSettings};

/// The effective configuration. Its `Debug` output is the masked TOML, so keys never leak.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseTarget,
    /// The URL as given, kept only for `masked_database_url`.
    database_url: SecretString,
    pub pool: PoolSettings,
    pub data_dir: PathBuf,
    pub secret_key: Option<[u8; 32]>,
    pub previous_secret_keys: Vec<[u8; 32]>,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    /// Longest delay between attempts to reach the database at start-up.
    pub startup_retry_max_delay: Duration,
    pub milesight: MilesightConfig,
    /// Time zone the job schedules are written in.
    pub scheduler_timezone: chrono_tz::Tz,
    pub tokens: TokensConfig,
    pub polling: PollingConfig,
    pub email: EmailConfig,
    pub alerts: AlertsConfig,
    pub auth: AuthConfig,
    /// Bearer secret for the `/api/cron/*` endpoints; they are disabled (404) without one.
    pub cron_secret: Option<SecretString>,
    /// Serve `POST /bench/discard` (reads a body, answers 200): the bare-HTTP ceiling that
    /// webhook ingest is measured against. Off in production.
    pub bench_discard_route: bool,
}

/// Staff sign-in, sessions and API tokens.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The first admin, created at start-up when there are no users yet.
    pub admin_email: Option<String>,
    pub admin_password: Option<SecretString>,
    /// An API token (for automation) granted to that admin at start-up.
    pub api_token: Option<SecretString>,
    pub session_lifetime: Duration,
    /// Mark the session cookie `Secure` (on by default when `alerts.public_url` is https).
    pub secure_cookies: bool,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<SecretString>,
    /// Failed sign-ins allowed per minute for one email address and for one client address.
    pub login_attempts_per_minute: u32,
}

/// Alert rules and notifications.
#[derive(Clone, Debug)]
pub struct AlertsConfig {
    pub evaluation_schedule: String,
    /// Token refresh failures in a row that open an alert.
    pub refresh_failures: i32,
    /// Failed polls in a row (per connection and endpoint) that open an alert.
    pub poll_failures: i32,
    /// A token with less runway than this (and not being renewed) opens an alert.
    pub runway: Duration,
    /// Email when an alert resolves.
    pub notify_resolved: bool,
    /// Reminders while an alert stays firing: after the first email, then after each
    /// reminder; the last delay repeats.
    pub reminders: Vec<Duration>,
    /// Where the links in emails point (the web UI / API base URL).
    pub public_url: String,
    /// How long an alert email waits so that others changing meanwhile join it in one email.
    pub group_wait: Duration,
    /// Recipients by rule, instead of the on-call list.
    pub recipients: std::collections::BTreeMap<String, Vec<String>>,
}

/// Outgoing email (alerts, test emails), delivered through the outbox.
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// lettre connection URL (`smtps://user:pass@host:465`, `smtp://host:587?tls=required`, …);
    /// `None`: emails stay queued until one is configured.
    pub smtp_url: Option<SecretString>,
    pub from: String,
    /// The default on-call recipients.
    pub on_call: Vec<String>,
    pub timeout: Duration,
    pub outbox_schedule: String,
    /// First delay before a failed email is tried again; it doubles up to an hour.
    pub retry_base: Duration,
}

/// Polling connected platforms' data.
#[derive(Clone, Debug)]
pub struct PollingConfig {
    pub sweep_schedule: String,
    /// Polls in flight at once per sweep, and per platform.
    pub concurrency: usize,
    pub per_platform_concurrency: usize,
    /// Requests per second to one platform, across its connections (spaced, not bursted).
    pub requests_per_second: u32,
    /// Pages followed per poll.
    pub max_pages: u32,
    /// Attempts per page for transient failures (5xx, timeouts, garbage).
    pub max_attempts: u32,
    pub lease: Duration,
    /// Longest `Retry-After` a poll waits for; longer ones fail the poll and pause the platform.
    pub max_retry_wait: Duration,
    pub retention_days: u32,
    /// Keep at most this many payloads per (connection, endpoint); `None`: no count limit.
    pub keep_payloads: Option<u32>,
    pub retention_schedule: String,
    /// Schedule overrides by `platform` or `platform/endpoint`.
    pub schedules: std::collections::BTreeMap<String, String>,
}

/// The refresh engine for connected platforms.
#[derive(Clone, Debug)]
pub struct TokensConfig {
    pub sweep_schedule: String,
    /// Refreshes in flight at once per sweep.
    pub concurrency: usize,
    /// Upstream attempts per refresh (transient failures retried with backoff).
    pub max_attempts: u32,
    /// How long a claimed connection stays reserved for the claiming process.
    pub lease: Duration,
    /// Refresh a token not refreshed for this long even if it is not near expiry, so idle
    /// grants are not revoked.
    pub idle_refresh: Duration,
    /// Transient failures in a row from one upstream (provider kind and host) that open its
    /// circuit: refreshes against it are then refused locally until `circuit_open` passes.
    pub circuit_failures: u32,
    /// How long an opened circuit stays open (whole seconds, at least 1); doubles each time it
    /// re-opens, up to 10×.
    pub circuit_open: Duration,
}

/// Milesight webhook intake settings.
#[derive(Clone)]
pub struct MilesightConfig {
    /// Configured webhooks; a webhook without uuid is the default, used for any uuid not listed.
    pub webhooks: Vec<WebhookConfig>,
    /// Accepted clock difference between the sender's timestamp and ours, both directions.
    pub timestamp_tolerance: Duration,
    pub max_body_bytes: usize,
    /// How many rejected requests are kept for inspection.
    pub rejections_kept: i64,
    /// A source is STALE after `period + grace` without an event.
    pub source_period: Duration,
    pub source_grace: Duration,
    /// A device is expected to report this often until its own interval has been learned.
    pub device_interval: Duration,
    /// A device is offline after `interval × offline_factor` without data.
    pub offline_factor: u32,
    /// Events older than this are deleted.
    pub retention_days: u32,
    pub device_check_schedule: String,
    pub retention_schedule: String,
    /// OpenAPI credentials; `None` when not configured (the token keeper then reports `missing`).
    pub api: Option<MilesightApi>,
    /// Refresh when the token expires within this much time.
    pub token_lead: Duration,
    pub request_timeout: Duration,
    /// Upstream attempts per refresh (transient failures are retried with backoff).
    pub token_max_attempts: u32,
    pub inventory_schedule: String,
    pub inventory_page_size: i64,
    /// OpenAPI requests allowed per UTC day (the plan's quota), shared by all replicas.
    pub daily_request_budget: i64,
}

/// Milesight Development Platform OpenAPI application credentials.
#[derive(Clone)]
pub struct MilesightApi {
    /// Regional base URL, e.g. `https://eu-openapi.milesight.com`, without a trailing slash.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub uuid: Option<String>,
    pub secret: SecretString,
    /// Still accepted while a rotation is under way (MDP signs with the new secret once it
    /// is regenerated there; requests in flight or retried may carry the old one).
    pub previous_secret: Option<SecretString>,
    pub source: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_masked_toml())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration problem, reported with exit status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// The key as written in the file, with the environment variable that sets it, e.g.
    /// `listen (TELLTALE_LISTEN)`.
    pub key: String,
    pub message: String,
}

/// The file's shape. Every field is optional: absent means "keep the default".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    secret_key: Option<String>,
    previous_secret_keys: Option<Vec<String>>,
    log_format: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    cron_secret: Option<String>,
    bench_discard_route: Option<bool>,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    milesight: FileMilesight,
    #[serde(default)]
    scheduler: FileScheduler,
    #[serde(default)]
    tokens: FileTokens,
    #[serde(default)]
    polling: FilePolling,
    #[serde(default)]
    email: FileEmail,
    #[serde(default)]
    alerts: FileAlerts,
    #[serde(default)]
    auth: FileAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    admin_email: Option<String>,
    admin_password: Option<String>,
    api_token: Option<String>,
    session_hours: Option<u64>,
    secure_cookies: Option<bool>,
    metrics_token: Option<String>,
    login_attempts_per_minute: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlerts {
    evaluation_schedule: Option<String>,
    refresh_failures: Option<u64>,
    poll_failures: Option<u64>,
    runway_secs: Option<u64>,
    notify_resolved: Option<bool>,
    public_url: Option<String>,
    reminders: Option<String>,
    group_wait_secs: Option<u64>,
    #[serde(default)]
    recipients: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEmail {
    smtp_url: Option<String>,
    from: Option<String>,
    on_call: Option<String>,
    timeout_secs: Option<u64>,
    outbox_schedule: Option<String>,
    retry_base_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolling {
    sweep_schedule: Option<String>,
    concurrency: Option<u64>,
    per_platform_concurrency: Option<u64>,
    requests_per_second: Option<u64>,
    max_pages: Option<u64>,
    max_attempts: Option<u64>,
    lease_secs: Option<u64>,
    max_retry_wait_secs: Option<u64>,
    retention_days: Option<u64>,
    keep_payloads: Option<u64>,
    retention_schedule: Option<String>,
    #[serde(default)]
    schedules: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokens {
    sweep_schedule: Option<String>,
    concurrency: Option<u64>,
    max_attempts: Option<u64>,
    lease_secs: Option<u64>,
    idle_refresh_days: Option<u64>,
    circuit_failures: Option<u64>,
    circuit_open_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScheduler {
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMilesight {
    webhook_secret: Option<String>,
    webhook_previous_secret: Option<String>,
    timestamp_tolerance_secs: Option<u64>,
    max_body_bytes: Option<u64>,
    rejections_kept: Option<u64>,
    source_period_secs: Option<u64>,
    source_grace_secs: Option<u64>,
    device_interval_secs: Option<u64>,
    offline_factor: Option<u64>,
    retention_days: Option<u64>,
    device_check_schedule: Option<String>,
    retention_schedule: Option<String>,
    base_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_lead_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    token_max_attempts: Option<u64>,
    inventory_schedule: Option<String>,
    inventory_page_size: Option<u64>,
    daily_request_budget: Option<u64>,
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    uuid: String,
    secret: String,
    #[serde(default)]
    previous_secret: Option<String>,
    source: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    max_connections: Option<u64>,
    ingest_writers: Option<u64>,
    acquire_timeout_secs: Option<u64>,
    sqlite_busy_timeout_ms: Option<u64>,
    startup_retry_max_delay_secs: Option<u64>,
}

/// Each setting: its key in the TOML file and its environment variable.
struct Key {
    file: &'static str,
    env: &'static str,
}

const LISTEN: Key = Key {
    file: "listen",
    env: "TELLTALE_LISTEN",
};
const DATABASE_URL: Key = Key {
    file: "database_url",
    env: "DATABASE_URL",
};
const DATA_DIR: Key = Key {
    file: "data_dir",
    env: "TELLTALE_DATA_DIR",
};
const SECRET_KEY: Key = Key {
    file: "secret_key",
    env: "TELLTALE_SECRET_KEY",
};
const PREVIOUS_KEYS: Key = Key {
    file: "previous_secret_keys",
    env: "TELLTALE_SECRET_KEY_PREVIOUS",
};
const LOG_FORMAT: Key = Key {
    file: "log_format",
    env: "LOG_FORMAT",
};
const BENCH_DISCARD_ROUTE: Key = Key {
    file: "bench_discard_route",
    env: "TELLTALE_BENCH_DISCARD_ROUTE",
};
const SHUTDOWN_TIMEOUT: Key = Key {
    file: "shutdown_timeout_secs",
    env: "TELLTALE_SHUTDOWN_TIMEOUT_SECS",
};
const INGEST_WRITERS: Key = Key {
    file: "database.ingest_writers",
    env: "TELLTALE_DB_INGEST_WRITERS",
};
const MAX_CONNECTIONS: Key = Key {
    file: "database.max_connections",
    env: "TELLTALE_DB_MAX_CONNECTIONS",
};
const ACQUIRE_TIMEOUT: Key = Key {
    file: "database.acquire_timeout_secs",
    env: "TELLTALE_DB_ACQUIRE_TIMEOUT_SECS",
};
const BUSY_TIMEOUT: Key = Key {
    file: "database.sqlite_busy_timeout_ms",
    env: "TELLTALE_SQLITE_BUSY_TIMEOUT_MS",
};
const STARTUP_RETRY: Key = Key {
    file: "database.startup_retry_max_delay_secs",
    env: "TELLTALE_DB_STARTUP_RETRY_MAX_DELAY_SECS",
};
const WEBHOOK_PREVIOUS_SECRET: Key = Key {
    file: "milesight.webhook_previous_secret",
    env: "MILESIGHT_WEBHOOK_PREVIOUS_SECRET",
};
const WEBHOOK_SECRET: Key = Key {
    file: "milesight.webhook_secret",
    env: "MILESIGHT_WEBHOOK_SECRET",
};
const WEBHOOKS: Key = Key {
    file: "milesight.webhooks",
    env: "(file only)",
};
const TOLERANCE: Key = Key {
    file: "milesight.timestamp_tolerance_secs",
    env: "MILESIGHT_WEBHOOK_TOLERANCE_SECS",
};
const MAX_BODY: Key = Key {
    file: "milesight.max_body_bytes",
    env: "MILESIGHT_WEBHOOK_MAX_BODY_BYTES",
};
const REJECTIONS_KEPT: Key = Key {
    file: "milesight.rejections_kept",
    env: "MILESIGHT_WEBHOOK_REJECTIONS_KEPT",
};
const SOURCE_PERIOD: Key = Key {
    file: "milesight.source_period_secs",
    env: "MILESIGHT_SOURCE_PERIOD_SECS",
};
const SOURCE_GRACE: Key = Key {
    file: "milesight.source_grace_secs",
    env: "MILESIGHT_SOURCE_GRACE_SECS",
};
const DEVICE_INTERVAL: Key = Key {
    file: "milesight.device_interval_secs",
    env: "MILESIGHT_DEVICE_INTERVAL_SECS",
};
const OFFLINE_FACTOR: Key = Key {
    file: "milesight.offline_factor",
    env: "MILESIGHT_OFFLINE_FACTOR",
};
const RETENTION_DAYS: Key = Key {
    file: "milesight.retention_days",
    env: "MILESIGHT_RETENTION_DAYS",
};
const DEVICE_CHECK_SCHEDULE: Key = Key {
    file: "milesight.device_check_schedule",
    env: "MILESIGHT_DEVICE_CHECK_SCHEDULE",
};
const RETENTION_SCHEDULE: Key = Key {
    file: "milesight.retention_schedule",
    env: "MILESIGHT_RETENTION_SCHEDULE",
};
const SCHEDULER_TZ: Key = Key {
    file: "scheduler.timezone",
    env: "TELLTALE_SCHEDULER_TIMEZONE",
};
const MS_BASE_URL: Key = Key {
    file: "milesight.base_url",
    env: "MILESIGHT_BASE_URL",
};
const MS_CLIENT_ID: Key = Key {
    file: "milesight.client_id",
    env: "MILESIGHT_CLIENT_ID",
};
const MS_CLIENT_SECRET: Key = Key {
    file: "milesight.client_secret",
    env: "MILESIGHT_CLIENT_SECRET",
};
const MS_TOKEN_LEAD: Key = Key {
    file: "milesight.token_lead_secs",
    env: "MILESIGHT_TOKEN_LEAD_SECS",
};
const MS_TIMEOUT: Key = Key {
    file: "milesight.request_timeout_secs",
    env: "MILESIGHT_REQUEST_TIMEOUT_SECS",
};
const MS_ATTEMPTS: Key = Key {
    file: "milesight.token_max_attempts",
    env: "MILESIGHT_TOKEN_MAX_ATTEMPTS",
};
const MS_INVENTORY_SCHEDULE: Key = Key {
    file: "milesight.inventory_schedule",
    env: "MILESIGHT_INVENTORY_SCHEDULE",
};
const MS_PAGE_SIZE: Key = Key {
    file: "milesight.inventory_page_size",
    env: "MILESIGHT_INVENTORY_PAGE_SIZE",
};
const MS_BUDGET: Key = Key {
    file: "milesight.daily_request_budget",
    env: "MILESIGHT_DAILY_REQUEST_BUDGET",
};
const TK_SCHEDULE: Key = Key {
    file: "tokens.sweep_schedule",
    env: "TELLTALE_TOKEN_SWEEP_SCHEDULE",
};
const TK_CONCURRENCY: Key = Key {
    file: "tokens.concurrency",
    env: "TELLTALE_TOKEN_CONCURRENCY",
};
const TK_ATTEMPTS: Key = Key {
    file: "tokens.max_attempts",
    env: "TELLTALE_TOKEN_MAX_ATTEMPTS",
};
const TK_LEASE: Key = Key {
    file: "tokens.lease_secs",
    env: "TELLTALE_TOKEN_LEASE_SECS",
};
const TK_CIRCUIT_FAILURES: Key = Key {
    file: "tokens.circuit_failures",
    env: "TELLTALE_TOKEN_CIRCUIT_FAILURES",
};
const TK_CIRCUIT_OPEN: Key = Key {
    file: "tokens.circuit_open_secs",
    env: "TELLTALE_TOKEN_CIRCUIT_OPEN_SECS",
};
const TK_IDLE: Key = Key {
    file: "tokens.idle_refresh_days",
    env: "TELLTALE_TOKEN_IDLE_REFRESH_DAYS",
};
const PL_SCHEDULE: Key = Key {
    file: "polling.sweep_schedule",
    env: "TELLTALE_POLL_SWEEP_SCHEDULE",
};
const PL_CONCURRENCY: Key = Key {
    file: "polling.concurrency",
    env: "TELLTALE_POLL_CONCURRENCY",
};
const PL_PER_PLATFORM: Key = Key {
    file: "polling.per_platform_concurrency",
    env: "TELLTALE_POLL_PER_PLATFORM_CONCURRENCY",
};
const PL_RATE: Key = Key {
    file: "polling.requests_per_second",
    env: "TELLTALE_POLL_REQUESTS_PER_SECOND",
};
const PL_PAGES: Key = Key {
    file: "polling.max_pages",
    env: "TELLTALE_POLL_MAX_PAGES",
};
const PL_ATTEMPTS: Key = Key {
    file: "polling.max_attempts",
    env: "TELLTALE_POLL_MAX_ATTEMPTS",
};
const PL_LEASE: Key = Key {
    file: "polling.lease_secs",
    env: "TELLTALE_POLL_LEASE_SECS",
};
const PL_RETRY_WAIT: Key = Key {
    file: "polling.max_retry_wait_secs",
    env: "TELLTALE_POLL_MAX_RETRY_WAIT_SECS",
};
const PL_RETENTION: Key = Key {
    file: "polling.retention_days",
    env: "TELLTALE_POLL_RETENTION_DAYS",
};
const PL_KEEP: Key = Key {
    file: "polling.keep_payloads",
    env: "TELLTALE_POLL_KEEP_PAYLOADS",
};
const PL_RETENTION_SCHEDULE: Key = Key {
    file: "polling.retention_schedule",
    env: "TELLTALE_POLL_RETENTION_SCHEDULE",
};
const PL_SCHEDULES: Key = Key {
    file: "polling.schedules",
    env: "(file only)",
};
const EM_SMTP_URL: Key = Key {
    file: "email.smtp_url",
    env: "SMTP_URL",
};
const EM_FROM: Key = Key {
    file: "email.from",
    env: "TELLTALE_EMAIL_FROM",
};
const EM_ON_CALL: Key = Key {
    file: "email.on_call",
    env: "TELLTALE_ONCALL_EMAILS",
};
const EM_TIMEOUT: Key = Key {
    file: "email.timeout_secs",
    env: "TELLTALE_SMTP_TIMEOUT_SECS",
};
const EM_OUTBOX: Key = Key {
    file: "email.outbox_schedule",
    env: "TELLTALE_OUTBOX_SCHEDULE",
};
const EM_RETRY: Key = Key {
    file: "email.retry_base_secs",
    env: "TELLTALE_EMAIL_RETRY_BASE_SECS",
};
const AL_SCHEDULE: Key = Key {
    file: "alerts.evaluation_schedule",
    env: "TELLTALE_ALERT_EVALUATION_SCHEDULE",
};
const AL_REFRESH: Key = Key {
    file: "alerts.refresh_failures",
    env: "TELLTALE_ALERT_REFRESH_FAILURES",
};
const AL_POLL: Key = Key {
    file: "alerts.poll_failures",
    env: "TELLTALE_ALERT_POLL_FAILURES",
};
const AL_RUNWAY: Key = Key {
    file: "alerts.runway_secs",
    env: "TELLTALE_ALERT_RUNWAY_SECS",
};
const AL_RESOLVED: Key = Key {
    file: "alerts.notify_resolved",
    env: "TELLTALE_ALERT_NOTIFY_RESOLVED",
};
const AL_PUBLIC_URL: Key = Key {
    file: "alerts.public_url",
    env: "TELLTALE_PUBLIC_URL",
};
const AL_REMINDERS: Key = Key {
    file: "alerts.reminders",
    env: "TELLTALE_ALERT_REMINDERS",
};
const AL_GROUP_WAIT: Key = Key {
    file: "alerts.group_wait_secs",
    env: "TELLTALE_ALERT_GROUP_WAIT_SECS",
};
const AL_RECIPIENTS: Key = Key {
    file: "alerts.recipients",
    env: "(file only)",
};
const AU_ADMIN_EMAIL: Key = Key {
    file: "auth.admin_email",
    env: "TELLTALE_ADMIN_EMAIL",
};
const AU_ADMIN_PASSWORD: Key = Key {
    file: "auth.admin_password",
    env: "TELLTALE_ADMIN_PASSWORD",
};
const AU_API_TOKEN: Key = Key {
    file: "auth.api_token",
    env: "TELLTALE_API_TOKEN",
};
const AU_SESSION_HOURS: Key = Key {
    file: "auth.session_hours",
    env: "TELLTALE_SESSION_HOURS",
};
const AU_SECURE: Key = Key {
    file: "auth.secure_cookies",
    env: "TELLTALE_SECURE_COOKIES",
};
const AU_METRICS_TOKEN: Key = Key {
    file: "auth.metrics_token",
    env: "TELLTALE_METRICS_TOKEN",
};
const AU_ATTEMPTS: Key = Key {
    file: "auth.login_attempts_per_minute",
    env: "TELLTALE_LOGIN_ATTEMPTS_PER_MINUTE",
};
const CRON_SECRET: Key = Key {
    file: "cron_secret",
    env: "CRON_SECRET",
};

/// Every key, for documentation and for `check-config`.
const ALL_KEYS: &[&Key] = &[
    &LISTEN,
    &DATABASE_URL,
    &DATA_DIR,
    &SECRET_KEY,
    &PREVIOUS_KEYS,
    &LOG_FORMAT,
    &SHUTDOWN_TIMEOUT,
    &MAX_CONNECTIONS,
    &INGEST_WRITERS,
    &ACQUIRE_TIMEOUT,
    &BUSY_TIMEOUT,
    &STARTUP_RETRY,
    &WEBHOOK_SECRET,
    &WEBHOOK_PREVIOUS_SECRET,
    &WEBHOOKS,
    &TOLERANCE,
    &MAX_BODY,
    &REJECTIONS_KEPT,
    &SOURCE_PERIOD,
    &SOURCE_GRACE,
    &DEVICE_INTERVAL,
    &OFFLINE_FACTOR,
    &RETENTION_DAYS,
    &DEVICE_CHECK_SCHEDULE,
    &RETENTION_SCHEDULE,
    &SCHEDULER_TZ,
    &MS_BASE_URL,
    &MS_CLIENT_ID,
    &MS_CLIENT_SECRET,
    &MS_TOKEN_LEAD,
    &MS_TIMEOUT,
    &MS_ATTEMPTS,
    &MS_INVENTORY_SCHEDULE,
    &MS_PAGE_SIZE,
    &MS_BUDGET,
    &TK_SCHEDULE,
    &TK_CONCURRENCY,
    &TK_ATTEMPTS,
    &TK_LEASE,
    &TK_IDLE,
    &TK_CIRCUIT_FAILURES,
    &TK_CIRCUIT_OPEN,
    &PL_SCHEDULE,
    &PL_CONCURRENCY,
    &PL_PER_PLATFORM,
    &PL_RATE,
    &PL_PAGES,
    &PL_ATTEMPTS,
    &PL_LEASE,
    &PL_RETRY_WAIT,
    &PL_RETENTION,
    &PL_KEEP,
    &PL_RETENTION_SCHEDULE,
    &PL_SCHEDULES,
    &EM_SMTP_URL,
    &EM_FROM,
    &EM_ON_CALL,
    &EM_TIMEOUT,
    &EM_OUTBOX,
    &EM_RETRY,
    &AL_SCHEDULE,
    &AL_REFRESH,
    &AL_POLL,
    &AL_RUNWAY,
    &AL_RESOLVED,
    &AL_PUBLIC_URL,
    &AL_REMINDERS,
    &AL_GROUP_WAIT,
    &AL_RECIPIENTS,
    &AU_ADMIN_EMAIL,
    &AU_ADMIN_PASSWORD,
    &AU_API_TOKEN,
    &AU_SESSION_HOURS,
    &AU_SECURE,
    &AU_METRICS_TOKEN,
    &AU_ATTEMPTS,
    &CRON_SECRET,
];

impl Key {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: format!("{} ({})", self.file, self.env),
            message: message.into(),
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/telltale.db";

/// Environment lookup, injectable so tests never touch the real process environment.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl Config {
    /// Loads the configuration: the file (if a path is given) overlaid by the environment.
    pub fn load(file: Option<&Path>, env: &impl Env) -> Result<Config, ConfigError> {
        let file_config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    key: "--config (TELLTALE_CONFIG)".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| file_error(path, &e))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file_config, env)
    }

    /// Parses configuration from TOML text (for tests and tools).
    pub fn from_toml(text: &str, env: &impl Env) -> Result<Config, ConfigError> {
        let file_config =
            toml::from_str::<FileConfig>(text).map_err(|e| file_error(Path::new("<inline>"), &e))?;
        Config::resolve(file_config, env)
    }

    fn resolve(file: FileConfig, env: &impl Env) -> Result<Config, ConfigError> {
        let pick = |key: &Key, from_file: Option<String>| env.get(key.env).or(from_file);
        let pick_num = |key: &Key, from_file: Option<u64>| -> Result<Option<u64>, ConfigError> {
            match env.get(key.env) {
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| key.error(format!("expected a whole number, got {v:?}"))),
                None => Ok(from_file),
            }
        };

        let listen_text = pick(&LISTEN, file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            LISTEN.error(format!(
                "expected an address and port such as 127.0.0.1:8080, got {listen_text:?}"
            ))
        })?;

        let database_url =
            pick(&DATABASE_URL, file.database_url).unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        // The URL may carry a password, so the error describes it without repeating it.
        let database = DatabaseTarget::parse(&database_url).map_err(|m| DATABASE_URL.error(m))?;

        let data_dir = env
            .get(DATA_DIR.env)
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| "data".into());

        let secret_key = pick(&SECRET_KEY, file.secret_key)
            .map(|k| crate::crypto::parse_key(&k).map_err(|m| SECRET_KEY.error(m)))
            .transpose()?;
        let previous_texts: Vec<String> = match env.get(PREVIOUS_KEYS.env) {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.previous_secret_keys.unwrap_or_default(),
        };
        let previous_secret_keys = previous_texts
            .iter()
            .map(|k| crate::crypto::parse_key(k).map_err(|m| PREVIOUS_KEYS.error(format!("each key: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;

        let log_format = match pick(&LOG_FORMAT, file.log_format)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(LOG_FORMAT.error(format!("expected \"text\" or \"json\", got {other:?}")));
            }
        };

        let positive = |key: &Key, value: Option<u64>, default: u64, max: u64| -> Result<u64, ConfigError> {
            let v = value.unwrap_or(default);
            if v == 0 || v > max {
                return Err(key.error(format!("expected a number from 1 to {max}, got {v}")));
            }
            Ok(v)
        };
        let bench_discard_route = match pick(&BENCH_DISCARD_ROUTE, None) {
            None => file.bench_discard_route.unwrap_or(false),
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(BENCH_DISCARD_ROUTE.error(format!("expected true or false, got {v:?}"))),
        };
        let shutdown_secs = positive(
            &SHUTDOWN_TIMEOUT,
            pick_num(&SHUTDOWN_TIMEOUT, file.shutdown_timeout_secs)?,
            30,
            3600,
        )?;
        let max_connections = positive(
            &MAX_CONNECTIONS,
            pick_num(&MAX_CONNECTIONS, file.database.max_connections)?,
            16,
            1000,
        )?;
        // PostgreSQL commits several groups at once (its WAL flush serves them together);
        // SQLite has one writer whatever we do.
        let ingest_writers = positive(
            &INGEST_WRITERS,
            pick_num(&INGEST_WRITERS, file.database.ingest_writers)?,
            match database {
                DatabaseTarget::Postgres(_) => 4,
                DatabaseTarget::Sqlite(_) => 1,
            },
            64,
        )?;
        let acquire_secs = positive(
            &ACQUIRE_TIMEOUT,
            pick_num(&ACQUIRE_TIMEOUT, file.database.acquire_timeout_secs)?,
            5,
            600,
        )?;
        let busy_ms = positive(
            &BUSY_TIMEOUT,
            pick_num(&BUSY_TIMEOUT, file.database.sqlite_busy_timeout_ms)?,
            5000,
            600_000,
        )?;
        let retry_secs = positive(
            &STARTUP_RETRY,
            pick_num(&STARTUP_RETRY, file.database.startup_retry_max_delay_secs)?,
            30,
            3600,
        )?;

        let ms = file.milesight;
        let mut webhooks = Vec::new();
        for (i, hook) in ms.webhooks.into_iter().enumerate() {
            let at = |field: &str| WEBHOOKS.error(format!("entry {}: {field}", i + 1));
            if hook.uuid.trim().is_empty() {
                return Err(at("uuid must not be empty"));
            }
            if hook.secret.is_empty() {
                return Err(at("secret must not be empty"));
            }
            if !valid_source_name(&hook.source) {
                return Err(at("source must be 1-64 letters, digits, '-' or '_'"));
            }
            if webhooks
                .iter()
                .any(|w: &WebhookConfig| w.uuid.as_deref() == Some(hook.uuid.as_str()))
            {
                return Err(at("uuid is listed twice"));
            }
            webhooks.push(WebhookConfig {
                uuid: Some(hook.uuid),
                secret: SecretString::from(hook.secret),
                previous_secret: hook
                    .previous_secret
                    .filter(|p| !p.is_empty())
                    .map(SecretString::from),
                source: hook.source,
            });
        }
        let default_previous = pick(&WEBHOOK_PREVIOUS_SECRET, ms.webhook_previous_secret);
        if let Some(secret) = pick(&WEBHOOK_SECRET, ms.webhook_secret) {
            webhooks.push(WebhookConfig {
                uuid: None,
                secret: SecretString::from(secret),
                previous_secret: default_previous.filter(|p| !p.is_empty()).map(SecretString::from),
                source: "default".into(),
            });
        } else if default_previous.is_some() {
            return Err(WEBHOOK_PREVIOUS_SECRET.error("set only together with milesight.webhook_secret"));
        }
        let schedule = |key: &Key, from_file: Option<String>, default: &str| -> Result<String, ConfigError> {
            let expression = pick(key, from_file).unwrap_or_else(|| default.to_owned());
            crate::scheduler::parse_schedule(&expression)
                .map_err(|m| key.error(format!("{expression:?}: {m}")))?;
            Ok(expression)
        };
        let device_check_schedule =
            schedule(&DEVICE_CHECK_SCHEDULE, ms.device_check_schedule, "0 * * * * *")?;
        let retention_schedule = schedule(&RETENTION_SCHEDULE, ms.retention_schedule, "0 30 3 * * *")?;
        let device_interval = Duration::from_secs(positive(
            &DEVICE_INTERVAL,
            pick_num(&DEVICE_INTERVAL, ms.device_interval_secs)?,
            600,
            7 * 86_400,
        )?);
        let offline_factor = positive(
            &OFFLINE_FACTOR,
            pick_num(&OFFLINE_FACTOR, ms.offline_factor)?,
            2,
            100,
        )? as u32;
        let retention_days = positive(
            &RETENTION_DAYS,
            pick_num(&RETENTION_DAYS, ms.retention_days)?,
            90,
            3650,
        )? as u32;
        let tz_name = pick(&SCHEDULER_TZ, file.scheduler.timezone).unwrap_or_else(|| "UTC".into());
        let scheduler_timezone =
            crate::scheduler::parse_timezone(&tz_name).map_err(|m| SCHEDULER_TZ.error(m))?;
        let token_lead = Duration::from_secs(positive(
            &MS_TOKEN_LEAD,
            pick_num(&MS_TOKEN_LEAD, ms.token_lead_secs)?,
            300,
            86_400,
        )?);
        let request_timeout = Duration::from_secs(positive(
            &MS_TIMEOUT,
            pick_num(&MS_TIMEOUT, ms.request_timeout_secs)?,
            10,
            600,
        )?);
        let token_max_attempts = positive(
            &MS_ATTEMPTS,
            pick_num(&MS_ATTEMPTS, ms.token_max_attempts)?,
            3,
            20,
        )? as u32;
        let api = match (
            pick(&MS_BASE_URL, ms.base_url),
            pick(&MS_CLIENT_ID, ms.client_id),
            pick(&MS_CLIENT_SECRET, ms.client_secret),
        ) {
            (None, None, None) => None,
            (Some(base_url), Some(client_id), Some(client_secret)) => {
                let parsed = url::Url::parse(&base_url).map_err(|_| {
                    MS_BASE_URL.error(format!(
                        "expected a URL such as https://eu-openapi.milesight.com, got {base_url:?}"
                    ))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(MS_BASE_URL.error("expected an http:// or https:// URL"));
                }
                Some(MilesightApi {
                    base_url: base_url.trim_end_matches('/').to_owned(),
                    client_id,
                    client_secret: SecretString::from(client_secret),
                })
            }
            (base, id, _) => {
                let missing = if base.is_none() {
                    &MS_BASE_URL
                } else if id.is_none() {
                    &MS_CLIENT_ID
                } else {
                    &MS_CLIENT_SECRET
                };
                return Err(missing.error(
                    "the Milesight OpenAPI needs base_url, client_id and client_secret together; this one is missing",
                ));
            }
        };
        let inventory_schedule = schedule(&MS_INVENTORY_SCHEDULE, ms.inventory_schedule, "0 */10 * * * *")?;
        let inventory_page_size = positive(
            &MS_PAGE_SIZE,
            pick_num(&MS_PAGE_SIZE, ms.inventory_page_size)?,
            50,
            1000,
        )? as i64;
        let daily_request_budget = positive(
            &MS_BUDGET,
            pick_num(&MS_BUDGET, ms.daily_request_budget)?,
            1000,
            100_000_000,
        )? as i64;
        let milesight = MilesightConfig {
            inventory_schedule,
            inventory_page_size,
            daily_request_budget,
            api,
            token_lead,
            request_timeout,
            token_max_attempts,
            device_interval,
            offline_factor,
            retention_days,
            device_check_schedule,
            retention_schedule,
            webhooks,
            timestamp_tolerance: Duration::from_secs(positive(
                &TOLERANCE,
                pick_num(&TOLERANCE, ms.timestamp_tolerance_secs)?,
                300,
                86_400,
            )?),
            max_body_bytes: positive(
                &MAX_BODY,
                pick_num(&MAX_BODY, ms.max_body_bytes)?,
                1024 * 1024,
                64 * 1024 * 1024,
            )? as usize,
            rejections_kept: positive(
                &REJECTIONS_KEPT,
                pick_num(&REJECTIONS_KEPT, ms.rejections_kept)?,
                1000,
                1_000_000,
            )? as i64,
            source_period: Duration::from_secs(positive(
                &SOURCE_PERIOD,
                pick_num(&SOURCE_PERIOD, ms.source_period_secs)?,
                900,
                30 * 86_400,
            )?),
            source_grace: Duration::from_secs(positive(
                &SOURCE_GRACE,
                pick_num(&SOURCE_GRACE, ms.source_grace_secs)?,
                300,
                30 * 86_400,
            )?),
        };

        let tk = file.tokens;
        let tokens = TokensConfig {
            sweep_schedule: schedule(&TK_SCHEDULE, tk.sweep_schedule, "0 * * * * *")?,
            concurrency: positive(
                &TK_CONCURRENCY,
                pick_num(&TK_CONCURRENCY, tk.concurrency)?,
                8,
                1000,
            )? as usize,
            max_attempts: positive(&TK_ATTEMPTS, pick_num(&TK_ATTEMPTS, tk.max_attempts)?, 3, 20)? as u32,
            lease: Duration::from_secs(positive(
                &TK_LEASE,
                pick_num(&TK_LEASE, tk.lease_secs)?,
                120,
                3600,
            )?),
            idle_refresh: Duration::from_secs(
                positive(&TK_IDLE, pick_num(&TK_IDLE, tk.idle_refresh_days)?, 7, 365)? * 86_400,
            ),
            circuit_failures: positive(
                &TK_CIRCUIT_FAILURES,
                pick_num(&TK_CIRCUIT_FAILURES, tk.circuit_failures)?,
                5,
                1000,
            )? as u32,
            circuit_open: Duration::from_secs(positive(
                &TK_CIRCUIT_OPEN,
                pick_num(&TK_CIRCUIT_OPEN, tk.circuit_open_secs)?,
                30,
                3600,
            )?),
        };

        let pl = file.polling;
        let mut schedules = std::collections::BTreeMap::new();
        for (target, expression) in pl.schedules {
            if !crate::polling::catalogue::is_target(&target) {
                return Err(PL_SCHEDULES.error(format!(
                    "unknown platform or endpoint {target:?}; expected e.g. \"spotify\" or \"spotify/recently_played\""
                )));
            }
            crate::scheduler::parse_schedule(&expression)
                .map_err(|m| PL_SCHEDULES.error(format!("{target}: {expression:?}: {m}")))?;
            schedules.insert(target, expression);
        }
        let keep_payloads = match pick_num(&PL_KEEP, pl.keep_payloads)? {
            None | Some(0) => None,
            Some(n) if n <= 1_000_000 => Some(n as u32),
            Some(n) => return Err(PL_KEEP.error(format!("expected 0 (no limit) to 1000000, got {n}"))),
        };
        let polling = PollingConfig {
            sweep_schedule: schedule(&PL_SCHEDULE, pl.sweep_schedule, "0 * * * * *")?,
            concurrency: positive(
                &PL_CONCURRENCY,
                pick_num(&PL_CONCURRENCY, pl.concurrency)?,
                8,
                1000,
            )? as usize,
            per_platform_concurrency: positive(
                &PL_PER_PLATFORM,
                pick_num(&PL_PER_PLATFORM, pl.per_platform_concurrency)?,
                4,
                1000,
            )? as usize,
            requests_per_second: positive(&PL_RATE, pick_num(&PL_RATE, pl.requests_per_second)?, 10, 10_000)?
                as u32,
            max_pages: positive(&PL_PAGES, pick_num(&PL_PAGES, pl.max_pages)?, 10, 1000)? as u32,
            max_attempts: positive(&PL_ATTEMPTS, pick_num(&PL_ATTEMPTS, pl.max_attempts)?, 3, 20)? as u32,
            lease: Duration::from_secs(positive(
                &PL_LEASE,
                pick_num(&PL_LEASE, pl.lease_secs)?,
                300,
                3600,
            )?),
            max_retry_wait: Duration::from_secs(positive(
                &PL_RETRY_WAIT,
                pick_num(&PL_RETRY_WAIT, pl.max_retry_wait_secs)?,
                60,
                3600,
            )?),
            retention_days: positive(
                &PL_RETENTION,
                pick_num(&PL_RETENTION, pl.retention_days)?,
                30,
                3650,
            )? as u32,
            keep_payloads,
            retention_schedule: schedule(&PL_RETENTION_SCHEDULE, pl.retention_schedule, "0 45 3 * * *")?,
            schedules,
        };

        let em = file.email;
        let smtp_url = pick(&EM_SMTP_URL, em.smtp_url).filter(|u| !u.is_empty());
        if let Some(url) = &smtp_url {
            // Checked now so a typo fails at start-up, not at 3 a.m.; the message never repeats the URL.
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map_err(|e| {
                EM_SMTP_URL.error(format!(
                    "not a usable SMTP URL ({}); expected e.g. smtps://user:pass@host:465 or smtp://host:587?tls=required",
                    crate::redact::redact(&e.to_string(), &[url.as_str()])
                ))
            })?;
        }
        let from = pick(&EM_FROM, em.from).unwrap_or_else(|| "Telltale <telltale@localhost>".into());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(EM_FROM.error(format!(
                "{from:?} is not an email address such as \"Telltale <telltale@example.com>\""
            )));
        }
        let on_call = email_list(&pick(&EM_ON_CALL, em.on_call).unwrap_or_default());
        if let Some(bad) = on_call
            .iter()
            .find(|a| a.parse::<lettre::message::Mailbox>().is_err())
        {
            return Err(EM_ON_CALL.error(format!("{bad:?} is not an email address")));
        }
        let email = EmailConfig {
            smtp_url: smtp_url.map(SecretString::from),
            from,
            on_call,
            timeout: Duration::from_secs(positive(
                &EM_TIMEOUT,
                pick_num(&EM_TIMEOUT, em.timeout_secs)?,
                30,
                600,
            )?),
            outbox_schedule: schedule(&EM_OUTBOX, em.outbox_schedule, "*/10 * * * * *")?,
            retry_base: Duration::from_secs(positive(
                &EM_RETRY,
                pick_num(&EM_RETRY, em.retry_base_secs)?,
                30,
                3600,
            )?),
        };

        let al = file.alerts;
        let notify_resolved = match pick(&AL_RESOLVED, None) {
            None => al.notify_resolved.unwrap_or(true),
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(AL_RESOLVED.error(format!("expected true or false, got {v:?}"))),
        };
        let public_url = pick(&AL_PUBLIC_URL, al.public_url).unwrap_or_else(|| format!("http://{listen}"));
        if !url::Url::parse(&public_url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(AL_PUBLIC_URL.error(format!("{public_url:?} is not an http(s) URL")));
        }
        let reminder_text = pick(&AL_REMINDERS, al.reminders).unwrap_or_else(|| "1h, 4h, 24h".into());
        let mut reminders = Vec::new();
        for part in reminder_text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (number, unit) =
                part.split_at(part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len()));
            let secs = match (number.parse::<u64>(), unit) {
                (Ok(n), "s") => n,
                (Ok(n), "m") => n * 60,
                (Ok(n), "h") => n * 3600,
                (Ok(n), "d") => n * 86_400,
                _ => 0,
            };
            if secs == 0 {
                return Err(AL_REMINDERS.error(format!(
                    "{part:?} is not a delay; expected a list such as \"1h, 4h, 24h\" (units s, m, h, d)"
                )));
            }
            reminders.push(Duration::from_secs(secs));
        }
        if reminders.is_empty() {
            return Err(AL_REMINDERS.error("give at least one delay, e.g. \"1h, 4h, 24h\""));
        }
        let group_wait = match pick_num(&AL_GROUP_WAIT, al.group_wait_secs)? {
            None => 30,
            Some(n) if n <= 3600 => n,
            Some(n) => return Err(AL_GROUP_WAIT.error(format!("expected 0 to 3600 seconds, got {n}"))),
        };
        let mut recipients = std::collections::BTreeMap::new();
        for (rule, list) in al.recipients {
            if !crate::alerts::evaluate::RULES.contains(&rule.as_str()) {
                return Err(AL_RECIPIENTS.error(format!(
                    "unknown rule {rule:?}; the rules are {}",
                    crate::alerts::evaluate::RULES.join(", ")
                )));
            }
            let addresses = email_list(&list);
            if let Some(bad) = addresses
                .iter()
                .find(|a| a.parse::<lettre::message::Mailbox>().is_err())
            {
                return Err(AL_RECIPIENTS.error(format!("{rule}: {bad:?} is not an email address")));
            }
            if addresses.is_empty() {
                return Err(AL_RECIPIENTS.error(format!("{rule}: give at least one address")));
            }
            recipients.insert(rule, addresses);
        }
        let alerts = AlertsConfig {
            group_wait: Duration::from_secs(group_wait),
            recipients,
            reminders,
            evaluation_schedule: schedule(&AL_SCHEDULE, al.evaluation_schedule, "*/30 * * * * *")?,
            refresh_failures: positive(&AL_REFRESH, pick_num(&AL_REFRESH, al.refresh_failures)?, 3, 1000)?
                as i32,
            poll_failures: positive(&AL_POLL, pick_num(&AL_POLL, al.poll_failures)?, 3, 1000)? as i32,
            runway: Duration::from_secs(positive(
                &AL_RUNWAY,
                pick_num(&AL_RUNWAY, al.runway_secs)?,
                120,
                30 * 86_400,
            )?),
            notify_resolved,
            public_url: public_url.trim_end_matches('/').to_owned(),
        };

        let au = file.auth;
        let admin_email = pick(&AU_ADMIN_EMAIL, au.admin_email).filter(|e| !e.is_empty());
        if let Some(email) = &admin_email
            && email.parse::<lettre::Address>().is_err()
        {
            return Err(AU_ADMIN_EMAIL.error(format!("{email:?} is not an email address")));
        }
        let admin_password = pick(&AU_ADMIN_PASSWORD, au.admin_password).filter(|p| !p.is_empty());
        if admin_password
            .as_ref()
            .is_some_and(|p| p.chars().count() < crate::auth::MIN_PASSWORD)
        {
            return Err(AU_ADMIN_PASSWORD.error(format!(
                "must be at least {} characters",
                crate::auth::MIN_PASSWORD
            )));
        }
        if admin_email.is_some() != admin_password.is_some() {
            return Err(AU_ADMIN_EMAIL.error("give both the first admin's email and password, or neither"));
        }
        let api_token = pick(&AU_API_TOKEN, au.api_token).filter(|t| !t.is_empty());
        if api_token.as_ref().is_some_and(|t| t.len() < 24) {
            return Err(AU_API_TOKEN.error("must be at least 24 characters"));
        }
        if api_token.is_some() && admin_email.is_none() {
            return Err(AU_API_TOKEN
                .error("needs auth.admin_email (TELLTALE_ADMIN_EMAIL): the token acts as that admin"));
        }
        let secure_cookies = match pick(&AU_SECURE, None) {
            None => au
                .secure_cookies
                .unwrap_or_else(|| alerts.public_url.starts_with("https://")),
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(AU_SECURE.error(format!("expected true or false, got {v:?}"))),
        };
        let metrics_token = pick(&AU_METRICS_TOKEN, au.metrics_token).filter(|t| !t.is_empty());
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(AU_METRICS_TOKEN.error("must be at least 16 characters"));
        }
        let auth = AuthConfig {
            admin_email,
            admin_password: admin_password.map(SecretString::from),
            api_token: api_token.map(SecretString::from),
            session_lifetime: Duration::from_secs(
                3600 * positive(
                    &AU_SESSION_HOURS,
                    pick_num(&AU_SESSION_HOURS, au.session_hours)?,
                    12,
                    24 * 90,
                )?,
            ),
            secure_cookies,
            metrics_token: metrics_token.map(SecretString::from),
            login_attempts_per_minute: positive(
                &AU_ATTEMPTS,
                pick_num(&AU_ATTEMPTS, au.login_attempts_per_minute)?,
                5,
                1000,
            )? as u32,
        };

        let cron_secret = match pick(&CRON_SECRET, file.cron_secret) {
            Some(secret) if secret.len() < 16 => {
                return Err(
                    CRON_SECRET.error("must be at least 16 characters (it guards the cron endpoints)")
                );
            }
            other => other.map(SecretString::from),
        };

        Ok(Config {
            auth,
            cron_secret,
            bench_discard_route,
            tokens,
            polling,
            email,
            alerts,
            milesight,
            scheduler_timezone,
            listen,
            database,
            database_url: SecretString::from(database_url),
            pool: PoolSettings {
                max_connections: max_connections as usize,
                ingest_writers: ingest_writers as usize,
                acquire_timeout: Duration::from_secs(acquire_secs),
                sqlite_busy_timeout: Duration::from_millis(busy_ms),
            },
            data_dir,
            secret_key,
            previous_secret_keys,
            log_format,
            shutdown_timeout: Duration::from_secs(shutdown_secs),
            startup_retry_max_delay: Duration::from_secs(retry_secs),
        })
    }

    /// The database URL with any password replaced by `****`.
    pub fn masked_database_url(&self) -> String {
        mask_url_password(self.database_url.expose_secret())
    }

    /// The effective configuration as TOML, secrets masked; what `check-config` prints.
    pub fn to_masked_toml(&self) -> String {
        let masked = |set: bool| if set { "\"********\"" } else { "\"\" # unset" };
        let mut out = String::new();
        out.push_str(&format!("listen = {:?}\n", self.listen.to_string()));
        out.push_str(&format!(
            "database_url = {:?}  # backend: {}\n",
            self.masked_database_url(),
            self.database.backend_name()
        ));
        out.push_str(&format!("data_dir = {:?}\n", self.data_dir.display().to_string()));
        out.push_str(&format!("secret_key = {}\n", masked(self.secret_key.is_some())));
        out.push_str(&format!(
            "previous_secret_keys = [{}]\n",
            vec!["\"********\""; self.previous_secret_keys.len()].join(", ")
        ));
        out.push_str(&format!(
            "log_format = {:?}\n",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
        ));
        out.push_str(&format!(
            "shutdown_timeout_secs = {}\n",
            self.shutdown_timeout.as_secs()
        ));
        out.push_str(&format!("cron_secret = {}\n", masked(self.cron_secret.is_some())));
        out.push_str(&format!("bench_discard_route = {}\n", self.bench_discard_route));
        let em = &self.email;
        out.push_str(&format!(
            "\n[email]\nsmtp_url = {}\nfrom = {:?}\non_call = {:?}\ntimeout_secs = {}\noutbox_schedule = {:?}\nretry_base_secs = {}\n",
            masked(em.smtp_url.is_some()),
            em.from,
            em.on_call.join(", "),
            em.timeout.as_secs(),
            em.outbox_schedule,
            em.retry_base.as_secs()
        ));
        let al = &self.alerts;
        out.push_str(&format!(
            "\n[alerts]\nevaluation_schedule = {:?}\nrefresh_failures = {}\npoll_failures = {}\nrunway_secs = {}\nnotify_resolved = {}\npublic_url = {:?}\nreminders = {:?}\n",
            al.evaluation_schedule,
            al.refresh_failures,
            al.poll_failures,
            al.runway.as_secs(),
            al.notify_resolved,
            al.public_url,
            al.reminders
                .iter()
                .map(|d| format!("{}s", d.as_secs()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push_str(&format!("group_wait_secs = {}\n", al.group_wait.as_secs()));
        if !al.recipients.is_empty() {
            out.push_str("\n[alerts.recipients]\n");
            for (rule, addresses) in &al.recipients {
                out.push_str(&format!("{rule} = {:?}\n", addresses.join(", ")));
            }
        }
        let au = &self.auth;
        out.push_str(&format!(
            "\n[auth]\nadmin_email = {:?}\nadmin_password = {}\napi_token = {}\nsession_hours = {}\nsecure_cookies = {}\nmetrics_token = {}\nlogin_attempts_per_minute = {}\n",
            au.admin_email.as_deref().unwrap_or(""),
            masked(au.admin_password.is_some()),
            masked(au.api_token.is_some()),
            au.session_lifetime.as_secs() / 3600,
            au.secure_cookies,
            masked(au.metrics_token.is_some()),
            au.login_attempts_per_minute
        ));
        out.push_str("\n[database]\n");
        out.push_str(&format!("max_connections = {}\n", self.pool.max_connections));
        out.push_str(&format!("ingest_writers = {}\n", self.pool.ingest_writers));
        out.push_str(&format!(
            "acquire_timeout_secs = {}\n",
            self.pool.acquire_timeout.as_secs()
        ));
        out.push_str(&format!(
            "sqlite_busy_timeout_ms = {}\n",
            self.pool.sqlite_busy_timeout.as_millis()
        ));
        out.push_str(&format!(
            "startup_retry_max_delay_secs = {}\n",
            self.startup_retry_max_delay.as_secs()
        ));
        let ms = &self.milesight;
        out.push_str("\n[milesight]\n");
        let default_hook = ms.webhooks.iter().find(|w| w.uuid.is_none());
        out.push_str(&format!("webhook_secret = {}\n", masked(default_hook.is_some())));
        if default_hook.is_some_and(|w| w.previous_secret.is_some()) {
            out.push_str("webhook_previous_secret = \"********\"\n");
        }
        out.push_str(&format!(
            "timestamp_tolerance_secs = {}\n",
            ms.timestamp_tolerance.as_secs()
        ));
        out.push_str(&format!("max_body_bytes = {}\n", ms.max_body_bytes));
        out.push_str(&format!("rejections_kept = {}\n", ms.rejections_kept));
        out.push_str(&format!("source_period_secs = {}\n", ms.source_period.as_secs()));
        out.push_str(&format!("source_grace_secs = {}\n", ms.source_grace.as_secs()));
        out.push_str(&format!(
            "device_interval_secs = {}\n",
            ms.device_interval.as_secs()
        ));
        out.push_str(&format!("offline_factor = {}\n", ms.offline_factor));
        out.push_str(&format!("retention_days = {}\n", ms.retention_days));
        out.push_str(&format!(
            "device_check_schedule = {:?}\n",
            ms.device_check_schedule
        ));
        out.push_str(&format!("retention_schedule = {:?}\n", ms.retention_schedule));
        if let Some(api) = &ms.api {
            out.push_str(&format!("base_url = {:?}\n", api.base_url));
            out.push_str(&format!("client_id = {:?}\n", api.client_id));
            out.push_str("client_secret = \"********\"\n");
        }
        out.push_str(&format!("token_lead_secs = {}\n", ms.token_lead.as_secs()));
        out.push_str(&format!(
            "request_timeout_secs = {}\n",
            ms.request_timeout.as_secs()
        ));
        out.push_str(&format!("token_max_attempts = {}\n", ms.token_max_attempts));
        out.push_str(&format!("inventory_schedule = {:?}\n", ms.inventory_schedule));
        out.push_str(&format!("inventory_page_size = {}\n", ms.inventory_page_size));
        out.push_str(&format!("daily_request_budget = {}\n", ms.daily_request_budget));
        for hook in ms.webhooks.iter().filter(|w| w.uuid.is_some()) {
            out.push_str(&format!(
                "\n[[milesight.webhooks]]\nuuid = {:?}\nsecret = \"********\"\n{}source = {:?}\n",
                hook.uuid.as_deref().unwrap_or_default(),
                if hook.previous_secret.is_some() {
                    "previous_secret = \"********\"\n"
                } else {
                    ""
                },
                hook.source
            ));
        }
        out.push_str(&format!(
            "\n[scheduler]\ntimezone = {:?}\n",
            self.scheduler_timezone.name()
        ));
        let tk = &self.tokens;
        out.push_str(&format!(
            "\n[tokens]\nsweep_schedule = {:?}\nconcurrency = {}\nmax_attempts = {}\nlease_secs = {}\nidle_refresh_days = {}\ncircuit_failures = {}\ncircuit_open_secs = {}\n",
            tk.sweep_schedule,
            tk.concurrency,
            tk.max_attempts,
            tk.lease.as_secs(),
            tk.idle_refresh.as_secs() / 86_400,
            tk.circuit_failures,
            tk.circuit_open.as_secs()
        ));
        let pl = &self.polling;
        out.push_str(&format!(
            "\n[polling]\nsweep_schedule = {:?}\nconcurrency = {}\nper_platform_concurrency = {}\nrequests_per_second = {}\nmax_pages = {}\nmax_attempts = {}\nlease_secs = {}\nmax_retry_wait_secs = {}\nretention_days = {}\nkeep_payloads = {}\nretention_schedule = {:?}\n",
            pl.sweep_schedule,
            pl.concurrency,
            pl.per_platform_concurrency,
            pl.requests_per_second,
            pl.max_pages,
            pl.max_attempts,
            pl.lease.as_secs(),
            pl.max_retry_wait.as_secs(),
            pl.retention_days,
            pl.keep_payloads.unwrap_or(0),
            pl.retention_schedule
        ));
        if !pl.schedules.is_empty() {
            out.push_str("\n[polling.schedules]\n");
            for (target, expression) in &pl.schedules {
                out.push_str(&format!("{target:?} = {expression:?}\n"));
            }
        }
        out
    }

    /// Key names with their environment variables, for the documentation test.
    pub fn documented_keys() -> Vec<(&'static str, &'static str)> {
        ALL_KEYS.iter().map(|k| (k.file, k.env)).collect()
    }
}

fn file_error(path: &Path, err: &toml::de::Error) -> ConfigError {
    // toml reports the offending key path in its message ("unknown field `x`", "in `database.max_connections`").
    ConfigError {
        key: format!("config file {}", path.display()),
        message: err.message().to_owned()
            + &err
                .span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default(),
    }
}

/// Source names appear in URLs and metric labels, so they are kept short and plain.
pub fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Replaces the password in `scheme://user:password@host/...` with `****`.
pub fn mask_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        Ok(_) => raw.to_owned(),
        // Unparseable: show only the scheme rather than risk echoing a secret.
        Err(_) => raw
            .split("://")
            .next()
            .map(|s| format!("{s}://…"))
            .unwrap_or_default(),
    }
}

/// A comma-separated list of addresses, blanks dropped.
fn email_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_need_no_file_and_no_environment() {
        let config = Config::load(None, &NO_ENV).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database, DatabaseTarget::Sqlite("data/telltale.db".into()));
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.pool.max_connections, 16);
    }

    #[test]
    fn environment_overrides_the_file() {
        let toml = "listen = \"127.0.0.1:9000\"\n[database]\nmax_connections = 4\n";
        let env = [("TELLTALE_LISTEN", "0.0.0.0:7000"), ("LOG_FORMAT", "JSON")];
        let config = Config::from_toml(toml, &env).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.pool.max_connections, 4);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_key_and_the_expectation() {
        let err = Config::from_toml("", &[("TELLTALE_LISTEN", "nope")]).unwrap_err();
        assert_eq!(err.key, "listen (TELLTALE_LISTEN)");
        assert!(err.message.contains("127.0.0.1:8080"), "{}", err.message);

        let err = Config::from_toml("", &[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert_eq!(err.key, "database_url (DATABASE_URL)");
        assert!(!err.to_string().contains("hunter2"));

        let err = Config::from_toml("[database]\nmax_connections = 0\n", &NO_ENV).unwrap_err();
        assert_eq!(err.key, "database.max_connections (TELLTALE_DB_MAX_CONNECTIONS)");

        let err = Config::from_toml("listen_typo = 1\n", &NO_ENV).unwrap_err();
        assert!(err.message.contains("listen_typo"), "{}", err.message);

        let err = Config::from_toml("", &[("TELLTALE_SECRET_KEY", "short")]).unwrap_err();
        assert_eq!(err.key, "secret_key (TELLTALE_SECRET_KEY)");
        assert!(!err.to_string().contains("short"));
    }

    #[test]
    fn webhooks_from_file_and_default_secret_from_environment() {
        let toml = "[[milesight.webhooks]]\nuuid = \"u-1\"\nsecret = \"CANARY-1\"\nprevious_secret = \"CANARY-0\"\nsource = \"site-a\"\n";
        let env = [
            ("MILESIGHT_WEBHOOK_SECRET", "CANARY-2"),
            ("MILESIGHT_WEBHOOK_PREVIOUS_SECRET", "CANARY-3"),
        ];
        let config = Config::from_toml(toml, &env).unwrap();
        let hooks = &config.milesight.webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(
            (hooks[0].uuid.as_deref(), hooks[0].source.as_str()),
            (Some("u-1"), "site-a")
        );
        assert_eq!(
            (hooks[1].uuid.as_deref(), hooks[1].source.as_str()),
            (None, "default")
        );
        assert!(hooks.iter().all(|h| h.previous_secret.is_some()));
        let shown = config.to_masked_toml();
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("source = \"site-a\""), "{shown}");
        assert!(shown.contains("previous_secret = \"********\""), "{shown}");
        let alone = Config::from_toml("", &[("MILESIGHT_WEBHOOK_PREVIOUS_SECRET", "x")]).unwrap_err();
        assert!(alone.key.contains("webhook_previous_secret"), "{alone}");

        let bad = "[[milesight.webhooks]]\nuuid = \"u\"\nsecret = \"s\"\nsource = \"no spaces\"\n";
        let err = Config::from_toml(bad, &NO_ENV).unwrap_err();
        assert!(err.key.starts_with("milesight.webhooks"), "{err}");
        assert!(err.message.contains("entry 1"), "{err}");
    }

    #[test]
    fn schedules_and_time_zone_are_validated() {
        let config = Config::from_toml("[scheduler]\ntimezone = \"Europe/Berlin\"\n", &NO_ENV).unwrap();
        assert_eq!(config.scheduler_timezone.name(), "Europe/Berlin");
        assert_eq!(config.milesight.device_check_schedule, "0 * * * * *");
        let err = Config::from_toml("", &[("MILESIGHT_RETENTION_SCHEDULE", "30 3 * * *")]).unwrap_err();
        assert_eq!(
            err.key,
            "milesight.retention_schedule (MILESIGHT_RETENTION_SCHEDULE)"
        );
        assert!(err.message.contains("six fields"), "{err}");
        let err = Config::from_toml("", &[("TELLTALE_SCHEDULER_TIMEZONE", "Mars/Olympus")]).unwrap_err();
        assert_eq!(err.key, "scheduler.timezone (TELLTALE_SCHEDULER_TIMEZONE)");
    }

    #[test]
    fn milesight_api_needs_all_three_settings() {
        let env = [
            ("MILESIGHT_BASE_URL", "https://eu-openapi.milesight.com/"),
            ("MILESIGHT_CLIENT_ID", "cid"),
            ("MILESIGHT_CLIENT_SECRET", "CANARY-client-secret"),
        ];
        let config = Config::from_toml("", &env).unwrap();
        let api = config.milesight.api.as_ref().unwrap();
        assert_eq!(api.base_url, "https://eu-openapi.milesight.com");
        assert!(!config.to_masked_toml().contains("CANARY"));
        assert!(Config::from_toml("", &NO_ENV).unwrap().milesight.api.is_none());
        let err =
            Config::from_toml("", &env[..2].try_into().map(|a: [(&str, &str); 2]| a).unwrap()).unwrap_err();
        assert_eq!(err.key, "milesight.client_secret (MILESIGHT_CLIENT_SECRET)");
        let err = Config::from_toml("", &[("MILESIGHT_BASE_URL", "ftp://x"), env[1], env[2]]).unwrap_err();
        assert_eq!(err.key, "milesight.base_url (MILESIGHT_BASE_URL)");
    }

    #[test]
    fn masked_output_hides_every_secret() {
        let key = "ab".repeat(32);
        let env = [
            ("DATABASE_URL", "postgres://app:s3cretpw@db.example:5432/telltale"),
            ("TELLTALE_SECRET_KEY", key.as_str()),
        ];
        let config = Config::from_toml("", &env).unwrap();
        let shown = config.to_masked_toml();
        assert!(!shown.contains("s3cretpw"), "{shown}");
        assert!(!shown.contains(&key), "{shown}");
        assert!(
            shown.contains("postgres://app:****@db.example:5432/telltale"),
            "{shown}"
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cretpw") && !debug.contains("171, 171"),
            "{debug}"
        );
    }
}
