//! The notification outbox: every email and alert webhook is a row first, delivered by a
//! worker that claims due rows with a lease, so an SMTP or receiver outage delays a
//! notification but never loses it, and replicas send each once.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::outbox;
use super::{Db, StorageError, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = outbox)]
pub struct OutboxEmail {
    pub id: i64,
    pub alert_id: Option<i64>,
    /// `test`, `alert_firing`, `alert_reminder`, `alert_resolved`, …
    pub kind: String,
    /// Comma-separated addresses.
    pub recipients: String,
    pub subject: String,
    #[serde(skip)]
    pub body_text: String,
    #[serde(skip)]
    pub body_html: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: UtcTime,
    pub sent_at: Option<UtcTime>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_expires_at: Option<UtcTime>,
    pub created_at: UtcTime,
    /// `email` (to `recipients`) or `webhook` (to the endpoint `recipients` names).
    pub channel: String,
    /// When it was given up: not delivered within `alerts.notification_max_age`, or a test
    /// that failed. Never retried after.
    pub failed_at: Option<UtcTime>,
}

/// The channel of a webhook notification.
pub const WEBHOOK: &str = "webhook";
/// The channel of an email.
pub const EMAIL: &str = "email";

pub struct NewEmail<'a> {
    pub alert_id: Option<i64>,
    pub channel: &'a str,
    pub kind: &'a str,
    pub recipients: &'a [String],
    pub subject: &'a str,
    pub body_text: &'a str,
    pub body_html: &'a str,
}

