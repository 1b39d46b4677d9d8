//! Devices: one row per Milesight device, keyed by serial number.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::{DeviceStatus, UtcTime};
use super::schema::devices;
use super::{Db, StorageResult, now};
use crate::db_run;
use crate::milesight::offline::OfflinePolicy;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = devices)]
pub struct Device {
    pub id: i64,
    pub source_id: Option<i64>,
    pub sn: String,
    pub dev_eui: Option<String>,
    pub mdp_device_id: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub status: DeviceStatus,
    pub last_seen_at: Option<UtcTime>,
    pub last_event_type: Option<String>,
    pub last_payload: Option<String>,
    pub battery: Option<i32>,
    pub expected_interval_secs: Option<i64>,
    /// When the device counts as offline if nothing more arrives (see `milesight::offline`).
    pub offline_after: Option<UtcTime>,
    pub created_at: UtcTime,
    pub updated_at: UtcTime,
}

/// Identity fields from a device profile; `None` leaves a stored value unchanged on update.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = devices)]
pub struct DeviceProfile {
    pub source_id: Option<i64>,
    pub dev_eui: Option<String>,
    pub mdp_device_id: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = devices)]
pub(crate) struct NewDevice<'a> {
    pub sn: &'a str,
    pub source_id: Option<i64>,
    pub dev_eui: Option<&'a str>,
    pub mdp_device_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: DeviceStatus,
    pub created_at: UtcTime,
    pub updated_at: UtcTime,
}

impl<'a> NewDevice<'a> {
    pub(crate) fn from_profile(sn: &'a str, profile: &'a DeviceProfile, at: UtcTime) -> NewDevice<'a> {
        NewDevice {
            sn,
            source_id: profile.source_id,
            dev_eui: profile.dev_eui.as_deref(),
            mdp_device_id: profile.mdp_device_id.as_deref(),
            name: profile.name.as_deref(),
            model: profile.model.as_deref(),
            status: DeviceStatus::Unknown,
            created_at: at,
            updated_at: at,
        }
    }
}

/// Inserts the device or updates the identity fields the profile carries; evaluates to the
/// stored row. A macro so the webhook path can run it inside its own transaction.
macro_rules! upsert_device {
    ($conn:expr, $sn:expr, $profile:expr, $at:expr) => {{
        let profile: &$crate::storage::devices::DeviceProfile = $profile;
        let at = $at;
        diesel::insert_into($crate::storage::schema::devices::table)
            .values($crate::storage::devices::NewDevice::from_profile(
                $sn, profile, at,
            ))
            .on_conflict($crate::storage::schema::devices::sn)
            .do_update()
            .set((profile, $crate::storage::schema::devices::updated_at.eq(at)))
            .returning($crate::storage::devices::Device::as_returning())
            .get_result::<$crate::storage::devices::Device>($conn)
            .await
    }};
}

/// What an uplink tells us about a device; written as one UPDATE.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = devices)]
pub struct DeviceActivity {
    pub status: DeviceStatus,
    pub last_seen_at: UtcTime,
    pub last_event_type: Option<String>,
    pub last_payload: Option<String>,
    pub battery: Option<i32>,
    /// Set by storage from the gap since the previous reading; leave `None`.
    pub expected_interval_secs: Option<i64>,
}

/// Creates the device, or updates its identity fields, and returns the stored row.
pub async fn upsert_by_sn(db: &Db, sn: &str, profile: &DeviceProfile) -> StorageResult<Device> {
    db_run!(db, |conn| Ok(upsert_device!(conn, sn, profile, now())?))
}

