//! Polling state: one row per (connection, endpoint) with its schedule, lease and last result;
//! one row per poll run; stored payloads with their content hash.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::{PollStatus, UtcTime, UtcTimestamp};
use super::schema::{connections, platform_data, poll_endpoint_state, poll_runs};
use super::{Db, StorageError, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = poll_endpoint_state)]
pub struct PollState {
    pub id: i64,
    pub connection_id: i64,
    pub endpoint: String,
    pub enabled: bool,
    /// This pair's own schedule (set through the API); otherwise config and catalogue decide.
    pub schedule: Option<String>,
    pub next_due_at: Option<UtcTime>,
    pub last_run_at: Option<UtcTime>,
    pub last_success_at: Option<UtcTime>,
    /// `ok`, `failed`, `needs_reauth`, `disabled`.
    pub last_status: Option<PollStatus>,
    pub consecutive_failures: i32,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_expires_at: Option<UtcTime>,
    pub last_error: Option<String>,
    pub last_items: Option<i64>,
    pub last_pages: Option<i32>,
    pub last_http_status: Option<i32>,
    #[serde(skip)]
    pub last_content_hash: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = poll_runs)]
pub struct PollRun {
    pub id: i64,
    pub connection_id: i64,
    pub endpoint: String,
    pub trigger: String,
    pub success: bool,
    pub items: i64,
    pub pages: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub started_at: UtcTime,
}

#[derive(Debug, Clone, Queryable, Selectable, PartialEq)]
#[diesel(table_name = platform_data)]
pub struct StoredPayload {
    pub id: i64,
    pub connection_id: i64,
    pub endpoint: String,
    pub item_count: i64,
    pub content_hash: String,
    pub payload: String,
    pub fetched_at: UtcTime,
}

/// Creates the state rows of pairs that have none yet (due at once), in one transaction.
pub async fn ensure_pairs(db: &Db, pairs: &[(i64, &str)]) -> StorageResult<()> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            for (id, endpoint) in pairs {
                diesel::insert_into(poll_endpoint_state::table)
                    .values((
                        poll_endpoint_state::connection_id.eq(*id),
                        poll_endpoint_state::endpoint.eq(*endpoint),
                    ))
                    .on_conflict((poll_endpoint_state::connection_id, poll_endpoint_state::endpoint))
                    .do_nothing()
                    .execute(tx)
                    .await?;
            }
            Ok(())
        })
        .await
    })
}

pub async fn list_states(db: &Db, connection_id: Option<i64>) -> StorageResult<Vec<PollState>> {
    db_run!(db, |conn| {
        let mut query = poll_endpoint_state::table
            .select(PollState::as_select())
            .into_boxed();
        if let Some(id) = connection_id {
            query = query.filter(poll_endpoint_state::connection_id.eq(id));
        }
        Ok(query
            .order((poll_endpoint_state::connection_id, poll_endpoint_state::endpoint))
            .load(conn)
            .await?)
    })
}

/// The poll alert's condition as a query: enabled pairs that failed at least `min_failures`
/// times in a row (one definition for the pairs and for the connections owning them).
#[diesel::dsl::auto_type]
pub(super) fn failing(min_failures: i32) -> _ {
    poll_endpoint_state::table
        .filter(poll_endpoint_state::enabled.eq(true))
        .filter(poll_endpoint_state::consecutive_failures.ge(min_failures))
}

/// The enabled pairs that failed at least `min_failures` times in a row: the only ones alert
/// evaluation needs.
pub async fn failing_states(db: &Db, min_failures: i32) -> StorageResult<Vec<PollState>> {
    db_run!(db, |conn| {
        Ok(failing(min_failures)
            .order((poll_endpoint_state::connection_id, poll_endpoint_state::endpoint))
            .select(PollState::as_select())
            .load(conn)
            .await?)
    })
}

