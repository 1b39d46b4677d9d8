//! The `[database]` settings: pool size, ingest writers and timeouts.

use std::time::Duration;

use super::{DatabaseTarget, PoolSettings};
use crate::config::setting::{count, derived_count, millis, secs, settings};

settings! {
    /// Connection pool and start-up settings.
    pub struct DatabaseConfig in "database" {
        /// Pool size.
        max_connections: usize = count(16, 1..=1000), env "TELLTALE_DB_MAX_CONNECTIONS";
        /// Webhook group-commit writers, each with one transaction in flight (see docs/benchmarks.md).
        ingest_writers: Option<usize> = derived_count(1..=64, "`4` on PostgreSQL, `1` on SQLite"), env "TELLTALE_DB_INGEST_WRITERS";
        /// Wait for a connection before answering 503.
        acquire_timeout_secs: Duration = secs(5, 1..=600), env "TELLTALE_DB_ACQUIRE_TIMEOUT_SECS";
        /// SQLite writer lock wait.
        sqlite_busy_timeout_ms: Duration = millis(5000, 1..=600_000), env "TELLTALE_SQLITE_BUSY_TIMEOUT_MS";
        /// Longest pause between start-up attempts to reach the database.
        startup_retry_max_delay_secs: Duration = secs(30, 1..=3600), env "TELLTALE_DB_STARTUP_RETRY_MAX_DELAY_SECS";
    }
}

impl DatabaseConfig {
    /// Fills in what depends on the backend: PostgreSQL commits several groups at once (its
    /// WAL flush serves them together); SQLite has one writer whatever we do.
    pub fn resolve(&mut self, target: &DatabaseTarget) {
        self.ingest_writers.get_or_insert(match target {
            DatabaseTarget::Postgres(_) => 4,
            DatabaseTarget::Sqlite(_) => 1,
        });
    }

    /// What the pool is built with.
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.max_connections,
            ingest_writers: self.ingest_writers.unwrap_or(1),
            acquire_timeout: self.acquire_timeout_secs,
            sqlite_busy_timeout: self.sqlite_busy_timeout_ms,
        }
    }
}