/// Applies one reading's activity to a device, its offline deadline by `policy`.
pub async fn record_activity(
    db: &Db,
    policy: OfflinePolicy,
    id: i64,
    activity: &DeviceActivity,
) -> StorageResult<Device> {
    db_run!(db, |conn| {
        conn.transaction::<_, super::StorageError, _>(async |tx| {
            let device: Device = diesel::update(devices::table.find(id))
                .set((activity, devices::updated_at.eq(now())))
                .returning(Device::as_returning())
                .get_result(tx)
                .await?;
            Ok(diesel::update(devices::table.find(id))
                .set(
                    devices::offline_after
                        .eq(policy.deadline(device.last_seen_at, device.expected_interval_secs)),
                )
                .returning(Device::as_returning())
                .get_result(tx)
                .await?)
        })
        .await
    })
}

pub async fn get(db: &Db, id: i64) -> StorageResult<Device> {
    db_run!(db, |conn| {
        Ok(devices::table
            .find(id)
            .select(Device::as_select())
            .first(conn)
            .await?)
    })
}

/// How people name each of these devices: its name, else its serial number (one indexed
/// read for a page's worth of ids).
pub async fn names(db: &Db, ids: &[i64]) -> StorageResult<std::collections::HashMap<i64, String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let ids = ids.to_vec();
    db_run!(db, |conn| {
        let rows: Vec<(i64, String, Option<String>)> = devices::table
            .filter(devices::id.eq_any(ids.clone()))
            .select((devices::id, devices::sn, devices::name))
            .load(conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, sn, name)| (id, name.filter(|n| !n.trim().is_empty()).unwrap_or(sn)))
            .collect())
    })
}

/// The ids of the devices with these serial numbers (those that exist), in one indexed read.
pub async fn ids_by_sn(db: &Db, serials: &[String]) -> StorageResult<std::collections::HashMap<String, i64>> {
    if serials.is_empty() {
        return Ok(Default::default());
    }
    let serials = serials.to_vec();
    db_run!(db, |conn| {
        let rows: Vec<(String, i64)> = devices::table
            .filter(devices::sn.eq_any(serials.clone()))
            .select((devices::sn, devices::id))
            .load(conn)
            .await?;
        Ok(rows.into_iter().collect())
    })
}

/// The device with serial number `sn`, if it exists.
pub async fn by_sn(db: &Db, sn: &str) -> StorageResult<Option<Device>> {
    db_run!(db, |conn| {
        Ok(devices::table
            .filter(devices::sn.eq(sn))
            .select(Device::as_select())
            .first(conn)
            .await
            .optional()?)
    })
}

/// What the metrics need of a device, without its payload.
#[derive(Debug, Clone, Queryable)]
pub struct DeviceHealth {
    pub sn: String,
    pub source_id: Option<i64>,
    pub model: Option<String>,
    pub status: DeviceStatus,
    pub last_seen_at: Option<UtcTime>,
}

/// The last-seen windows of the fleet summary, in seconds before its time; a device falls in
/// the first that holds its last reading.
pub const SEEN_WITHIN_SECS: [i64; 5] = [900, 3600, 21_600, 86_400, 604_800];

/// The devices of one source, model and status.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetGroup {
    pub source_id: Option<i64>,
    pub model: Option<String>,
    pub status: DeviceStatus,
    pub devices: i64,
    /// How many were last heard from within each of `SEEN_WITHIN_SECS` (cumulative), then ever.
    pub seen_within: [i64; SEEN_WITHIN_SECS.len() + 1],
}

/// The fleet as aggregates: what `/metrics` and the overview show of it, with memory and
/// series that follow sources and models, never devices.
#[derive(Debug, Clone)]
pub struct FleetSummary {
    pub at: UtcTime,
    pub groups: Vec<FleetGroup>,
    /// Per source (or none), the device heard from longest ago: (source, serial, last seen).
    pub oldest: Vec<(Option<i64>, String, UtcTime)>,
}

#[derive(QueryableByName)]
struct FleetRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    source_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    model: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: DeviceStatus,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    bucket: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    devices: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<super::fields::UtcTimestamp>)]
    oldest: Option<UtcTime>,
}

