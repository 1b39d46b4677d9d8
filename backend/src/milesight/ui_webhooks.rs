//! Webhook secrets entered in the web UI. Kept in `app_settings` (each secret sealed), read by
//! every replica's intake through a cache that lives `UI_WEBHOOKS_TTL`, so a secret set or
//! rotated on one replica applies on all of them within seconds, without a restart. Webhooks
//! in the config or environment win: the UI cannot change or shadow them.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{WebhookConfig, valid_source_name};
use crate::crypto::Crypto;
use crate::storage::{Db, StorageError, app_settings};

const KEY: &str = "milesight_webhooks";
/// The associated data of each sealed secret.
const SECRET_COLUMN: &str = "app_settings.milesight_webhooks";
/// How long a replica serves the UI webhooks it read before reading them again.
pub const UI_WEBHOOKS_TTL: Duration = Duration::from_secs(5);

/// One webhook as stored: the secrets sealed, hex-encoded.
#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    source: String,
    uuid: Option<String>,
    secret: String,
    previous_secret: Option<String>,
}

/// A webhook as the settings page shows it: never a secret.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct WebhookView {
    pub source: String,
    /// `None`: the default webhook, used for any uuid not listed.
    pub uuid: Option<String>,
    /// `config` (file or environment; read-only here) or `ui`.
    pub origin: &'static str,
    /// Whether an old secret is still accepted (after a change, for requests MDP retries).
    pub previous_secret: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookSaveError {
    #[error("{0}")]
    Invalid(String),
    #[error("this webhook is set in the config or environment ({0}), which wins; change it there")]
    SetInConfig(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the stored webhook secrets cannot be read: {0}")]
    Unreadable(String),
}

/// Re-seals the webhook secrets entered in the UI with the current key (`telltale
/// rotate-key`); how many changed.
pub async fn reencrypt_secrets(db: &Db, crypto: &Crypto) -> Result<usize, WebhookSaveError> {
    let Some(text) = app_settings::get(db, KEY).await? else {
        return Ok(0);
    };
    let mut stored: Vec<Stored> =
        serde_json::from_str(&text).map_err(|e| WebhookSaveError::Unreadable(e.to_string()))?;
    let sealed = stored
        .iter_mut()
        .flat_map(|hook| std::iter::once(&mut hook.secret).chain(hook.previous_secret.as_mut()));
    let changed = crypto
        .reseal_all_hex(SECRET_COLUMN, sealed)
        .map_err(|e| WebhookSaveError::Unreadable(e.to_string()))?;
    if changed > 0 {
        let text = serde_json::to_string(&stored).map_err(|e| WebhookSaveError::Unreadable(e.to_string()))?;
        app_settings::put(db, KEY, &text).await?;
    }
    Ok(changed)
}

/// The configured webhooks followed by those entered in the UI, cached for `UI_WEBHOOKS_TTL`.
pub struct WebhookSecrets {
    db: Db,
    crypto: Arc<Crypto>,
    configured: Vec<WebhookConfig>,
    cached: RwLock<Option<(Instant, Arc<Vec<WebhookConfig>>)>>,
}

impl WebhookSecrets {
    pub fn new(db: Db, crypto: Arc<Crypto>, configured: Vec<WebhookConfig>) -> WebhookSecrets {
        WebhookSecrets {
            db,
            crypto,
            configured,
            cached: RwLock::default(),
        }
    }

    /// Every webhook, configured ones first (a lookup takes the first match, so they win).
    /// When the UI's cannot be read (database down), the last ones read are used.
    pub async fn all(&self) -> Arc<Vec<WebhookConfig>> {
        let last = self.cached.read().ok().and_then(|c| c.clone());
        if let Some((read_at, hooks)) = &last
            && read_at.elapsed() < UI_WEBHOOKS_TTL
        {
            return hooks.clone();
        }
        let merged = match self.load().await {
            Ok(ui) => {
                let mut hooks = self.configured.clone();
                hooks.extend(ui.into_iter().filter_map(|s| self.open(&s).ok()));
                Arc::new(hooks)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook secrets entered in the UI; using the last ones read");
                last.map(|(_, hooks)| hooks)
                    .unwrap_or_else(|| Arc::new(self.configured.clone()))
            }
        };
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some((Instant::now(), merged.clone()));
        }
        merged
    }

    async fn load(&self) -> Result<Vec<Stored>, WebhookSaveError> {
        match app_settings::get(&self.db, KEY).await? {
            None => Ok(Vec::new()),
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| WebhookSaveError::Unreadable(e.to_string()))
            }
        }
    }

    fn seal(&self, secret: &str) -> String {
        hex::encode(self.crypto.encrypt_str(SECRET_COLUMN, secret))
    }

    fn unseal(&self, sealed: &str) -> Result<SecretString, WebhookSaveError> {
        let bytes = hex::decode(sealed).map_err(|e| WebhookSaveError::Unreadable(e.to_string()))?;
        self.crypto
            .decrypt_string(SECRET_COLUMN, &bytes)
            .map(SecretString::from)
            .map_err(|e| WebhookSaveError::Unreadable(e.to_string()))
    }

    fn open(&self, stored: &Stored) -> Result<WebhookConfig, WebhookSaveError> {
        Ok(WebhookConfig {
            uuid: stored.uuid.clone(),
            secret: self.unseal(&stored.secret)?,
            previous_secret: stored
                .previous_secret
                .as_deref()
                .map(|p| self.unseal(p))
                .transpose()?,
            source: stored.source.clone(),
        })
    }

    /// Every webhook for the settings page (configured, then from the UI).
    pub async fn views(&self) -> Result<Vec<WebhookView>, WebhookSaveError> {
        let configured = self.configured.iter().map(|h| WebhookView {
            source: h.source.clone(),
            uuid: h.uuid.clone(),
            origin: "config",
            previous_secret: h.previous_secret.is_some(),
        });
        let ui = self.load().await?.into_iter().map(|s| WebhookView {
            source: s.source,
            uuid: s.uuid,
            origin: "ui",
            previous_secret: s.previous_secret.is_some(),
        });
        Ok(configured.chain(ui).collect())
    }

    /// Adds or changes the webhook with `uuid` (none: the default webhook). A changed secret
    /// keeps the old one as the previous secret, so requests MDP signed before the change
    /// still verify.
    pub async fn save(&self, source: &str, uuid: Option<&str>, secret: &str) -> Result<(), WebhookSaveError> {
        let uuid = uuid.map(str::trim).filter(|u| !u.is_empty());
        if !valid_source_name(source) {
            return Err(WebhookSaveError::Invalid(
                "source: 1-64 letters, digits, '-' or '_'".into(),
            ));
        }
        if secret.trim().is_empty() {
            return Err(WebhookSaveError::Invalid(
                "secret: paste the webhook's Secret Key from MDP".into(),
            ));
        }
        if self.configured.iter().any(|h| h.uuid.as_deref() == uuid) {
            return Err(WebhookSaveError::SetInConfig(if uuid.is_some() {
                "[[milesight.webhooks]]"
            } else {
                "MILESIGHT_WEBHOOK_SECRET"
            }));
        }
        let mut stored = self.load().await?;
        let previous = match stored.iter().position(|s| s.uuid.as_deref() == uuid) {
            Some(i) => {
                let old = stored.remove(i);
                let unchanged = self.unseal(&old.secret)?.expose_secret() == secret.trim();
                if unchanged {
                    old.previous_secret
                } else {
                    Some(old.secret)
                }
            }
            None => None,
        };
        stored.push(Stored {
            source: source.to_owned(),
            uuid: uuid.map(str::to_owned),
            secret: self.seal(secret.trim()),
            previous_secret: previous,
        });
        self.write(&stored).await
    }

    /// Removes the UI's webhooks of `source`; whether there was one.
    pub async fn remove(&self, source: &str) -> Result<bool, WebhookSaveError> {
        let mut stored = self.load().await?;
        let before = stored.len();
        stored.retain(|s| s.source != source);
        if stored.len() == before {
            return Ok(false);
        }
        self.write(&stored).await?;
        Ok(true)
    }

    async fn write(&self, stored: &[Stored]) -> Result<(), WebhookSaveError> {
        let text = serde_json::to_string(stored).map_err(|e| WebhookSaveError::Unreadable(e.to_string()))?;
        app_settings::put(&self.db, KEY, &text).await?;
        // This replica applies it at once; the others within `UI_WEBHOOKS_TTL`.
        if let Ok(mut cached) = self.cached.write() {
            *cached = None;
        }
        Ok(())
    }
}
