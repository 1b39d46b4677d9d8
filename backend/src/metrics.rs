//! Prometheus metrics. One registry per process, owned by `Metrics` (no globals, so tests can
//! build as many as they like). Counters update inline; gauges about shared state are computed
//! when `/metrics` is scraped.

use actix_web_prom::{PrometheusMetrics, PrometheusMetricsBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::storage::Db;

pub mod kept;
pub mod labels;
pub mod scrape;

/// Declares each instrument once: its field, type, name, help, labels and buckets. The struct
/// and the registration come from this one list.
macro_rules! instruments {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $make:expr ),* $(,)?) => {
        /// Counters, gauges and histograms updated inline by the code they measure.
        #[derive(Clone)]
        pub struct Instruments {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Instruments {
            fn register(registry: &Registry) -> prometheus::Result<Instruments> {
                $(
                    let $field: $ty = $make?;
                    registry.register(Box::new($field.clone()))?;
                )*
                Ok(Instruments { $($field),* })
            }
        }
    };
}

fn counter(name: &str, help: &str) -> prometheus::Result<IntCounter> {
    IntCounter::new(name, help)
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str) -> prometheus::Result<IntGauge> {
    IntGauge::new(name, help)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

fn histogram_vec(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
}

instruments! {
    /// 1 once the database is reachable and migrated.
    ready: IntGauge = gauge("telltale_ready", "1 when the database is reachable and migrated, else 0"),
    /// The notification channels that can deliver: `email` (an SMTP server and on-call
    /// addresses: 1, else 0) and `webhook` (alert webhook endpoints configured).
    notification_channels: IntGaugeVec = gauge_vec(
        "telltale_notification_channels",
        "Notification channels that can deliver alerts, by channel: email (1 with an SMTP server and on-call addresses, else 0) and webhook (endpoints configured)",
        &["channel"],
    ),
    /// Failed attempts to reach or migrate the database at start-up.
    startup_db_failures: IntCounter = counter(
        "telltale_startup_database_failures_total",
        "Failed attempts to reach or migrate the database while starting",
    ),
    /// Refused calls to `/api/cron/*` (missing or wrong secret), by endpoint.
    cron_refused: IntCounterVec = counter_vec(
        "telltale_cron_requests_refused_total",
        "Calls to the cron endpoints refused for a missing or wrong secret, by endpoint",
        &["endpoint"],
    ),
    /// Pool connections by state, set at scrape time.
    db_pool: IntGaugeVec = gauge_vec(
        "telltale_db_pool_connections",
        "Database pool connections by state (max, open, idle, in_use, waiting)",
        &["state"],
    ),
    /// Webhook requests by source and outcome (`accepted`, a rejection code, `unavailable`).
    webhook_requests: IntCounterVec = counter_vec(
        "telltale_webhook_requests_total",
        "Webhook requests by source and outcome",
        &["source", "outcome"],
    ),
    /// Webhook events by source and outcome (`stored`, `duplicate`).
    webhook_events: IntCounterVec = counter_vec(
        "telltale_webhook_events_total",
        "Webhook events by source and outcome (stored, duplicate)",
        &["source", "outcome"],
    ),
    /// Time from receiving a webhook body to its commit.
    webhook_ingest_seconds: Histogram = histogram(
        "telltale_webhook_ingest_duration_seconds",
        "Time to verify, parse and commit a webhook",
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
    ),
    /// Requests per group commit of webhook events.
    webhook_commit_requests: Histogram = histogram(
        "telltale_webhook_commit_requests",
        "Webhook requests stored per database commit (group commit)",
        &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
    ),
    /// Milesight SYSTEM_MESSAGES notices (MDP stopped pushing or hit its daily limit).
    milesight_system_notices: IntCounterVec = counter_vec(
        "telltale_milesight_system_notices_total",
        "Milesight SYSTEM_MESSAGES notices received, by source",
        &["source"],
    ),
    /// Scheduled job runs by job and outcome (success, failure).
    job_runs: IntCounterVec = counter_vec(
        "telltale_scheduler_job_runs_total",
        "Scheduled job runs by job and outcome",
        &["job", "outcome"],
    ),
    /// Unix time of each job's last run.
    job_last_run: IntGaugeVec = gauge_vec(
        "telltale_scheduler_job_last_run_timestamp_seconds",
        "Unix time of each job's last run",
        &["job"],
    ),
    /// Token refresh attempts by provider, trigger and outcome.
    token_refreshes: IntCounterVec = counter_vec(
        "telltale_token_refresh_attempts_total",
        "Token refresh attempts by provider, trigger and outcome (success, transient_failure, permanent_failure)",
        &["provider", "trigger", "outcome"],
    ),
    /// Duration of one refresh attempt, by provider.
    token_refresh_seconds: HistogramVec = histogram_vec(
        "telltale_token_refresh_duration_seconds",
        "Duration of one token refresh attempt",
        &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        &["provider"],
    ),
    /// Webhook requests accepted with a webhook's previous secret (during a rotation).
    webhook_previous_secret: IntCounterVec = counter_vec(
        "telltale_webhook_previous_secret_total",
        "Webhook requests accepted with the webhook's previous secret; zero for a while means the rotation is done",
        &["source"],
    ),
    /// 1 while an upstream's circuit is open (see `providers::circuit`).
    upstream_circuit_open: IntGaugeVec = gauge_vec(
        "telltale_upstream_circuit_open",
        "1 while calls to an upstream (provider kind and host) are paused after failures in a row",
        &["upstream"],
    ),
    /// Calls refused locally because the upstream's circuit was open.
    upstream_calls_refused: IntCounterVec = counter_vec(
        "telltale_upstream_calls_refused_total",
        "Calls not made because the upstream's circuit was open",
        &["upstream"],
    ),
    /// Platform polls by platform, endpoint and outcome.
    poll_runs: IntCounterVec = counter_vec(
        "telltale_poll_runs_total",
        "Platform polls by platform, endpoint and outcome (ok, failed, skipped)",
        &["platform", "endpoint", "outcome"],
    ),
    /// Items fetched by successful polls.
    poll_items: IntCounterVec = counter_vec(
        "telltale_poll_items_total",
        "Items fetched by successful polls",
        &["platform", "endpoint"],
    ),
    /// Duration of one poll (all its pages), by platform.
    poll_seconds: HistogramVec = histogram_vec(
        "telltale_poll_duration_seconds",
        "Duration of one poll, all pages",
        &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0],
        &["platform"],
    ),
    /// Emails delivered, by kind.
    emails_sent: IntCounterVec = counter_vec(
        "telltale_emails_sent_total",
        "Emails delivered to the SMTP server, by kind",
        &["kind"],
    ),
    /// Failed delivery attempts (each is retried later).
    email_failures: IntCounter = counter(
        "telltale_email_failures_total",
        "Failed email delivery attempts (each is retried later)",
    ),
    /// Alert webhook deliveries accepted, by endpoint name.
    alert_webhooks_sent: IntCounterVec = counter_vec(
        "telltale_alert_webhooks_sent_total",
        "Alert notifications delivered to a webhook endpoint (a 2xx answer), by endpoint",
        &["endpoint"],
    ),
    /// Failed alert webhook delivery attempts, by endpoint name.
    alert_webhook_failures: IntCounterVec = counter_vec(
        "telltale_alert_webhook_failures_total",
        "Failed alert webhook delivery attempts (each is retried later), by endpoint",
        &["endpoint"],
    ),
    /// Notifications given up undelivered after `alerts.notification_max_age_secs`, by channel.
    notifications_expired: IntCounterVec = counter_vec(
        "telltale_notifications_expired_total",
        "Notifications given up undelivered after alerts.notification_max_age_secs, by channel (email, webhook)",
        &["channel"],
    ),
}