pub async fn enqueue(db: &Db, email: &NewEmail<'_>, at: UtcTime) -> StorageResult<OutboxEmail> {
    let recipients = email.recipients.join(", ");
    db_run!(db, |conn| {
        Ok(diesel::insert_into(outbox::table)
            .values((
                outbox::alert_id.eq(email.alert_id),
                outbox::channel.eq(email.channel),
                outbox::kind.eq(email.kind),
                outbox::recipients.eq(&recipients),
                outbox::subject.eq(email.subject),
                outbox::body_text.eq(email.body_text),
                outbox::body_html.eq(email.body_html),
                outbox::next_attempt_at.eq(at),
                outbox::created_at.eq(at),
            ))
            .returning(OutboxEmail::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// Unsent emails due for an attempt, oldest first (candidates; each is then claimed).
pub async fn due(db: &Db, at: UtcTime, limit: i64) -> StorageResult<Vec<i64>> {
    db_run!(db, |conn| {
        Ok(outbox::table
            .filter(outbox::sent_at.is_null())
            .filter(outbox::failed_at.is_null())
            .filter(outbox::next_attempt_at.le(at))
            .filter(
                outbox::lease_expires_at
                    .is_null()
                    .or(outbox::lease_expires_at.lt(at)),
            )
            .select(outbox::id)
            .order(outbox::id)
            .limit(limit)
            .load(conn)
            .await?)
    })
}

/// Reserves an unsent email for `owner`; `None` when it was sent or another process holds it.
pub async fn claim(
    db: &Db,
    id: i64,
    owner: &str,
    at: UtcTime,
    until: UtcTime,
) -> StorageResult<Option<OutboxEmail>> {
    db_run!(db, |conn| {
        Ok(diesel::update(outbox::table)
            .filter(outbox::id.eq(id))
            .filter(outbox::sent_at.is_null())
            .filter(outbox::failed_at.is_null())
            .filter(
                outbox::lease_expires_at
                    .is_null()
                    .or(outbox::lease_expires_at.lt(at))
                    .or(outbox::lease_owner.eq(owner)),
            )
            .set((outbox::lease_owner.eq(owner), outbox::lease_expires_at.eq(until)))
            .returning(OutboxEmail::as_returning())
            .get_result(conn)
            .await
            .optional()?)
    })
}

/// Unsent alert notifications on `channel` for `recipients` that nobody holds, due or not
/// (they may join a digest).
pub async fn waiting_alert_emails(
    db: &Db,
    channel: &str,
    recipients: &str,
    limit: i64,
) -> StorageResult<Vec<i64>> {
    db_run!(db, |conn| {
        Ok(outbox::table
            .filter(outbox::sent_at.is_null())
            .filter(outbox::failed_at.is_null())
            .filter(outbox::alert_id.is_not_null())
            .filter(outbox::channel.eq(channel))
            .filter(outbox::recipients.eq(recipients))
            .filter(outbox::lease_expires_at.is_null())
            .select(outbox::id)
            .order(outbox::id)
            .limit(limit)
            .load(conn)
            .await?)
    })
}

pub async fn mark_sent(db: &Db, ids: &[i64], at: UtcTime) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
            .set((
                outbox::sent_at.eq(at),
                outbox::attempts.eq(outbox::attempts + 1),
                outbox::last_error.eq(None::<String>),
                outbox::lease_owner.eq(None::<String>),
                outbox::lease_expires_at.eq(None::<UtcTime>),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}

pub async fn mark_failed(db: &Db, ids: &[i64], error: &str, retry_at: UtcTime) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
            .set((
                outbox::attempts.eq(outbox::attempts + 1),
                outbox::last_error.eq(error),
                outbox::next_attempt_at.eq(retry_at),
                outbox::lease_owner.eq(None::<String>),
                outbox::lease_expires_at.eq(None::<UtcTime>),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
}

pub async fn get(db: &Db, id: i64) -> StorageResult<OutboxEmail> {
    db_run!(db, |conn| {
        outbox::table
            .find(id)
            .select(OutboxEmail::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)
    })
}

/// Newest first; `pending` only unsent ones.
pub async fn list(db: &Db, pending: bool, limit: i64) -> StorageResult<Vec<OutboxEmail>> {
    db_run!(db, |conn| {
        let mut query = outbox::table.select(OutboxEmail::as_select()).into_boxed();
        if pending {
            query = query
                .filter(outbox::sent_at.is_null())
                .filter(outbox::failed_at.is_null());
        }
        Ok(query.order(outbox::id.desc()).limit(limit).load(conn).await?)
    })
}

pub async fn pending_count(db: &Db) -> StorageResult<i64> {
    db_run!(db, |conn| {
        Ok(outbox::table
            .filter(outbox::sent_at.is_null())
            .filter(outbox::failed_at.is_null())
            .count()
            .get_result(conn)
            .await?)
    })
}

/// When the oldest unsent email was queued; `None` when the outbox is empty.
pub async fn oldest_pending(db: &Db) -> StorageResult<Option<UtcTime>> {
    db_run!(db, |conn| {
        Ok(outbox::table
            .filter(outbox::sent_at.is_null())
            .filter(outbox::failed_at.is_null())
            .select(outbox::created_at)
            .order(outbox::created_at)
            .first(conn)
            .await
            .optional()?)
    })
}

/// Whether any test (email or notification) has been delivered: a channel proven to work.
pub async fn a_test_was_delivered(db: &Db) -> StorageResult<bool> {
    db_run!(db, |conn| {
        let delivered: Option<i64> = outbox::table
            .filter(outbox::kind.eq("test"))
            .filter(outbox::sent_at.is_not_null())
            .select(outbox::id)
            .first(conn)
            .await
            .optional()?;
        Ok(delivered.is_some())
    })
}

/// Gives up the notifications queued before `cutoff` and still undelivered: each is marked
/// failed at `at`, keeping its last error. Returns them, once each (replicas racing mark each
/// once).
pub async fn expire(db: &Db, cutoff: UtcTime, at: UtcTime) -> StorageResult<Vec<OutboxEmail>> {
    db_run!(db, |conn| {
        Ok(diesel::update(
            outbox::table
                .filter(outbox::sent_at.is_null())
                .filter(outbox::failed_at.is_null())
                .filter(outbox::created_at.lt(cutoff)),
        )
        .set((outbox::failed_at.eq(at), outbox::lease_owner.eq(None::<String>)))
        .returning(OutboxEmail::as_returning())
        .get_results(conn)
        .await?)
    })
}

/// Gives back every unsent row `owner` holds (a clean shutdown: a run stopped between a claim
/// and its send must not keep the row from the other replicas until the lease expires).
pub async fn release_leases(db: &Db, owner: &str) -> StorageResult<usize> {
    db_run!(db, |conn| {
        Ok(diesel::update(
            outbox::table
                .filter(outbox::lease_owner.eq(owner))
                .filter(outbox::sent_at.is_null()),
        )
        .set((
            outbox::lease_owner.eq(None::<String>),
            outbox::lease_expires_at.eq(None::<UtcTime>),
        ))
        .execute(conn)
        .await?)
    })
}

/// Gives up one notification now (a test whose one attempt failed).
pub async fn give_up(db: &Db, id: i64, at: UtcTime) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(outbox::table.find(id).filter(outbox::sent_at.is_null()))
            .set(outbox::failed_at.eq(at))
            .execute(conn)
            .await?;
        Ok(())
    })
}
