//! Creating, changing and deleting connections: the rules the JSON API and the CLI share.
//! Inputs are validated here; secrets go straight to sealed storage and the view of a
//! connection never contains one (tokens appear as a fingerprint).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{lead_for, token_status};
use crate::crypto::Crypto;
use crate::providers;
use crate::storage::connections::{self, Connection, ConnectionUpdate, NewConnection};
use crate::storage::refresh_log::{self, NewRefreshLogEntry};
use crate::storage::{Db, StorageError, TokenHealth, UtcTime};

/// A new connection, as `POST /api/connections` and `telltale connections add` take it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    pub account: String,
    pub provider: String,
    pub name: String,
    pub base_url: Option<String>,
    pub settings: Option<Value>,
    /// Secret: e.g. `{"client_id": "…", "client_secret": "…"}`; stored sealed.
    pub credentials: Option<Value>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Changes to a connection; absent fields stay as they are. `settings` and `credentials` are
/// merged into the stored ones key by key (a key set to null is removed).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionChange {
    /// An empty string clears it.
    pub base_url: Option<String>,
    pub settings: Option<Value>,
    pub credentials: Option<Value>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `true` disables the connection (sweeps skip it), `false` enables it again.
    pub disabled: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error("this account already has a connection with that provider and name")]
    Conflict,
    #[error("no connection with id {0}")]
    NotFound(i64),
    #[error(transparent)]
    Storage(StorageError),
}

fn invalid(message: impl Into<String>) -> ManageError {
    ManageError::Invalid(message.into())
}

fn storage(id: i64) -> impl Fn(StorageError) -> ManageError {
    move |e| match e {
        StorageError::NotFound => ManageError::NotFound(id),
        StorageError::Conflict(_) => ManageError::Conflict,
        other => ManageError::Storage(other),
    }
}

fn check_base_url(url: &str) -> Result<(), ManageError> {
    if url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
        Ok(())
    } else {
        Err(invalid("base_url must be an http(s) URL"))
    }
}

fn credentials_text(credentials: Option<Value>) -> Result<Option<String>, ManageError> {
    match credentials {
        Some(c @ Value::Object(_)) => Ok(Some(c.to_string())),
        Some(_) => Err(invalid("credentials must be a JSON object")),
        None => Ok(None),
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

pub async fn create(db: &Db, crypto: &Crypto, spec: ConnectionSpec) -> Result<Connection, ManageError> {
    if providers::provider_for(&spec.provider).is_none() {
        return Err(invalid(format!(
            "unknown provider {:?}; known: {}",
            spec.provider,
            providers::kinds().join(", ")
        )));
    }
    let name_ok = |s: &str| !s.trim().is_empty() && s.len() <= 100;
    if !name_ok(&spec.account) || !name_ok(&spec.name) {
        return Err(invalid("account and name must be 1-100 characters"));
    }
    if let Some(url) = &spec.base_url {
        check_base_url(url)?;
    }
    let settings = spec.settings.unwrap_or_else(|| json!({}));
    if !settings.is_object() {
        return Err(invalid("settings must be a JSON object"));
    }
    let credentials = credentials_text(spec.credentials)?;
    let account = match connections::account_by_name(db, &spec.account).await {
        Ok(account) => account,
        Err(StorageError::NotFound) => connections::create_account(db, &spec.account, None)
            .await
            .map_err(storage(0))?,
        Err(e) => return Err(ManageError::Storage(e)),
    };
    let new = NewConnection {
        account_id: account.id,
        provider: spec.provider,
        name: spec.name,
        base_url: spec.base_url,
        settings,
        credentials,
        access_token: non_empty(spec.access_token),
        refresh_token: non_empty(spec.refresh_token),
        expires_at: spec.expires_at.map(UtcTime::new),
        refresh_expires_at: None,
    };
    connections::create_connection(db, crypto, &new)
        .await
        .map_err(storage(0))
}

/// Changes settings, rotates credentials or pastes new tokens (which re-authorises a
/// `needs_reauth` connection), or disables / enables it.
pub async fn update(
    db: &Db,
    crypto: &Crypto,
    id: i64,
    change: ConnectionChange,
) -> Result<Connection, ManageError> {
    if let Some(url) = change.base_url.as_deref().filter(|u| !u.is_empty()) {
        check_base_url(url)?;
    }
    if change.settings.as_ref().is_some_and(|s| !s.is_object()) {
        return Err(invalid("settings must be a JSON object"));
    }
    if change.credentials.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(invalid("credentials must be a JSON object"));
    }
    // Settings and credentials are merged into what is stored (RFC 7396: a key set to null
    // is removed), so a form can change one field without repeating, or knowing, the others.
    let (settings, credentials) = if change.settings.is_some() || change.credentials.is_some() {
        let current = connections::get_connection(db, id).await.map_err(storage(id))?;
        let stored_settings = current.settings.to_value();
        let stored_credentials = connections::secrets(crypto, &current)
            .map_err(storage(id))?
            .credentials
            .and_then(|c| serde_json::from_str::<Value>(&c).ok())
            .unwrap_or_else(|| json!({}));
        (
            change.settings.map(|s| merged(stored_settings, s)),
            change.credentials.map(|c| merged(stored_credentials, c)),
        )
    } else {
        (None, None)
    };
    let update = ConnectionUpdate {
        base_url: change.base_url.map(|u| Some(u).filter(|u| !u.is_empty())),
        settings,
        credentials: credentials_text(credentials)?,
        access_token: non_empty(change.access_token),
        refresh_token: non_empty(change.refresh_token),
        expires_at: change.expires_at.map(|t| Some(UtcTime::new(t))),
        disabled: change.disabled,
    };
    connections::update_connection(db, crypto, id, &update)
        .await
        .map_err(storage(id))
}

/// `patch` applied to `stored`, key by key; a null removes the key.
pub(crate) fn merged(stored: Value, patch: Value) -> Value {
    let (Value::Object(mut stored), Value::Object(patch)) = (stored, patch.clone()) else {
        return patch;
    };
    for (key, value) in patch {
        if value.is_null() {
            stored.remove(&key);
        } else {
            stored.insert(key, value);
        }
    }
    Value::Object(stored)
}

/// Whether a connection gets new tokens by itself once its tokens are cleared: its provider
/// logs in with stored credentials, and it has some.
pub fn logs_in_anew(connection: &Connection) -> bool {
    connection.credentials.is_some()
        && crate::providers::provider_for(&connection.provider).is_some_and(|p| p.logs_in_with_credentials())
}

/// What clearing a connection's tokens means, in words for the API, the CLI and the log.
pub fn cleared_meaning(connection: &Connection) -> &'static str {
    if logs_in_anew(connection) {
        "cleared: the next refresh logs in anew"
    } else {
        "cleared: Reconnect needed (this platform issues new tokens only through its consent screen, or paste them)"
    }
}

