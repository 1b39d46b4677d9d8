//! Storing webhook events: many requests' events in one transaction (group commit), with a
//! fixed number of statements per group however many events it holds.
//!
//! A group runs five kinds of statement, each multi-row: lock (or create) the devices the
//! events name and read their state; insert the events, skipping (source, event id) pairs
//! already stored; write each changed device's final state once; update each touched source.
//! What the events mean for their devices and sources is worked out in memory between the
//! statements (`plan_devices`, `plan_sources`), in the order the events arrived, so the result
//! is the same as storing the requests one by one.
//!
//! Rows are locked in a fixed order (devices by serial number, events by key, sources by id),
//! so concurrent groups, on one replica or several, wait for each other but never deadlock.

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::devices::{Device, NewDevice, learn_interval};
use super::schema::{devices, webhook_events, webhook_sources};
use super::webhooks::{IncomingEvent, InsertOutcome, SourceEffect};
use super::{Db, StorageError, StorageResult, UtcTime};

/// Rows per multi-row statement: well under SQLite's 32,766 and PostgreSQL's 65,535 bind
/// parameters at 15 columns a row.
const ROWS_PER_STATEMENT: usize = 1000;

/// One webhook request's events, as accepted from one source at one time.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    pub source_id: i64,
    pub received_at: UtcTime,
    pub events: &'a [IncomingEvent],
}

/// Stores one request's events in one transaction; see `ingest_group`.
pub async fn ingest(
    db: &Db,
    source_id: i64,
    received_at: UtcTime,
    events: &[IncomingEvent],
) -> StorageResult<InsertOutcome> {
    let request = IngestRequest {
        source_id,
        received_at,
        events,
    };
    Ok(ingest_group(db, &[request]).await?.pop().unwrap_or_default())
}

