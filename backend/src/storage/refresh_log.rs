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

/// Filters for the refresh log; all optional.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub provider: Option<String>,
    pub success: Option<bool>,
    pub connection_id: Option<i64>,
    pub since: Option<UtcTime>,
}

/// Newest first.
pub async fn query(db: &Db, filter: &LogFilter, limit: i64) -> StorageResult<Vec<RefreshLogEntry>> {
    db_run!(db, |conn| {
        let mut query = refresh_log::table
            .select(RefreshLogEntry::as_select())
            .into_boxed();
        if let Some(provider) = &filter.provider {
            query = query.filter(refresh_log::provider.eq(provider.clone()));
        }
        if let Some(success) = filter.success {
            query = query.filter(refresh_log::success.eq(success));
        }
        if let Some(id) = filter.connection_id {
            query = query.filter(refresh_log::connection_id.eq(id));
        }
        if let Some(since) = filter.since {
            query = query.filter(refresh_log::attempted_at.ge(since));
        }
        Ok(query
            .order(refresh_log::id.desc())
            .limit(limit)
            .load(conn)
            .await?)
    })
}

/// Attempts since `since`, counted by provider, trigger and success (dry runs left out).
pub async fn counts_since(db: &Db, since: UtcTime) -> StorageResult<Vec<(String, String, bool, i64)>> {
    db_run!(db, |conn| {
        Ok(refresh_log::table
            .filter(refresh_log::attempted_at.ge(since))
            .filter(refresh_log::dry_run.eq(false))
            .group_by((refresh_log::provider, refresh_log::trigger, refresh_log::success))
            .select((
                refresh_log::provider,
                refresh_log::trigger,
                refresh_log::success,
                diesel::dsl::count_star(),
            ))
            .load(conn)
            .await?)
    })
}
