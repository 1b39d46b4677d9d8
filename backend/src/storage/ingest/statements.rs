//! The webhook path's statements, with SQL that never changes so that diesel prepares each
//! once per connection and reuses it.
//!
//! Diesel 2.3 never reuses a prepared `UPDATE`, `ON CONFLICT … DO UPDATE` or multi-row
//! `VALUES` statement (their SQL may vary with the changeset or the row count), so written
//! with its query builder every row cost SQLite a fresh parse and every statement cost
//! PostgreSQL a second round trip. PostgreSQL gets each column as one array, so one prepared
//! statement covers a group of any size; the arrays are unzipped in the select list
//! (`SELECT unnest($1), unnest($2), …`), which streams rows in array order, where `unnest` in
//! `FROM` would first copy them into a tuplestore. SQLite runs them a row at a time, in process.

use diesel::backend::Backend;
use diesel::expression::Expression;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, BigInt, HasSqlType, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::{QueryResult, Selectable};

use super::super::devices::{Device, NewDevice};
use super::super::fields::{UtcTime, UtcTimestamp};

/// A statement type whose SQL is the same for every value: diesel may cache it by type.
macro_rules! fixed_sql {
    ($statement:ident) => {
        impl QueryId for $statement<'_> {
            type QueryId = $statement<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
        impl<Conn> diesel::RunQueryDsl<Conn> for $statement<'_> {}
    };
    ($statement:ident returning $row:ty) => {
        fixed_sql!($statement);
        impl Query for $statement<'_> {
            type SqlType = $row;
        }
    };
}

type DeviceColumns<DB> = <Device as Selectable<DB>>::SelectExpression;
type DeviceRow = <DeviceColumns<Pg> as Expression>::SqlType;
type EventKey = (BigInt, Text);

const DEVICE_COLUMNS: &str =
    "sn, source_id, dev_eui, mdp_device_id, name, model, status, created_at, updated_at";

/// SQLite's device creation: insert the device (a concurrent creator's row is taken as it
/// stands, `updated_at` bumped) and return the row.
const TOUCH_DEVICE: &str = " ON CONFLICT (sn) DO UPDATE SET updated_at = excluded.updated_at RETURNING ";

/// Locks (or creates) many devices in one statement on PostgreSQL, without writing the rows
/// that exist: `DO UPDATE … WHERE false` locks every conflicting row but updates none, so a
/// device costs a row lock here and at most one new row version (its final state) per group.
/// `ReadDevices` then returns the rows; a later statement, so it sees the newest committed
/// versions of the rows this one waited for.
pub(super) struct LockDevices<'a> {
    sn: Vec<&'a str>,
    source_id: Vec<Option<i64>>,
    dev_eui: Vec<Option<&'a str>>,
    mdp_device_id: Vec<Option<&'a str>>,
    name: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    status: Vec<&'a str>,
    created_at: Vec<UtcTime>,
    updated_at: Vec<UtcTime>,
}
fixed_sql!(LockDevices);

impl<'a> LockDevices<'a> {
    /// `touches` sorted by serial number, the order rows are locked in.
    pub(super) fn new(touches: &[NewDevice<'a>]) -> Self {
        LockDevices {
            sn: touches.iter().map(|d| d.sn).collect(),
            source_id: touches.iter().map(|d| d.source_id).collect(),
            dev_eui: touches.iter().map(|d| d.dev_eui).collect(),
            mdp_device_id: touches.iter().map(|d| d.mdp_device_id).collect(),
            name: touches.iter().map(|d| d.name).collect(),
            model: touches.iter().map(|d| d.model).collect(),
            status: touches.iter().map(|d| d.status.as_str()).collect(),
            created_at: touches.iter().map(|d| d.created_at).collect(),
            updated_at: touches.iter().map(|d| d.updated_at).collect(),
        }
    }
}

impl QueryFragment<Pg> for LockDevices<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("INSERT INTO devices (");
        out.push_sql(DEVICE_COLUMNS);
        out.push_sql(") SELECT unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.sn)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<BigInt>>, _>(&self.source_id)?;
        for column in [&self.dev_eui, &self.mdp_device_id, &self.name, &self.model] {
            out.push_sql("), unnest(");
            out.push_bind_param::<Array<Nullable<Text>>, _>(column)?;
        }
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.status)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<UtcTimestamp>, _>(&self.created_at)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<UtcTimestamp>, _>(&self.updated_at)?;
        out.push_sql(") ON CONFLICT (sn) DO UPDATE SET updated_at = excluded.updated_at WHERE false");
        Ok(())
    }
}

