//! Alert notifications to webhook endpoints: the same notifications as the emails (fired,
//! reminder, resolved; grouped and held back alike, through the same outbox), as JSON signed
//! the way the Standard Webhooks specification describes, with a `text` field that a
//! Slack-compatible incoming webhook shows as the message.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::storage::alerts::Alert;
use crate::storage::outbox::OutboxEmail;
use crate::storage::{UtcTime, now};

/// The endpoint that `alerts.webhook_url` configures.
pub const DEFAULT_ENDPOINT: &str = "default";
/// Standard Webhooks secrets are this prefix and the key in base64.
const SECRET_PREFIX: &str = "whsec_";
/// The longest part of a receiver's answer kept with a failed attempt.
const ANSWER_KEPT: usize = 200;

/// One endpoint that receives alert notifications.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    /// Names the endpoint in the outbox, logs and metrics (the URL itself may hold a token).
    pub name: String,
    #[serde(deserialize_with = "crate::config::setting::secret_text")]
    pub url: SecretString,
    /// `whsec_` + base64; without it requests are sent unsigned.
    #[serde(default, deserialize_with = "crate::config::setting::optional_secret_text")]
    pub secret: Option<SecretString>,
    /// Only these rules' alerts; every rule when empty.
    #[serde(default)]
    pub rules: Vec<String>,
}

impl AlertWebhook {
    /// Whether alerts of `rule` go to this endpoint.
    pub fn wants(&self, rule: &str) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r == rule)
    }
}

/// Why a test notification has nowhere to go.
#[derive(Debug)]
pub enum NoTestTarget {
    NoneConfigured,
    Unknown { name: String, configured: String },
}

impl std::fmt::Display for NoTestTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoTestTarget::NoneConfigured => f.write_str(
                "no alert webhook is configured (alerts.webhook_url / TELLTALE_ALERT_WEBHOOK_URL, or [[alerts.webhooks]] in the config file)",
            ),
            NoTestTarget::Unknown { name, configured } => {
                write!(f, "no alert webhook named {name:?}; configured: {configured}")
            }
        }
    }
}

impl std::error::Error for NoTestTarget {}