/// Stores several requests' events in one transaction, so all are durable before any sender
/// is answered: each event once per (source, event id) (a repeat, in this group or stored
/// before, is counted as a duplicate), each device's state and each source's health following
/// the new events. Returns one outcome per request, in order.
pub async fn ingest_group(db: &Db, requests: &[IngestRequest<'_>]) -> StorageResult<Vec<InsertOutcome>> {
    // The same statements on both backends; PostgreSQL gets them multi-row (a round trip
    // each), SQLite one row at a time (diesel has no multi-row upsert for SQLite, and its
    // statements are in-process calls, so only the commit is worth sharing).
    match db {
        Db::Postgres(pool) => {
            let touches = device_touches(requests);
            let firsts = first_occurrences(requests);
            let waited = super::POOL_WAIT.as_ref().map(|h| h.start_timer());
            let mut conn = pool.get().await?;
            drop(waited);
            conn.transaction::<_, StorageError, _>(
                async |tx| group_statements!(tx, requests, touches, firsts, in_chunks, .await),
            )
            .await
        }
        Db::Sqlite(pool) => {
            // The whole transaction in one blocking call: the async wrapper would hand each
            // statement to the blocking pool separately, two thread switches a statement.
            let owned: Vec<(i64, UtcTime, Vec<IncomingEvent>)> = requests
                .iter()
                .map(|r| (r.source_id, r.received_at, r.events.to_vec()))
                .collect();
            let waited = super::POOL_WAIT.as_ref().map(|h| h.start_timer());
            let mut conn = pool.get().await?;
            drop(waited);
            Ok(conn
                .spawn_blocking(move |conn| sqlite::ingest_group(conn, &owned))
                .await?)
        }
    }
}

mod sqlite {
    use std::collections::{HashMap, HashSet};

    use diesel::prelude::*;
    use diesel::upsert::excluded;

    use super::{
        Device, DeviceState, IncomingEvent, IngestRequest, InsertOutcome, UtcTime, device_touches, devices,
        first_occurrences, group_statements, new_events, outcomes, plan_devices, plan_sources, row_by_row,
        webhook_events, webhook_sources,
    };

    pub(super) fn ingest_group(
        conn: &mut diesel::SqliteConnection,
        owned: &[(i64, UtcTime, Vec<IncomingEvent>)],
    ) -> QueryResult<Vec<InsertOutcome>> {
        let requests: Vec<IngestRequest<'_>> = owned
            .iter()
            .map(|(source_id, received_at, events)| IngestRequest {
                source_id: *source_id,
                received_at: *received_at,
                events,
            })
            .collect();
        let requests = requests.as_slice();
        let touches = device_touches(requests);
        let firsts = first_occurrences(requests);
        conn.transaction::<_, diesel::result::Error, _>(|tx| {
            group_statements!(tx, requests, touches, firsts, row_by_row,)
        })
    }
}

/// Runs `$body` with `$values` bound to up to `ROWS_PER_STATEMENT` rows at a time.
macro_rules! in_chunks {
    ($rows:expr, |$values:ident| $body:block) => {
        for $values in $rows.chunks(ROWS_PER_STATEMENT) $body
    };
}

/// Runs `$body` with `$values` bound to one row at a time.
macro_rules! row_by_row {
    ($rows:expr, |$values:ident| $body:block) => {
        for $values in $rows.iter() $body
    };
}

/// The group's statements, written once for both backends; `$each` feeds them rows.
macro_rules! group_statements {
    ($tx:ident, $requests:ident, $touches:ident, $firsts:ident, $each:ident, $($await:tt)*) => {{
        let requests = $requests;
        let mut locked: HashMap<String, Device> = HashMap::with_capacity($touches.len());
        $each!($touches, |values| {
            let rows: Vec<Device> = diesel::insert_into(devices::table)
                .values(values)
                .on_conflict(devices::sn)
                .do_update()
                .set(devices::updated_at.eq(excluded(devices::updated_at)))
                .returning(Device::as_returning())
                .get_results($tx)
                 $($await)* ?;
            locked.extend(rows.into_iter().map(|d| (d.sn.clone(), d)));
        });

        let new_events = new_events(requests, &$firsts, &locked);
        let mut stored: HashSet<(i64, String)> = HashSet::with_capacity(new_events.len());
        $each!(new_events, |values| {
            let keys: Vec<(i64, String)> = diesel::insert_into(webhook_events::table)
                .values(values)
                .on_conflict((webhook_events::source_id, webhook_events::event_id))
                .do_nothing()
                .returning((webhook_events::source_id, webhook_events::event_id))
                .get_results($tx)
                 $($await)* ?;
            stored.extend(keys);
        });

        let is_new = |request: usize, index: usize| {
            let r = &requests[request];
            let event_id = r.events[index].event_id.as_str();
            $firsts.get(&(r.source_id, event_id)) == Some(&(request, index))
                && stored.contains(&(r.source_id, event_id.to_owned()))
        };
        let outcomes = outcomes(requests, &is_new);
        let changed = plan_devices(requests, &locked, &is_new);
        let states: Vec<DeviceState<'_>> = changed.iter().map(DeviceState::from).collect();
        $each!(states, |values| {
            diesel::insert_into(devices::table)
                .values(values)
                .on_conflict(devices::sn)
                .do_update()
                .set((
                    devices::source_id.eq(excluded(devices::source_id)),
                    devices::dev_eui.eq(excluded(devices::dev_eui)),
                    devices::mdp_device_id.eq(excluded(devices::mdp_device_id)),
                    devices::name.eq(excluded(devices::name)),
                    devices::model.eq(excluded(devices::model)),
                    devices::status.eq(excluded(devices::status)),
                    devices::last_seen_at.eq(excluded(devices::last_seen_at)),
                    devices::last_event_type.eq(excluded(devices::last_event_type)),
                    devices::last_payload.eq(excluded(devices::last_payload)),
                    devices::battery.eq(excluded(devices::battery)),
                    devices::expected_interval_secs.eq(excluded(devices::expected_interval_secs)),
                    devices::updated_at.eq(excluded(devices::updated_at)),
                ))
                .execute($tx)
                 $($await)* ?;
        });

        for (source_id, changes) in plan_sources(requests, &is_new) {
            diesel::update(webhook_sources::table.find(source_id))
                .set(&changes)
                .execute($tx)
                 $($await)* ?;
        }
        Ok(outcomes)
    }};
}
use {group_statements, in_chunks, row_by_row};

/// The event rows to insert: each distinct (source, event id) once, in key order, linked to
/// its device.
fn new_events<'a>(
    requests: &[IngestRequest<'a>],
    firsts: &BTreeMap<(i64, &'a str), (usize, usize)>,
    locked: &HashMap<String, Device>,
) -> Vec<NewEvent<'a>> {
    firsts
        .iter()
        .map(|(&(source_id, event_id), &(request, index))| {
            let event = &requests[request].events[index];
            NewEvent {
                source_id,
                event_id,
                event_type: &event.event_type,
                device_id: event
                    .device
                    .as_ref()
                    .and_then(|d| locked.get(&d.sn))
                    .map(|d| d.id),
                event_time: event.event_time,
                received_at: requests[request].received_at,
                payload: &event.payload,
            }
        })
        .collect()
}

/// The device rows to lock or create, one per serial number and sorted by it (the lock
/// order): identity from the newest profile in the group, touched at its newest request.
fn device_touches<'a>(requests: &[IngestRequest<'a>]) -> Vec<NewDevice<'a>> {
    let mut touches: BTreeMap<&'a str, NewDevice<'a>> = BTreeMap::new();
    for request in requests {
        for device in request.events.iter().filter_map(|e| e.device.as_ref()) {
            let touch = touches
                .entry(&device.sn)
                .or_insert_with(|| NewDevice::from_profile(&device.sn, &device.profile, request.received_at));
            let p = &device.profile;
            touch.source_id = p.source_id.or(touch.source_id);
            touch.dev_eui = p.dev_eui.as_deref().or(touch.dev_eui);
            touch.mdp_device_id = p.mdp_device_id.as_deref().or(touch.mdp_device_id);
            touch.name = p.name.as_deref().or(touch.name);
            touch.model = p.model.as_deref().or(touch.model);
            touch.created_at = touch.created_at.min(request.received_at);
            touch.updated_at = touch.updated_at.max(request.received_at);
        }
    }
    touches.into_values().collect()
}