/// The rows of the devices `LockDevices` locked, on PostgreSQL.
pub(super) struct ReadDevices<'a> {
    sn: Vec<&'a str>,
    columns: DeviceColumns<Pg>,
}
fixed_sql!(ReadDevices returning DeviceRow);

impl<'a> ReadDevices<'a> {
    pub(super) fn new(touches: &[NewDevice<'a>]) -> Self {
        ReadDevices {
            sn: touches.iter().map(|d| d.sn).collect(),
            columns: <Device as Selectable<Pg>>::construct_selection(),
        }
    }
}

impl QueryFragment<Pg> for ReadDevices<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // One index probe per serial number, whatever the planner thinks of the table's size
        // (a fresh table has no statistics, and a cached generic plan then scans it whole for
        // every group): the LIMIT keeps the lateral subquery from being flattened into a join.
        out.push_sql("SELECT ");
        self.columns.walk_ast(out.reborrow())?;
        out.push_sql(" FROM (SELECT unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.sn)?;
        out.push_sql(
            ") AS sn) AS wanted CROSS JOIN LATERAL \
             (SELECT * FROM devices WHERE devices.sn = wanted.sn LIMIT 1) AS devices",
        );
        Ok(())
    }
}

/// Transaction control as statements of their own, so they are prepared once and can be
/// pipelined with the group's other statements.
macro_rules! control_statement {
    ($statement:ident, $sql:literal) => {
        pub(super) struct $statement;
        impl QueryId for $statement {
            type QueryId = $statement;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
        impl<Conn> diesel::RunQueryDsl<Conn> for $statement {}
        impl QueryFragment<Pg> for $statement {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                out.push_sql($sql);
                Ok(())
            }
        }
    };
}
control_statement!(Begin, "BEGIN");
control_statement!(Commit, "COMMIT");
control_statement!(Rollback, "ROLLBACK");

/// Creates one device on SQLite (the group read it first and found none); returns its row.
pub(super) struct TouchDevice<'a> {
    device: &'a NewDevice<'a>,
    returning: DeviceColumns<Sqlite>,
}
fixed_sql!(TouchDevice returning DeviceRow);

impl<'a> TouchDevice<'a> {
    pub(super) fn new(device: &'a NewDevice<'a>) -> Self {
        TouchDevice {
            device,
            returning: <Device as Selectable<Sqlite>>::construct_selection(),
        }
    }
}

impl QueryFragment<Sqlite> for TouchDevice<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let d = self.device;
        out.push_sql("INSERT INTO devices (");
        out.push_sql(DEVICE_COLUMNS);
        out.push_sql(") VALUES (");
        out.push_bind_param::<Text, _>(&d.sn)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&d.source_id)?;
        for column in [&d.dev_eui, &d.mdp_device_id, &d.name, &d.model] {
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(column)?;
        }
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&d.status)?;
        out.push_sql(", ");
        out.push_bind_param::<UtcTimestamp, _>(&d.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<UtcTimestamp, _>(&d.updated_at)?;
        out.push_sql(")");
        out.push_sql(TOUCH_DEVICE);
        self.returning.walk_ast(out.reborrow())
    }
}

/// New events, one row per distinct (source, event id), each linked to its device by serial
/// number in SQL, so the insert need not wait for the device ids: it runs after `LockDevices`
/// in the same pipeline. The link is a subquery, one index probe an event (as a join the
/// planner hashed the whole devices table for every group). Returns the keys actually
/// inserted (a key already stored is skipped). Rows go in the given order, the lock order.
/// PostgreSQL only: SQLite's per-row insert is cached.
pub(super) struct InsertEvents<'a> {
    source_id: Vec<i64>,
    event_id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    device_sn: Vec<Option<&'a str>>,
    event_time: Vec<Option<UtcTime>>,
    received_at: Vec<UtcTime>,
    payload: Vec<&'a str>,
}
fixed_sql!(InsertEvents returning EventKey);

