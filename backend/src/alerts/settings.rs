//! The `[email]` and `[alerts]` settings: how on-call is told, and when.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::webhook::{AlertWebhook, DEFAULT_ENDPOINT, signing_key};
use crate::config::setting::{
    FileType, Kind, comma_list, count, flag, optional_text, secret, secs, settings, table_array, text,
};
use crate::config::{ConfigError, check_mailbox, valid_source_name};
use crate::scheduler::settings::schedule;
use crate::storage::AlertRule;

settings! {
    /// Outgoing email (alerts, test emails), delivered through the outbox.
    pub struct EmailConfig in "email" {
        /// SMTP server as a lettre URL (`smtps://user:pass@host:465`, `smtp://host:587?tls=required`);
        /// without one (here or in Settings → Notifications) nothing is sent by email.
        smtp_url: Option<SecretString> = secret(1).check("an SMTP URL", check_smtp_url), env "SMTP_URL";
        /// Sender address.
        from: Option<String> = optional_text().check("an email address", |a: &Option<String>| a.as_deref().map_or(Ok(()), check_mailbox))
            .documented_default("`Telltale <telltale@localhost>`, or Settings → Notifications"), env "TELLTALE_EMAIL_FROM";
        /// The default on-call recipients (when unset, Settings → Notifications can set them).
        on_call: Vec<String> = comma_list("", "comma-separated email addresses", check_mailbox), env "TELLTALE_ONCALL_EMAILS";
        /// SMTP connection and command timeout.
        timeout_secs: Duration = secs(30, 1..=600), env "TELLTALE_SMTP_TIMEOUT_SECS";
        /// When the outbox is delivered.
        outbox_schedule: String = schedule("*/10 * * * * *"), env "TELLTALE_OUTBOX_SCHEDULE";
        /// First delay before a failed email is tried again; it doubles up to an hour.
        retry_base_secs: Duration = secs(30, 1..=3600), env "TELLTALE_EMAIL_RETRY_BASE_SECS";
    }
}

settings! {
    /// Alert rules and notifications.
    pub struct AlertsConfig in "alerts" {
        /// When the alert rules are applied.
        evaluation_schedule: String = schedule("*/30 * * * * *"), env "TELLTALE_ALERT_EVALUATION_SCHEDULE";
        /// Token refresh failures in a row that open an alert.
        refresh_failures: i32 = count(3, 1..=1000), env "TELLTALE_ALERT_REFRESH_FAILURES";
        /// Failed polls in a row (per connection and endpoint) that open an alert.
        poll_failures: i32 = count(3, 1..=1000), env "TELLTALE_ALERT_POLL_FAILURES";
        /// More offline devices than this in one webhook source open one `devices_offline` alert
        /// for the source (with the count and the list) instead of one alert per device.
        device_offline_group_threshold: usize = count(20, 1..=1_000_000), env "TELLTALE_ALERT_DEVICE_OFFLINE_GROUP_THRESHOLD";
        /// A token with less runway than this (and not being renewed) opens an alert.
        runway_secs: Duration = secs(120, 1..=30 * 86_400), env "TELLTALE_ALERT_RUNWAY_SECS";
        /// Email when an alert resolves.
        notify_resolved: bool = flag(true), env "TELLTALE_ALERT_NOTIFY_RESOLVED";
        /// How long a notification (email or alert webhook) is retried; past it, it is given up
        /// as failed, shown in the outbox and its alert's history, counted, and announced
        /// through the other channels.
        notification_max_age_secs: Duration = secs(86_400, 1..=30 * 86_400), env "TELLTALE_ALERT_NOTIFICATION_MAX_AGE_SECS";
        /// Reminders while an alert stays firing: after the first email, then after each
        /// reminder; the last delay repeats.
        reminders: Vec<Duration> = reminders("1h, 4h, 24h"), env "TELLTALE_ALERT_REMINDERS";
        /// Where the links in emails point (the web UI / API base URL).
        public_url: String = text("").check("an http(s) URL", check_public_url)
            .documented_default("`http://` + `listen`"), env "TELLTALE_PUBLIC_URL";
        /// How long an alert email waits so that others changing meanwhile join it in one email.
        group_wait_secs: Duration = secs(30, 0..=3600), env "TELLTALE_ALERT_GROUP_WAIT_SECS";
        /// Recipients by rule (`device_offline = "a@x.com, b@x.com"`) instead of `email.on_call`.
        recipients: BTreeMap<String, Vec<String>> = recipients();
        /// A webhook endpoint (named `default`) that gets every alert notification as JSON, e.g.
        /// a Slack incoming webhook or your own receiver; the URL is treated as a secret.
        webhook_url: Option<SecretString> = secret(1).check("an http(s) URL", check_webhook_url), env "TELLTALE_ALERT_WEBHOOK_URL";
        /// Signing secret of the `default` endpoint (Standard Webhooks: `whsec_` + base64);
        /// without one its requests are unsigned.
        webhook_secret: Option<SecretString> = secret(1).check("`whsec_` + base64 of 16-64 bytes", check_webhook_secret), env "TELLTALE_ALERT_WEBHOOK_SECRET";
        /// `[[alerts.webhooks]]` entries (`name`, `url`, `secret`, `rules`): more endpoints, each
        /// with its own secret and optionally only some rules; the `default` endpoint joins them.
        webhooks: Vec<AlertWebhook> = table_array("an array of tables", show_webhooks);
        /// Timeout of each webhook delivery (a failed one is retried like an email).
        webhook_timeout_secs: Duration = secs(10, 1..=60), env "TELLTALE_ALERT_WEBHOOK_TIMEOUT_SECS";
    }
}

