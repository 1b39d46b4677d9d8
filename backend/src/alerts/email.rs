//! Notification delivery: every email and alert webhook is written to the outbox first, then
//! the `email-outbox` job (or an immediate attempt) claims it and sends it, emails with
//! lettre, webhooks with reqwest (`webhook.rs`). A failed attempt is retried later with a
//! growing delay, so an SMTP or receiver outage delays notifications but loses none.
//!
//! Grouping: when an alert notification falls due, every other unsent one for the same
//! recipients (or webhook endpoint) joins it, and they go out as one digest. Alert
//! notifications are queued `alerts.group_wait_secs` ahead, so alerts changing within that
//! window share one message.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncTransport, Message};
use serde::Serialize;

use super::channels::{Channels, NotificationChannels};
use super::templates::{self, Part};
use super::webhook;
use crate::alerts::settings::{AlertsConfig, EmailConfig};
use crate::config::Config;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::outbox::{self, EMAIL, NewEmail, OutboxEmail, WEBHOOK};
use crate::storage::{Db, StorageResult, UtcTime, now};

pub const OUTBOX_JOB: &str = "email-outbox";
/// Emails attempted per outbox run.
const BATCH: i64 = 100;
/// The outbox kind of a notice that another notification was given up.
const NOTIFICATION_FAILED: &str = "notification_failed";

/// Delivers the outbox. Built from exactly what it uses: the database, its `[email]` section,
/// the notification channels, an HTTP client, its instruments and the process's lease name.
pub struct Mailer {
    /// Where notifications go (re-read from the database every few seconds).
    channels: Arc<NotificationChannels>,
    /// Names this process's outbox leases.
    instance: String,
    db: Db,
    /// First delay before a failed email is tried again.
    retry_base: Duration,
    sent: prometheus::IntCounterVec,
    failures: prometheus::IntCounter,
    http: reqwest::Client,
    webhook_timeout: Duration,
    webhooks_sent: prometheus::IntCounterVec,
    webhook_failures: prometheus::IntCounterVec,
    /// How long a notification is retried before it is given up.
    max_age: Duration,
    expired: prometheus::IntCounterVec,
}

/// The instruments the mailer counts with.
pub struct MailerMetrics {
    pub sent: prometheus::IntCounterVec,
    pub failures: prometheus::IntCounter,
    /// Webhook deliveries that the endpoint accepted, and failed attempts, by endpoint.
    pub webhooks_sent: prometheus::IntCounterVec,
    pub webhook_failures: prometheus::IntCounterVec,
    /// Notifications given up undelivered, by channel.
    pub expired: prometheus::IntCounterVec,
}

/// What one outbox run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// Outbox emails delivered and failed.
    pub sent: usize,
    pub failed: usize,
    /// Messages handed to the SMTP server (a digest carries several emails).
    pub messages: usize,
    pub pending: i64,
    /// Notifications given up in this run (older than `alerts.notification_max_age_secs`).
    pub expired: usize,
}

impl Mailer {
    /// `instance` names this process in outbox leases (one name per process, shared by every engine).
    pub fn new(
        config: &EmailConfig,
        alerts: &AlertsConfig,
        channels: Arc<NotificationChannels>,
        http: reqwest::Client,
        instance: String,
        db: Db,
        metrics: MailerMetrics,
    ) -> Mailer {
        Mailer {
            channels,
            instance,
            db,
            retry_base: config.retry_base_secs,
            sent: metrics.sent,
            failures: metrics.failures,
            http,
            webhook_timeout: alerts.webhook_timeout_secs,
            webhooks_sent: metrics.webhooks_sent,
            webhook_failures: metrics.webhook_failures,
            max_age: alerts.notification_max_age_secs,
            expired: metrics.expired,
        }
    }

