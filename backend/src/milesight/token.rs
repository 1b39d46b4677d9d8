//! The Milesight OpenAPI token, as the rest of the Milesight code sees it.
//!
//! The token is one connection of the refresh engine (`tokens`): provider
//! `oauth2_client_credentials` with the `milesight` preset, owned by the system account, with
//! the client id and secret from config. The engine refreshes it like every other token (sweeps,
//! start-up, manual, one log, one status API); this module keeps the connection in step with
//! the config, hands callers a usable token (refreshing on demand), and shapes the
//! `/api/milesight/token` view.

use std::sync::{Arc, RwLock};

use secrecy::ExposeSecret;
use serde::Serialize;

use super::settings::MilesightConfig;
use crate::config::MilesightApi;
use crate::crypto::Crypto;
use crate::providers::oauth2_client_credentials::{KIND, MILESIGHT_PRESET};
use crate::storage::connections::{self, Connection, ConnectionUpdate};
use crate::storage::{ConnectionStatus, RefreshOutcome, TokenHealth};
use crate::storage::{Db, StorageError, UtcTime, now};
use crate::tokens::{ConnectionResult, RefreshEngine};

/// The key Milesight API requests are counted under (`api_usage`), token requests included.
pub const PROVIDER: &str = "milesight";
pub const SYSTEM_ACCOUNT: &str = "telltale";
pub const CONNECTION_NAME: &str = "milesight";

/// Why a refresh was attempted (recorded in the refresh log).
pub use crate::storage::RefreshTrigger as Trigger;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the Milesight OpenAPI is not configured (milesight.base_url, client_id, client_secret)")]
    NotConfigured,
    #[error("Milesight refused the client credentials; fix them, then refresh by hand or restart")]
    InvalidCredentials,
    #[error("Milesight token request failed: {0}")]
    Upstream(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone)]
struct Cached {
    access_token: String,
    expires_at: UtcTime,
}

/// What `GET /api/milesight/token` reports. Never the token itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenStatus {
    /// `valid`, `expiring` (within the lead time), `expired`, `invalid_credentials` or `missing`.
    pub status: &'static str,
    pub configured: bool,
    /// Where the application's settings come from: `config` (file or environment, which win)
    /// or `ui` (entered on the settings page); null when not configured.
    pub origin: Option<ApiOrigin>,
    /// The connection in `/api/connections` and `/api/tokens/status`.
    pub connection_id: Option<i64>,
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub expires_at: Option<UtcTime>,
    pub last_refreshed_at: Option<UtcTime>,
    pub last_attempt_at: Option<UtcTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: i32,
    /// The token's last characters, to tell tokens apart.
    pub token_fingerprint: Option<String>,
}

/// Where the OpenAPI application's settings come from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApiOrigin {
    /// The config file or the environment: these win, and the UI shows them read-only.
    Config,
    /// Entered in the web UI and kept (the secret sealed) in the Milesight connection's row,
    /// which every replica reads, so a change applies everywhere without a restart.
    Ui,
}

/// The `origin` setting that marks a Milesight connection entered in the UI (a row left by a
/// config that has since been removed is not used).
const UI_ORIGIN: &str = "ui";

/// Why settings from the UI were not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "the OpenAPI application is set in the config or environment (MILESIGHT_BASE_URL, MILESIGHT_CLIENT_ID, MILESIGHT_CLIENT_SECRET), which wins; change it there"
    )]
    SetInConfig,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Hands out the Milesight token. Keeps the last one read from the database, so callers do
/// not decrypt it on every request; refreshes go through the refresh engine.
pub struct TokenKeeper {
    db: Db,
    crypto: Arc<Crypto>,
    settings: MilesightConfig,
    engine: Arc<RefreshEngine>,
    cached: RwLock<Option<Cached>>,
    /// The connection's id once it has been brought in step with the config: later calls only
    /// read it (a burst of callers must not each write the row).
    synced_id: tokio::sync::Mutex<Option<i64>>,
}

/// The Milesight connection's settings: the preset, the client id, and the `[milesight]`
/// values the refresh engine reads from the connection (lead time, attempts, timeout, quota).
fn connection_settings(config: &MilesightConfig, client_id: &str) -> serde_json::Value {
    serde_json::json!({
        "preset": MILESIGHT_PRESET,
        "client_id": client_id,
        "lead_secs": config.token_lead_secs.as_secs(),
        "max_attempts": config.token_max_attempts,
        "request_timeout_secs": config.request_timeout_secs.as_secs(),
        "quota_key": PROVIDER,
    })
}