impl AlertsConfig {
    /// The public URL defaults to the listen address; links are built without a trailing slash.
    pub fn resolve(&mut self, listen: SocketAddr) {
        if self.public_url.is_empty() {
            self.public_url = format!("http://{listen}");
        }
        self.public_url = self.public_url.trim_end_matches('/').to_owned();
    }

    /// Checks the webhook endpoints and adds the `default` one (from `webhook_url`) to them.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            let at = |problem: String| Self::key_error("webhooks", format!("entry {}: {problem}", i + 1));
            if !valid_source_name(&hook.name) || hook.name == DEFAULT_ENDPOINT {
                return Err(at(format!(
                    "name must be 1-64 letters, digits, '-' or '_', and not {DEFAULT_ENDPOINT:?} (that is alerts.webhook_url)"
                )));
            }
            if seen.contains(&hook.name.as_str()) {
                return Err(at(format!("name {:?} is listed twice", hook.name)));
            }
            seen.push(&hook.name);
            check_http_url(&hook.url).map_err(at)?;
            if let Some(secret) = &hook.secret {
                signing_key(secret.expose_secret()).map_err(|m| at(format!("secret: {m}")))?;
            }
            if let Some(rule) = hook.rules.iter().find(|r| r.parse::<AlertRule>().is_err()) {
                return Err(at(format!(
                    "unknown rule {rule:?}; the rules are {}",
                    rule_names()
                )));
            }
        }
        match (&self.webhook_url, &self.webhook_secret) {
            (Some(url), secret) => self.webhooks.push(AlertWebhook {
                name: DEFAULT_ENDPOINT.into(),
                url: url.clone(),
                secret: secret.clone(),
                rules: Vec::new(),
            }),
            (None, Some(_)) => {
                return Err(Self::key_error(
                    "webhook_secret",
                    "set only together with alerts.webhook_url",
                ));
            }
            (None, None) => {}
        }
        Ok(())
    }
}

fn check_webhook_url(url: &Option<SecretString>) -> Result<(), String> {
    url.as_ref().map_or(Ok(()), check_http_url)
}

pub(crate) fn check_http_url(url: &SecretString) -> Result<(), String> {
    // The message never repeats the URL: a Slack webhook URL is itself the credential.
    match url::Url::parse(url.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err("url is not an http(s) URL".into()),
    }
}