    /// Sends one message made of stored (text, html) fragments.
    async fn send(&self, recipients: &str, subject: &str, text: &str, html: &str) -> Result<(), String> {
        let channels = self.channels.current().await;
        let Some(smtp) = &channels.smtp else {
            return Err("no SMTP server is set (Settings → Notifications, or SMTP_URL)".into());
        };
        let mut builder = Message::builder().from(channels.from.clone()).subject(subject);
        for address in recipients.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("recipient {address:?}: {e}"))?;
            builder = builder.to(mailbox);
        }
        let (text, html) = templates::layout(text, html);
        let message = builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        let hide: Vec<&str> = smtp.hide.iter().map(String::as_str).collect();
        smtp.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| crate::redact::redact(&e.to_string(), &hide))
    }
}

/// The number of the attempt being made on these rows.
fn attempt(rows: &[OutboxEmail]) -> i32 {
    rows.iter().map(|e| e.attempts).max().unwrap_or(0) + 1
}

/// The delay before attempt `attempts + 1`: `base` doubling up to an hour.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    base.saturating_mul(1 << exponent).min(Duration::from_secs(3600))
}

/// "[Telltale] 3 alerts: 2 firing, 1 resolved".
fn digest_subject(emails: &[OutboxEmail]) -> String {
    let count = |kind: &str| emails.iter().filter(|e| e.kind == kind).count();
    let counts: Vec<String> = [
        ("alert_firing", "firing"),
        ("alert_reminder", "still firing"),
        ("alert_resolved", "resolved"),
    ]
    .into_iter()
    .filter(|(kind, _)| count(kind) > 0)
    .map(|(kind, label)| format!("{} {label}", count(kind)))
    .collect();
    format!("[Telltale] {} alerts: {}", emails.len(), counts.join(", "))
}

fn lease_until() -> UtcTime {
    UtcTime::new(now().0 + chrono::Duration::seconds(120))
}

impl Mailer {
    /// Sends claimed outbox emails with the same recipients as one message (a digest when there
    /// are several) and records the outcome on every one of them.
    async fn send_together(&self, emails: &[OutboxEmail]) -> StorageResult<Result<(), String>> {
        let Some(first) = emails.first() else {
            return Ok(Ok(()));
        };
        if first.channel == WEBHOOK {
            return self.post_together(emails).await;
        }
        let (kind, result) = if let [email] = emails {
            let result = self
                .send(
                    &email.recipients,
                    &email.subject,
                    &email.body_text,
                    &email.body_html,
                )
                .await;
            (email.kind.as_str(), result)
        } else {
            let subject = digest_subject(emails);
            let parts: Vec<Part> = emails
                .iter()
                .map(|e| Part {
                    subject: &e.subject,
                    text: &e.body_text,
                    html: &e.body_html,
                })
                .collect();
            let (text, html) = templates::digest(&subject, &parts);
            let result = self.send(&first.recipients, &subject, &text, &html).await;
            ("alert_digest", result)
        };
        let ids: Vec<i64> = emails.iter().map(|e| e.id).collect();
        match &result {
            Ok(()) => {
                outbox::mark_sent(&self.db, &ids, now()).await?;
                self.sent.with_label_values(&[kind]).inc();
                tracing::info!(emails = ?ids, kind, "email sent");
            }
            Err(error) => {
                self.retry_later(emails, error).await?;
                self.failures.inc();
                tracing::warn!(emails = ?ids, kind, attempt = attempt(emails), error = %error, "email not sent; will retry");
            }
        }
        Ok(result)
    }

