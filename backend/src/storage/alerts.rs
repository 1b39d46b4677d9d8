//! Alerts: one row per stable key (rule + subject) with its state, and its history. Every
//! state change is a compare-and-set `UPDATE` in the same transaction as the email it causes,
//! so processes sharing PostgreSQL open, resolve and notify each incident once.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::fields::UtcTime;
use super::schema::{alert_events, alerts, outbox, silences};
use super::{AlertEventKind, AlertRule, AlertState, Db, Severity, StorageError, StorageResult};
use crate::db_run;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = alerts)]
pub struct Alert {
    pub id: i64,
    pub alert_key: String,
    pub rule: String,
    pub subject: String,
    pub severity: String,
    /// `firing`, `acknowledged`, `silenced` (a silence or maintenance window covers it) or
    /// `resolved`.
    pub state: AlertState,
    pub summary: String,
    pub details: String,
    pub occurrences: i64,
    pub first_seen_at: UtcTime,
    pub last_seen_at: UtcTime,
    pub resolved_at: Option<UtcTime>,
    pub acknowledged_at: Option<UtcTime>,
    pub acknowledged_by: Option<String>,
    pub last_notified_at: Option<UtcTime>,
    pub notify_count: i32,
    pub updated_at: UtcTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = alert_events)]
pub struct AlertEvent {
    pub id: i64,
    pub alert_id: i64,
    pub kind: AlertEventKind,
    pub detail: Option<String>,
    pub at: UtcTime,
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule: AlertRule,
    pub subject: String,
    pub severity: Severity,
    pub summary: String,
    pub details: String,
}

impl Firing {
    /// What identifies the alert across evaluations: its rule and subject
    /// (`device_offline:device:6136A…`), so one condition is one alert.
    pub fn key(&self) -> String {
        format!("{}:{}", self.rule.as_str(), self.subject)
    }
}

/// A notification to queue with a state change: an email, webhook deliveries, or both.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: &'static str,
    /// Email addresses, comma-separated; empty when no one is emailed.
    pub recipients: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The webhook endpoints told, and the alert as they are shown it (JSON).
    pub webhooks: Vec<String>,
    pub payload: String,
    /// When the outbox may send it (a later time lets others join it in one message).
    pub due_at: UtcTime,
}

/// Inside a transaction: appends to an alert's history. (A macro, as each backend's
/// connection type needs its own expansion.)
macro_rules! record_event {
    ($tx:expr, $alert_id:expr, $kind:expr, $detail:expr, $at:expr) => {
        diesel::insert_into(alert_events::table)
            .values((
                alert_events::alert_id.eq($alert_id),
                alert_events::kind.eq($kind),
                alert_events::detail.eq($detail),
                alert_events::at.eq($at),
            ))
            .execute($tx)
            .await?
    };
}

/// Inside a transaction: queues an alert's email and webhook deliveries in the outbox and
/// counts the notification, or, when `$hold` names a reason (a silence), records that it was
/// held back.
macro_rules! queue_notification {
    ($tx:expr, $alert:expr, $email:expr, $hold:expr, $at:expr) => {{
        let alert: Alert = $alert;
        let hold: Option<&str> = $hold;
        match $email {
            Some(email) if hold.is_some() => {
                let detail = format!(
                    "{} notification held back: {}",
                    email.kind,
                    hold.unwrap_or_default()
                );
                record_event!(
                    $tx,
                    alert.id,
                    AlertEventKind::HeldBack,
                    Some(detail.as_str()),
                    $at
                );
                alert
            }
            Some(email) => {
                // One row for the email (when anyone is emailed) and one per webhook endpoint;
                // each row says its channel and whom it goes to. (One statement a row: diesel
                // has no multi-row insert for SQLite through diesel_async.)
                let queued_at = super::now();
                let email_row = (!email.recipients.is_empty()).then_some((
                    super::outbox::EMAIL,
                    &email.recipients,
                    &email.text,
                    email.html.as_str(),
                ));
                let webhook_rows = email
                    .webhooks
                    .iter()
                    .map(|endpoint| (super::outbox::WEBHOOK, endpoint, &email.payload, ""));
                let rows = email_row
                    .into_iter()
                    .chain(webhook_rows)
                    .map(|(channel, to, body, html)| {
                        (
                            outbox::alert_id.eq(alert.id),
                            outbox::channel.eq(channel),
                            outbox::kind.eq(email.kind),
                            outbox::recipients.eq(to),
                            outbox::subject.eq(&email.subject),
                            outbox::body_text.eq(body),
                            outbox::body_html.eq(html),
                            outbox::next_attempt_at.eq(email.due_at),
                            outbox::created_at.eq(queued_at),
                        )
                    });
                for row in rows {
                    diesel::insert_into(outbox::table)
                        .values(row)
                        .execute($tx)
                        .await?;
                }
                record_event!($tx, alert.id, AlertEventKind::Notified, Some(email.kind), $at);
                diesel::update(alerts::table.find(alert.id))
                    .set((
                        alerts::last_notified_at.eq($at),
                        alerts::notify_count.eq(alerts::notify_count + 1),
                    ))
                    .returning(Alert::as_returning())
                    .get_result($tx)
                    .await?
            }
            None => alert,
        }
    }};
}

