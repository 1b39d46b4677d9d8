//! The audit log: who changed what, when and from where. Rows are written by `crate::audit`
//! and never hold a secret; entries older than the retention go as new ones are written.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::audit_log;
use super::{Db, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UtcTime,
    pub actor: String,
    pub client: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub route: String,
    pub status: i32,
    /// JSON: `{"changes": [{"field", "before", "after"}], "note": "…"}`.
    pub details: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_log)]
pub struct NewAuditEntry {
    pub at: UtcTime,
    pub actor: String,
    pub client: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub route: String,
    pub status: i32,
    pub details: Option<String>,
}

/// Writes `entry` and deletes entries older than `keep_until` (an indexed range, small
/// because it runs at every write).
pub async fn record(db: &Db, entry: &NewAuditEntry, older_than: UtcTime) -> StorageResult<AuditEntry> {
    db_run!(db, |conn| {
        diesel::delete(audit_log::table.filter(audit_log::at.lt(older_than)))
            .execute(conn)
            .await?;
        Ok(diesel::insert_into(audit_log::table)
            .values(entry)
            .returning(AuditEntry::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// Newest first, `limit` entries with ids below `before` (keyset paging), optionally only one
/// actor's (their email, with or without a token).
pub async fn list(
    db: &Db,
    before: Option<i64>,
    actor: Option<&str>,
    limit: i64,
) -> StorageResult<Vec<AuditEntry>> {
    db_run!(db, |conn| {
        let mut query = audit_log::table
            .select(AuditEntry::as_select())
            .order(audit_log::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(audit_log::id.lt(before));
        }
        if let Some(actor) = actor {
            let with_token = format!("{actor} (token %");
            query = query.filter(audit_log::actor.eq(actor).or(audit_log::actor.like(with_token)));
        }
        Ok(query.load(conn).await?)
    })
}
