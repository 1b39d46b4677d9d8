//! Webhook sources, the events they delivered (each stored once) and rejected requests.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::{webhook_events, webhook_rejections, webhook_sources};
use super::{Db, StorageError, StorageResult, now, open_secret, reseal};
use crate::crypto::Crypto;
use crate::db_run;

pub const SECRET_COLUMN: &str = "webhook_sources.secret";

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = webhook_sources)]
pub struct WebhookSource {
    pub id: i64,
    pub name: String,
    pub webhook_uuid: Option<String>,
    /// Ciphertext; never serialised.
    #[serde(skip)]
    pub secret: Option<Vec<u8>>,
    pub period_secs: i64,
    pub grace_secs: i64,
    pub verified_at: Option<UtcTime>,
    pub last_event_at: Option<UtcTime>,
    pub last_system_notice: Option<String>,
    pub last_system_notice_at: Option<UtcTime>,
    pub created_at: UtcTime,
    pub updated_at: UtcTime,
}

#[derive(Insertable)]
#[diesel(table_name = webhook_sources)]
struct NewSource<'a> {
    name: &'a str,
    webhook_uuid: Option<&'a str>,
    secret: Option<Vec<u8>>,
    period_secs: i64,
    grace_secs: i64,
    created_at: UtcTime,
    updated_at: UtcTime,
}

/// How often a source is expected to deliver: STALE after `period + grace` without events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceTiming {
    pub period_secs: i64,
    pub grace_secs: i64,
}

impl Default for SourceTiming {
    fn default() -> Self {
        SourceTiming {
            period_secs: 900,
            grace_secs: 300,
        }
    }
}

/// Creates a source, or updates its webhook uuid and secret when it exists.
pub async fn upsert_source(
    db: &Db,
    crypto: &Crypto,
    name: &str,
    webhook_uuid: Option<&str>,
    secret: Option<&str>,
    timing: SourceTiming,
) -> StorageResult<WebhookSource> {
    let at = now();
    let new = NewSource {
        name,
        webhook_uuid,
        secret: secret.map(|s| crypto.encrypt_str(SECRET_COLUMN, s)),
        period_secs: timing.period_secs,
        grace_secs: timing.grace_secs,
        created_at: at,
        updated_at: at,
    };
    db_run!(db, |conn| {
        Ok(diesel::insert_into(webhook_sources::table)
            .values(&new)
            .on_conflict(webhook_sources::name)
            .do_update()
            .set((
                webhook_sources::webhook_uuid.eq(new.webhook_uuid),
                webhook_sources::secret.eq(&new.secret),
                webhook_sources::period_secs.eq(new.period_secs),
                webhook_sources::grace_secs.eq(new.grace_secs),
                webhook_sources::updated_at.eq(at),
            ))
            .returning(WebhookSource::as_returning())
            .get_result(conn)
            .await?)
    })
}

pub async fn source_by_name(db: &Db, name: &str) -> StorageResult<WebhookSource> {
    db_run!(db, |conn| {
        Ok(webhook_sources::table
            .filter(webhook_sources::name.eq(name))
            .select(WebhookSource::as_select())
            .first(conn)
            .await?)
    })
}

/// The source's webhook secret in plaintext, for signature checks only.
pub fn source_secret(crypto: &Crypto, source: &WebhookSource) -> StorageResult<Option<String>> {
    source
        .secret
        .as_deref()
        .map(|sealed| open_secret(crypto, SECRET_COLUMN, sealed))
        .transpose()
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = webhook_events)]
pub struct WebhookEvent {
    pub id: i64,
    pub source_id: i64,
    pub event_id: String,
    pub event_type: String,
    pub device_id: Option<i64>,
    pub event_time: Option<UtcTime>,
    pub received_at: UtcTime,
    pub payload: String,
}

/// The id of the named source, creating it (without secret) if it is new.
pub async fn ensure_source(db: &Db, name: &str, timing: SourceTiming) -> StorageResult<i64> {
    let at = now();
    let new = NewSource {
        name,
        webhook_uuid: None,
        secret: None,
        period_secs: timing.period_secs,
        grace_secs: timing.grace_secs,
        created_at: at,
        updated_at: at,
    };
    db_run!(db, |conn| {
        diesel::insert_into(webhook_sources::table)
            .values(&new)
            .on_conflict(webhook_sources::name)
            .do_nothing()
            .execute(conn)
            .await?;
        Ok(webhook_sources::table
            .filter(webhook_sources::name.eq(name))
            .select(webhook_sources::id)
            .first(conn)
            .await?)
    })
}

/// A source's newest events first.
pub async fn recent_events(db: &Db, source_id: i64, limit: i64) -> StorageResult<Vec<WebhookEvent>> {
    list_events(db, Some(source_id), None, limit).await
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = webhook_rejections)]
pub struct WebhookRejection {
    pub id: i64,
    pub source_name: Option<String>,
    pub reason: String,
    pub status: i32,
    pub remote_addr: Option<String>,
    pub headers: String,
    pub body_excerpt: String,
    pub body_size: i64,
    pub received_at: UtcTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = webhook_rejections)]
pub struct NewWebhookRejection {
    pub source_name: Option<String>,
    pub reason: String,
    pub status: i32,
    pub remote_addr: Option<String>,
    pub headers: String,
    pub body_excerpt: String,
    pub body_size: i64,
    pub received_at: UtcTime,
}

