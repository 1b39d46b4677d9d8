//! Scheduled jobs' state: whether each is enabled, its schedule, and its last run.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::job_state;
use super::{Db, StorageResult, now};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = job_state)]
pub struct JobState {
    pub name: String,
    pub enabled: bool,
    pub schedule: String,
    pub timezone: String,
    pub last_run_at: Option<UtcTime>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub next_run_at: Option<UtcTime>,
    pub updated_at: UtcTime,
}

/// Records a job's schedule at start-up, keeping its enabled flag and history.
pub async fn register(
    db: &Db,
    name: &str,
    schedule: &str,
    timezone: &str,
    next_run_at: Option<UtcTime>,
) -> StorageResult<()> {
    let at = now();
    db_run!(db, |conn| {
        diesel::insert_into(job_state::table)
            .values((
                job_state::name.eq(name),
                job_state::enabled.eq(true),
                job_state::schedule.eq(schedule),
                job_state::timezone.eq(timezone),
                job_state::next_run_at.eq(next_run_at),
                job_state::updated_at.eq(at),
            ))
            .on_conflict(job_state::name)
            .do_update()
            .set((
                job_state::schedule.eq(schedule),
                job_state::timezone.eq(timezone),
                job_state::next_run_at.eq(next_run_at),
                job_state::updated_at.eq(at),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// Records the outcome of one run.
pub async fn record_run(
    db: &Db,
    name: &str,
    ran_at: UtcTime,
    result: Result<&str, &str>,
    next_run_at: Option<UtcTime>,
) -> StorageResult<()> {
    let (last_result, last_error) = match result {
        Ok(summary) => (format!("ok: {summary}"), None),
        Err(error) => ("error".to_owned(), Some(error)),
    };
    db_run!(db, |conn| {
        diesel::update(job_state::table.find(name))
            .set((
                job_state::last_run_at.eq(ran_at),
                job_state::last_result.eq(&last_result),
                job_state::last_error.eq(last_error),
                job_state::next_run_at.eq(next_run_at),
                job_state::updated_at.eq(now()),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// Takes a job's run lease for `owner` until `until`, unless another owner holds one that has
/// not expired. One conditional UPDATE, so of several replicas whose timers fire together
/// exactly one wins. False also when the job is not registered.
pub async fn claim_run(db: &Db, name: &str, owner: &str, at: UtcTime, until: UtcTime) -> StorageResult<bool> {
    db_run!(db, |conn| {
        let claimed = diesel::update(
            job_state::table.find(name).filter(
                job_state::lease_expires_at
                    .is_null()
                    .or(job_state::lease_expires_at.lt(at))
                    .or(job_state::lease_owner.eq(owner)),
            ),
        )
        .set((
            job_state::lease_owner.eq(owner),
            job_state::lease_expires_at.eq(until),
        ))
        .execute(conn)
        .await?;
        Ok(claimed == 1)
    })
}

/// Ends a run: the lease is kept until `hold_until` (just before the next tick), so a replica
/// whose timer fires a moment later skips this tick, and the next tick is free for anyone.
pub async fn finish_run(db: &Db, name: &str, owner: &str, hold_until: UtcTime) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(
            job_state::table
                .find(name)
                .filter(job_state::lease_owner.eq(owner)),
        )
        .set(job_state::lease_expires_at.eq(hold_until))
        .execute(conn)
        .await?;
        Ok(())
    })
}

pub async fn is_enabled(db: &Db, name: &str) -> StorageResult<bool> {
    db_run!(db, |conn| {
        Ok(job_state::table
            .find(name)
            .select(job_state::enabled)
            .first(conn)
            .await
            .optional()?
            .unwrap_or(true))
    })
}

pub async fn list(db: &Db) -> StorageResult<Vec<JobState>> {
    db_run!(db, |conn| {
        Ok(job_state::table
            .order(job_state::name.asc())
            .select(JobState::as_select())
            .load(conn)
            .await?)
    })
}

/// Switches a job on or off; false when no such job is registered.
pub async fn set_enabled(db: &Db, name: &str, enabled: bool) -> StorageResult<bool> {
    db_run!(db, |conn| {
        let updated = diesel::update(job_state::table.find(name))
            .set((job_state::enabled.eq(enabled), job_state::updated_at.eq(now())))
            .execute(conn)
            .await?;
        Ok(updated == 1)
    })
}
