//! Notification channels: where alerts go (the SMTP server, the sender, on-call and per-rule
//! recipients, alert webhook endpoints). Each is set in the config or environment, or in
//! Settings → Notifications, which keeps it in `app_settings` with every secret sealed. A
//! configured value wins: the UI shows it read-only with its variable. Every replica reads the
//! UI's values through a cache that lives `CHANNELS_TTL`, so a change made on one replica
//! applies on all of them within seconds, without a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::settings::{AlertsConfig, EmailConfig};
use super::webhook::{AlertWebhook, signing_key};
use crate::config::{check_mailbox, valid_source_name};
use crate::crypto::Crypto;
use crate::storage::{AlertRule, Db, StorageError, app_settings};

const KEY: &str = "notification_channels";
/// The associated data of each sealed secret.
const SECRET_COLUMN: &str = "app_settings.notification_channels";
/// How long a replica uses the channels it read before reading them again.
pub const CHANNELS_TTL: Duration = Duration::from_secs(5);
/// The sender when neither the config nor the UI names one.
pub const DEFAULT_FROM: &str = "Telltale <telltale@localhost>";

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (usually port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    Starttls,
    /// No encryption: only for a relay on the same host or network (port 25).
    None,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::Tls => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        }
    }
}

/// What the UI saved, secrets sealed (hex).
#[derive(Serialize, Deserialize, Clone, Default)]
struct Stored {
    #[serde(default)]
    smtp: Option<StoredSmtp>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    on_call: Vec<String>,
    #[serde(default)]
    recipients: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    webhooks: Vec<StoredWebhook>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "form", rename_all = "snake_case")]
enum StoredSmtp {
    Url {
        url: String,
    },
    Server {
        host: String,
        port: u16,
        tls: TlsMode,
        user: Option<String>,
        password: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredWebhook {
    name: String,
    url: String,
    secret: Option<String>,
    rules: Vec<String>,
}

/// An SMTP server ready to send, and the parts of its settings no message may repeat.
pub struct SmtpServer {
    pub transport: AsyncSmtpTransport<Tokio1Executor>,
    pub hide: Vec<String>,
}

/// Where notifications go now: the config's values over the UI's.
pub struct Channels {
    pub smtp: Option<SmtpServer>,
    pub from: Mailbox,
    pub on_call: Vec<String>,
    pub recipients: BTreeMap<String, Vec<String>>,
    pub webhooks: Vec<AlertWebhook>,
}

impl Channels {
    /// The addresses alerts of `rule` go to: the rule's own, else on-call.
    pub fn recipients_of(&self, rule: &str) -> &[String] {
        self.recipients.get(rule).unwrap_or(&self.on_call)
    }

    /// Whether email reaches on-call: an SMTP server and at least one on-call address.
    pub fn emails_on_call(&self) -> bool {
        self.smtp.is_some() && !self.on_call.is_empty()
    }

    /// The channels that can deliver an alert: (email 0 or 1, webhook endpoints).
    pub fn counts(&self) -> (usize, usize) {
        (usize::from(self.emails_on_call()), self.webhooks.len())
    }
}

/// Where a value shown on Settings → Notifications comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file or the environment: read-only in the UI.
    Config,
    Ui,
    Default,
}

/// A value the config or environment sets wins over the UI's: the value in force and where it
/// comes from (`merge` uses the value, `view` shows both).
fn in_force<'a, T: ?Sized>(configured: Option<&'a T>, stored: Option<&'a T>) -> (Option<&'a T>, Origin) {
    match (configured, stored) {
        (Some(value), _) => (Some(value), Origin::Config),
        (None, Some(value)) => (Some(value), Origin::Ui),
        (None, None) => (None, Origin::Default),
    }
}

/// An address list that is set: an empty one counts as not set.
fn listed(list: &[String]) -> Option<&[String]> {
    (!list.is_empty()).then_some(list)
}

/// One value as Settings shows it, with the variable that sets it in the environment.
#[derive(Debug, Clone, Serialize)]
pub struct Shown<T> {
    pub value: T,
    pub origin: Origin,
    pub env: &'static str,
}

/// The SMTP server as Settings shows it: never its password or URL.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SmtpView {
    pub origin: Option<Origin>,
    pub env: &'static str,
    /// `url` (entered as one URL) or `server` (host, port, …).
    pub form: &'static str,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    pub user: Option<String>,
    pub password_set: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleRecipients {
    pub rule: &'static str,
    /// Empty: the rule's alerts go to on-call.
    pub addresses: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub name: String,
    pub signed: bool,
    /// Empty: every rule.
    pub rules: Vec<String>,
    pub origin: Origin,
}

