//! First run: while there is no staff user, the web UI leads to `/setup`, which creates the
//! first admin. A stranger who reaches a fresh instance first must not claim it, so the page
//! needs a one-time token that only the server log shows (at every start until it is used).
//! The token is kept encrypted in `app_settings`, so every replica logs and accepts the same one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::settings::AuthConfig;
use super::{NewSession, check_email, check_password_rules, hash_password_async, new_token, open_session};
use crate::config::Config;
use crate::crypto::Crypto;
use crate::storage::{Db, StorageError, StorageResult, app_settings, now, staff};

const SETUP_KEY: &str = "setup_token";
/// The associated data of the stored token's ciphertext.
const SETUP_COLUMN: &str = "app_settings.setup_token";

/// Whether `/setup` may be used with the token a request presents.
#[derive(Debug)]
pub enum SetupAccess {
    /// A staff user exists: there is nothing to set up.
    Done,
    /// No staff user yet, and the token is missing or wrong.
    Refused,
    /// The right token: `stored` is its stored form, consumed when the admin is created.
    Granted { stored: String },
}

/// Where the logged setup link points: `alerts.public_url` when it is set, else the address
/// the server is bound to (the configured one may say port 0 or 0.0.0.0).
pub fn link_base(config: &Config, bound: SocketAddr) -> String {
    if let Some(configured) = config.configured_public_url() {
        return configured.to_owned();
    }
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

/// At start-up. Without staff users: makes (or reuses) the setup token and logs the setup URL
/// at warn. With users: forgets any token left from before (an admin came from the config or the CLI).
pub async fn announce(db: &Db, crypto: &Crypto, base_url: &str) -> anyhow::Result<()> {
    if staff::count_users(db).await? > 0 {
        app_settings::delete(db, SETUP_KEY).await?;
        return Ok(());
    }
    let fresh = hex::encode(crypto.encrypt_str(SETUP_COLUMN, &new_token()));
    let stored = app_settings::put_if_absent(db, SETUP_KEY, &fresh).await?;
    let token = reveal(crypto, &stored)?;
    tracing::warn!(
        setup_url = %format!("{base_url}/setup?token={}", token.expose_secret()),
        "no staff user yet: open the setup URL to create the first admin (or set TELLTALE_ADMIN_EMAIL and TELLTALE_ADMIN_PASSWORD, or run `telltale user add --admin EMAIL`)"
    );
    Ok(())
}

fn reveal(crypto: &Crypto, stored: &str) -> anyhow::Result<SecretString> {
    let bytes = hex::decode(stored).map_err(|_| anyhow::anyhow!("the stored setup token is not hex"))?;
    Ok(crypto.decrypt_string(SETUP_COLUMN, &bytes)?.into())
}

/// Whether no staff user exists yet (the UI then leads to `/setup`).
pub async fn needed(db: &Db) -> StorageResult<bool> {
    Ok(staff::count_users(db).await? == 0)
}

/// Checks the token a request presents.
pub async fn access(db: &Db, crypto: &Crypto, given: Option<&str>) -> StorageResult<SetupAccess> {
    if !needed(db).await? {
        return Ok(SetupAccess::Done);
    }
    let (Some(given), Some(stored)) = (given, app_settings::get(db, SETUP_KEY).await?) else {
        return Ok(SetupAccess::Refused);
    };
    let Ok(expected) = reveal(crypto, &stored) else {
        tracing::warn!(
            "the stored setup token cannot be read (another secret key?); restart to make a new one"
        );
        return Ok(SetupAccess::Refused);
    };
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(SetupAccess::Granted { stored })
    } else {
        Ok(SetupAccess::Refused)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("open the setup link from the server log; this one is missing its token or the token is wrong")]
    Refused,
    #[error("setup is done: sign in instead")]
    Done,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Creates the first admin and signs them in.
pub async fn create_first_admin(
    db: &Db,
    crypto: &Crypto,
    settings: &AuthConfig,
    token: Option<&str>,
    email: &str,
    password: &str,
    confirm: &str,
) -> Result<NewSession, SetupError> {
    let stored = match access(db, crypto, token).await? {
        SetupAccess::Done => return Err(SetupError::Done),
        SetupAccess::Refused => return Err(SetupError::Refused),
        SetupAccess::Granted { stored } => stored,
    };
    let email = email.trim().to_ascii_lowercase();
    check_email(&email).map_err(SetupError::Invalid)?;
    check_password_rules(password).map_err(SetupError::Invalid)?;
    if password != confirm {
        return Err(SetupError::Invalid("the two passwords differ".into()));
    }
    let hash = hash_password_async(password.to_owned())
        .await
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let user = match staff::create_first_admin(db, SETUP_KEY, &stored, &email, &hash, now()).await {
        Ok(user) => user,
        // Another request used the token first.
        Err(StorageError::NotFound) => return Err(SetupError::Done),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(email = %user.email, "first admin created through /setup");
    Ok(open_session(db, settings, user).await?)
}