/// Records a rejected request and keeps only the newest `keep` rows, so a flood of bad
/// requests cannot fill the disk.
pub async fn record_rejection(db: &Db, rejection: &NewWebhookRejection, keep: i64) -> StorageResult<()> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            diesel::insert_into(webhook_rejections::table)
                .values(rejection)
                .execute(tx)
                .await?;
            let newest_kept: Option<i64> = webhook_rejections::table
                .select(webhook_rejections::id)
                .order(webhook_rejections::id.desc())
                .offset(keep.max(1) - 1)
                .first(tx)
                .await
                .optional()?;
            if let Some(cutoff) = newest_kept {
                diesel::delete(webhook_rejections::table.filter(webhook_rejections::id.lt(cutoff)))
                    .execute(tx)
                    .await?;
            }
            Ok(())
        })
        .await
    })
}

pub async fn recent_rejections(db: &Db, limit: i64) -> StorageResult<Vec<WebhookRejection>> {
    db_run!(db, |conn| {
        Ok(webhook_rejections::table
            .order(webhook_rejections::id.desc())
            .limit(limit)
            .select(WebhookRejection::as_select())
            .load(conn)
            .await?)
    })
}

/// Re-seals every webhook secret with the current key (after a key rotation).
pub async fn reencrypt_secrets(db: &Db, crypto: &Crypto) -> StorageResult<usize> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let rows: Vec<(i64, Option<Vec<u8>>)> = webhook_sources::table
                .select((webhook_sources::id, webhook_sources::secret))
                .load(tx)
                .await?;
            let mut changed = 0;
            for (id, sealed) in rows {
                if let Some(resealed) = reseal(crypto, SECRET_COLUMN, sealed.as_deref())? {
                    diesel::update(webhook_sources::table.find(id))
                        .set(webhook_sources::secret.eq(resealed))
                        .execute(tx)
                        .await?;
                    changed += 1;
                }
            }
            Ok(changed)
        })
        .await
    })
}

pub async fn list_sources(db: &Db) -> StorageResult<Vec<WebhookSource>> {
    db_run!(db, |conn| {
        Ok(webhook_sources::table
            .order(webhook_sources::name.asc())
            .select(WebhookSource::as_select())
            .load(conn)
            .await?)
    })
}

/// Events received per source over the hour and the day before `at`.
#[derive(Debug, Clone)]
pub struct SourceEventCounts {
    pub at: UtcTime,
    pub last_hour: HashMap<i64, i64>,
    pub last_day: HashMap<i64, i64>,
}

/// One grouped pass over the day's events (both windows counted in it, along the
/// `received_at` index): its cost follows the day's traffic, so callers keep the result for a
/// while (`metrics::kept`).
pub async fn source_event_counts(db: &Db, at: UtcTime) -> StorageResult<SourceEventCounts> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        source_id: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        last_hour: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        last_day: i64,
    }
    let (hour, day) = match db.pools {
        super::Pools::Postgres(_) => ("$1", "$2"),
        super::Pools::Sqlite(..) => ("?", "?"),
    };
    let sql = format!(
        "SELECT source_id, SUM(CASE WHEN received_at >= {hour} THEN 1 ELSE 0 END) AS last_hour, \
         COUNT(*) AS last_day FROM webhook_events WHERE received_at >= {day} GROUP BY source_id"
    );
    let since = |span: chrono::Duration| UtcTime::new(at.0 - span);
    let (hour_ago, day_ago) = (
        since(chrono::Duration::hours(1)),
        since(chrono::Duration::days(1)),
    );
    let rows: Vec<Row> = db_run!(db, |conn| {
        Ok::<_, StorageError>(
            diesel::sql_query(sql.as_str())
                .bind::<super::fields::UtcTimestamp, _>(hour_ago)
                .bind::<super::fields::UtcTimestamp, _>(day_ago)
                .load(conn)
                .await?,
        )
    })?;
    Ok(SourceEventCounts {
        at,
        last_hour: rows.iter().map(|r| (r.source_id, r.last_hour)).collect(),
        last_day: rows.iter().map(|r| (r.source_id, r.last_day)).collect(),
    })
}

/// Newest events first, optionally of one source and/or one device.
pub async fn list_events(
    db: &Db,
    source_id: Option<i64>,
    device_id: Option<i64>,
    limit: i64,
) -> StorageResult<Vec<WebhookEvent>> {
    db_run!(db, |conn| {
        let mut query = webhook_events::table
            .select(WebhookEvent::as_select())
            .into_boxed();
        if let Some(source_id) = source_id {
            query = query.filter(webhook_events::source_id.eq(source_id));
        }
        query = match device_id {
            // A device's newest by event time, read backwards along (device_id, event_time):
            // ordered by id, PostgreSQL may walk the whole table backwards looking for them.
            Some(device_id) => query
                .filter(webhook_events::device_id.eq(device_id))
                .order(webhook_events::event_time.desc()),
            None => query.order(webhook_events::id.desc()),
        };
        Ok(query.limit(limit).load(conn).await?)
    })
}

/// Deletes events received before `cutoff` (retention), `batch` rows per statement, so no one
/// statement holds its locks (or SQLite's single writer) for long however much has piled up,
/// and ingest goes on in between. Returns how many went.
pub async fn delete_events_before(db: &Db, cutoff: UtcTime, batch: i64) -> StorageResult<usize> {
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let deleted = db_run!(db, |conn| {
            let oldest: Vec<i64> = webhook_events::table
                .filter(webhook_events::received_at.lt(cutoff))
                .select(webhook_events::id)
                .limit(batch)
                .load(conn)
                .await?;
            Ok::<_, StorageError>(
                diesel::delete(webhook_events::table.filter(webhook_events::id.eq_any(oldest)))
                    .execute(conn)
                    .await?,
            )
        })?;
        total += deleted;
        if (deleted as i64) < batch {
            return Ok(total);
        }
    }
}