/// Settings → Notifications and `GET /api/notifications`: every channel, never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelsView {
    pub smtp: SmtpView,
    pub from: Shown<String>,
    pub on_call: Shown<Vec<String>>,
    pub recipients: Vec<RuleRecipients>,
    pub webhooks: Vec<WebhookView>,
    /// Whether an alert email reaches anyone now.
    pub email_reaches_on_call: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is set in the config or environment, which wins; change it there")]
    SetInConfig(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the stored notification settings cannot be read: {0}")]
    Unreadable(String),
}

/// `PUT /api/notifications/smtp`: a URL, or the server's parts. An empty password keeps the
/// stored one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpForm {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<TlsMode>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `PUT /api/notifications/recipients`: replaces the sender, on-call and per-rule recipients
/// entered in the UI (a value left out is cleared).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsForm {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub on_call: Option<AddressList>,
    #[serde(default)]
    pub recipients: BTreeMap<String, AddressList>,
}

/// `PUT /api/notifications/webhooks`: adds an endpoint or changes one (an empty URL or secret
/// keeps the stored one).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookForm {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub rules: Option<AddressList>,
}

/// Addresses (or rule names) as a list or as comma-separated text, as a form sends them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AddressList {
    List(Vec<String>),
    Text(String),
}

impl AddressList {
    fn items(&self) -> Vec<String> {
        let parts: Vec<&str> = match self {
            AddressList::List(list) => list.iter().flat_map(|s| s.split(',')).collect(),
            AddressList::Text(text) => text.split(',').collect(),
        };
        parts
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    match Option::<Port>::deserialize(d)? {
        None => Ok(None),
        Some(Port::Number(n)) => Ok(Some(n)),
        Some(Port::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(Port::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("port: {t:?} is not a port number"))),
    }
}

/// What the config and environment set, as the merge needs it.
struct Configured {
    smtp_url: Option<SecretString>,
    from: Option<String>,
    on_call: Vec<String>,
    recipients: BTreeMap<String, Vec<String>>,
    webhooks: Vec<AlertWebhook>,
    timeout: Duration,
}

/// The notification channels of this process: the config's, and the UI's read through a cache.
pub struct NotificationChannels {
    db: Db,
    crypto: Arc<Crypto>,
    configured: Configured,
    cached: RwLock<Option<(Instant, Arc<Channels>)>>,
    /// `telltale_notification_channels`, set whenever the channels are read.
    gauge: prometheus::IntGaugeVec,
}

impl NotificationChannels {
    pub fn new(
        db: Db,
        crypto: Arc<Crypto>,
        email: &EmailConfig,
        alerts: &AlertsConfig,
        gauge: prometheus::IntGaugeVec,
    ) -> NotificationChannels {
        let channels = NotificationChannels {
            db,
            crypto,
            configured: Configured {
                smtp_url: email.smtp_url.clone(),
                from: email.from.clone(),
                on_call: email.on_call.clone(),
                recipients: alerts.recipients.clone(),
                webhooks: alerts.webhooks.clone(),
                timeout: email.timeout_secs,
            },
            cached: RwLock::default(),
            gauge,
        };
        // Until the database is read, the gauge shows what the config alone reaches.
        if let Ok(configured) = channels.merge(&Stored::default()) {
            channels.set_gauge(&configured);
        }
        channels
    }

    fn set_gauge(&self, channels: &Channels) {
        let (email, webhooks) = channels.counts();
        self.gauge.with_label_values(&["email"]).set(email as i64);
        self.gauge.with_label_values(&["webhook"]).set(webhooks as i64);
    }