    /// Posts claimed webhook notifications for one endpoint as one request (a digest when there
    /// are several) and records the outcome on every one of them.
    async fn post_together(&self, rows: &[OutboxEmail]) -> StorageResult<Result<(), String>> {
        let Some(first) = rows.first() else {
            return Ok(Ok(()));
        };
        let endpoint_name = first.recipients.as_str();
        let ids: Vec<i64> = rows.iter().map(|e| e.id).collect();
        let channels = self.channels.current().await;
        let result = match channels.webhooks.iter().find(|w| w.name == endpoint_name) {
            Some(endpoint) => {
                let title = match rows {
                    [one] => one.subject.clone(),
                    _ => digest_subject(rows),
                };
                let body = webhook::message(rows, &title, now());
                let id = webhook::delivery_id(rows);
                webhook::deliver(&self.http, endpoint, &id, body, self.webhook_timeout).await
            }
            None => Err(format!(
                "no alert webhook named {endpoint_name:?} is set any more (Settings → Notifications)"
            )),
        };
        match &result {
            Ok(()) => {
                outbox::mark_sent(&self.db, &ids, now()).await?;
                self.webhooks_sent.with_label_values(&[endpoint_name]).inc();
                tracing::info!(notifications = ?ids, endpoint = endpoint_name, "webhook notification delivered");
            }
            Err(error) => {
                self.retry_later(rows, error).await?;
                self.webhook_failures.with_label_values(&[endpoint_name]).inc();
                tracing::warn!(notifications = ?ids, endpoint = endpoint_name, attempt = attempt(rows), error = %error, "webhook notification not delivered; will retry");
            }
        }
        Ok(result)
    }

    /// Records a failed attempt on every row; the next waits `retry_delay` after the most tried.
    async fn retry_later(&self, rows: &[OutboxEmail], error: &str) -> StorageResult<()> {
        let ids: Vec<i64> = rows.iter().map(|e| e.id).collect();
        let delay =
            chrono::Duration::from_std(retry_delay(self.retry_base, attempt(rows) - 1)).unwrap_or_default();
        outbox::mark_failed(&self.db, &ids, error, UtcTime::new(now().0 + delay)).await
    }

    /// Tries to send one outbox email now (if no other process holds it). Returns the error of a
    /// failed attempt; the email then waits for its retry.
    pub async fn deliver(&self, id: i64) -> StorageResult<Option<Result<(), String>>> {
        let Some(email) = outbox::claim(&self.db, id, &self.instance, now(), lease_until()).await? else {
            return Ok(None);
        };
        Ok(Some(self.send_together(&[email]).await?))
    }

    /// Sends every due email (one outbox run); alert emails for the same recipients go together.
    pub async fn deliver_due(&self) -> StorageResult<Delivery> {
        let instance = &self.instance;
        let mut delivery = Delivery {
            expired: self.give_up_old().await?,
            ..Default::default()
        };
        let mut alone = Vec::new();
        // Keyed by channel and recipients (addresses, or the webhook endpoint's name).
        let mut grouped: std::collections::BTreeMap<(String, String), Vec<OutboxEmail>> = Default::default();
        for id in outbox::due(&self.db, now(), BATCH).await? {
            let Some(email) = outbox::claim(&self.db, id, instance, now(), lease_until()).await? else {
                continue;
            };
            if email.alert_id.is_some() {
                grouped
                    .entry((email.channel.clone(), email.recipients.clone()))
                    .or_default()
                    .push(email);
            } else {
                alone.push(vec![email]);
            }
        }
        for ((channel, recipients), group) in &mut grouped {
            // Alert notifications still waiting out their group window join the one that fell due.
            for id in outbox::waiting_alert_emails(&self.db, channel, recipients, BATCH).await? {
                if group.iter().any(|e| e.id == id) {
                    continue;
                }
                if let Some(email) = outbox::claim(&self.db, id, instance, now(), lease_until()).await? {
                    group.push(email);
                }
            }
            group.sort_by_key(|e| e.id);
        }
        for emails in alone.into_iter().chain(grouped.into_values()) {
            match self.send_together(&emails).await? {
                Ok(()) => delivery.sent += emails.len(),
                Err(_) => delivery.failed += emails.len(),
            }
            delivery.messages += 1;
        }
        delivery.pending = outbox::pending_count(&self.db).await?;
        Ok(delivery)
    }

