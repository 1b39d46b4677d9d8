//! Prometheus metrics. One registry per process, owned by `Metrics` (no globals, so tests can
//! build as many as they like). Counters update inline; gauges about shared state are computed
//! when `/metrics` is scraped.

use actix_web_prom::{PrometheusMetrics, PrometheusMetricsBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::storage::Db;

pub mod scrape;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// actix middleware: `telltale_http_requests_total` and `telltale_http_requests_duration_seconds`
    /// by route pattern (never the raw path, so cardinality stays bounded), method and status.
    pub http: PrometheusMetrics,
    /// 1 once the database is reachable and migrated.
    pub ready: IntGauge,
    /// Failed attempts to reach or migrate the database at start-up.
    pub startup_db_failures: IntCounter,
    db_pool: IntGaugeVec,
    /// Webhook requests by source and outcome (`accepted`, a rejection code, `unavailable`).
    pub webhook_requests: IntCounterVec,
    /// Webhook events by source and outcome (`stored`, `duplicate`).
    pub webhook_events: IntCounterVec,
    /// Time from receiving a webhook body to its commit.
    pub webhook_ingest_seconds: Histogram,
    /// Requests per group commit of webhook events.
    pub webhook_commit_requests: Histogram,
    /// Milesight SYSTEM_MESSAGES notices (MDP stopped pushing or hit its daily limit).
    pub milesight_system_notices: IntCounterVec,
    /// Scheduled job runs by job and outcome (success, failure).
    pub job_runs: IntCounterVec,
    /// Unix time of each job's last run.
    pub job_last_run: IntGaugeVec,
    /// Token refresh attempts by provider, trigger and outcome.
    pub token_refreshes: IntCounterVec,
    pub poll_runs: IntCounterVec,
    pub emails_sent: IntCounterVec,
    pub email_failures: prometheus::IntCounter,
    pub poll_items: IntCounterVec,
    pub poll_seconds: prometheus::HistogramVec,
    pub token_refresh_seconds: prometheus::HistogramVec,
    /// Webhook requests accepted with a webhook's previous secret (during a rotation).
    pub webhook_previous_secret: IntCounterVec,
    /// 1 while an upstream's circuit is open (see `providers::circuit`).
    pub upstream_circuit_open: IntGaugeVec,
    /// Calls refused locally because the upstream's circuit was open.
    pub upstream_calls_refused: IntCounterVec,
    /// Gauges read from the database at scrape time.
    db_gauges: scrape::DbGauges,
    /// One scrape at a time: each rebuilds the database gauges from scratch.
    scrape_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Metrics {
    pub fn new(db: &crate::storage::Db) -> anyhow::Result<Metrics> {
        let backend = db.backend_name();
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

        let build_info = IntGaugeVec::new(
            Opts::new(
                "telltale_build_info",
                "Always 1; labels carry the version and database backend",
            ),
            &["version", "backend"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend])
            .set(1);
        registry.register(Box::new(build_info))?;

        let ready = IntGauge::new(
            "telltale_ready",
            "1 when the database is reachable and migrated, else 0",
        )?;
        registry.register(Box::new(ready.clone()))?;

        let startup_db_failures = IntCounter::new(
            "telltale_startup_database_failures_total",
            "Failed attempts to reach or migrate the database while starting",
        )?;
        registry.register(Box::new(startup_db_failures.clone()))?;

        let db_pool = IntGaugeVec::new(
            Opts::new(
                "telltale_db_pool_connections",
                "Database pool connections by state (max, open, idle, in_use, waiting)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(db_pool.clone()))?;

        let webhook_requests = IntCounterVec::new(
            Opts::new(
                "telltale_webhook_requests_total",
                "Webhook requests by source and outcome",
            ),
            &["source", "outcome"],
        )?;
        registry.register(Box::new(webhook_requests.clone()))?;
        let webhook_events = IntCounterVec::new(
            Opts::new(
                "telltale_webhook_events_total",
                "Webhook events by source and outcome (stored, duplicate)",
            ),
            &["source", "outcome"],
        )?;
        registry.register(Box::new(webhook_events.clone()))?;
        let webhook_ingest_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "telltale_webhook_ingest_duration_seconds",
                "Time to verify, parse and commit a webhook",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(webhook_ingest_seconds.clone()))?;
        let webhook_commit_requests = Histogram::with_opts(
            HistogramOpts::new(
                "telltale_webhook_commit_requests",
                "Webhook requests stored per database commit (group commit)",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
        )?;
        registry.register(Box::new(webhook_commit_requests.clone()))?;
        let milesight_system_notices = IntCounterVec::new(
            Opts::new(
                "telltale_milesight_system_notices_total",
                "Milesight SYSTEM_MESSAGES notices received, by source",
            ),
            &["source"],
        )?;
        registry.register(Box::new(milesight_system_notices.clone()))?;

        let job_runs = IntCounterVec::new(
            Opts::new(
                "telltale_scheduler_job_runs_total",
                "Scheduled job runs by job and outcome",
            ),
            &["job", "outcome"],
        )?;
        registry.register(Box::new(job_runs.clone()))?;
        let job_last_run = IntGaugeVec::new(
            Opts::new(
                "telltale_scheduler_job_last_run_timestamp_seconds",
                "Unix time of each job's last run",
            ),
            &["job"],
        )?;
        registry.register(Box::new(job_last_run.clone()))?;

        let token_refreshes = IntCounterVec::new(
            Opts::new(
                "telltale_token_refresh_attempts_total",
                "Token refresh attempts by provider, trigger and outcome (success, transient_failure, permanent_failure)",
            ),
            &["provider", "trigger", "outcome"],
        )?;
        registry.register(Box::new(token_refreshes.clone()))?;
        let token_refresh_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "telltale_token_refresh_duration_seconds",
                "Duration of one token refresh attempt",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["provider"],
        )?;
        registry.register(Box::new(token_refresh_seconds.clone()))?;
        let webhook_previous_secret = IntCounterVec::new(
            Opts::new(
                "telltale_webhook_previous_secret_total",
                "Webhook requests accepted with the webhook's previous secret; zero for a while means the rotation is done",
            ),
            &["source"],
        )?;
        registry.register(Box::new(webhook_previous_secret.clone()))?;
        let upstream_circuit_open = IntGaugeVec::new(
            Opts::new(
                "telltale_upstream_circuit_open",
                "1 while calls to an upstream (provider kind and host) are paused after failures in a row",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(upstream_circuit_open.clone()))?;
        let upstream_calls_refused = IntCounterVec::new(
            Opts::new(
                "telltale_upstream_calls_refused_total",
                "Calls not made because the upstream's circuit was open",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(upstream_calls_refused.clone()))?;

        let poll_runs = IntCounterVec::new(
            Opts::new(
                "telltale_poll_runs_total",
                "Platform polls by platform, endpoint and outcome (ok, failed, skipped)",
            ),
            &["platform", "endpoint", "outcome"],
        )?;
        registry.register(Box::new(poll_runs.clone()))?;
        let poll_items = IntCounterVec::new(
            Opts::new("telltale_poll_items_total", "Items fetched by successful polls"),
            &["platform", "endpoint"],
        )?;
        registry.register(Box::new(poll_items.clone()))?;
        let poll_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "telltale_poll_duration_seconds",
                "Duration of one poll, all pages",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]),
            &["platform"],
        )?;
        registry.register(Box::new(poll_seconds.clone()))?;

        let emails_sent = IntCounterVec::new(
            Opts::new(
                "telltale_emails_sent_total",
                "Emails delivered to the SMTP server, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(emails_sent.clone()))?;
        let email_failures = prometheus::IntCounter::new(
            "telltale_email_failures_total",
            "Failed email delivery attempts (each is retried later)",
        )?;
        registry.register(Box::new(email_failures.clone()))?;
        let db_gauges = scrape::DbGauges::new(&registry)?;
        registry.register(Box::new(db.pool_wait().clone()))?;

        Ok(Metrics {
            emails_sent,
            email_failures,
            db_gauges,
            scrape_lock: Default::default(),
            poll_runs,
            poll_items,
            poll_seconds,
            token_refreshes,
            token_refresh_seconds,
            upstream_circuit_open,
            upstream_calls_refused,
            webhook_previous_secret,
            job_runs,
            job_last_run,
            registry,
            http,
            ready,
            startup_db_failures,
            db_pool,
            webhook_requests,
            webhook_events,
            webhook_ingest_seconds,
            webhook_commit_requests,
            milesight_system_notices,
        })
    }

    /// The text exposition, with scrape-time gauges brought up to date first.
    pub async fn render(&self, db: &Db) -> String {
        let _one_at_a_time = self.scrape_lock.lock().await;
        self.db_gauges.update(db, crate::storage::now()).await;
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
