//! Prometheus metrics. One registry per process, owned by `Metrics` (no globals, so tests can
//! build as many as they like). Counters update inline; gauges about shared state are computed
//! when `/metrics` is scraped.

use actix_web_prom::{PrometheusMetrics, PrometheusMetricsBuilder};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::storage::Db;

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
}

impl Metrics {
    pub fn new(backend: &str) -> anyhow::Result<Metrics> {
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
                "Database pool connections by state (max, open, idle, waiting)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(db_pool.clone()))?;

        Ok(Metrics {
            registry,
            http,
            ready,
            startup_db_failures,
            db_pool,
        })
    }

    /// The text exposition, with scrape-time gauges brought up to date first.
    pub fn render(&self, db: &Db) -> String {
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
            .with_label_values(&["waiting"])
            .set(as_i64(status.waiting));

        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