    /// Gives up notifications not delivered within `alerts.notification_max_age_secs`: each is
    /// marked failed with its last error, counted, written into its alert's history, and
    /// announced through the other channel (so a dead SMTP server is reported by webhook, and
    /// the other way round). Returns how many.
    async fn give_up_old(&self) -> StorageResult<usize> {
        let at = now();
        let cutoff = UtcTime::new(at.0 - chrono::Duration::from_std(self.max_age).unwrap_or_default());
        let expired = outbox::expire(&self.db, cutoff, at).await?;
        for row in &expired {
            self.expired.with_label_values(&[row.channel.as_str()]).inc();
            let last_error = row.last_error.as_deref().unwrap_or("never attempted");
            let fact = format!(
                "{} to {} ({}) given up after {}: {last_error}",
                row.channel,
                row.recipients,
                row.subject,
                crate::present::duration(self.max_age.as_secs() as i64)
            );
            tracing::error!(outbox = row.id, channel = %row.channel, recipients = %row.recipients, "notification not delivered: {fact}");
            if let Some(alert_id) = row.alert_id {
                crate::storage::alerts::note(
                    &self.db,
                    alert_id,
                    crate::storage::AlertEventKind::NotificationFailed,
                    &fact,
                    at,
                )
                .await?;
            }
            if row.kind != NOTIFICATION_FAILED {
                self.announce_failure(row, &fact).await?;
            }
        }
        Ok(expired.len())
    }

    /// Queues word of a given-up notification on the channels other than its own (never about
    /// an announcement itself, so two dead channels do not feed each other).
    async fn announce_failure(&self, row: &OutboxEmail, fact: &str) -> StorageResult<()> {
        let subject = "[Telltale] A notification could not be delivered";
        let text = format!(
            "Telltale could not deliver a notification and gave it up: {fact}.\nCheck Settings → Notifications; the alert stays open in Telltale."
        );
        let (text, html) = templates::notice(&text);
        let channels = self.channels.current().await;
        let mut targets: Vec<(&str, &[String])> = Vec::new();
        if row.channel != EMAIL && channels.emails_on_call() {
            targets.push((EMAIL, &channels.on_call));
        }
        if row.channel != WEBHOOK {
            targets.extend(
                channels
                    .webhooks
                    .iter()
                    .map(|hook| (WEBHOOK, std::slice::from_ref(&hook.name))),
            );
        }
        for (channel, recipients) in targets {
            let email = NewEmail {
                alert_id: None,
                channel,
                kind: NOTIFICATION_FAILED,
                recipients,
                subject,
                body_text: &text,
                // A webhook carries the text alone.
                body_html: if channel == EMAIL { &html } else { "" },
            };
            outbox::enqueue(&self.db, &email, now()).await?;
        }
        Ok(())
    }

    /// Why a test email to `to` (the on-call list when empty) cannot be sent, before anything
    /// is queued: (error code, what to set).
    pub async fn refuse_test_email(&self, to: &[String]) -> Option<(&'static str, String)> {
        let channels = self.channels.current().await;
        if channels.smtp.is_none() {
            return Some((
                "no_smtp",
                "no SMTP server is set: enter one in Settings → Notifications, or set SMTP_URL (e.g. smtp://user:password@mail.example.com:587)".into(),
            ));
        }
        if to.is_empty() && channels.on_call.is_empty() {
            return Some((
                "no_recipients",
                "give an address, or set the on-call list in Settings → Notifications (or TELLTALE_ONCALL_EMAILS)".into(),
            ));
        }
        to.iter()
            .find(|a| a.parse::<Mailbox>().is_err())
            .map(|bad| ("invalid_recipient", format!("{bad:?} is not an email address")))
    }

    /// Why a test notification to `endpoint` (every endpoint when `None`) has nowhere to go.
    pub async fn refuse_test_notification(&self, endpoint: Option<&str>) -> Option<webhook::NoTestTarget> {
        webhook::check_test_target(&self.channels.current().await.webhooks, endpoint).err()
    }

