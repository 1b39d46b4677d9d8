//! Scheduled Milesight housekeeping: devices that went quiet, and retention of old events.
//! Plain functions of the database and the `[milesight]` section.

use std::sync::Arc;

use chrono::Duration;

use crate::config::Config;
use crate::milesight::settings::MilesightConfig;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::{Db, deliveries, devices, now};

pub const DEVICE_CHECK_JOB: &str = "milesight-device-check";
pub const RETENTION_JOB: &str = "milesight-retention";

/// The device check and the retention job, over the database and the `[milesight]` section.
pub fn job_specs(config: &Config, db: &Db) -> Vec<JobSpec> {
    let settings = Arc::new(config.milesight.clone());
    let with = |settings: &Arc<MilesightConfig>| (db.clone(), settings.clone());
    vec![
        JobSpec {
            name: DEVICE_CHECK_JOB,
            schedule: config.milesight.device_check_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: true,
            run: run_with(with(&settings), |(db, settings)| async move {
                check_devices(&db, &settings).await
            }),
        },
        JobSpec {
            name: RETENTION_JOB,
            schedule: config.milesight.retention_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: true,
            run: run_with(with(&settings), |(db, settings)| async move {
                apply_retention(&db, &settings).await
            }),
        },
    ]
}

/// Old events are deleted this many per statement.
const RETENTION_BATCH: i64 = 10_000;

/// Online devices are checked this many at a time.
pub const DEVICE_CHUNK: i64 = 1000;

/// Marks devices offline that sent nothing within their expected interval × the factor (the
/// section's offline policy, `milesight::offline`).
pub async fn check_devices(db: &Db, config: &MilesightConfig) -> anyhow::Result<String> {
    let went_offline = devices::mark_silent_offline(db, config.offline_policy(), now(), DEVICE_CHUNK).await?;
    for sn in &went_offline {
        tracing::warn!(device = %sn, "device went quiet; marked offline");
    }
    Ok(format!("{} device(s) marked offline", went_offline.len()))
}

/// Deletes events older than the retention period.
pub async fn apply_retention(db: &Db, config: &MilesightConfig) -> anyhow::Result<String> {
    let days = i64::from(config.retention_days);
    let cutoff = (now().0 - Duration::days(days)).into();
    let deleted = deliveries::delete_events_before(db, cutoff, RETENTION_BATCH).await?;
    Ok(format!("{deleted} event(s) older than {days} days deleted"))
}
