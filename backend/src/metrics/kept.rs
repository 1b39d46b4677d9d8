//! Summaries that cost one pass over a large table, kept in memory for a while: the fleet
//! summary behind `/metrics` and the overview (one pass over every device) and the per-source
//! event counts behind the webhooks page and API (one pass over the last day's events). Each is
//! read at most once per `milesight.fleet_summary_max_age_secs`, in the background, and scrapes
//! and pages read the copy in memory.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::storage::deliveries::{self, SourceEventCounts};
use crate::storage::devices::{self, FleetSummary};
use crate::storage::{Db, StorageResult, UtcTime, now};

/// A summary read from the database as of a moment.
pub trait Snapshot: Send + Sync + Sized + 'static {
    /// Names it in the log when a background read fails.
    const WHAT: &'static str;
    fn read(db: &Db, at: UtcTime) -> impl Future<Output = StorageResult<Self>> + Send;
    fn taken_at(&self) -> UtcTime;
}

impl Snapshot for FleetSummary {
    const WHAT: &'static str = "fleet summary";
    fn read(db: &Db, at: UtcTime) -> impl Future<Output = StorageResult<Self>> + Send {
        devices::fleet_summary(db, at)
    }
    fn taken_at(&self) -> UtcTime {
        self.at
    }
}

impl Snapshot for SourceEventCounts {
    const WHAT: &'static str = "webhook event counts";
    fn read(db: &Db, at: UtcTime) -> impl Future<Output = StorageResult<Self>> + Send {
        deliveries::source_event_counts(db, at)
    }
    fn taken_at(&self) -> UtcTime {
        self.at
    }
}

pub type FleetCache = Kept<FleetSummary>;

pub struct Kept<T> {
    max_age: Duration,
    current: Arc<std::sync::Mutex<Option<Arc<T>>>>,
    refreshing: Arc<AtomicBool>,
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Kept {
            max_age: self.max_age,
            current: self.current.clone(),
            refreshing: self.refreshing.clone(),
        }
    }
}

impl<T: Snapshot> Kept<T> {
    /// `max_age` zero reads the database on every call.
    pub fn new(max_age: Duration) -> Kept<T> {
        Kept {
            max_age,
            current: Default::default(),
            refreshing: Default::default(),
        }
    }

    /// The summary, never older than the max age, so the overview, Devices and `/metrics`
    /// agree within it after any ingest. Past three quarters of the max age the copy is still
    /// served while a new one is read in the background, so under steady use (scrapes, the pages' live
    /// refresh) nobody waits; a copy past the max age (or none) is read now.
    pub async fn get(&self, db: &Db) -> StorageResult<Arc<T>> {
        let cached = self.current.lock().map(|c| c.clone()).unwrap_or(None);
        if let Some(summary) = cached.filter(|_| !self.max_age.is_zero()) {
            let age = (now().0 - summary.taken_at().0).to_std().unwrap_or_default();
            if age <= self.max_age {
                if age > self.max_age * 3 / 4 {
                    self.refresh_in_background(db);
                }
                return Ok(summary);
            }
        }
        self.read(db).await
    }

    async fn read(&self, db: &Db) -> StorageResult<Arc<T>> {
        let summary = Arc::new(T::read(db, now()).await?);
        if let Ok(mut current) = self.current.lock() {
            *current = Some(summary.clone());
        }
        Ok(summary)
    }

    fn refresh_in_background(&self, db: &Db) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (kept, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            if let Err(e) = kept.read(&db).await {
                tracing::warn!(error = %e, what = T::WHAT, "cannot read it again; serving the previous copy");
            }
            kept.refreshing.store(false, Ordering::Release);
        });
    }
}