pub async fn get_state(db: &Db, connection_id: i64, endpoint: &str) -> StorageResult<PollState> {
    db_run!(db, |conn| {
        poll_endpoint_state::table
            .filter(poll_endpoint_state::connection_id.eq(connection_id))
            .filter(poll_endpoint_state::endpoint.eq(endpoint))
            .select(PollState::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)
    })
}

/// Reserves a pair for `owner` until `until`: only when nobody else holds a live lease and,
/// with `due_at`, only when it is due then. So replicas never poll a pair twice in a period:
/// whoever finishes first moves `next_due_at` past the others' `due_at`.
pub async fn claim(
    db: &Db,
    id: i64,
    owner: &str,
    at: UtcTime,
    until: UtcTime,
    due_at: Option<UtcTime>,
) -> StorageResult<Option<PollState>> {
    // Without `due_at` the schedule is ignored: 9999-12-31 is after any due time (and, unlike
    // chrono's MAX_UTC, still sorts correctly as SQLite's fixed-width text).
    let due = due_at.unwrap_or_else(|| {
        UtcTime::new(chrono::DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default())
    });
    db_run!(db, |conn| {
        // One conditional UPDATE, so two processes racing for a pair cannot both win.
        Ok(diesel::update(poll_endpoint_state::table)
            .filter(poll_endpoint_state::id.eq(id))
            .filter(
                poll_endpoint_state::lease_expires_at
                    .is_null()
                    .or(poll_endpoint_state::lease_expires_at.lt(at))
                    .or(poll_endpoint_state::lease_owner.eq(owner)),
            )
            .filter(
                poll_endpoint_state::next_due_at
                    .is_null()
                    .or(poll_endpoint_state::next_due_at.le(due)),
            )
            .set((
                poll_endpoint_state::lease_owner.eq(owner),
                poll_endpoint_state::lease_expires_at.eq(until),
            ))
            .returning(PollState::as_returning())
            .get_result(conn)
            .await
            .optional()?)
    })
}

/// Extends `owner`'s lease on a pair to `until`; whether it still held it.
pub async fn renew(db: &Db, id: i64, owner: &str, until: UtcTime) -> StorageResult<bool> {
    db_run!(db, |conn| {
        Ok(diesel::update(
            poll_endpoint_state::table
                .filter(poll_endpoint_state::id.eq(id))
                .filter(poll_endpoint_state::lease_owner.eq(owner)),
        )
        .set(poll_endpoint_state::lease_expires_at.eq(until))
        .execute(conn)
        .await?
            == 1)
    })
}