/// Each distinct (source, event id) in the group with the request and position where it first
/// appears, sorted by key (the lock order). Later repeats are duplicates.
fn first_occurrences<'a>(requests: &[IngestRequest<'a>]) -> BTreeMap<(i64, &'a str), (usize, usize)> {
    let mut firsts = BTreeMap::new();
    for (r, request) in requests.iter().enumerate() {
        for (i, event) in request.events.iter().enumerate() {
            firsts
                .entry((request.source_id, event.event_id.as_str()))
                .or_insert((r, i));
        }
    }
    firsts
}

fn outcomes(requests: &[IngestRequest<'_>], is_new: &impl Fn(usize, usize) -> bool) -> Vec<InsertOutcome> {
    requests
        .iter()
        .enumerate()
        .map(|(r, request)| {
            let stored = (0..request.events.len()).filter(|&i| is_new(r, i)).count();
            InsertOutcome {
                stored,
                duplicates: request.events.len() - stored,
            }
        })
        .collect()
}

/// The final state of every device the group changes, starting from its locked row and
/// applying the group's events in arrival order: identity fields the profiles carry, and the
/// readings of new events not older than what the device last reported (learning the reporting
/// interval from the gaps). Devices left as they were are not returned.
fn plan_devices(
    requests: &[IngestRequest<'_>],
    locked: &HashMap<String, Device>,
    is_new: &impl Fn(usize, usize) -> bool,
) -> Vec<Device> {
    let mut next: BTreeMap<&str, Device> = BTreeMap::new();
    for (r, request) in requests.iter().enumerate() {
        for (i, event) in request.events.iter().enumerate() {
            let Some(incoming) = &event.device else { continue };
            let Some(row) = locked.get(&incoming.sn) else {
                continue;
            };
            let device = next.entry(incoming.sn.as_str()).or_insert_with(|| row.clone());
            let p = &incoming.profile;
            if p.source_id.is_some() {
                device.source_id = p.source_id;
            }
            for (field, value) in [
                (&mut device.dev_eui, &p.dev_eui),
                (&mut device.mdp_device_id, &p.mdp_device_id),
                (&mut device.name, &p.name),
                (&mut device.model, &p.model),
            ] {
                if value.is_some() {
                    field.clone_from(value);
                }
            }
            let Some(activity) = incoming.activity.as_ref().filter(|_| is_new(r, i)) else {
                continue;
            };
            if device
                .last_seen_at
                .is_some_and(|seen| activity.last_seen_at < seen)
            {
                continue;
            }
            if let Some(previous) = device.last_seen_at {
                let gap = (activity.last_seen_at.0 - previous.0).num_seconds();
                device.expected_interval_secs = learn_interval(device.expected_interval_secs, gap);
            }
            device.status.clone_from(&activity.status);
            device.last_seen_at = Some(activity.last_seen_at);
            if activity.last_event_type.is_some() {
                device.last_event_type.clone_from(&activity.last_event_type);
            }
            if activity.last_payload.is_some() {
                device.last_payload.clone_from(&activity.last_payload);
            }
            if activity.battery.is_some() {
                device.battery = activity.battery;
            }
        }
    }
    next.into_values()
        .filter(|device| locked.get(&device.sn) != Some(device))
        .collect()
}

/// A device's full state, written back by the multi-row upsert on `sn` (every row exists:
/// the group locked or created it).
#[derive(Insertable)]
#[diesel(table_name = devices, treat_none_as_default_value = false)]
struct DeviceState<'a> {
    sn: &'a str,
    source_id: Option<i64>,
    dev_eui: Option<&'a str>,
    mdp_device_id: Option<&'a str>,
    name: Option<&'a str>,
    model: Option<&'a str>,
    status: &'a str,
    last_seen_at: Option<UtcTime>,
    last_event_type: Option<&'a str>,
    last_payload: Option<&'a str>,
    battery: Option<i32>,
    expected_interval_secs: Option<i64>,
    created_at: UtcTime,
    updated_at: UtcTime,
}

impl<'a> From<&'a Device> for DeviceState<'a> {
    fn from(d: &'a Device) -> Self {
        DeviceState {
            sn: &d.sn,
            source_id: d.source_id,
            dev_eui: d.dev_eui.as_deref(),
            mdp_device_id: d.mdp_device_id.as_deref(),
            name: d.name.as_deref(),
            model: d.model.as_deref(),
            status: &d.status,
            last_seen_at: d.last_seen_at,
            last_event_type: d.last_event_type.as_deref(),
            last_payload: d.last_payload.as_deref(),
            battery: d.battery,
            expected_interval_secs: d.expected_interval_secs,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = webhook_events, treat_none_as_default_value = false)]
struct NewEvent<'a> {
    source_id: i64,
    event_id: &'a str,
    event_type: &'a str,
    device_id: Option<i64>,
    event_time: Option<UtcTime>,
    received_at: UtcTime,
    payload: &'a str,
}