/// The process's registry and everything in it. Field access reaches the instruments
/// (`metrics.webhook_requests`) through `Deref`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// actix middleware: `telltale_http_requests_total` and `telltale_http_requests_duration_seconds`
    /// by route pattern (never the raw path, so cardinality stays bounded), method and status.
    pub http: PrometheusMetrics,
    instruments: Instruments,
    /// Gauges read from the database at scrape time.
    db_gauges: scrape::DbGauges,
    /// Which webhook sources get series of their own (shared by intake and scrape).
    source_labels: std::sync::Arc<labels::SourceLabels>,
    /// One scrape at a time: each rebuilds the database gauges from scratch.
    scrape_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The fleet summary the device gauges and the overview read.
    pub fleet: kept::FleetCache,
    /// Webhook events per source over the last hour and day (the webhooks page and API).
    pub source_events: kept::Kept<crate::storage::deliveries::SourceEventCounts>,
}

impl std::ops::Deref for Metrics {
    type Target = Instruments;
    fn deref(&self) -> &Instruments {
        &self.instruments
    }
}

/// Each engine's share of the instruments: engines are handed what they update, never the
/// registry, so `metrics` depends on them and not the other way round.
impl Metrics {
    pub fn refresh(&self) -> crate::tokens::RefreshMetrics {
        crate::tokens::RefreshMetrics {
            attempts: self.token_refreshes.clone(),
            attempt_seconds: self.token_refresh_seconds.clone(),
            circuit_open: self.upstream_circuit_open.clone(),
            calls_refused: self.upstream_calls_refused.clone(),
        }
    }