/// Gives a lease back without recording a run (e.g. a dry run or a failure to start).
pub async fn release(db: &Db, id: i64, owner: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(poll_endpoint_state::table)
            .filter(poll_endpoint_state::id.eq(id))
            .filter(poll_endpoint_state::lease_owner.eq(owner))
            .set((
                poll_endpoint_state::lease_owner.eq(None::<String>),
                poll_endpoint_state::lease_expires_at.eq(None::<UtcTime>),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// What one poll found, to be written in one transaction.
#[derive(Debug, Clone)]
pub struct Finished {
    pub state_id: i64,
    /// The pair's hash when it was claimed (the lease keeps anyone else from changing it).
    pub last_content_hash: Option<String>,
    pub connection_id: i64,
    pub endpoint: String,
    pub trigger: String,
    /// `ok`, `failed`, `needs_reauth`, `disabled`.
    pub status: PollStatus,
    pub items: i64,
    pub pages: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub started_at: UtcTime,
    pub finished_at: UtcTime,
    pub next_due_at: Option<UtcTime>,
    /// The payload and its hash; stored only when the hash differs from the last stored one.
    pub payload: Option<(String, String)>,
    /// Whether to write a `poll_runs` row (skips are reported, not recorded as runs).
    pub record_run: bool,
}

/// Records a finished poll: the run, the pair's state (lease released, next due time), the
/// payload when new, and the connection's `last_sync_at`. Returns whether a payload was stored.
/// A failed poll touches neither the stored payloads nor the last content hash, so the last
/// good data stays.
///
/// Longer than 80 lines by design: its four statements are one transaction, and `db_run!`
/// instantiates the body once per backend's connection type, so a statement split into a
/// function of its own would have to be generic over both connections for a few lines each.
pub async fn finish(db: &Db, f: &Finished) -> StorageResult<bool> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            if f.record_run {
                diesel::insert_into(poll_runs::table)
                    .values((
                        poll_runs::connection_id.eq(f.connection_id),
                        poll_runs::endpoint.eq(&f.endpoint),
                        poll_runs::trigger.eq(&f.trigger),
                        poll_runs::success.eq(f.status == PollStatus::Ok),
                        poll_runs::items.eq(f.items),
                        poll_runs::pages.eq(f.pages),
                        poll_runs::http_status.eq(f.http_status),
                        poll_runs::error.eq(&f.error),
                        poll_runs::duration_ms.eq(f.duration_ms),
                        poll_runs::started_at.eq(f.started_at),
                    ))
                    .execute(tx)
                    .await?;
            }
            // A new payload is stored only when it differs from the last one stored.
            let new_payload = f
                .payload
                .as_ref()
                .filter(|(hash, _)| f.last_content_hash.as_deref() != Some(hash.as_str()));
            if let Some((hash, payload)) = new_payload {
                diesel::insert_into(platform_data::table)
                    .values((
                        platform_data::connection_id.eq(f.connection_id),
                        platform_data::endpoint.eq(&f.endpoint),
                        platform_data::item_count.eq(f.items),
                        platform_data::content_hash.eq(hash),
                        platform_data::payload.eq(payload),
                        platform_data::fetched_at.eq(f.finished_at),
                    ))
                    .execute(tx)
                    .await?;
            }
            let ok = f.status == PollStatus::Ok;
            let outcome = StateChangeset {
                next_due_at: f.next_due_at,
                last_run_at: f.started_at,
                last_status: f.status,
                last_error: f.error.as_deref(),
                last_http_status: f.http_status,
                lease_owner: None,
                lease_expires_at: None,
            };
            let target = poll_endpoint_state::table.find(f.state_id);
            if ok {
                diesel::update(target)
                    .set((
                        &outcome,
                        poll_endpoint_state::last_success_at.eq(f.finished_at),
                        poll_endpoint_state::consecutive_failures.eq(0),
                        poll_endpoint_state::last_items.eq(f.items),
                        poll_endpoint_state::last_pages.eq(f.pages),
                        poll_endpoint_state::last_content_hash
                            .eq(f.payload.as_ref().map(|(hash, _)| hash.as_str())),
                    ))
                    .execute(tx)
                    .await?;
                diesel::update(connections::table.find(f.connection_id))
                    .set(connections::last_sync_at.eq(f.finished_at))
                    .execute(tx)
                    .await?;
            } else {
                // Only a real failure counts towards the failures in a row; a skip does not.
                let failures = i32::from(f.status == PollStatus::Failed);
                diesel::update(target)
                    .set((
                        &outcome,
                        poll_endpoint_state::consecutive_failures
                            .eq(poll_endpoint_state::consecutive_failures + failures),
                    ))
                    .execute(tx)
                    .await?;
            }
            let stored = new_payload.is_some();
            Ok(stored)
        })
        .await
    })
}

/// The part of a pair's state every finished poll sets.
#[derive(AsChangeset)]
#[diesel(table_name = poll_endpoint_state, treat_none_as_null = true)]
struct StateChangeset<'a> {
    next_due_at: Option<UtcTime>,
    last_run_at: UtcTime,
    last_status: PollStatus,
    last_error: Option<&'a str>,
    last_http_status: Option<i32>,
    lease_owner: Option<&'a str>,
    lease_expires_at: Option<UtcTime>,
}