    /// The channels now. When the UI's cannot be read (database down), the last ones read.
    pub async fn current(&self) -> Arc<Channels> {
        let last = self.cached.read().ok().and_then(|c| c.clone());
        if let Some((read_at, channels)) = &last
            && read_at.elapsed() < CHANNELS_TTL
        {
            return channels.clone();
        }
        let merged = match self.load().await.and_then(|stored| self.merge(&stored)) {
            Ok(channels) => Arc::new(channels),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the notification settings entered in the UI; using the last ones read");
                match last {
                    Some((_, channels)) => channels,
                    None => match self.merge(&Stored::default()) {
                        Ok(channels) => Arc::new(channels),
                        Err(_) => Arc::new(self.bare()),
                    },
                }
            }
        };
        self.set_gauge(&merged);
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some((Instant::now(), merged.clone()));
        }
        merged
    }

    /// No channel at all (only when even the config's cannot be built, which start-up checks).
    fn bare(&self) -> Channels {
        Channels {
            smtp: None,
            from: DEFAULT_FROM
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid mailbox")),
            on_call: Vec::new(),
            recipients: BTreeMap::new(),
            webhooks: Vec::new(),
        }
    }

    async fn load(&self) -> Result<Stored, ChannelsError> {
        match app_settings::get(&self.db, KEY).await? {
            None => Ok(Stored::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| ChannelsError::Unreadable(e.to_string())),
        }
    }

    async fn write(&self, stored: &Stored) -> Result<(), ChannelsError> {
        let text = serde_json::to_string(stored).map_err(|e| ChannelsError::Unreadable(e.to_string()))?;
        app_settings::put(&self.db, KEY, &text).await?;
        // This replica applies it at once; the others within `CHANNELS_TTL`.
        if let Ok(mut cached) = self.cached.write() {
            *cached = None;
        }
        Ok(())
    }

    fn seal(&self, secret: &str) -> String {
        hex::encode(self.crypto.encrypt_str(SECRET_COLUMN, secret))
    }

    fn unseal(&self, sealed: &str) -> Result<String, ChannelsError> {
        let bytes = hex::decode(sealed).map_err(|e| ChannelsError::Unreadable(e.to_string()))?;
        self.crypto
            .decrypt_string(SECRET_COLUMN, &bytes)
            .map_err(|e| ChannelsError::Unreadable(e.to_string()))
    }

    /// The config's values over the UI's.
    fn merge(&self, stored: &Stored) -> Result<Channels, ChannelsError> {
        let configured = &self.configured;
        let smtp = match (&configured.smtp_url, &stored.smtp) {
            (Some(url), _) => Some(smtp_from_url(url.expose_secret(), configured.timeout)?),
            (None, Some(ui)) => Some(self.open_smtp(ui)?),
            (None, None) => None,
        };
        let from = in_force(configured.from.as_deref(), stored.from.as_deref())
            .0
            .unwrap_or(DEFAULT_FROM);
        let mut recipients = stored.recipients.clone();
        recipients.extend(configured.recipients.clone());
        let mut webhooks = configured.webhooks.clone();
        for hook in &stored.webhooks {
            if webhooks.iter().any(|w| w.name == hook.name) {
                continue;
            }
            webhooks.push(AlertWebhook {
                name: hook.name.clone(),
                url: SecretString::from(self.unseal(&hook.url)?),
                secret: hook
                    .secret
                    .as_deref()
                    .map(|s| self.unseal(s).map(SecretString::from))
                    .transpose()?,
                rules: hook.rules.clone(),
            });
        }
        Ok(Channels {
            smtp,
            from: from.parse().map_err(|_| {
                ChannelsError::Invalid(format!("the sender {from:?} is not an email address"))
            })?,
            on_call: in_force(listed(&configured.on_call), listed(&stored.on_call))
                .0
                .unwrap_or_default()
                .to_vec(),
            recipients,
            webhooks,
        })
    }

    fn open_smtp(&self, stored: &StoredSmtp) -> Result<SmtpServer, ChannelsError> {
        match stored {
            StoredSmtp::Url { url } => smtp_from_url(&self.unseal(url)?, self.configured.timeout),
            StoredSmtp::Server {
                host,
                port,
                tls,
                user,
                password,
            } => {
                let password = password.as_deref().map(|p| self.unseal(p)).transpose()?;
                smtp_from_parts(
                    host,
                    *port,
                    *tls,
                    user.as_deref(),
                    password.as_deref(),
                    self.configured.timeout,
                )
            }
        }
    }

    /// Every channel for Settings and the API: where each value comes from, never a secret.
    pub async fn view(&self) -> Result<ChannelsView, ChannelsError> {
        let stored = self.load().await?;
        let configured = &self.configured;
        let (from, from_origin) = in_force(configured.from.as_deref(), stored.from.as_deref());
        let from = Shown {
            value: from.unwrap_or(DEFAULT_FROM).to_owned(),
            origin: from_origin,
            env: "TELLTALE_EMAIL_FROM",
        };
        let (on_call, on_call_origin) = in_force(listed(&configured.on_call), listed(&stored.on_call));
        let on_call = Shown {
            value: on_call.unwrap_or_default().to_vec(),
            origin: on_call_origin,
            env: "TELLTALE_ONCALL_EMAILS",
        };
        let recipients = AlertRule::ALL
            .iter()
            .map(|rule| {
                let rule = rule.as_str();
                let (addresses, origin) =
                    in_force(configured.recipients.get(rule), stored.recipients.get(rule));
                RuleRecipients {
                    rule,
                    addresses: addresses.cloned().unwrap_or_default(),
                    origin,
                }
            })
            .collect();
        let webhooks = configured
            .webhooks
            .iter()
            .map(|w| (w, Origin::Config))
            .map(|(w, origin)| WebhookView {
                name: w.name.clone(),
                signed: w.secret.is_some(),
                rules: w.rules.clone(),
                origin,
            })
            .chain(
                stored
                    .webhooks
                    .iter()
                    .filter(|s| !configured.webhooks.iter().any(|w| w.name == s.name))
                    .map(|s| WebhookView {
                        name: s.name.clone(),
                        signed: s.secret.is_some(),
                        rules: s.rules.clone(),
                        origin: Origin::Ui,
                    }),
            )
            .collect();
        let channels = self.current().await;
        Ok(ChannelsView {
            smtp: self.smtp_view(&stored),
            from,
            on_call,
            recipients,
            webhooks,
            email_reaches_on_call: channels.emails_on_call(),
        })
    }

    fn smtp_view(&self, stored: &Stored) -> SmtpView {
        let env = "SMTP_URL";
        if let Some(url) = &self.configured.smtp_url {
            return url_view(url.expose_secret(), Origin::Config);
        }
        match &stored.smtp {
            None => SmtpView {
                env,
                ..SmtpView::default()
            },
            Some(StoredSmtp::Url { url }) => match self.unseal(url) {
                Ok(url) => url_view(&url, Origin::Ui),
                Err(_) => SmtpView {
                    origin: Some(Origin::Ui),
                    env,
                    form: "url",
                    ..SmtpView::default()
                },
            },
            Some(StoredSmtp::Server {
                host,
                port,
                tls,
                user,
                password,
            }) => SmtpView {
                origin: Some(Origin::Ui),
                env,
                form: "server",
                host: Some(host.clone()),
                port: Some(*port),
                tls: Some(*tls),
                user: user.clone(),
                password_set: password.is_some(),
            },
        }
    }

    /// Saves the SMTP server entered in the UI, after checking that it can be used.
    pub async fn save_smtp(&self, form: &SmtpForm) -> Result<(), ChannelsError> {
        if self.configured.smtp_url.is_some() {
            return Err(ChannelsError::SetInConfig("the SMTP server (SMTP_URL)".into()));
        }
        let mut stored = self.load().await?;
        let timeout = self.configured.timeout;
        stored.smtp = Some(if let Some(url) = filled_in(&form.url) {
            smtp_from_url(&url, timeout)?;
            StoredSmtp::Url { url: self.seal(&url) }
        } else {
            let host = filled_in(&form.host).ok_or_else(|| {
                ChannelsError::Invalid("host: give the SMTP server's host name (or a URL)".into())
            })?;
            let tls = form.tls.unwrap_or(TlsMode::Starttls);
            let port = form.port.unwrap_or_else(|| tls.default_port());
            let user = filled_in(&form.user);
            let password = match (filled_in(&form.password), &stored.smtp) {
                (Some(new), _) => Some(self.seal(&new)),
                (None, Some(StoredSmtp::Server { password, .. })) if user.is_some() => password.clone(),
                (None, _) => None,
            };
            if user.is_some() && password.is_none() {
                return Err(ChannelsError::Invalid(
                    "password: give the SMTP user's password".into(),
                ));
            }
            let opened = password.as_deref().map(|p| self.unseal(p)).transpose()?;
            smtp_from_parts(&host, port, tls, user.as_deref(), opened.as_deref(), timeout)?;
            StoredSmtp::Server {
                host,
                port,
                tls,
                user,
                password,
            }
        });
        self.write(&stored).await
    }

    /// Forgets the SMTP server entered in the UI; whether there was one.
    pub async fn clear_smtp(&self) -> Result<bool, ChannelsError> {
        if self.configured.smtp_url.is_some() {
            return Err(ChannelsError::SetInConfig("the SMTP server (SMTP_URL)".into()));
        }
        let mut stored = self.load().await?;
        if stored.smtp.take().is_none() {
            return Ok(false);
        }
        self.write(&stored).await?;
        Ok(true)
    }

    /// Replaces the sender, on-call list and per-rule recipients entered in the UI.
    pub async fn save_recipients(&self, form: &RecipientsForm) -> Result<(), ChannelsError> {
        let configured = &self.configured;
        let from = form.from.as_deref().map(str::trim).filter(|f| !f.is_empty());
        if let Some(from) = from {
            if configured.from.is_some() {
                return Err(ChannelsError::SetInConfig(
                    "the sender (TELLTALE_EMAIL_FROM)".into(),
                ));
            }
            check_mailbox(from).map_err(|m| ChannelsError::Invalid(format!("from: {m}")))?;
        }
        let on_call = form.on_call.as_ref().map(AddressList::items).unwrap_or_default();
        if !on_call.is_empty() && !configured.on_call.is_empty() {
            return Err(ChannelsError::SetInConfig(
                "the on-call list (TELLTALE_ONCALL_EMAILS)".into(),
            ));
        }
        checked_addresses("on_call", &on_call)?;
        let mut recipients = BTreeMap::new();
        for (rule, list) in &form.recipients {
            if rule.parse::<AlertRule>().is_err() {
                return Err(ChannelsError::Invalid(format!(
                    "recipients: unknown rule {rule:?}"
                )));
            }
            let addresses = list.items();
            if addresses.is_empty() {
                continue;
            }
            if configured.recipients.contains_key(rule) {
                return Err(ChannelsError::SetInConfig(format!(
                    "the recipients of {rule} (alerts.recipients in the config file)"
                )));
            }
            checked_addresses(rule, &addresses)?;
            recipients.insert(rule.clone(), addresses);
        }
        let mut stored = self.load().await?;
        stored.from = from.map(str::to_owned);
        stored.on_call = on_call;
        stored.recipients = recipients;
        self.write(&stored).await
    }

    /// Adds or changes an alert webhook endpoint entered in the UI.
    pub async fn save_webhook(&self, form: &WebhookForm) -> Result<(), ChannelsError> {
        let name = form.name.trim();
        if !valid_source_name(name) {
            return Err(ChannelsError::Invalid(
                "name: 1-64 letters, digits, '-' or '_'".into(),
            ));
        }
        if self.configured.webhooks.iter().any(|w| w.name == name) {
            return Err(ChannelsError::SetInConfig(format!("the endpoint {name:?}")));
        }
        let rules = form.rules.as_ref().map(AddressList::items).unwrap_or_default();
        if let Some(rule) = rules.iter().find(|r| r.parse::<AlertRule>().is_err()) {
            return Err(ChannelsError::Invalid(format!("rules: unknown rule {rule:?}")));
        }
        let mut stored = self.load().await?;
        let at = stored.webhooks.iter().position(|w| w.name == name);
        let old = at.map(|i| stored.webhooks.remove(i));
        let url = match (filled_in(&form.url), &old) {
            (Some(url), _) => {
                super::settings::check_http_url(&SecretString::from(url.clone()))
                    .map_err(ChannelsError::Invalid)?;
                self.seal(&url)
            }
            (None, Some(old)) => old.url.clone(),
            (None, None) => return Err(ChannelsError::Invalid("url: give the endpoint's URL".into())),
        };
        let secret = match (filled_in(&form.secret), &old) {
            (Some(secret), _) => {
                signing_key(&secret).map_err(|m| ChannelsError::Invalid(format!("secret: {m}")))?;
                Some(self.seal(&secret))
            }
            (None, Some(old)) => old.secret.clone(),
            (None, None) => None,
        };
        // A changed endpoint keeps its place in the list.
        stored.webhooks.insert(
            at.unwrap_or(stored.webhooks.len()),
            StoredWebhook {
                name: name.to_owned(),
                url,
                secret,
                rules,
            },
        );
        self.write(&stored).await
    }

    /// Removes an endpoint entered in the UI.
    pub async fn remove_webhook(&self, name: &str) -> Result<(), ChannelsError> {
        if self.configured.webhooks.iter().any(|w| w.name == name) {
            return Err(ChannelsError::SetInConfig(format!("the endpoint {name:?}")));
        }
        let mut stored = self.load().await?;
        let before = stored.webhooks.len();
        stored.webhooks.retain(|w| w.name != name);
        if stored.webhooks.len() == before {
            return Err(ChannelsError::NotFound(format!(
                "no alert webhook named {name:?}"
            )));
        }
        self.write(&stored).await
    }
}