/// Records that `firing` holds at `at`. Opens the alert when it is new or was resolved, and
/// then (only then) queues `email(&alert)`. Returns the alert and whether this call opened it.
pub async fn fire(
    db: &Db,
    firing: &Firing,
    at: UtcTime,
    hold: Option<&str>,
    email: impl Fn(&Alert) -> Option<Notification> + Send + Sync,
) -> StorageResult<(Alert, bool)> {
    let key = firing.key();
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let inserted: Option<Alert> = diesel::insert_into(alerts::table)
                .values((
                    alerts::alert_key.eq(&key),
                    alerts::rule.eq(firing.rule.as_str()),
                    alerts::subject.eq(&firing.subject),
                    alerts::severity.eq(firing.severity.as_str()),
                    alerts::state.eq(AlertState::Firing),
                    alerts::summary.eq(&firing.summary),
                    alerts::details.eq(&firing.details),
                    alerts::first_seen_at.eq(at),
                    alerts::last_seen_at.eq(at),
                    alerts::updated_at.eq(at),
                ))
                .on_conflict(alerts::alert_key)
                .do_nothing()
                .returning(Alert::as_returning())
                .get_result(tx)
                .await
                .optional()?;
            let opened = match inserted {
                Some(alert) => Some(alert),
                None => diesel::update(alerts::table)
                    .filter(alerts::alert_key.eq(&key))
                    .filter(alerts::state.eq(AlertState::Resolved))
                    .set((
                        alerts::state.eq(AlertState::Firing),
                        alerts::summary.eq(&firing.summary),
                        alerts::details.eq(&firing.details),
                        alerts::severity.eq(firing.severity.as_str()),
                        alerts::occurrences.eq(alerts::occurrences + 1),
                        alerts::first_seen_at.eq(at),
                        alerts::last_seen_at.eq(at),
                        alerts::resolved_at.eq(None::<UtcTime>),
                        alerts::acknowledged_at.eq(None::<UtcTime>),
                        alerts::acknowledged_by.eq(None::<String>),
                        alerts::updated_at.eq(at),
                    ))
                    .returning(Alert::as_returning())
                    .get_result(tx)
                    .await
                    .optional()?,
            };
            let Some(opened) = opened else {
                let alert = diesel::update(alerts::table)
                    .filter(alerts::alert_key.eq(&key))
                    .set((
                        alerts::last_seen_at.eq(at),
                        alerts::summary.eq(&firing.summary),
                        alerts::details.eq(&firing.details),
                        alerts::updated_at.eq(at),
                    ))
                    .returning(Alert::as_returning())
                    .get_result(tx)
                    .await?;
                return Ok((alert, false));
            };
            record_event!(
                tx,
                opened.id,
                AlertEventKind::Fired,
                Some(opened.summary.as_str()),
                at
            );
            let draft = email(&opened);
            let opened = queue_notification!(tx, opened, draft, hold, at);
            Ok((opened, true))
        })
        .await
    })
}

