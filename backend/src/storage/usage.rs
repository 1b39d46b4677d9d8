//! Daily request counts per third-party API, shared by every replica through the database.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::api_usage;
use super::{Db, StorageResult, UtcTime};
use crate::db_run;

/// Counts one request against `provider`'s budget for `at`'s UTC day. Returns whether it
/// fits within `daily_budget`; a request that does not fit is not counted.
pub async fn reserve(db: &Db, provider: &str, at: UtcTime, daily_budget: i64) -> StorageResult<bool> {
    let day = at.format("%Y-%m-%d").to_string();
    db_run!(db, |conn| {
        let used: i64 = diesel::insert_into(api_usage::table)
            .values((
                api_usage::provider.eq(provider),
                api_usage::day.eq(&day),
                api_usage::requests.eq(1_i64),
            ))
            .on_conflict((api_usage::provider, api_usage::day))
            .do_update()
            .set(api_usage::requests.eq(api_usage::requests + 1))
            .returning(api_usage::requests)
            .get_result(conn)
            .await?;
        if used > daily_budget {
            diesel::update(api_usage::table.find((provider, &day)))
                .set(api_usage::requests.eq(api_usage::requests - 1))
                .execute(conn)
                .await?;
            return Ok(false);
        }
        Ok(true)
    })
}

/// Requests counted for `provider` on `at`'s UTC day.
pub async fn used(db: &Db, provider: &str, at: UtcTime) -> StorageResult<i64> {
    let day = at.format("%Y-%m-%d").to_string();
    db_run!(db, |conn| {
        Ok(api_usage::table
            .find((provider, &day))
            .select(api_usage::requests)
            .first(conn)
            .await
            .optional()?
            .unwrap_or(0))
    })
}