/// Re-seals the stored secrets with the current key (`telltale rotate-key`); how many changed.
pub async fn reencrypt_secrets(db: &Db, crypto: &Crypto) -> Result<usize, ChannelsError> {
    let Some(text) = app_settings::get(db, KEY).await? else {
        return Ok(0);
    };
    let mut stored: Stored =
        serde_json::from_str(&text).map_err(|e| ChannelsError::Unreadable(e.to_string()))?;
    let mut sealed: Vec<&mut String> = Vec::new();
    match &mut stored.smtp {
        Some(StoredSmtp::Url { url }) => sealed.push(url),
        Some(StoredSmtp::Server {
            password: Some(password),
            ..
        }) => sealed.push(password),
        _ => {}
    }
    for hook in &mut stored.webhooks {
        sealed.push(&mut hook.url);
        sealed.extend(hook.secret.as_mut());
    }
    let changed = crypto
        .reseal_all_hex(SECRET_COLUMN, sealed)
        .map_err(|e| ChannelsError::Unreadable(e.to_string()))?;
    if changed > 0 {
        let text = serde_json::to_string(&stored).map_err(|e| ChannelsError::Unreadable(e.to_string()))?;
        app_settings::put(db, KEY, &text).await?;
    }
    Ok(changed)
}

/// A form field's value when one was typed in (an empty one keeps what is stored).
fn filled_in(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn checked_addresses(field: &str, addresses: &[String]) -> Result<(), ChannelsError> {
    for address in addresses {
        check_mailbox(address).map_err(|m| ChannelsError::Invalid(format!("{field}: {m}")))?;
    }
    Ok(())
}

/// An SMTP URL's server, with the URL and its password kept out of every message.
fn smtp_from_url(url: &str, timeout: Duration) -> Result<SmtpServer, ChannelsError> {
    let mut hide = vec![url.to_owned()];
    if let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        hide.push(password);
    }
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|_| {
        ChannelsError::Invalid(
            "url: not a usable SMTP URL; expected e.g. smtps://user:pass@host:465 or smtp://host:587?tls=required".into(),
        )
    })?;
    Ok(SmtpServer {
        transport: builder.timeout(Some(timeout)).build(),
        hide,
    })
}

