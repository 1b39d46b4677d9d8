//! Storing webhook events: many requests' events in one transaction (group commit), with a
//! fixed number of statements per group however many events it holds.
//!
//! A group runs four kinds of statement: lock (or create) the devices the events name and
//! read their state; insert the events, skipping (source, event id) pairs already stored;
//! write each changed device's final state once; move each touched source's clock. On
//! PostgreSQL they go in two pipelined flights (two round trips a group); on SQLite they are
//! calls inside one job on the SQLite writer thread (`storage::SqliteWriter`). What the
//! events mean for their devices and sources is worked out in memory between the statements
//! (`plan_devices`, `plan_sources`), in the order the events arrived, so the result is the
//! same as storing the requests one by one. The statements themselves (`statements.rs`) have
//! fixed SQL, so each connection prepares them once.
//!
//! Rows are locked in a fixed order (devices by serial number, events by key, sources by id),
//! so concurrent groups, on one replica or several, wait for each other but never deadlock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;

mod statements;

use serde::Serialize;

use super::devices::{Device, DeviceActivity, DeviceProfile, NewDevice};
use super::schema::{devices, webhook_events, webhook_sources};
use super::{Db, Pools, StorageResult, UtcTime};
use crate::milesight::offline::{OfflinePolicy, learn_interval};

/// How far a source's `last_event_at` may lag its newest event. Every group from one source
/// would otherwise update the same row and wait for the previous group's commit to do it;
/// staleness is judged in minutes, so a second is far below what anyone can see.
const SOURCE_CLOCK_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// One webhook request's events, as accepted from one source at one time. The events are
/// shared, so group commit hands them to the SQLite writer's thread without copying them.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub source_id: i64,
    pub received_at: UtcTime,
    pub events: Arc<[IncomingEvent]>,
}

impl IngestRequest {
    pub fn new(
        source_id: i64,
        received_at: UtcTime,
        events: impl Into<Arc<[IncomingEvent]>>,
    ) -> IngestRequest {
        IngestRequest {
            source_id,
            received_at,
            events: events.into(),
        }
    }
}

/// An event to store, with what it says about its device and its source.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub event_id: String,
    pub event_type: String,
    pub event_time: Option<UtcTime>,
    /// The event as received (JSON).
    pub payload: String,
    pub device: Option<IncomingDevice>,
    pub effect: SourceEffect,
}

#[derive(Debug, Clone)]
pub struct IncomingDevice {
    pub sn: String,
    pub profile: DeviceProfile,
    /// Applied only when the event is new and not older than what the device last reported.
    pub activity: Option<DeviceActivity>,
}

/// What an event changes on its source besides `last_event_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEffect {
    None,
    /// A WEBHOOK_TEST arrived: the URL and secret work.
    Verified,
    /// A SYSTEM_MESSAGES notice (MDP stopped pushing or hit its daily limit), as JSON.
    SystemNotice(String),
}

/// What became of one request's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct InsertOutcome {
    pub stored: usize,
    pub duplicates: usize,
}

type PooledPg = deadpool::managed::Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// A pooled connection that may have a transaction open: dropped unreleased, it is taken out
/// of the pool and closed rather than handed to the next user mid-transaction.
struct OpenTransaction(Option<PooledPg>);

impl OpenTransaction {
    /// The transaction is over; the connection may go back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(PooledPg::take(conn));
        }
    }
}

/// Stores requests' events in one transaction, so all are durable before any sender is
/// answered: each event once per (source, event id) (a repeat, in this group or stored before,
/// is counted as a duplicate), each device's state and each source's health following the new
/// events, device deadlines by `policy`. Returns one outcome per request, in order. The one way
/// events are stored: group commit calls it with every request that queued meanwhile.
pub async fn ingest(
    db: &Db,
    policy: OfflinePolicy,
    requests: &[IngestRequest],
) -> StorageResult<Vec<InsertOutcome>> {
    match &db.pools {
        Pools::Postgres(pool) => ingest_group_postgres(db, pool, requests, policy).await,
        Pools::Sqlite(_, writer) => {
            let owned = requests.to_vec();
            // The whole transaction in one job on the writer thread and its own connection.
            writer
                .run(move |conn| {
                    // BEGIN IMMEDIATE: the write lock first (waiting on busy_timeout), so the
                    // reads that start the group can never meet a newer snapshot at the first
                    // write, which SQLite refuses without waiting.
                    conn.immediate_transaction::<_, diesel::result::Error, _>(|tx| {
                        sqlite::ingest_group(tx, &owned, policy)
                    })
                })
                .await
        }
    }
}

