//! Small named values the service keeps for itself in `app_settings`, shared by every replica.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::app_settings;
use super::{Db, StorageResult, now};
use crate::db_run;

pub async fn get(db: &Db, key: &str) -> StorageResult<Option<String>> {
    db_run!(db, |conn| {
        Ok(app_settings::table
            .find(key)
            .select(app_settings::value)
            .first(conn)
            .await
            .optional()?)
    })
}

/// Sets `key` to `value`, replacing what was there.
pub async fn put(db: &Db, key: &str, value: &str) -> StorageResult<()> {
    let at = now();
    db_run!(db, |conn| {
        diesel::insert_into(app_settings::table)
            .values((
                app_settings::key.eq(key),
                app_settings::value.eq(value),
                app_settings::updated_at.eq(at),
            ))
            .on_conflict(app_settings::key)
            .do_update()
            .set((app_settings::value.eq(value), app_settings::updated_at.eq(at)))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// Sets `key` to `value` unless it has a value already; returns the value it now has (so
/// replicas starting together agree on one).
pub async fn put_if_absent(db: &Db, key: &str, value: &str) -> StorageResult<String> {
    let at = now();
    db_run!(db, |conn| {
        diesel::insert_into(app_settings::table)
            .values((
                app_settings::key.eq(key),
                app_settings::value.eq(value),
                app_settings::updated_at.eq(at),
            ))
            .on_conflict(app_settings::key)
            .do_nothing()
            .execute(conn)
            .await?;
        Ok(app_settings::table
            .find(key)
            .select(app_settings::value)
            .first(conn)
            .await?)
    })
}

/// Forgets `key`.
pub async fn delete(db: &Db, key: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::delete(app_settings::table.find(key))
            .execute(conn)
            .await?;
        Ok(())
    })
}