/// Resolves an open alert whose condition no longer holds (compare-and-set: once), queuing
/// `email(&alert)`. Returns the resolved alert, or `None` when someone else resolved it.
pub async fn resolve(
    db: &Db,
    id: i64,
    at: UtcTime,
    hold: Option<&str>,
    email: impl Fn(&Alert) -> Option<Notification> + Send + Sync,
) -> StorageResult<Option<Alert>> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let resolved: Option<Alert> = diesel::update(alerts::table)
                .filter(alerts::id.eq(id))
                .filter(alerts::state.eq_any(AlertState::OPEN))
                .set((
                    alerts::state.eq(AlertState::Resolved),
                    alerts::resolved_at.eq(at),
                    alerts::updated_at.eq(at),
                ))
                .returning(Alert::as_returning())
                .get_result(tx)
                .await
                .optional()?;
            let Some(resolved) = resolved else {
                return Ok(None);
            };
            record_event!(tx, id, AlertEventKind::Resolved, None::<&str>, at);
            let draft = email(&resolved);
            Ok(Some(queue_notification!(tx, resolved, draft, hold, at)))
        })
        .await
    })
}

/// Sends a reminder for a still-firing alert that has had `notified` notifications
/// (compare-and-set on that count, so replicas remind once). `None` when someone else did.
pub async fn remind(
    db: &Db,
    id: i64,
    notified: i32,
    at: UtcTime,
    hold: Option<&str>,
    email: impl Fn(&Alert) -> Option<Notification> + Send + Sync,
) -> StorageResult<Option<Alert>> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let current: Option<Alert> = diesel::update(alerts::table)
                .filter(alerts::id.eq(id))
                .filter(alerts::state.eq(AlertState::Firing))
                .filter(alerts::notify_count.eq(notified))
                .set((alerts::last_notified_at.eq(at), alerts::updated_at.eq(at)))
                .returning(Alert::as_returning())
                .get_result(tx)
                .await
                .optional()?;
            let Some(current) = current else {
                return Ok(None);
            };
            let draft = email(&current);
            if hold.is_some() {
                // Held back: count it anyway, so the cadence moves on rather than repeating at once.
                diesel::update(alerts::table.find(id))
                    .set(alerts::notify_count.eq(alerts::notify_count + 1))
                    .execute(tx)
                    .await?;
            }
            Ok(Some(queue_notification!(tx, current, draft, hold, at)))
        })
        .await
    })
}

/// Puts an open alert under a silence (`reason`), or, with `reason` `None`, takes it out
/// again: back to `acknowledged` if someone had, else `firing`, queuing `email(&alert)` when the
/// incident was never announced. Compare-and-set; `None` when there was nothing to change.
pub async fn set_silenced(
    db: &Db,
    id: i64,
    reason: Option<&str>,
    at: UtcTime,
    email: impl Fn(&Alert) -> Option<Notification> + Send + Sync,
) -> StorageResult<Option<Alert>> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let Some(reason) = reason else {
                let before: Option<Alert> = alerts::table
                    .find(id)
                    .filter(alerts::state.eq(AlertState::Silenced))
                    .select(Alert::as_select())
                    .first(tx)
                    .await
                    .optional()?;
                let Some(before) = before else {
                    return Ok(None);
                };
                let back = if before.acknowledged_at.is_some() {
                    AlertState::Acknowledged
                } else {
                    AlertState::Firing
                };
                let Some(alert) = diesel::update(alerts::table)
                    .filter(alerts::id.eq(id))
                    .filter(alerts::state.eq(AlertState::Silenced))
                    .set((alerts::state.eq(back), alerts::updated_at.eq(at)))
                    .returning(Alert::as_returning())
                    .get_result(tx)
                    .await
                    .optional()?
                else {
                    return Ok(None);
                };
                record_event!(tx, id, AlertEventKind::Unsilenced, None::<&str>, at);
                let draft = if alert.notify_count == 0 {
                    email(&alert)
                } else {
                    None
                };
                return Ok(Some(queue_notification!(tx, alert, draft, None, at)));
            };
            let silenced: Option<Alert> = diesel::update(alerts::table)
                .filter(alerts::id.eq(id))
                .filter(alerts::state.eq_any([AlertState::Firing, AlertState::Acknowledged]))
                .set((alerts::state.eq(AlertState::Silenced), alerts::updated_at.eq(at)))
                .returning(Alert::as_returning())
                .get_result(tx)
                .await
                .optional()?;
            if silenced.is_some() {
                record_event!(tx, id, AlertEventKind::Silenced, Some(reason), at);
            }
            Ok(silenced)
        })
        .await
    })
}