/// Forgets the stored tokens (not the credentials or settings); recorded in the refresh log
/// with trigger `clear`. A connection that cannot log in anew by itself then needs
/// re-authorisation at once, saying so, rather than failing at the next refresh as if the
/// platform had refused it.
pub async fn clear_token(db: &Db, id: i64, actor: &str) -> Result<Connection, ManageError> {
    let before = connections::get_connection(db, id).await.map_err(storage(id))?;
    let at = crate::storage::now();
    let meaning = cleared_meaning(&before);
    let reconnect =
        (!logs_in_anew(&before)).then(|| format!("tokens {meaning}; by {actor}, no platform was asked"));
    let cleared = connections::clear_tokens(db, id, at, reconnect.as_deref())
        .await
        .map_err(storage(id))?;
    let entry = NewRefreshLogEntry {
        connection_id: Some(id),
        provider: before.provider.clone(),
        trigger: crate::storage::RefreshTrigger::Clear.as_str().into(),
        actor: Some(actor.to_owned()),
        dry_run: false,
        success: true,
        error: None,
        old_expires_at: before.expires_at,
        new_expires_at: None,
        duration_ms: 0,
        attempted_at: at,
    };
    refresh_log::append(db, &entry).await.map_err(storage(id))?;
    tracing::info!(connection = id, provider = %before.provider, name = %before.name, %actor, "stored tokens {meaning}");
    Ok(cleared)
}

pub async fn delete(db: &Db, id: i64) -> Result<(), ManageError> {
    connections::delete_connection(db, id).await.map_err(storage(id))
}

/// A connection as people see it (API, CLI and the tokens page): never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub id: i64,
    pub account_id: i64,
    pub provider: String,
    pub name: String,
    pub base_url: Option<String>,
    pub settings: Value,
    pub status: TokenHealth,
    pub expires_at: Option<UtcTime>,
    /// Seconds until the token expires (negative once it has).
    pub runway_secs: Option<i64>,
    pub refresh_expires_at: Option<UtcTime>,
    pub token_fingerprint: Option<String>,
    pub has_refresh_token: bool,
    pub has_credentials: bool,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub last_refresh_attempt_at: Option<UtcTime>,
    pub last_refresh_success_at: Option<UtcTime>,
    pub last_sync_at: Option<UtcTime>,
}

pub fn view(c: &Connection, at: UtcTime) -> ConnectionView {
    ConnectionView {
        id: c.id,
        account_id: c.account_id,
        provider: c.provider.clone(),
        name: c.name.clone(),
        base_url: c.base_url.clone(),
        settings: c.settings.to_value(),
        status: token_status(c, lead_for(c), at),
        expires_at: c.expires_at,
        runway_secs: c.expires_at.map(|e| (e.0 - at.0).num_seconds()),
        refresh_expires_at: c.refresh_expires_at,
        token_fingerprint: c.token_fingerprint.clone(),
        has_refresh_token: c.refresh_token.is_some(),
        has_credentials: c.credentials.is_some(),
        consecutive_failures: c.consecutive_failures,
        last_error: c.last_error.clone(),
        last_refresh_attempt_at: c.last_refresh_attempt_at,
        last_refresh_success_at: c.last_refresh_success_at,
        last_sync_at: c.last_sync_at,
    }
}