fn smtp_from_parts(
    host: &str,
    port: u16,
    tls: TlsMode,
    user: Option<&str>,
    password: Option<&str>,
    timeout: Duration,
) -> Result<SmtpServer, ChannelsError> {
    let refused = |_| ChannelsError::Invalid(format!("host: {host:?} is not a host name TLS can check"));
    let builder = match tls {
        TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(refused)?,
        TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(refused)?,
        TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
    };
    let mut builder = builder.port(port).timeout(Some(timeout));
    let mut hide = Vec::new();
    if let Some(user) = user {
        let password = password.unwrap_or_default();
        hide.push(password.to_owned());
        builder = builder.credentials(Credentials::new(user.to_owned(), password.to_owned()));
    }
    hide.retain(|h| !h.is_empty());
    Ok(SmtpServer {
        transport: builder.build(),
        hide,
    })
}

/// A URL's server as Settings shows it: host, port and user, never the password.
fn url_view(url: &str, origin: Origin) -> SmtpView {
    let parsed = url::Url::parse(url).ok();
    let tls = parsed
        .as_ref()
        .map(|u| match (u.scheme(), u.query().unwrap_or_default()) {
            ("smtps", _) => TlsMode::Tls,
            (_, q) if q.contains("tls=required") => TlsMode::Starttls,
            _ => TlsMode::None,
        });
    SmtpView {
        origin: Some(origin),
        env: "SMTP_URL",
        form: "url",
        host: parsed.as_ref().and_then(|u| u.host_str().map(str::to_owned)),
        port: parsed.as_ref().and_then(url::Url::port),
        tls,
        user: parsed
            .as_ref()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty()),
        password_set: parsed.as_ref().is_some_and(|u| u.password().is_some()),
    }
}