/// Acknowledges an open alert (someone is on it); `None` when it is not open.
/// Appends one line to an alert's history.
pub async fn note(
    db: &Db,
    alert_id: i64,
    kind: AlertEventKind,
    detail: &str,
    at: UtcTime,
) -> StorageResult<()> {
    db_run!(db, |conn| {
        record_event!(conn, alert_id, kind, Some(detail), at);
        Ok(())
    })
}

pub async fn acknowledge(db: &Db, id: i64, by: &str, at: UtcTime) -> StorageResult<Option<Alert>> {
    db_run!(db, |conn| {
        conn.transaction::<_, StorageError, _>(async |tx| {
            let acked: Option<Alert> = diesel::update(alerts::table)
                .filter(alerts::id.eq(id))
                .filter(alerts::state.eq(AlertState::Firing))
                .set((
                    alerts::state.eq(AlertState::Acknowledged),
                    alerts::acknowledged_at.eq(at),
                    alerts::acknowledged_by.eq(by),
                    alerts::updated_at.eq(at),
                ))
                .returning(Alert::as_returning())
                .get_result(tx)
                .await
                .optional()?;
            if acked.is_some() {
                record_event!(tx, id, AlertEventKind::Acknowledged, Some(by), at);
            }
            Ok(acked)
        })
        .await
    })
}

/// Alerts in any of `states` (all when empty), newest first.
pub async fn list(db: &Db, states: &[AlertState], limit: i64) -> StorageResult<Vec<Alert>> {
    let states = states.to_vec();
    db_run!(db, |conn| {
        let mut query = alerts::table.select(Alert::as_select()).into_boxed();
        if !states.is_empty() {
            query = query.filter(alerts::state.eq_any(states));
        }
        Ok(query.order(alerts::id.desc()).limit(limit).load(conn).await?)
    })
}

pub async fn open_alerts(db: &Db) -> StorageResult<Vec<Alert>> {
    list(db, &AlertState::OPEN, i64::MAX).await
}

pub async fn get(db: &Db, id: i64) -> StorageResult<(Alert, Vec<AlertEvent>)> {
    db_run!(db, |conn| {
        let alert = alerts::table
            .find(id)
            .select(Alert::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(StorageError::NotFound)?;
        let events = alert_events::table
            .filter(alert_events::alert_id.eq(id))
            .select(AlertEvent::as_select())
            .order(alert_events::id)
            .load(conn)
            .await?;
        Ok((alert, events))
    })
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq)]
#[diesel(table_name = silences)]
pub struct Silence {
    pub id: i64,
    /// A rule (`device_offline`), a subject (`connection:5`, `source:site-a`) or an alert key.
    pub matcher: String,
    pub reason: String,
    pub created_by: Option<String>,
    pub starts_at: UtcTime,
    pub ends_at: UtcTime,
    pub created_at: UtcTime,
}

impl Silence {
    pub fn matches(&self, key: &str, rule: &str, subject: &str) -> bool {
        self.matcher == key || self.matcher == rule || self.matcher == subject
    }
}

pub async fn add_silence(
    db: &Db,
    matcher: &str,
    reason: &str,
    by: Option<&str>,
    starts_at: UtcTime,
    ends_at: UtcTime,
    at: UtcTime,
) -> StorageResult<Silence> {
    db_run!(db, |conn| {
        Ok(diesel::insert_into(silences::table)
            .values((
                silences::matcher.eq(matcher),
                silences::reason.eq(reason),
                silences::created_by.eq(by),
                silences::starts_at.eq(starts_at),
                silences::ends_at.eq(ends_at),
                silences::created_at.eq(at),
            ))
            .returning(Silence::as_returning())
            .get_result(conn)
            .await?)
    })
}

/// Silences not yet over at `at` (current and scheduled), soonest end first.
pub async fn silences(db: &Db, at: UtcTime) -> StorageResult<Vec<Silence>> {
    db_run!(db, |conn| {
        Ok(silences::table
            .filter(silences::ends_at.gt(at))
            .select(Silence::as_select())
            .order(silences::ends_at)
            .load(conn)
            .await?)
    })
}

pub async fn delete_silence(db: &Db, id: i64) -> StorageResult<()> {
    db_run!(db, |conn| {
        match diesel::delete(silences::table.find(id)).execute(conn).await? {
            0 => Err(StorageError::NotFound),
            _ => Ok(()),
        }
    })
}
