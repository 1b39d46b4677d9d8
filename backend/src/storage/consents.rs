//! Consent callbacks already used: each `state` a platform sends back is claimed here once
//! (insert-or-nothing on its hash), so a reload or a replay never sends the code again, on any
//! replica, and is shown what the first request did.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::consent_callbacks;
use super::{Db, StorageResult, UtcTime};
use crate::db_run;

/// What became of a callback whose state was used before.
#[derive(Debug, Clone, Queryable)]
pub struct UsedConsent {
    pub connection_id: i64,
    /// `None` while the first request is still exchanging the code.
    pub succeeded: Option<bool>,
    pub message: Option<String>,
}

/// Claims `state_hash` for this request. `None`: it is ours, go on; `Some`: it was used
/// before. Rows older than `forget_before` (their states have expired anyway) are dropped.
pub async fn claim(
    db: &Db,
    state_hash: &str,
    connection_id: i64,
    at: UtcTime,
    forget_before: UtcTime,
) -> StorageResult<Option<UsedConsent>> {
    db_run!(db, |conn| {
        diesel::delete(consent_callbacks::table.filter(consent_callbacks::used_at.lt(forget_before)))
            .execute(conn)
            .await?;
        let inserted = diesel::insert_into(consent_callbacks::table)
            .values((
                consent_callbacks::state_hash.eq(state_hash),
                consent_callbacks::connection_id.eq(connection_id),
                consent_callbacks::used_at.eq(at),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 1 {
            return Ok(None);
        }
        Ok(Some(
            consent_callbacks::table
                .find(state_hash)
                .select((
                    consent_callbacks::connection_id,
                    consent_callbacks::succeeded,
                    consent_callbacks::message,
                ))
                .first(conn)
                .await?,
        ))
    })
}

/// Records how the exchange of a claimed callback ended, for the requests that replay it.
pub async fn record(db: &Db, state_hash: &str, succeeded: bool, message: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(consent_callbacks::table.find(state_hash))
            .set((
                consent_callbacks::succeeded.eq(Some(succeeded)),
                consent_callbacks::message.eq(Some(message)),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}