impl<'a> InsertEvents<'a> {
    pub(super) fn new(events: &[super::NewEvent<'a>]) -> Self {
        InsertEvents {
            source_id: events.iter().map(|e| e.source_id).collect(),
            event_id: events.iter().map(|e| e.event_id).collect(),
            event_type: events.iter().map(|e| e.event_type).collect(),
            device_sn: events.iter().map(|e| e.device_sn).collect(),
            event_time: events.iter().map(|e| e.event_time).collect(),
            received_at: events.iter().map(|e| e.received_at).collect(),
            payload: events.iter().map(|e| e.payload).collect(),
        }
    }
}

impl QueryFragment<Pg> for InsertEvents<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO webhook_events \
             (source_id, event_id, event_type, device_id, event_time, received_at, payload) \
             SELECT e.source_id, e.event_id, e.event_type, \
             (SELECT d.id FROM devices d WHERE d.sn = e.sn), e.event_time, e.received_at, e.payload \
             FROM (SELECT unnest(",
        );
        out.push_bind_param::<Array<BigInt>, _>(&self.source_id)?;
        out.push_sql(") AS source_id, unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.event_id)?;
        out.push_sql(") AS event_id, unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.event_type)?;
        out.push_sql(") AS event_type, unnest(");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.device_sn)?;
        out.push_sql(") AS sn, unnest(");
        out.push_bind_param::<Array<Nullable<UtcTimestamp>>, _>(&self.event_time)?;
        out.push_sql(") AS event_time, unnest(");
        out.push_bind_param::<Array<UtcTimestamp>, _>(&self.received_at)?;
        out.push_sql(") AS received_at, unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.payload)?;
        out.push_sql(
            ") AS payload) AS e \
             ON CONFLICT (source_id, event_id) DO NOTHING RETURNING source_id, event_id",
        );
        Ok(())
    }
}

/// The columns a device's state writes, after `id` (the row is locked and known).
const DEVICE_STATE: [&str; 13] = [
    "source_id",
    "dev_eui",
    "mdp_device_id",
    "name",
    "model",
    "status",
    "last_seen_at",
    "last_event_type",
    "last_payload",
    "battery",
    "expected_interval_secs",
    "offline_after",
    "updated_at",
];

/// Writes many devices' final state in one statement on PostgreSQL.
pub(super) struct WriteDevices<'a> {
    id: Vec<i64>,
    sn: Vec<&'a str>,
    created_at: Vec<UtcTime>,
    source_id: Vec<Option<i64>>,
    dev_eui: Vec<Option<&'a str>>,
    mdp_device_id: Vec<Option<&'a str>>,
    name: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    status: Vec<&'a str>,
    last_seen_at: Vec<Option<UtcTime>>,
    last_event_type: Vec<Option<&'a str>>,
    last_payload: Vec<Option<&'a str>>,
    battery: Vec<Option<i32>>,
    expected_interval_secs: Vec<Option<i64>>,
    offline_after: Vec<Option<UtcTime>>,
    updated_at: Vec<UtcTime>,
}
fixed_sql!(WriteDevices);

impl<'a> WriteDevices<'a> {
    pub(super) fn new(devices: &'a [Device]) -> Self {
        WriteDevices {
            id: devices.iter().map(|d| d.id).collect(),
            sn: devices.iter().map(|d| d.sn.as_str()).collect(),
            created_at: devices.iter().map(|d| d.created_at).collect(),
            source_id: devices.iter().map(|d| d.source_id).collect(),
            dev_eui: devices.iter().map(|d| d.dev_eui.as_deref()).collect(),
            mdp_device_id: devices.iter().map(|d| d.mdp_device_id.as_deref()).collect(),
            name: devices.iter().map(|d| d.name.as_deref()).collect(),
            model: devices.iter().map(|d| d.model.as_deref()).collect(),
            status: devices.iter().map(|d| d.status.as_str()).collect(),
            last_seen_at: devices.iter().map(|d| d.last_seen_at).collect(),
            last_event_type: devices.iter().map(|d| d.last_event_type.as_deref()).collect(),
            last_payload: devices.iter().map(|d| d.last_payload.as_deref()).collect(),
            battery: devices.iter().map(|d| d.battery).collect(),
            expected_interval_secs: devices.iter().map(|d| d.expected_interval_secs).collect(),
            offline_after: devices.iter().map(|d| d.offline_after).collect(),
            updated_at: devices.iter().map(|d| d.updated_at).collect(),
        }
    }
}

impl QueryFragment<Pg> for WriteDevices<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Written as an upsert on the primary key, not `UPDATE … FROM unnest(…)`: every row
        // exists (locked by this group), and the conflict check finds each through the index,
        // where a join's plan could hash or scan the whole table.
        out.push_sql("INSERT INTO devices (id, sn, created_at, ");
        out.push_sql(&DEVICE_STATE.join(", "));
        out.push_sql(") SELECT unnest(");
        out.push_bind_param::<Array<BigInt>, _>(&self.id)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.sn)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<UtcTimestamp>, _>(&self.created_at)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<BigInt>>, _>(&self.source_id)?;
        for column in [&self.dev_eui, &self.mdp_device_id, &self.name, &self.model] {
            out.push_sql("), unnest(");
            out.push_bind_param::<Array<Nullable<Text>>, _>(column)?;
        }
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.status)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<UtcTimestamp>>, _>(&self.last_seen_at)?;
        for column in [&self.last_event_type, &self.last_payload] {
            out.push_sql("), unnest(");
            out.push_bind_param::<Array<Nullable<Text>>, _>(column)?;
        }
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<Integer>>, _>(&self.battery)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<BigInt>>, _>(&self.expected_interval_secs)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<Nullable<UtcTimestamp>>, _>(&self.offline_after)?;
        out.push_sql("), unnest(");
        out.push_bind_param::<Array<UtcTimestamp>, _>(&self.updated_at)?;
        out.push_sql(") ON CONFLICT (id) DO UPDATE SET ");
        for (i, column) in DEVICE_STATE.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql(column);
            out.push_sql(" = excluded.");
            out.push_sql(column);
        }
        Ok(())
    }
}