/// Reads the fleet summary as of `at` in one pass over the devices (grouped by source, model,
/// status and last-seen window), then one indexed lookup per source for its oldest device.
/// The pass grows with the fleet, so callers keep the result for a while (`metrics::Fleet`).
pub async fn fleet_summary(db: &Db, at: UtcTime) -> StorageResult<FleetSummary> {
    let windows: Vec<UtcTime> = SEEN_WITHIN_SECS
        .iter()
        .map(|secs| UtcTime::new(at.0 - chrono::TimeDelta::seconds(*secs)))
        .collect();
    let never = SEEN_WITHIN_SECS.len() + 1;
    let placeholder = |i: usize| match db.pools {
        super::Pools::Postgres(_) => format!("${}", i + 1),
        super::Pools::Sqlite(..) => "?".into(),
    };
    let mut bucket = format!("CASE WHEN last_seen_at IS NULL THEN {never}");
    for i in 0..windows.len() {
        bucket.push_str(&format!(" WHEN last_seen_at >= {} THEN {i}", placeholder(i)));
    }
    bucket.push_str(&format!(" ELSE {} END", windows.len()));
    let sql = format!(
        "SELECT source_id, model, status, {bucket} AS bucket, COUNT(*) AS devices, \
         MIN(last_seen_at) AS oldest FROM devices GROUP BY source_id, model, status, {bucket}"
    );
    let [w0, w1, w2, w3, w4] = [windows[0], windows[1], windows[2], windows[3], windows[4]];
    let rows: Vec<FleetRow> = db_run!(db, |conn| {
        Ok::<_, super::StorageError>(
            diesel::sql_query(sql.as_str())
                .bind::<super::fields::UtcTimestamp, _>(w0)
                .bind::<super::fields::UtcTimestamp, _>(w1)
                .bind::<super::fields::UtcTimestamp, _>(w2)
                .bind::<super::fields::UtcTimestamp, _>(w3)
                .bind::<super::fields::UtcTimestamp, _>(w4)
                .load(conn)
                .await?,
        )
    })?;
    let mut summary = FleetSummary {
        at,
        groups: Vec::new(),
        oldest: Vec::new(),
    };
    let oldest = add_rows(&mut summary, rows, never);
    for (source_id, seen) in oldest {
        let sn: Option<String> = db_run!(db, |conn| {
            let mut query = devices::table.filter(devices::last_seen_at.eq(seen)).into_boxed();
            query = match source_id {
                Some(id) => query.filter(devices::source_id.eq(id)),
                None => query.filter(devices::source_id.is_null()),
            };
            Ok::<_, super::StorageError>(query.select(devices::sn).first(conn).await.optional()?)
        })?;
        // A reading between the two reads moved it on; the next summary names the new oldest.
        if let Some(sn) = sn {
            summary.oldest.push((source_id, sn, seen));
        }
    }
    Ok(summary)
}

/// Adds the grouped rows to the summary's groups (one per source, model and status, with
/// cumulative seen-within counts); returns each source's oldest last-seen time.
fn add_rows(summary: &mut FleetSummary, rows: Vec<FleetRow>, never: usize) -> BTreeMap<Option<i64>, UtcTime> {
    let mut oldest: BTreeMap<Option<i64>, UtcTime> = BTreeMap::new();
    for row in rows {
        let known = summary
            .groups
            .iter()
            .position(|g| g.source_id == row.source_id && g.model == row.model && g.status == row.status);
        let index = known.unwrap_or_else(|| {
            summary.groups.push(FleetGroup {
                source_id: row.source_id,
                model: row.model.clone(),
                status: row.status,
                devices: 0,
                seen_within: Default::default(),
            });
            summary.groups.len() - 1
        });
        let group = &mut summary.groups[index];
        group.devices += row.devices;
        let bucket = usize::try_from(row.bucket).unwrap_or(never);
        // Cumulative: a device seen within 15 minutes was also seen within an hour, and ever.
        for within in group.seen_within.iter_mut().skip(bucket) {
            *within += row.devices;
        }
        if let Some(seen) = row.oldest {
            let entry = oldest.entry(row.source_id).or_insert(seen);
            *entry = (*entry).min(seen);
        }
    }
    oldest
}