/// What a group changes on one source; `None` leaves a column as it is.
#[derive(Debug, Default, PartialEq, AsChangeset)]
#[diesel(table_name = webhook_sources)]
struct SourceChanges {
    last_event_at: Option<UtcTime>,
    verified_at: Option<UtcTime>,
    last_system_notice: Option<String>,
    last_system_notice_at: Option<UtcTime>,
}

/// Per touched source, sorted by id (the lock order): the newest request that stored an event,
/// and what its new events said (a test delivery verifies it; a system notice is kept).
fn plan_sources(
    requests: &[IngestRequest<'_>],
    is_new: &impl Fn(usize, usize) -> bool,
) -> BTreeMap<i64, SourceChanges> {
    let mut sources: BTreeMap<i64, SourceChanges> = BTreeMap::new();
    for (r, request) in requests.iter().enumerate() {
        for (i, event) in request.events.iter().enumerate() {
            if !is_new(r, i) {
                continue;
            }
            let at = request.received_at;
            let changes = sources.entry(request.source_id).or_default();
            changes.last_event_at = Some(changes.last_event_at.map_or(at, |t| t.max(at)));
            match &event.effect {
                SourceEffect::None => {}
                SourceEffect::Verified => changes.verified_at = Some(at),
                SourceEffect::SystemNotice(notice) => {
                    changes.last_system_notice = Some(notice.clone());
                    changes.last_system_notice_at = Some(at);
                }
            }
        }
    }
    sources
}