    pub fn polling(&self) -> crate::polling::PollMetrics {
        crate::polling::PollMetrics {
            runs: self.poll_runs.clone(),
            items: self.poll_items.clone(),
            seconds: self.poll_seconds.clone(),
        }
    }

    pub fn intake(&self) -> crate::milesight::intake::IntakeMetrics {
        crate::milesight::intake::IntakeMetrics {
            requests: self.webhook_requests.clone(),
            events: self.webhook_events.clone(),
            ingest_seconds: self.webhook_ingest_seconds.clone(),
            commit_requests: self.webhook_commit_requests.clone(),
            previous_secret: self.webhook_previous_secret.clone(),
            system_notices: self.milesight_system_notices.clone(),
            sources: self.source_labels.clone(),
        }
    }

    pub fn jobs(&self) -> crate::scheduler::RunnerMetrics {
        crate::scheduler::RunnerMetrics {
            runs: self.job_runs.clone(),
            last_run: self.job_last_run.clone(),
        }
    }

    pub fn mailer(&self) -> crate::alerts::email::MailerMetrics {
        crate::alerts::email::MailerMetrics {
            sent: self.emails_sent.clone(),
            failures: self.email_failures.clone(),
            webhooks_sent: self.alert_webhooks_sent.clone(),
            webhook_failures: self.alert_webhook_failures.clone(),
            expired: self.notifications_expired.clone(),
        }
    }
}

impl Metrics {
    /// `per_device_series`: how many devices get their own last-seen series (0: none);
    /// `source_series`: how many webhook sources get their own series (the rest: `other`).
    pub fn new(
        db: &crate::storage::Db,
        per_device_series: usize,
        source_series: usize,
        fleet_summary_max_age: std::time::Duration,
    ) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http = PrometheusMetricsBuilder::new("telltale")
            .registry(registry.clone())
            .mask_unmatched_patterns("UNKNOWN")
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build HTTP metrics: {e}"))?;
        let build_info = gauge_vec(
            "telltale_build_info",
            "Always 1; labels carry the version and database backend",
            &["version", "backend"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), db.backend_name()])
            .set(1);
        registry.register(Box::new(build_info))?;
        let instruments = Instruments::register(&registry)?;
        let source_labels = std::sync::Arc::new(labels::SourceLabels::new(source_series));
        let db_gauges = scrape::DbGauges::new(&registry, per_device_series, source_labels.clone())?;
        registry.register(Box::new(db.pool_wait().clone()))?;
        Ok(Metrics {
            registry,
            http,
            instruments,
            db_gauges,
            source_labels,
            scrape_lock: Default::default(),
            fleet: kept::FleetCache::new(fleet_summary_max_age),
            source_events: kept::Kept::new(fleet_summary_max_age),
        })
    }

    /// The text exposition, with scrape-time gauges brought up to date first.
    pub async fn render(&self, db: &Db) -> String {
        let _one_at_a_time = self.scrape_lock.lock().await;
        self.db_gauges
            .update(db, &self.fleet, crate::storage::now())
            .await;
        let status = db.pool_status();
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.db_pool
            .with_label_values(&["max"])
            .set(as_i64(status.max_size));
        self.db_pool.with_label_values(&["open"]).set(as_i64(status.size));
        self.db_pool
            .with_label_values(&["idle"])
            .set(as_i64(status.available));
        self.db_pool
            .with_label_values(&["in_use"])
            .set(as_i64(status.size.saturating_sub(status.available)));
        self.db_pool
            .with_label_values(&["waiting"])
            .set(as_i64(status.waiting));

        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