/// The `limit` devices heard from longest ago (the opt-in per-device metrics).
pub async fn least_recently_seen(db: &Db, limit: i64) -> StorageResult<Vec<DeviceHealth>> {
    db_run!(db, |conn| {
        Ok(devices::table
            .filter(devices::last_seen_at.is_not_null())
            .order(devices::last_seen_at.asc())
            .limit(limit)
            .select(HEALTH_COLUMNS)
            .load(conn)
            .await?)
    })
}

/// The columns of `DeviceHealth`, in its order.
const HEALTH_COLUMNS: (
    devices::sn,
    devices::source_id,
    devices::model,
    devices::status,
    devices::last_seen_at,
) = (
    devices::sn,
    devices::source_id,
    devices::model,
    devices::status,
    devices::last_seen_at,
);

/// How many devices of each source are offline (`None`: devices that came without one), read
/// from the `(status, source_id, sn)` index: the cost follows the offline devices, not the fleet.
pub async fn offline_counts(db: &Db) -> StorageResult<Vec<(Option<i64>, i64)>> {
    db_run!(db, |conn| {
        Ok(devices::table
            .filter(devices::status.eq(DeviceStatus::Offline))
            .group_by(devices::source_id)
            .select((devices::source_id, diesel::dsl::count_star()))
            .order(devices::source_id.asc())
            .load(conn)
            .await?)
    })
}

/// The first `limit` offline devices of one source (`None`: those without one) by serial
/// number: a range read on the `(status, source_id, sn)` index.
pub async fn offline_of_source(db: &Db, source_id: Option<i64>, limit: i64) -> StorageResult<Vec<Device>> {
    db_run!(db, |conn| {
        let mut query = devices::table
            .filter(devices::status.eq(DeviceStatus::Offline))
            .into_boxed();
        query = match source_id {
            Some(id) => query.filter(devices::source_id.eq(id)),
            None => query.filter(devices::source_id.is_null()),
        };
        Ok(query
            .order(devices::sn.asc())
            .limit(limit)
            .select(Device::as_select())
            .load(conn)
            .await?)
    })
}

pub async fn list(db: &Db, limit: i64, offset: i64) -> StorageResult<Vec<Device>> {
    db_run!(db, |conn| {
        Ok(devices::table
            .order(devices::sn.asc())
            .limit(limit)
            .offset(offset)
            .select(Device::as_select())
            .load(conn)
            .await?)
    })
}

/// Filters for the device list; all optional.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    pub source_id: Option<i64>,
    /// Case-insensitive start of the serial number, devEUI or name (a range on each one's
    /// index, so it costs the same at any fleet size).
    pub search: Option<String>,
    /// Keyset cursor: only devices whose serial number sorts after this one (the page after a
    /// page that ended there), read along the serial number's unique index however deep.
    pub after_sn: Option<String>,
}