fn check_webhook_secret(secret: &Option<SecretString>) -> Result<(), String> {
    secret
        .as_ref()
        .map_or(Ok(()), |s| signing_key(s.expose_secret()).map(|_| ()))
}

fn show_webhooks(hooks: &[AlertWebhook]) -> String {
    let entries: Vec<String> = hooks
        .iter()
        .filter(|h| h.name != DEFAULT_ENDPOINT)
        .map(|h| {
            format!(
                "{{ name = {:?}, url = \"********\", {}rules = {:?} }}",
                h.name,
                if h.secret.is_some() {
                    "secret = \"********\", "
                } else {
                    ""
                },
                h.rules
            )
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

fn check_smtp_url(url: &Option<SecretString>) -> Result<(), String> {
    let Some(url) = url else { return Ok(()) };
    let url = url.expose_secret();
    // Checked now so a typo fails at start-up, not at 3 a.m.; the message never repeats the URL.
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not a usable SMTP URL ({}); expected e.g. smtps://user:pass@host:465 or smtp://host:587?tls=required",
                crate::redact::redact(&e.to_string(), &[url])
            )
        })
}

fn check_public_url(url: &String) -> Result<(), String> {
    if url.is_empty() || url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http(s) URL"))
    }
}

fn parse_reminders(text: &str) -> Result<Vec<Duration>, String> {
    let mut delays = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (number, unit) = part.split_at(part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len()));
        let secs = match (number.parse::<u64>(), unit) {
            (Ok(n), "s") => n,
            (Ok(n), "m") => n * 60,
            (Ok(n), "h") => n * 3600,
            (Ok(n), "d") => n * 86_400,
            _ => 0,
        };
        if secs == 0 {
            return Err(format!(
                "{part:?} is not a delay; expected a list such as \"1h, 4h, 24h\" (units s, m, h, d)"
            ));
        }
        delays.push(Duration::from_secs(secs));
    }
    if delays.is_empty() {
        return Err("give at least one delay, e.g. \"1h, 4h, 24h\"".into());
    }
    Ok(delays)
}

fn reminders(default: &str) -> Kind<Vec<Duration>> {
    Kind::new(
        FileType::String,
        parse_reminders(default).unwrap_or_default(),
        default,
        "delays such as `1h, 4h, 24h` (units s, m, h, d)",
        parse_reminders,
        |delays| {
            let shown: Vec<String> = delays.iter().map(|d| format!("{}s", d.as_secs())).collect();
            format!("{:?}", shown.join(", "))
        },
    )
}

/// `[alerts.recipients]`: each key a rule the evaluator knows, each value a list of addresses.
fn recipients() -> Kind<BTreeMap<String, Vec<String>>> {
    Kind::new(
        FileType::Structured,
        BTreeMap::new(),
        "none",
        "a table of rule = addresses",
        |_| Err("can only be set in the config file".into()),
        |map: &BTreeMap<String, Vec<String>>| {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {:?}", v.join(", ")))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        },
    )
    .file_parser(|value| {
        let table = value
            .as_table()
            .ok_or_else(|| "invalid type: expected a table of rule = \"addresses\"".to_owned())?;
        let mut map = BTreeMap::new();
        for (rule, list) in table {
            if rule.parse::<AlertRule>().is_err() {
                return Err(format!("unknown rule {rule:?}; the rules are {}", rule_names()));
            }
            let list = list
                .as_str()
                .ok_or_else(|| format!("{rule}: invalid type: expected a string of addresses"))?;
            let addresses: Vec<String> = list
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect();
            for address in &addresses {
                check_mailbox(address).map_err(|m| format!("{rule}: {m}"))?;
            }
            if addresses.is_empty() {
                return Err(format!("{rule}: give at least one address"));
            }
            map.insert(rule.clone(), addresses);
        }
        Ok(map)
    })
}

/// Every rule's name, for error messages.
fn rule_names() -> String {
    AlertRule::ALL
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
