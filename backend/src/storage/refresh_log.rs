//! The token refresh log: one row per refresh attempt, successful or not.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::refresh_log;
use super::{Db, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = refresh_log)]
pub struct RefreshLogEntry {
    pub id: i64,
    pub connection_id: Option<i64>,
    pub provider: String,
    pub trigger: String,
    /// Who started it: `scheduler`, a staff user's email, `cli`, `cron_endpoint`.
    pub actor: Option<String>,
    pub dry_run: bool,
    pub success: bool,
    /// Already sanitised by the caller: never contains token text.
    pub error: Option<String>,
    pub old_expires_at: Option<UtcTime>,
    pub new_expires_at: Option<UtcTime>,
    pub duration_ms: i64,
    pub attempted_at: UtcTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = refresh_log)]
pub struct NewRefreshLogEntry {
    pub connection_id: Option<i64>,
    pub provider: String,
    pub trigger: String,
    /// Who started it: `scheduler`, a staff user's email, `cli`, `cron_endpoint`.
    pub actor: Option<String>,
    pub dry_run: bool,
    pub success: bool,
    pub error: Option<String>,
    pub old_expires_at: Option<UtcTime>,
    pub new_expires_at: Option<UtcTime>,
    pub duration_ms: i64,
    pub attempted_at: UtcTime,
}

pub async fn append(db: &Db, entry: &NewRefreshLogEntry) -> StorageResult<RefreshLogEntry> {
    db_run!(db, |conn| {
        Ok(diesel::insert_into(refresh_log::table)
            .values(entry)
            .returning(RefreshLogEntry::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// Newest first, optionally only one provider's attempts.
pub async fn recent(db: &Db, provider: Option<&str>, limit: i64) -> StorageResult<Vec<RefreshLogEntry>> {
    db_run!(db, |conn| {
        let mut query = refresh_log::table
            .select(RefreshLogEntry::as_select())
            .into_boxed();
        if let Some(provider) = provider {
            query = query.filter(refresh_log::provider.eq(provider));
        }
        Ok(query
            .order(refresh_log::id.desc())
            .limit(limit)
            .load(conn)
            .await?)
    })
}