async fn ingest_group_postgres(
    db: &Db,
    pool: &Pool<AsyncPgConnection>,
    requests: &[IngestRequest],
    policy: OfflinePolicy,
) -> StorageResult<Vec<InsertOutcome>> {
    let waited = db.pool_wait.start_timer();
    let conn = pool.get().await?;
    drop(waited);
    // Until the group has committed or rolled back, the connection must not go back to the
    // pool with a transaction open: if this future is dropped midway, the guard closes the
    // connection instead (the server then rolls the transaction back).
    let guard = OpenTransaction(Some(conn));
    let Some(conn) = guard.0.as_ref() else {
        return Err(super::StorageError::Unavailable("no connection".into()));
    };
    match postgres::ingest_group(conn, requests, policy).await {
        Ok(outcomes) => {
            guard.release();
            Ok(outcomes)
        }
        Err(err) => {
            let mut c: &AsyncPgConnection = conn;
            if diesel_async::RunQueryDsl::execute(statements::Rollback, &mut c)
                .await
                .is_ok()
            {
                guard.release();
            }
            Err(err.into())
        }
    }
}

/// A group on PostgreSQL: a fixed number of statements, each taking all the group's rows as
/// column arrays (one statement prepared once per connection covers a group of any size), sent
/// in two pipelined flights: begin, lock the devices, read them, insert the events; then, once
/// the new events and device rows are known, write the devices, move the source clocks and
/// commit. Two round trips a group, however many requests and events it holds.
mod postgres {
    use std::collections::HashMap;

    use diesel::prelude::*;
    use diesel_async::{AsyncPgConnection, RunQueryDsl};
    use futures_util::future::{try_join, try_join_all, try_join4};

    use super::statements::{
        AdvanceSourceClock, Begin, Commit, InsertEvents, LockDevices, ReadDevices, WriteDevices,
    };
    use super::{
        Device, IngestRequest, InsertOutcome, OfflinePolicy, SOURCE_CLOCK_RESOLUTION, UtcTime,
        device_touches, first_occurrences, new_events, outcomes, plan_devices, plan_sources, stored_first,
        webhook_sources,
    };

    /// Runs the group inside a transaction it opens and commits itself. On an error the
    /// transaction may still be open: the caller rolls it back. Longer than most: it is one
    /// transaction's statements in the order the locks must be taken, each step's arrays
    /// borrowed by the next, on the hot path of every webhook.
    pub(super) async fn ingest_group(
        conn: &AsyncPgConnection,
        requests: &[IngestRequest],
        policy: OfflinePolicy,
    ) -> QueryResult<Vec<InsertOutcome>> {
        let touches = device_touches(requests);
        let firsts = first_occurrences(requests);
        let new_events = new_events(requests, &firsts, &HashMap::new());

        // Polled in order, so sent in order: the server runs them one after the other.
        let mut c = conn;
        let begin = Begin.execute(&mut c);
        let lock = async {
            let mut c = conn;
            if touches.is_empty() {
                Ok(0)
            } else {
                LockDevices::new(&touches).execute(&mut c).await
            }
        };
        let read = async {
            let mut c = conn;
            if touches.is_empty() {
                Ok(Vec::new())
            } else {
                ReadDevices::new(&touches).load::<Device>(&mut c).await
            }
        };
        let insert = async {
            let mut c = conn;
            if new_events.is_empty() {
                Ok(Vec::new())
            } else {
                InsertEvents::new(&new_events).load::<(i64, String)>(&mut c).await
            }
        };
        let (_, _, rows, stored) = try_join4(begin, lock, read, insert).await?;
        let mut locked: HashMap<String, Device> = rows.into_iter().map(|d| (d.sn.clone(), d)).collect();
        if touches.iter().any(|t| !locked.contains_key(t.sn)) {
            // The read overtook the insert of new devices: on a connection's first use of a
            // statement, diesel-async resolves custom types and prepares before sending, so
            // pipelined statements can reach the server out of order. Read again, now that the
            // insert has run (rare: once per statement and connection); without this a new
            // device's first reading would be stored but not applied to it.
            let mut c = conn;
            for device in ReadDevices::new(&touches).load::<Device>(&mut c).await? {
                locked.insert(device.sn.clone(), device);
            }
        }
        let stored: std::collections::HashSet<(i64, &str)> =
            stored.iter().map(|(source, id)| (*source, id.as_str())).collect();
        let is_new = |request: usize, index: usize| stored_first(requests, &firsts, &stored, request, index);

        let outcomes = outcomes(requests, &is_new);
        let changed = plan_devices(requests, &touches, &locked, &is_new, policy);
        let sources = plan_sources(requests, &is_new);
        let write = async {
            let mut c = conn;
            if changed.is_empty() {
                Ok(0)
            } else {
                WriteDevices::new(&changed).execute(&mut c).await
            }
        };
        let clocks = try_join_all(sources.iter().map(|(source_id, changes)| async move {
            let mut c = conn;
            match changes.last_event_only() {
                Some(at) => {
                    let behind = UtcTime(at.0 - SOURCE_CLOCK_RESOLUTION);
                    let clock = AdvanceSourceClock {
                        source_id,
                        at: &at,
                        behind: &behind,
                    };
                    clock.execute(&mut c).await
                }
                None => {
                    diesel::update(webhook_sources::table.find(*source_id))
                        .set(changes)
                        .execute(&mut c)
                        .await
                }
            }
        }));
        let mut c = conn;
        let commit = Commit.execute(&mut c);
        // A failed write makes the server turn the COMMIT into a rollback; its error is
        // returned here, so nothing is reported stored that was not.
        try_join(try_join(write, clocks), commit).await?;
        Ok(outcomes)
    }
}

