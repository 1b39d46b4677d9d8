//! Column types whose SQL representation differs between PostgreSQL and SQLite.
//!
//! `schema.rs` is shared by both backends, so every type there must have a meaning on both.
//! Timestamps are the one real difference: `timestamptz` on PostgreSQL, text on SQLite.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Timestamptz, TimestamptzSqlite};
use diesel::sqlite::Sqlite;

/// A UTC instant: `timestamptz` on PostgreSQL; fixed-width UTC text on SQLite.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Debug, Clone, Copy, Default)]
#[diesel(postgres_type(name = "timestamptz"))]
#[diesel(sqlite_type(name = "Text"))]
pub struct UtcTimestamp;

/// SQLite compares timestamps as text, so the encoding must be fixed-width: always six
/// fractional digits and an explicit zero offset (which SQLite's date functions also read).
const SQLITE_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f+00:00";

/// A UTC instant as stored in a `UtcTimestamp` column. A newtype, because the orphan rule
/// forbids binding chrono's `DateTime` to a SQL type of ours; it derefs to `DateTime<Utc>`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(sql_type = UtcTimestamp)]
#[serde(transparent)]
pub struct UtcTime(pub DateTime<Utc>);

impl UtcTime {
    /// Truncated to microseconds, the precision both backends store, so a value read back
    /// compares equal to the value written.
    pub fn new(at: DateTime<Utc>) -> UtcTime {
        UtcTime(at.trunc_subsecs(6))
    }
}

impl From<DateTime<Utc>> for UtcTime {
    fn from(at: DateTime<Utc>) -> UtcTime {
        UtcTime::new(at)
    }
}

impl std::ops::Deref for UtcTime {
    type Target = DateTime<Utc>;
    fn deref(&self) -> &DateTime<Utc> {
        &self.0
    }
}

impl std::fmt::Display for UtcTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            self.0.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }
}

impl ToSql<UtcTimestamp, Pg> for UtcTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <DateTime<Utc> as ToSql<Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<UtcTimestamp, Pg> for UtcTime {
    fn from_sql(bytes: <Pg as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<Timestamptz, Pg>>::from_sql(bytes).map(UtcTime)
    }
}

impl ToSql<UtcTimestamp, Sqlite> for UtcTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.format(SQLITE_FORMAT).to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<UtcTimestamp, Sqlite> for UtcTime {
    fn from_sql(bytes: <Sqlite as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<TimestamptzSqlite, Sqlite>>::from_sql(bytes).map(UtcTime)
    }
}

/// The current time, as stored.
pub fn now() -> UtcTime {
    UtcTime::new(Utc::now())
}
