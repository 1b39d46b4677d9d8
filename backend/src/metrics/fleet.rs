//! The fleet summary behind `/metrics` and the overview, kept for a while: reading it is one
//! pass over every device, so at a million devices it is computed at most once per
//! `milesight.fleet_summary_max_age_secs`, in the background, and scrapes and pages read the
//! copy in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::storage::devices::{self, FleetSummary};
use crate::storage::{Db, StorageResult, now};

/// A copy older than this many max ages is not served while a new one is read: the reader waits.
const STALE_LIMIT: u32 = 10;

#[derive(Clone)]
pub struct FleetCache {
    max_age: Duration,
    current: Arc<std::sync::Mutex<Option<Arc<FleetSummary>>>>,
    refreshing: Arc<AtomicBool>,
}

impl FleetCache {
    /// `max_age` zero reads the database on every call.
    pub fn new(max_age: Duration) -> FleetCache {
        FleetCache {
            max_age,
            current: Default::default(),
            refreshing: Default::default(),
        }
    }

    /// The summary: the copy in memory while it is younger than the max age; an older one
    /// (up to `STALE_LIMIT` max ages) is served while a new one is read in the background;
    /// none, or one older than that, is read now.
    pub async fn get(&self, db: &Db) -> StorageResult<Arc<FleetSummary>> {
        let cached = self.current.lock().map(|c| c.clone()).unwrap_or(None);
        if let Some(summary) = cached.filter(|_| !self.max_age.is_zero()) {
            let age = (now().0 - summary.at.0).to_std().unwrap_or_default();
            if age <= self.max_age {
                return Ok(summary);
            }
            if age <= self.max_age * STALE_LIMIT {
                self.refresh_in_background(db);
                return Ok(summary);
            }
        }
        self.read(db).await
    }

    async fn read(&self, db: &Db) -> StorageResult<Arc<FleetSummary>> {
        let summary = Arc::new(devices::fleet_summary(db, now()).await?);
        if let Ok(mut current) = self.current.lock() {
            *current = Some(summary.clone());
        }
        Ok(summary)
    }

    fn refresh_in_background(&self, db: &Db) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (cache, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            if let Err(e) = cache.read(&db).await {
                tracing::warn!(error = %e, "cannot read the fleet summary; serving the previous one");
            }
            cache.refreshing.store(false, Ordering::Release);
        });
    }
}