/// Checks that a test notification to `endpoint` (every endpoint when `None`) reaches one.
pub fn check_test_target(webhooks: &[AlertWebhook], endpoint: Option<&str>) -> Result<(), NoTestTarget> {
    if webhooks.is_empty() {
        return Err(NoTestTarget::NoneConfigured);
    }
    match endpoint {
        Some(name) if !webhooks.iter().any(|w| w.name == name) => Err(NoTestTarget::Unknown {
            name: name.to_owned(),
            configured: webhooks
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        _ => Ok(()),
    }
}

/// The HMAC key of a Standard Webhooks secret (`whsec_` + base64 of 16 to 64 bytes).
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "expected {SECRET_PREFIX} followed by base64 (e.g. from `echo whsec_$(openssl rand -base64 32)`)"
        ));
    };
    let key = BASE64
        .decode(encoded)
        .map_err(|_| format!("the part after {SECRET_PREFIX} is not base64"))?;
    if !(16..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; use 16 to 64 (32 is usual)",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// An alert as the webhook shows it, taken when the notification is queued.
/// `headline` and `details` are what the email says (for a resolution: the facts now).
pub fn alert_json(alert: &Alert, notice: &str, headline: &str, details: &str, public_url: &str) -> Value {
    json!({
        "id": alert.id,
        "notice": notice,
        "rule": alert.rule,
        "state": alert.state.as_str(),
        "severity": alert.severity,
        "subject": alert.subject,
        "summary": alert.summary,
        "headline": headline,
        "details": details,
        "occurrences": alert.occurrences,
        "url": format!("{public_url}/alerts/{}", alert.id),
        "api_url": format!("{public_url}/api/alerts/{}", alert.id),
        "first_seen_at": alert.first_seen_at,
        "last_seen_at": alert.last_seen_at,
        "resolved_at": alert.resolved_at,
        "notified_at": now(),
    })
}

/// The body of one delivery: the alerts of `rows` (one, or several waiting together), or a
/// test message. `title` is the line a chat shows first.
pub fn message(rows: &[OutboxEmail], title: &str, at: UtcTime) -> String {
    let test = rows.iter().all(|r| r.alert_id.is_none());
    let kind = match rows {
        // A test, or Telltale's own notice (`notification_failed`): its kind as stored.
        [one] if test => one.kind.clone(),
        _ if test => "test".to_owned(),
        [one] => one.kind.replacen("alert_", "alert.", 1),
        _ => "alert.digest".to_owned(),
    };
    let alerts: Vec<Value> = if test {
        Vec::new()
    } else {
        rows.iter()
            .map(|r| serde_json::from_str(&r.body_text).unwrap_or(Value::Null))
            .collect()
    };
    let mut text = title.to_owned();
    if test {
        text.push('\n');
        text.push_str(rows.first().map_or("", |r| r.body_text.as_str()));
    }
    for alert in &alerts {
        let link = alert["url"].as_str().unwrap_or_default();
        if let [_] = rows {
            // A chat shows the same facts as the email.
            let headline = alert["headline"].as_str().unwrap_or_default();
            let details = alert["details"].as_str().unwrap_or_default();
            text.push_str(&format!("\n{headline}\n{details}\n{link}"));
        } else {
            let line = match alert["notice"].as_str() {
                Some("resolved") => "RESOLVED",
                Some("reminder") => "STILL FIRING",
                _ => "FIRING",
            };
            let summary = alert["summary"].as_str().unwrap_or_default();
            text.push_str(&format!("\n• {line}: {summary} {link}"));
        }
    }
    json!({
        "type": kind,
        "timestamp": at,
        "text": text,
        "data": { "alerts": alerts },
    })
    .to_string()
}

/// Posts `body` to the endpoint, signed when it has a secret. The error never holds the URL.
pub async fn deliver(
    http: &reqwest::Client,
    endpoint: &AlertWebhook,
    id: &str,
    body: String,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let url = endpoint.url.expose_secret();
    let timestamp = now().0.timestamp();
    let mut request = http
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = &endpoint.secret {
        let key = signing_key(secret.expose_secret())?;
        request = request.header("webhook-signature", signature(&key, id, timestamp, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| unreachable_endpoint(&e, timeout, url))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let answer = response.text().await.unwrap_or_default();
    let answer: String = answer.chars().take(ANSWER_KEPT).collect();
    let answer = crate::redact::redact(answer.trim(), &[url]);
    Err(if answer.is_empty() {
        format!("HTTP {} from the endpoint", status.as_u16())
    } else {
        format!("HTTP {} from the endpoint: {answer}", status.as_u16())
    })
}

/// Why a request got no answer, in the words of its deepest cause ("connection refused"):
/// reqwest's own text ("error sending request") leaves the cause out. Never the URL.
fn unreachable_endpoint(error: &reqwest::Error, timeout: std::time::Duration, url: &str) -> String {
    if error.is_timeout() {
        return format!("the endpoint did not answer within {} s", timeout.as_secs());
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    crate::redact::redact(&format!("could not reach the endpoint: {cause}"), &[url])
}

/// The `webhook-id` of a delivery: the same for every attempt of the same rows, so a
/// receiver can drop a repeat; with each row's queue time, so that ids do not repeat after
/// the database is replaced.
pub fn delivery_id(rows: &[OutboxEmail]) -> String {
    let row_ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{}-{}", r.id, r.created_at.0.timestamp_micros()))
        .collect();
    match row_ids.as_slice() {
        [one] => format!("msg_telltale_{one}"),
        many => {
            let digest = <Sha256 as sha2::Digest>::digest(many.join(",").as_bytes());
            format!("msg_telltale_{}x_{}", many.len(), hex::encode(&digest[..8]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_standard_webhooks_keys() {
        assert_eq!(
            signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .len(),
            24
        );
        assert!(
            signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_err()
                .contains("whsec_")
        );
        assert!(signing_key("whsec_!!!").unwrap_err().contains("base64"));
        assert!(signing_key("whsec_c2hvcnQ=").unwrap_err().contains("5 bytes"));
    }

    /// A known answer, computed independently with Python's `hmac` and `base64`.
    #[test]
    fn the_signature_is_a_base64_hmac_of_id_timestamp_and_body() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