/// One page of devices (ordered by serial number) and the total matching the filter.
pub async fn search(
    db: &Db,
    filter: &DeviceFilter,
    limit: i64,
    offset: i64,
) -> StorageResult<(Vec<Device>, i64)> {
    // The values that start with `prefix` are those from `prefix` up to (not including)
    // `prefix` followed by the greatest character, in byte order: PostgreSQL compares in the
    // "C" collation, as its indexes are built (SQLite's default is already byte order).
    let range = filter.search.as_deref().map(|s| {
        // Lowercased as each backend's `lower()` does: SQLite's folds ASCII letters only.
        let low = match db.pools {
            super::Pools::Postgres(_) => s.to_lowercase(),
            super::Pools::Sqlite(..) => s.to_ascii_lowercase(),
        };
        let high = format!("{low}{}", char::MAX);
        (low, high)
    });
    let collate = match db.pools {
        super::Pools::Postgres(_) => " COLLATE \"C\"",
        super::Pools::Sqlite(..) => "",
    };
    let starts = |column: &str, op: &str| format!("lower({column}){collate} {op} ");
    macro_rules! filtered {
        () => {{
            let mut query = devices::table.into_boxed();
            if let Some(status) = &filter.status {
                query = query.filter(devices::status.eq(*status));
            }
            if let Some(source_id) = filter.source_id {
                query = query.filter(devices::source_id.eq(source_id));
            }
            if let Some((low, high)) = &range {
                query = query.filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>("((")
                        .sql(&starts("sn", ">="))
                        .bind::<diesel::sql_types::Text, _>(low.clone())
                        .sql(" AND ")
                        .sql(&starts("sn", "<"))
                        .bind::<diesel::sql_types::Text, _>(high.clone())
                        .sql(") OR (")
                        .sql(&starts("dev_eui", ">="))
                        .bind::<diesel::sql_types::Text, _>(low.clone())
                        .sql(" AND ")
                        .sql(&starts("dev_eui", "<"))
                        .bind::<diesel::sql_types::Text, _>(high.clone())
                        .sql(") OR (")
                        .sql(&starts("name", ">="))
                        .bind::<diesel::sql_types::Text, _>(low.clone())
                        .sql(" AND ")
                        .sql(&starts("name", "<"))
                        .bind::<diesel::sql_types::Text, _>(high.clone())
                        .sql("))"),
                );
            }
            query
        }};
    }
    db_run!(db, |conn| {
        let total: i64 = filtered!().count().get_result(conn).await?;
        let mut page = filtered!();
        if let Some(after) = &filter.after_sn {
            page = page.filter(devices::sn.gt(after.clone()));
        }
        let page = page
            .order(devices::sn.asc())
            .limit(limit)
            .offset(offset)
            .select(Device::as_select())
            .load(conn)
            .await?;
        Ok((page, total))
    })
}

/// Marks online devices offline whose deadline (`offline_after`) has passed by `at`: nothing
/// arrived within their expected interval (learned, else the policy's default) times the
/// policy's factor. Returns the serial numbers it changed, once each.
///
/// The candidates are read `chunk` at a time along the `(status, offline_after)` index, so the
/// cost follows the devices that went quiet, not the fleet. Each chunk is one compare-and-set
/// `UPDATE` that checks status and deadline again as it writes, so a reading that lands
/// meanwhile (and moves the deadline) wins, and of replicas racing each device changes once.
pub async fn mark_silent_offline(
    db: &Db,
    policy: OfflinePolicy,
    at: UtcTime,
    chunk: i64,
) -> StorageResult<Vec<String>> {
    let chunk = chunk.max(1);
    apply_offline_policy(db, policy, chunk).await?;
    let mut changed = Vec::new();
    loop {
        let overdue: Vec<i64> = db_run!(db, |conn| {
            Ok::<_, super::StorageError>(
                devices::table
                    .filter(devices::status.eq(DeviceStatus::Online))
                    .filter(devices::offline_after.le(at))
                    .order(devices::offline_after.asc())
                    .limit(chunk)
                    .select(devices::id)
                    .load(conn)
                    .await?,
            )
        })?;
        let full = overdue.len() as i64 == chunk;
        let before = changed.len();
        // One statement for the chunk, its conditions checked again row by row as it writes.
        let went_offline: Vec<String> = db_run!(db, |conn| {
            Ok::<_, super::StorageError>(
                diesel::update(
                    devices::table
                        .filter(devices::id.eq_any(&overdue))
                        .filter(devices::status.eq(DeviceStatus::Online))
                        .filter(devices::offline_after.le(at)),
                )
                .set((
                    devices::status.eq(DeviceStatus::Offline),
                    devices::updated_at.eq(at),
                ))
                .returning(devices::sn)
                .get_results(conn)
                .await?,
            )
        })?;
        changed.extend(went_offline);
        // The devices of a chunk left the online status or moved their deadline, so the next
        // read starts after them without a cursor. A full chunk in which every one moved its
        // deadline (readings racing the check) ends the run; the next run sees them.
        if !full || changed.len() == before {
            return Ok(changed);
        }
    }
}

