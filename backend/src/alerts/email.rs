//! Email delivery: every email is written to the outbox first, then the `email-outbox` job (or
//! an immediate attempt) claims it and sends it with lettre. A failed attempt is retried later
//! with a growing delay, so an SMTP outage delays mail but loses none.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::app::AppState;
use crate::config::{Config, EmailConfig};
use crate::scheduler::JobSpec;
use crate::storage::outbox::{self, NewEmail, OutboxEmail};
use crate::storage::{StorageResult, UtcTime, now};

pub const OUTBOX_JOB: &str = "email-outbox";
/// Emails attempted per outbox run.
const BATCH: i64 = 100;

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    /// Parts of the SMTP URL that must never reach a message (password, whole URL).
    hide: Vec<String>,
    /// Names this process's outbox leases.
    instance: String,
}

/// What one outbox run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    pub sent: usize,
    pub failed: usize,
    pub pending: i64,
}

impl Mailer {
    pub fn new(config: &EmailConfig) -> anyhow::Result<Mailer> {
        let from = config
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
        let mut hide = Vec::new();
        let transport = match &config.smtp_url {
            Some(url) => {
                let url = url.expose_secret();
                hide.push(url.to_owned());
                if let Some(password) = url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.password().map(str::to_owned))
                {
                    hide.push(password);
                }
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|_| anyhow::anyhow!("email.smtp_url is not a usable SMTP URL"))?;
                Some(builder.timeout(Some(config.timeout)).build())
            }
            None => None,
        };
        Ok(Mailer {
            transport,
            from,
            hide,
            instance: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        })
    }

    async fn send(&self, email: &OutboxEmail) -> Result<(), String> {
        let Some(transport) = &self.transport else {
            return Err("no SMTP server configured (email.smtp_url / SMTP_URL)".into());
        };
        let mut builder = Message::builder().from(self.from.clone()).subject(&email.subject);
        for address in email
            .recipients
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("recipient {address:?}: {e}"))?;
            builder = builder.to(mailbox);
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                email.body_text.clone(),
                email.body_html.clone(),
            ))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        let hide: Vec<&str> = self.hide.iter().map(String::as_str).collect();
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| crate::redact::redact(&e.to_string(), &hide))
    }
}

/// The delay before attempt `attempts + 1`: `base` doubling up to an hour.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    base.saturating_mul(1 << exponent).min(Duration::from_secs(3600))
}

/// Tries to send one outbox email now (if no other process holds it). Returns the error of a
/// failed attempt; the email then waits for its retry.
pub async fn deliver(state: &AppState, id: i64) -> StorageResult<Option<Result<(), String>>> {
    let mailer = &state.mailer;
    let until = UtcTime::new(now().0 + chrono::Duration::seconds(120));
    let Some(email) = outbox::claim(&state.db, id, &mailer.instance, now(), until).await? else {
        return Ok(None);
    };
    let result = mailer.send(&email).await;
    match &result {
        Ok(()) => {
            outbox::mark_sent(&state.db, id, now()).await?;
            state.metrics.emails_sent.with_label_values(&[&email.kind]).inc();
            tracing::info!(email = id, kind = %email.kind, "email sent");
        }
        Err(error) => {
            let delay =
                chrono::Duration::from_std(retry_delay(state.config.email.retry_base, email.attempts))
                    .unwrap_or_default();
            outbox::mark_failed(&state.db, id, error, UtcTime::new(now().0 + delay)).await?;
            state.metrics.email_failures.inc();
            tracing::warn!(email = id, kind = %email.kind, attempt = email.attempts + 1, error = %error, "email not sent; will retry");
        }
    }
    Ok(Some(result))
}

/// Sends every due email (one outbox run).
pub async fn deliver_due(state: &AppState) -> StorageResult<Delivery> {
    let mut delivery = Delivery::default();
    for id in outbox::due(&state.db, now(), BATCH).await? {
        match deliver(state, id).await? {
            Some(Ok(())) => delivery.sent += 1,
            Some(Err(_)) => delivery.failed += 1,
            None => {}
        }
    }
    delivery.pending = outbox::pending_count(&state.db).await?;
    state.metrics.outbox_pending.set(delivery.pending);
    Ok(delivery)
}

/// Queues a test email to `to` (or the on-call list) and tries it at once.
pub async fn send_test(state: &AppState, to: &[String]) -> StorageResult<(OutboxEmail, Result<(), String>)> {
    let recipients: Vec<String> = if to.is_empty() {
        state.config.email.on_call.clone()
    } else {
        to.to_vec()
    };
    let host = hostname();
    let text = format!(
        "This is a test email from Telltale on {host}.\n\nIf you can read it, alert emails reach this address.\n"
    );
    let html = format!(
        "<p>This is a test email from Telltale on <b>{}</b>.</p><p>If you can read it, alert emails reach this address.</p>",
        escape(&host)
    );
    let queued = outbox::enqueue(
        &state.db,
        &NewEmail {
            alert_id: None,
            kind: "test",
            recipients: &recipients,
            subject: "[Telltale] Test email",
            body_text: &text,
            body_html: &html,
        },
        now(),
    )
    .await?;
    let result = match deliver(state, queued.id).await? {
        Some(result) => result,
        None => Err("taken by another process".into()),
    };
    Ok((outbox::get(&state.db, queued.id).await?, result))
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into())
}

/// Minimal HTML escaping for text placed in email bodies.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The outbox worker.
pub fn job_specs(config: &Config) -> Vec<JobSpec> {
    vec![JobSpec {
        name: OUTBOX_JOB,
        schedule: config.email.outbox_schedule.clone(),
        timezone: config.scheduler_timezone,
        run: Arc::new(|state| {
            Box::pin(async move {
                let delivery = deliver_due(&state).await?;
                Ok(format!(
                    "{} sent, {} failed, {} pending",
                    delivery.sent, delivery.failed, delivery.pending
                ))
            })
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