    /// Queues a test email to `to` (or the on-call list) and tries it at once.
    pub async fn send_test(&self, to: &[String]) -> StorageResult<(OutboxEmail, Result<(), String>)> {
        let recipients: Vec<String> = if to.is_empty() {
            self.channels.current().await.on_call.clone()
        } else {
            to.to_vec()
        };
        let host = hostname();
        let (text, html) = templates::test(&host);
        self.queue_and_try(&NewEmail {
            alert_id: None,
            channel: EMAIL,
            kind: "test",
            recipients: &recipients,
            subject: "[Telltale] Test email",
            body_text: &text,
            body_html: &html,
        })
        .await
    }

    /// Sends one email now, outside the outbox: for a message carrying a one-time secret (a
    /// password reset link), which must not be stored, and whose sender is waiting for the
    /// answer. `Err`: what the SMTP server (or its absence) said.
    pub async fn send_direct(&self, to: &str, subject: &str, text: &str, html: &str) -> Result<(), String> {
        self.send(to, subject, text, html).await
    }

    /// Where notifications go now.
    pub async fn channels(&self) -> Arc<Channels> {
        self.channels.current().await
    }

    /// Gives back the outbox rows this process holds (shutdown, once its runs have ended).
    pub async fn release_leases(&self) {
        match outbox::release_leases(&self.db, &self.instance).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "outbox leases given back at shutdown"),
            Err(err) => {
                tracing::warn!(error = %err, "could not give back outbox leases; they expire by themselves")
            }
        }
    }

    /// Queues a test and tries it at once; the row as it then stands, and the attempt's result.
    /// A test is a question answered within the request: a failed one is given up at once,
    /// never retried.
    async fn queue_and_try(&self, row: &NewEmail<'_>) -> StorageResult<(OutboxEmail, Result<(), String>)> {
        let queued = outbox::enqueue(&self.db, row, now()).await?;
        let result = match self.deliver(queued.id).await? {
            Some(result) => result,
            None => Err("taken by another process".into()),
        };
        if result.is_err() {
            outbox::give_up(&self.db, queued.id, now()).await?;
        }
        Ok((outbox::get(&self.db, queued.id).await?, result))
    }

    /// Queues a test notification to each webhook endpoint (or the one named) and tries each
    /// at once; the result per endpoint. Empty when no endpoint matches.
    pub async fn send_test_notification(
        &self,
        endpoint: Option<&str>,
    ) -> StorageResult<Vec<(OutboxEmail, Result<(), String>)>> {
        let text = format!(
            "If you can read this, Telltale on {} reaches this endpoint; alert notifications will arrive here.",
            hostname()
        );
        let mut results = Vec::new();
        let channels = self.channels.current().await;
        for hook in channels
            .webhooks
            .iter()
            .filter(|w| endpoint.is_none_or(|name| w.name == name))
        {
            let outcome = self
                .queue_and_try(&NewEmail {
                    alert_id: None,
                    channel: WEBHOOK,
                    kind: "test",
                    recipients: std::slice::from_ref(&hook.name),
                    subject: "[Telltale] Test notification",
                    body_text: &text,
                    body_html: "",
                })
                .await?;
            results.push(outcome);
        }
        Ok(results)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into())
}

/// The outbox worker.
pub fn job_specs(config: &Config, mailer: &Arc<Mailer>) -> Vec<JobSpec> {
    vec![JobSpec {
        name: OUTBOX_JOB,
        schedule: config.email.outbox_schedule.clone(),
        timezone: config.scheduler.timezone,
        exclusive: false,
        run: run_with(mailer.clone(), |mailer| async move {
            let delivery = mailer.deliver_due().await?;
            Ok(format!(
                "{} sent, {} failed, {} pending, {} given up",
                delivery.sent, delivery.failed, delivery.pending, delivery.expired
            ))
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn retries_slow_down_to_an_hour() {
        let base = Duration::from_secs(30);
        assert_eq!(retry_delay(base, 0), Duration::from_secs(30));
        assert_eq!(retry_delay(base, 1), Duration::from_secs(60));
        assert_eq!(retry_delay(base, 6), Duration::from_secs(1920));
        assert_eq!(retry_delay(base, 7), Duration::from_secs(3600));
        assert_eq!(retry_delay(base, 50), Duration::from_secs(3600));
    }
}