const OFFLINE_POLICY_KEY: &str = "devices.offline_policy";

/// Makes every device's deadline follow the offline policy: a no-op while the
/// policy the deadlines were written with (remembered in `app_settings`) is the current one;
/// otherwise (a changed interval or factor, or the first start after the column was added)
/// every device heard from is rewritten, `chunk` at a time in id order.
pub async fn apply_offline_policy(db: &Db, policy: OfflinePolicy, chunk: i64) -> StorageResult<u64> {
    let fingerprint = policy.fingerprint();
    if super::app_settings::get(db, OFFLINE_POLICY_KEY).await?.as_deref() == Some(fingerprint.as_str()) {
        return Ok(0);
    }
    let mut rewritten = 0;
    let mut after = i64::MIN;
    loop {
        let page: Vec<(i64, Option<UtcTime>, Option<i64>)> = db_run!(db, |conn| {
            Ok::<_, super::StorageError>(
                devices::table
                    .filter(devices::id.gt(after))
                    .filter(devices::last_seen_at.is_not_null())
                    .order(devices::id.asc())
                    .limit(chunk)
                    .select((
                        devices::id,
                        devices::last_seen_at,
                        devices::expected_interval_secs,
                    ))
                    .load(conn)
                    .await?,
            )
        })?;
        let full = page.len() as i64 == chunk;
        after = page.last().map_or(after, |row| row.0);
        rewritten += db_run!(db, |conn| {
            conn.transaction::<_, super::StorageError, _>(async |tx| {
                let mut written = 0;
                for (id, seen, interval) in &page {
                    // Compare-and-set on the reading: a newer one wrote its own deadline.
                    written +=
                        diesel::update(devices::table.find(*id).filter(devices::last_seen_at.eq(*seen)))
                            .set(devices::offline_after.eq(policy.deadline(*seen, *interval)))
                            .execute(tx)
                            .await? as u64;
                }
                Ok(written)
            })
            .await
        })?;
        if !full {
            break;
        }
    }
    super::app_settings::put(db, OFFLINE_POLICY_KEY, &fingerprint).await?;
    tracing::info!(policy = %fingerprint, devices = rewritten, "device offline deadlines follow the offline policy");
    Ok(rewritten)
}

/// What MDP's device list says about a device's state.
#[derive(Debug, Clone)]
pub struct InventoryState {
    /// From MDP's `connectStatus`.
    pub status: Option<DeviceStatus>,
    pub battery: Option<i32>,
    /// MDP's `lastUpdateTime`: when the device last reported.
    pub last_update: Option<UtcTime>,
}

/// Applies one device from MDP's inventory: identity fields always; status, battery and last
/// seen unless a webhook reading newer than MDP's last update already says more.
pub async fn apply_inventory(
    db: &Db,
    policy: OfflinePolicy,
    sn: &str,
    profile: &DeviceProfile,
    state: &InventoryState,
) -> StorageResult<Device> {
    let at = now();
    db_run!(db, |conn| {
        conn.transaction::<_, super::StorageError, _>(async |tx| {
            let device = upsert_device!(tx, sn, profile, at)?;
            let ours_is_newer = match (device.last_seen_at, state.last_update) {
                (Some(seen), Some(update)) => seen > update,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if ours_is_newer {
                return Ok(device);
            }
            let status = state.status.unwrap_or(device.status);
            let last_seen = state.last_update.or(device.last_seen_at);
            let battery = state.battery.or(device.battery);
            let deadline = policy.deadline(last_seen, device.expected_interval_secs);
            Ok(diesel::update(devices::table.find(device.id))
                .set((
                    devices::status.eq(status),
                    devices::last_seen_at.eq(last_seen),
                    devices::offline_after.eq(deadline),
                    devices::battery.eq(battery),
                    devices::updated_at.eq(at),
                ))
                .returning(Device::as_returning())
                .get_result(tx)
                .await?)
        })
        .await
    })
}
