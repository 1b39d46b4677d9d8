//! Device inventory sync: pages MDP's device list so devices that never pushed still appear,
//! and offline devices are known even when webhooks stop. Within the plan's daily budget.

use std::sync::Arc;

use chrono::TimeZone;

use super::client::{self, MdpDevice, MdpError};
use super::settings::MilesightConfig;
use super::token::{PROVIDER, TokenKeeper, Trigger};
use crate::config::Config;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::devices::{self, DeviceProfile, InventoryState};
use crate::storage::{Db, DeviceStatus, UtcTime, now, usage};

pub const INVENTORY_JOB: &str = "milesight-inventory";
/// A bound on pages per run, so a misbehaving server cannot keep the job going forever.
const MAX_PAGES: i64 = 10_000;

/// The inventory sync, when the OpenAPI is configured.
pub fn job_specs(
    config: &Config,
    db: &Db,
    http: &reqwest::Client,
    keeper: &Arc<TokenKeeper>,
) -> Vec<JobSpec> {
    // Always scheduled: the OpenAPI may be set up later in the web UI (without it, a run
    // says so and does nothing).
    vec![JobSpec {
        name: INVENTORY_JOB,
        schedule: config.milesight.inventory_schedule.clone(),
        timezone: config.scheduler.timezone,
        exclusive: true,
        run: run_with(
            (
                db.clone(),
                http.clone(),
                Arc::new(config.milesight.clone()),
                keeper.clone(),
            ),
            |(db, http, settings, keeper)| async move { sync(&db, &http, &settings, &keeper).await },
        ),
    }]
}

/// MDP's `connectStatus` in our terms: ONLINE is online; OFFLINE and DISCONNECT are offline.
fn status_of(connect_status: Option<&str>) -> Option<DeviceStatus> {
    match connect_status? {
        "ONLINE" => Some(DeviceStatus::Online),
        "OFFLINE" | "DISCONNECT" => Some(DeviceStatus::Offline),
        _ => None,
    }
}

fn to_update(device: &MdpDevice) -> (DeviceProfile, InventoryState) {
    let profile = DeviceProfile {
        source_id: None,
        dev_eui: device.dev_eui.clone(),
        mdp_device_id: device.device_id.clone(),
        name: device.name.clone(),
        model: device.model.clone(),
    };
    let state = InventoryState {
        status: status_of(device.connect_status.as_deref()),
        battery: device
            .electricity
            .filter(|e| (0.0..=100.0).contains(e))
            .map(|e| e.round() as i32),
        last_update: device
            .last_update_time
            .and_then(|ms| chrono::Utc.timestamp_millis_opt(ms).single())
            .map(UtcTime::new),
    };
    (profile, state)
}

/// One sync: every page, each device applied; stops early (successfully) when the daily
/// request budget is spent.
pub async fn sync(
    db: &Db,
    http: &reqwest::Client,
    config: &MilesightConfig,
    keeper: &TokenKeeper,
) -> anyhow::Result<String> {
    let Some((api, _)) = keeper.api().await? else {
        return Ok("OpenAPI not configured".into());
    };
    let (mut page, mut synced) = (1_i64, 0_usize);
    loop {
        if !usage::reserve(db, PROVIDER, now(), config.daily_request_budget).await? {
            tracing::warn!(
                budget = config.daily_request_budget,
                page,
                "Milesight daily request budget spent; inventory sync skipped until tomorrow (UTC)"
            );
            return Ok(format!(
                "{synced} device(s) synced; stopped: daily request budget spent"
            ));
        }
        let token = keeper.token().await?;
        let mut result =
            client::search_devices(http, &api.base_url, &token, page, config.inventory_page_size).await;
        if matches!(result, Err(MdpError::InvalidCredentials(_))) {
            // MDP no longer accepts the token (e.g. the secret was regenerated): one fresh
            // token, one retry.
            let fresh = keeper.refresh_now(Trigger::OnDemand).await?;
            result =
                client::search_devices(http, &api.base_url, &fresh, page, config.inventory_page_size).await;
        }
        let listing = result.map_err(|e| anyhow::anyhow!("device search page {page}: {e}"))?;
        let count = listing.content.len();
        for device in &listing.content {
            let Some(sn) = device.sn.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let (profile, inventory) = to_update(device);
            devices::apply_inventory(db, config.offline_policy(), sn, &profile, &inventory).await?;
            synced += 1;
        }
        let total = listing.total.unwrap_or(0);
        if count == 0 || page * config.inventory_page_size >= total || page >= MAX_PAGES {
            return Ok(format!("{synced} device(s) synced from {page} page(s)"));
        }
        page += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_status_maps_like_milesight_does() {
        assert_eq!(status_of(Some("ONLINE")), Some(DeviceStatus::Online));
        assert_eq!(status_of(Some("OFFLINE")), Some(DeviceStatus::Offline));
        assert_eq!(status_of(Some("DISCONNECT")), Some(DeviceStatus::Offline));
        assert_eq!(status_of(Some("SOMETHING")), None);
        assert_eq!(status_of(None), None);
    }
}