/// Writes one device's final state on SQLite. SQLite rewrites every index on a column named in
/// the `SET` list, whether or not its value changed, and `devices` has eight: so the write
/// names only what changed since the row was read. `IDENTITY`: the profile fields (serial
/// number search, name, EUI and source indexes; everything else is then written too);
/// `STATUS`: the status (in two indexes); `DEADLINE`: `offline_after` (its index). A reading
/// that leaves the deadline where it was touches no index. Each combination is its own
/// statement with fixed SQL, prepared once per connection.
pub(super) struct WriteDevice<'a, const IDENTITY: bool, const STATUS: bool, const DEADLINE: bool>(
    pub &'a Device,
);

impl<const I: bool, const S: bool, const D: bool> QueryId for WriteDevice<'_, I, S, D> {
    type QueryId = WriteDevice<'static, I, S, D>;
    const HAS_STATIC_QUERY_ID: bool = true;
}
impl<Conn, const I: bool, const S: bool, const D: bool> diesel::RunQueryDsl<Conn>
    for WriteDevice<'_, I, S, D>
{
}

impl<const IDENTITY: bool, const STATUS: bool, const DEADLINE: bool> QueryFragment<Sqlite>
    for WriteDevice<'_, IDENTITY, STATUS, DEADLINE>
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let d = self.0;
        out.push_sql("UPDATE devices SET last_seen_at = ");
        out.push_bind_param::<Nullable<UtcTimestamp>, _>(&d.last_seen_at)?;
        out.push_sql(", last_event_type = ");
        out.push_bind_param::<Nullable<Text>, _>(&d.last_event_type)?;
        out.push_sql(", last_payload = ");
        out.push_bind_param::<Nullable<Text>, _>(&d.last_payload)?;
        out.push_sql(", battery = ");
        out.push_bind_param::<Nullable<Integer>, _>(&d.battery)?;
        out.push_sql(", expected_interval_secs = ");
        out.push_bind_param::<Nullable<BigInt>, _>(&d.expected_interval_secs)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<UtcTimestamp, _>(&d.updated_at)?;
        if DEADLINE || IDENTITY {
            out.push_sql(", offline_after = ");
            out.push_bind_param::<Nullable<UtcTimestamp>, _>(&d.offline_after)?;
        }
        if STATUS || IDENTITY {
            out.push_sql(", status = ");
            out.push_bind_param::<Text, _>(&d.status)?;
        }
        if IDENTITY {
            out.push_sql(", source_id = ");
            out.push_bind_param::<Nullable<BigInt>, _>(&d.source_id)?;
            for (column, value) in [
                ("dev_eui", &d.dev_eui),
                ("mdp_device_id", &d.mdp_device_id),
                ("name", &d.name),
                ("model", &d.model),
            ] {
                out.push_sql(", ");
                out.push_sql(column);
                out.push_sql(" = ");
                out.push_bind_param::<Nullable<Text>, _>(value)?;
            }
        }
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(&d.id)?;
        Ok(())
    }
}

/// Moves a source's `last_event_at` forward to `at`, unless it is already within
/// `resolution` of it: then the row is neither written nor locked.
pub(super) struct AdvanceSourceClock<'a> {
    pub source_id: &'a i64,
    pub at: &'a UtcTime,
    pub behind: &'a UtcTime,
}
fixed_sql!(AdvanceSourceClock);

impl<DB> QueryFragment<DB> for AdvanceSourceClock<'_>
where
    DB: Backend + HasSqlType<UtcTimestamp> + HasSqlType<BigInt>,
    UtcTime: ToSql<UtcTimestamp, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE webhook_sources SET last_event_at = ");
        out.push_bind_param::<UtcTimestamp, _>(self.at)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(self.source_id)?;
        out.push_sql(" AND (last_event_at IS NULL OR last_event_at <= ");
        out.push_bind_param::<UtcTimestamp, _>(self.behind)?;
        out.push_sql(")");
        Ok(())
    }
}