/// A group on SQLite: the same steps a row at a time (in-process calls, each to a statement
/// prepared once per connection); only the commit is worth sharing.
mod sqlite {
    use std::collections::{HashMap, HashSet};

    use diesel::prelude::*;

    use super::statements::{AdvanceSourceClock, TouchDevice, WriteDevice};
    use super::{
        Device, IngestRequest, InsertOutcome, OfflinePolicy, SOURCE_CLOCK_RESOLUTION, UtcTime,
        device_touches, devices, first_occurrences, new_events, outcomes, plan_devices, plan_sources,
        stored_first, webhook_events, webhook_sources,
    };

    /// Runs the group in the writer's open transaction. Longer than most, as PostgreSQL's:
    /// one transaction's statements in order, each step's rows used by the next.
    pub(super) fn ingest_group(
        tx: &mut diesel::SqliteConnection,
        requests: &[IngestRequest],
        policy: OfflinePolicy,
    ) -> QueryResult<Vec<InsertOutcome>> {
        let touches = device_touches(requests);
        let firsts = first_occurrences(requests);
        let mut locked: HashMap<String, Device> = HashMap::with_capacity(touches.len());
        // The transaction holds the write lock from its start, so a read is as good as a
        // lock: a known device is read, not rewritten; only a new one is inserted.
        for touch in &touches {
            let known: Option<Device> = devices::table
                .filter(devices::sn.eq(touch.sn))
                .select(Device::as_select())
                .get_result(tx)
                .optional()?;
            let row = match known {
                Some(row) => row,
                None => TouchDevice::new(touch).get_result(tx)?,
            };
            locked.insert(row.sn.clone(), row);
        }

        let new_events = new_events(requests, &firsts, &locked);
        let mut stored: HashSet<(i64, &str)> = HashSet::with_capacity(new_events.len());
        for event in &new_events {
            let inserted = diesel::insert_into(webhook_events::table)
                .values(event)
                .on_conflict((webhook_events::source_id, webhook_events::event_id))
                .do_nothing()
                .execute(tx)?;
            if inserted == 1 {
                stored.insert((event.source_id, event.event_id));
            }
        }
        let is_new = |request: usize, index: usize| stored_first(requests, &firsts, &stored, request, index);

        let outcomes = outcomes(requests, &is_new);
        for device in &plan_devices(requests, &touches, &locked, &is_new, policy) {
            let Some(before) = locked.get(&device.sn) else {
                continue;
            };
            let identity = (
                &device.source_id,
                &device.dev_eui,
                &device.mdp_device_id,
                &device.name,
                &device.model,
            ) != (
                &before.source_id,
                &before.dev_eui,
                &before.mdp_device_id,
                &before.name,
                &before.model,
            );
            let status = device.status != before.status;
            let deadline = device.offline_after != before.offline_after;
            match (identity, status, deadline) {
                (true, _, _) => WriteDevice::<true, true, true>(device).execute(tx)?,
                (false, true, true) => WriteDevice::<false, true, true>(device).execute(tx)?,
                (false, true, false) => WriteDevice::<false, true, false>(device).execute(tx)?,
                (false, false, true) => WriteDevice::<false, false, true>(device).execute(tx)?,
                (false, false, false) => WriteDevice::<false, false, false>(device).execute(tx)?,
            };
        }
        for (source_id, changes) in plan_sources(requests, &is_new) {
            match changes.last_event_only() {
                Some(at) => {
                    let behind = UtcTime(at.0 - SOURCE_CLOCK_RESOLUTION);
                    AdvanceSourceClock {
                        source_id: &source_id,
                        at: &at,
                        behind: &behind,
                    }
                    .execute(tx)?;
                }
                None => {
                    diesel::update(webhook_sources::table.find(source_id))
                        .set(&changes)
                        .execute(tx)?;
                }
            }
        }
        Ok(outcomes)
    }
}