/// Whether a connection is the Milesight OpenAPI token.
pub fn is_milesight(connection: &Connection) -> bool {
    connection.provider == KIND && connection.settings.text("preset") == Some(MILESIGHT_PRESET)
}

impl TokenKeeper {
    pub fn new(
        db: Db,
        crypto: Arc<Crypto>,
        settings: &MilesightConfig,
        engine: Arc<RefreshEngine>,
    ) -> TokenKeeper {
        TokenKeeper {
            db,
            crypto,
            settings: settings.clone(),
            engine,
            cached: RwLock::default(),
            synced_id: tokio::sync::Mutex::default(),
        }
    }

    fn cached_fresh(&self, at: UtcTime, lead: std::time::Duration) -> Option<String> {
        let cached = self.cached.read().ok()?.clone()?;
        let lead = chrono::Duration::from_std(lead).unwrap_or_default();
        (cached.expires_at.0 - lead > at.0).then_some(cached.access_token)
    }

    /// Reads the stored token into the cache; returns it when it is still usable at `at`.
    fn remember(&self, connection: &Connection) -> Result<Option<String>, TokenError> {
        let secrets = connections::secrets(&self.crypto, connection)?;
        let (Some(access_token), Some(expires_at)) = (secrets.access_token, connection.expires_at) else {
            return Ok(None);
        };
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some(Cached {
                access_token: access_token.clone(),
                expires_at,
            });
        }
        Ok((expires_at.0 > now().0).then_some(access_token))
    }

    /// The Milesight connection entered in the web UI, if there is one.
    async fn ui_connection(&self) -> Result<Option<Connection>, TokenError> {
        let found = connections::find_connection(&self.db, SYSTEM_ACCOUNT, KIND, CONNECTION_NAME).await?;
        Ok(found.filter(|c| c.text_setting("origin").as_deref() == Some(UI_ORIGIN)))
    }

    /// The OpenAPI application: from the config or environment when set there, else as
    /// entered in the web UI.
    pub async fn api(&self) -> Result<Option<(MilesightApi, ApiOrigin)>, TokenError> {
        if let Some(api) = self.settings.api() {
            return Ok(Some((api, ApiOrigin::Config)));
        }
        let Some(connection) = self.ui_connection().await? else {
            return Ok(None);
        };
        let credentials = connections::secrets(&self.crypto, &connection)?
            .credentials
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok());
        let text = |key: &str| {
            credentials
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let (Some(base_url), Some(client_id), Some(client_secret)) = (
            connection.base_url.clone(),
            text("client_id"),
            text("client_secret"),
        ) else {
            return Ok(None);
        };
        Ok(Some((
            MilesightApi {
                base_url,
                client_id,
                client_secret: client_secret.into(),
            },
            ApiOrigin::Ui,
        )))
    }

    /// Saves the OpenAPI application entered in the web UI (refused while the config sets
    /// it). Without `client_secret`, the stored one is kept. Forgets the cached token, so the
    /// next caller fetches one with the new credentials.
    pub async fn save_ui(
        &self,
        base_url: &str,
        client_id: &str,
        client_secret: Option<&str>,
    ) -> Result<Connection, SaveError> {
        if self.settings.api().is_some() {
            return Err(SaveError::SetInConfig);
        }
        let base_url = base_url.trim().trim_end_matches('/');
        match url::Url::parse(base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(SaveError::Invalid(
                    "base_url: expected the regional OpenAPI URL, e.g. https://eu-openapi.milesight.com"
                        .into(),
                ));
            }
        }
        let client_id = client_id.trim();
        if client_id.is_empty() {
            return Err(SaveError::Invalid(
                "client_id: give the application's client id".into(),
            ));
        }
        let kept = match self.api().await? {
            Some((api, ApiOrigin::Ui)) => Some(api.client_secret),
            _ => None,
        };
        let secret = match (client_secret.map(str::trim).filter(|s| !s.is_empty()), &kept) {
            (Some(given), _) => given.to_owned(),
            (None, Some(kept)) => kept.expose_secret().to_owned(),
            (None, None) => {
                return Err(SaveError::Invalid(
                    "client_secret: give the application's client secret".into(),
                ));
            }
        };
        let mut settings = connection_settings(&self.settings, client_id);
        settings["origin"] = UI_ORIGIN.into();
        let connection = connections::ensure_connection(
            &self.db,
            SYSTEM_ACCOUNT,
            KIND,
            CONNECTION_NAME,
            Some(base_url),
            &settings,
        )
        .await
        .map_err(TokenError::from)?;
        let credentials = serde_json::json!({ "client_id": client_id, "client_secret": secret });
        let update = ConnectionUpdate {
            credentials: Some(credentials.to_string()),
            ..Default::default()
        };
        let connection = connections::update_connection(&self.db, &self.crypto, connection.id, &update)
            .await
            .map_err(TokenError::from)?;
        if let Ok(mut cached) = self.cached.write() {
            *cached = None;
        }
        Ok(connection)
    }

    /// Forgets the OpenAPI application entered in the web UI (and its token).
    pub async fn clear_ui(&self) -> Result<bool, SaveError> {
        if self.settings.api().is_some() {
            return Err(SaveError::SetInConfig);
        }
        let Some(connection) = self.ui_connection().await? else {
            return Ok(false);
        };
        connections::delete_connection(&self.db, connection.id)
            .await
            .map_err(TokenError::from)?;
        if let Ok(mut cached) = self.cached.write() {
            *cached = None;
        }
        Ok(true)
    }

    /// The Milesight connection, created on first use and kept in step with the config (or,
    /// without one, as entered in the web UI).
    pub async fn connection(&self) -> Result<Connection, TokenError> {
        let Some(api) = self.settings.api() else {
            return self.ui_connection().await?.ok_or(TokenError::NotConfigured);
        };
        // The first caller syncs while the others wait for it, then they all just read.
        let mut synced = self.synced_id.lock().await;
        if let Some(id) = *synced {
            drop(synced);
            match connections::get_connection(&self.db, id).await {
                Ok(connection) => return Ok(connection),
                // Deleted meanwhile: create it again.
                Err(crate::storage::StorageError::NotFound) => synced = self.synced_id.lock().await,
                Err(e) => return Err(e.into()),
            }
        }
        let connection = self.ensure_connection(&api).await?;
        *synced = Some(connection.id);
        Ok(connection)
    }

    /// A usable token: the cached one, or, when it is within the lead time, a fresh one (the
    /// engine's per-connection lock and claim make one upstream request for all callers).
    pub async fn token(&self) -> Result<String, TokenError> {
        if let Some(token) = self.cached_fresh(now(), self.settings.token_lead_secs) {
            return Ok(token);
        }
        let id = match self.refresh_due(Trigger::OnDemand, now()).await {
            Ok((_, id)) => id,
            Err(err) => {
                // The renewal failed (or the credentials were refused), but the token in hand
                // still works until it expires: the inventory and polls go on with it, and the
                // failure is for the refresh engine and its alert to report.
                if let Some(token) = self.token_in_hand().await {
                    tracing::warn!(error = %err, "Milesight token renewal failed; using the current token until it expires");
                    return Ok(token);
                }
                return Err(err);
            }
        };
        // Refreshed by us or by whoever held the lock first: either way, read what is stored.
        self.reload(id)
            .await?
            .ok_or_else(|| TokenError::Upstream("no token available".into()))
    }

    /// The current token, cached or stored, while it is `tokens::still_usable`.
    async fn token_in_hand(&self) -> Option<String> {
        if let Some(token) = self.cached_fresh(now(), crate::tokens::STILL_USABLE_FOR) {
            return Some(token);
        }
        let connection = self.connection().await.ok()?;
        self.remember(&connection).ok()??;
        self.cached_fresh(now(), crate::tokens::STILL_USABLE_FOR)
    }

    /// Reads the stored token of connection `id` into the cache and returns it if usable.
    async fn reload(&self, id: i64) -> Result<Option<String>, TokenError> {
        let connection = connections::get_connection(&self.db, id).await?;
        self.remember(&connection)
    }

    /// Refreshes when the token is missing or expires within the lead time at `at` (so tests
    /// control the clock). Returns whether a new token was fetched.
    pub async fn refresh_if_due(&self, trigger: Trigger, at: UtcTime) -> Result<bool, TokenError> {
        let (refreshed, id) = self.refresh_due(trigger, at).await?;
        if refreshed {
            self.reload(id).await?;
        }
        Ok(refreshed)
    }

    /// `refresh_if_due` without touching the cache; also returns the connection id.
    async fn refresh_due(&self, trigger: Trigger, at: UtcTime) -> Result<(bool, i64), TokenError> {
        let connection = self.connection().await?;
        // Refused credentials stay refused until someone changes them: only a person (manual
        // refresh) or a config change tries again.
        if connection.status == ConnectionStatus::NeedsReauth {
            return Err(TokenError::InvalidCredentials);
        }
        let result = self
            .engine
            .refresh_due(connection.id, trigger, "telltale", at)
            .await?;
        Ok((judge(result)?, connection.id))
    }

    /// Fetches a new token now, whatever the stored one's expiry (a person asked, or MDP
    /// refused the stored token).
    pub async fn refresh_now(&self, trigger: Trigger) -> Result<String, TokenError> {
        self.refresh_now_by(trigger, "telltale").await
    }

    /// `refresh_now`, recorded in the refresh log under `actor` (the person who asked).
    pub async fn refresh_now_by(&self, trigger: Trigger, actor: &str) -> Result<String, TokenError> {
        let connection = self.connection().await?;
        let result = self.engine.refresh_now(connection.id, trigger, actor).await?;
        judge(result)?;
        self.reload(connection.id)
            .await?
            .ok_or_else(|| TokenError::Upstream("no token available".into()))
    }

    pub async fn status(&self, at: UtcTime) -> Result<TokenStatus, TokenError> {
        let found = match self.settings.api() {
            Some(api) => Some((
                self.ensure_connection(&api).await?,
                api.base_url,
                api.client_id,
                ApiOrigin::Config,
            )),
            None => self.ui_connection().await?.map(|c| {
                let base_url = c.base_url.clone().unwrap_or_default();
                let client_id = c.text_setting("client_id").unwrap_or_default();
                (c, base_url, client_id, ApiOrigin::Ui)
            }),
        };
        let Some((c, base_url, client_id, origin)) = found else {
            return Ok(TokenStatus {
                status: TokenHealth::Missing.as_str(),
                configured: false,
                origin: None,
                connection_id: None,
                base_url: None,
                client_id: None,
                expires_at: None,
                last_refreshed_at: None,
                last_attempt_at: None,
                last_error: None,
                consecutive_failures: 0,
                token_fingerprint: None,
            });
        };
        let status = match crate::tokens::token_status(&c, self.settings.token_lead_secs, at) {
            TokenHealth::NeedsReauth => "invalid_credentials",
            TokenHealth::Active => "valid",
            other => other.as_str(),
        };
        Ok(TokenStatus {
            status,
            configured: true,
            origin: Some(origin),
            connection_id: Some(c.id),
            base_url: Some(base_url),
            client_id: Some(client_id),
            expires_at: c.expires_at,
            last_refreshed_at: c.last_refresh_success_at,
            last_attempt_at: c.last_refresh_attempt_at,
            last_error: c.last_error,
            consecutive_failures: c.consecutive_failures,
            token_fingerprint: c.token_fingerprint,
        })
    }

    /// The Milesight connection row: created on first use; its settings (preset, client id, lead
    /// time, attempts) follow the config; its sealed credentials are replaced when the configured
    /// ones change, which also lifts a `needs_reauth` left by the old ones.
    async fn ensure_connection(&self, api: &MilesightApi) -> Result<Connection, TokenError> {
        let settings = connection_settings(&self.settings, &api.client_id);
        let connection = connections::ensure_connection(
            &self.db,
            SYSTEM_ACCOUNT,
            KIND,
            CONNECTION_NAME,
            Some(&api.base_url),
            &settings,
        )
        .await?;
        let wanted = serde_json::json!({ "client_id": api.client_id, "client_secret": api.client_secret.expose_secret() });
        let stored = connections::secrets(&self.crypto, &connection)?
            .credentials
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok());
        if stored.as_ref() == Some(&wanted) {
            return Ok(connection);
        }
        let update = ConnectionUpdate {
            credentials: Some(wanted.to_string()),
            ..Default::default()
        };
        Ok(connections::update_connection(&self.db, &self.crypto, connection.id, &update).await?)
    }

    /// At start-up, before the engine's start-up sweep: bring the connection in step with the
    /// config and load the stored token (so a restart does not fetch a new one).
    pub async fn start_up(&self) {
        match self.connection().await {
            Err(TokenError::NotConfigured) => {}
            Ok(connection) => {
                if let Err(err) = self.remember(&connection) {
                    tracing::warn!(error = %err, "could not load the stored Milesight token");
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not prepare the Milesight token"),
        }
    }
}

/// Turns the engine's result into this module's terms: whether a new token was fetched.
fn judge(result: ConnectionResult) -> Result<bool, TokenError> {
    match result.outcome {
        RefreshOutcome::Refreshed => Ok(true),
        RefreshOutcome::NeedsReauth => Err(TokenError::InvalidCredentials),
        RefreshOutcome::Skipped
            if result.detail.as_deref() == Some(ConnectionStatus::NeedsReauth.as_str()) =>
        {
            Err(TokenError::InvalidCredentials)
        }
        RefreshOutcome::Skipped => Ok(false),
        _ => Err(TokenError::Upstream(result.detail.unwrap_or_default())),
    }
}
