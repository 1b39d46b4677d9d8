//! Scheduled Milesight housekeeping: devices that went quiet, and retention of old events.

use std::sync::Arc;

use chrono::Duration;

use crate::app::AppState;
use crate::config::Config;
use crate::scheduler::JobSpec;
use crate::storage::{deliveries, devices, now};

pub const DEVICE_CHECK_JOB: &str = "milesight-device-check";
pub const RETENTION_JOB: &str = "milesight-retention";

pub fn job_specs(config: &Config) -> Vec<JobSpec> {
    vec![
        JobSpec {
            name: DEVICE_CHECK_JOB,
            schedule: config.milesight.device_check_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: true,
            run: Arc::new(|state| Box::pin(check_devices(state))),
        },
        JobSpec {
            name: RETENTION_JOB,
            schedule: config.milesight.retention_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: true,
            run: Arc::new(|state| Box::pin(apply_retention(state))),
        },
    ]
}

/// Marks devices offline that sent nothing within their expected interval × the factor.
pub async fn check_devices(state: AppState) -> anyhow::Result<String> {
    let config = &state.config.milesight;
    let went_offline = devices::mark_silent_offline(
        &state.db,
        now(),
        config.device_interval_secs.as_secs() as i64,
        i64::from(config.offline_factor),
    )
    .await?;
    for sn in &went_offline {
        tracing::warn!(device = %sn, "device went quiet; marked offline");
    }
    Ok(format!("{} device(s) marked offline", went_offline.len()))
}

/// Deletes events older than the retention period.
pub async fn apply_retention(state: AppState) -> anyhow::Result<String> {
    let days = i64::from(state.config.milesight.retention_days);
    let cutoff = (now().0 - Duration::days(days)).into();
    let deleted = deliveries::delete_events_before(&state.db, cutoff).await?;
    Ok(format!("{deleted} event(s) older than {days} days deleted"))
}