/// Whether event `index` of request `request` is the one copy of its (source, event id) that
/// this group stored: its first occurrence in the group, and not stored before.
fn stored_first(
    requests: &[IngestRequest],
    firsts: &BTreeMap<(i64, &str), (usize, usize)>,
    stored: &HashSet<(i64, &str)>,
    request: usize,
    index: usize,
) -> bool {
    let r = &requests[request];
    let event_id = r.events[index].event_id.as_str();
    firsts.get(&(r.source_id, event_id)) == Some(&(request, index))
        && stored.contains(&(r.source_id, event_id))
}

/// The event rows to insert: each distinct (source, event id) once, in key order, linked to
/// its device (by id where `locked` has it, and always by serial number).
fn new_events<'a>(
    requests: &'a [IngestRequest],
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
                device_sn: event.device.as_ref().map(|d| d.sn.as_str()),
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
fn device_touches<'a>(requests: &'a [IngestRequest]) -> Vec<NewDevice<'a>> {
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
fn first_occurrences(requests: &[IngestRequest]) -> BTreeMap<(i64, &str), (usize, usize)> {
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

fn outcomes(requests: &[IngestRequest], is_new: &impl Fn(usize, usize) -> bool) -> Vec<InsertOutcome> {
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
    requests: &[IngestRequest],
    touches: &[NewDevice<'_>],
    locked: &HashMap<String, Device>,
    is_new: &impl Fn(usize, usize) -> bool,
    policy: OfflinePolicy,
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
    for device in next.values_mut() {
        // Also for a device only its profile touched: one written before the deadline existed
        // gets it here.
        device.offline_after = policy.deadline(device.last_seen_at, device.expected_interval_secs);
    }
    next.into_values()
        .filter(|device| locked.get(&device.sn) != Some(device))
        .map(|mut device| {
            // Changed at the newest request that touched it (`device_touches` worked that out).
            let touch = touches.binary_search_by(|t| t.sn.cmp(device.sn.as_str()));
            if let Some(touch) = touch.ok().and_then(|i| touches.get(i)) {
                device.updated_at = device.updated_at.max(touch.updated_at);
            }
            device
        })
        .collect()
}

#[derive(Insertable)]
#[diesel(table_name = webhook_events, treat_none_as_default_value = false)]
struct NewEvent<'a> {
    source_id: i64,
    event_id: &'a str,
    event_type: &'a str,
    /// PostgreSQL links the event to its device by serial number in SQL (`InsertEvents`).
    #[diesel(skip_insertion)]
    device_sn: Option<&'a str>,
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

impl SourceChanges {
    /// The new `last_event_at` when that is all the group changes on the source.
    fn last_event_only(&self) -> Option<UtcTime> {
        match self {
            SourceChanges {
                last_event_at: Some(at),
                verified_at: None,
                last_system_notice: None,
                last_system_notice_at: None,
            } => Some(*at),
            _ => None,
        }
    }
}

/// Per touched source, sorted by id (the lock order): the newest request that stored an event,
/// and what its new events said (a test delivery verifies it; a system notice is kept).
fn plan_sources(
    requests: &[IngestRequest],
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