/// Turns a pair on or off, or gives it its own schedule (`Some(None)` clears it).
pub async fn configure(
    db: &Db,
    connection_id: i64,
    endpoint: &str,
    enabled: Option<bool>,
    schedule: Option<Option<String>>,
) -> StorageResult<PollState> {
    db_run!(db, |conn| {
        let target = poll_endpoint_state::table
            .filter(poll_endpoint_state::connection_id.eq(connection_id))
            .filter(poll_endpoint_state::endpoint.eq(endpoint));
        if let Some(enabled) = enabled {
            diesel::update(target)
                .set(poll_endpoint_state::enabled.eq(enabled))
                .execute(conn)
                .await?;
        }
        if let Some(schedule) = schedule {
            // A new schedule takes effect from the next sweep.
            diesel::update(target)
                .set((
                    poll_endpoint_state::schedule.eq(schedule),
                    poll_endpoint_state::next_due_at.eq(None::<UtcTime>),
                ))
                .execute(conn)
                .await?;
        }
        target
            .select(PollState::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)
    })
}

/// Stored payloads, newest first.
pub async fn payloads(
    db: &Db,
    connection_id: Option<i64>,
    endpoint: Option<&str>,
    limit: i64,
) -> StorageResult<Vec<StoredPayload>> {
    db_run!(db, |conn| {
        let mut query = platform_data::table
            .select(StoredPayload::as_select())
            .into_boxed();
        if let Some(id) = connection_id {
            query = query.filter(platform_data::connection_id.eq(id));
        }
        if let Some(endpoint) = endpoint {
            query = query.filter(platform_data::endpoint.eq(endpoint.to_owned()));
        }
        Ok(query
            .order(platform_data::id.desc())
            .limit(limit)
            .load(conn)
            .await?)
    })
}

pub async fn runs(db: &Db, connection_id: i64, endpoint: &str, limit: i64) -> StorageResult<Vec<PollRun>> {
    db_run!(db, |conn| {
        Ok(poll_runs::table
            .filter(poll_runs::connection_id.eq(connection_id))
            .filter(poll_runs::endpoint.eq(endpoint))
            .select(PollRun::as_select())
            .order(poll_runs::id.desc())
            .limit(limit)
            .load(conn)
            .await?)
    })
}

/// Deletes payloads fetched before `cutoff` and, with `keep`, all but the newest `keep` of each
/// pair, but never the newest payload of a pair (the last good data stays however long a
/// platform fails); and poll runs before `cutoff`. Returns (payloads, runs) deleted.
pub async fn prune(db: &Db, cutoff: UtcTime, keep: Option<u32>) -> StorageResult<(usize, usize)> {
    const NEWEST: &str = "SELECT MAX(id) FROM platform_data GROUP BY connection_id, endpoint";
    let by_age = match &db.pools {
        super::Pools::Postgres(_) => {
            format!("DELETE FROM platform_data WHERE fetched_at < $1 AND id NOT IN ({NEWEST})")
        }
        super::Pools::Sqlite(..) => {
            format!("DELETE FROM platform_data WHERE fetched_at < ? AND id NOT IN ({NEWEST})")
        }
    };
    let by_count = keep.map(|n| {
        format!(
            "DELETE FROM platform_data WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
             (PARTITION BY connection_id, endpoint ORDER BY id DESC) AS rn FROM platform_data) ranked \
             WHERE rn > {})",
            n.max(1)
        )
    });
    db_run!(db, |conn| {
        let mut payloads = diesel::sql_query(by_age.as_str())
            .bind::<UtcTimestamp, _>(cutoff)
            .execute(conn)
            .await?;
        if let Some(sql) = &by_count {
            payloads += diesel::sql_query(sql.as_str()).execute(conn).await?;
        }
        let runs = diesel::delete(poll_runs::table.filter(poll_runs::started_at.lt(cutoff)))
            .execute(conn)
            .await?;
        Ok((payloads, runs))
    })
}
