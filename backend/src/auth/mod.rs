//! Who is calling: staff users signed in with a session cookie, or automation with an API token.
//!
//! Every page and `/api` route needs one of them (`guard`), except health, `/metrics` (unless a
//! metrics token is configured), webhooks (own signatures), the cron endpoints (CRON_SECRET),
//! the sign-in page and static assets (the middleware is `web::guard`). State-changing requests need the `admin` role; from a
//! browser session they also need the session's CSRF token in `X-CSRF-Token`.

pub mod settings;
pub mod setup;

use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use self::settings::AuthConfig;
use crate::storage::staff::{self, StaffUser};
use crate::storage::{Db, Role, StorageError, StorageResult, UtcTime, now};

pub const SESSION_COOKIE: &str = "telltale_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const MIN_PASSWORD: usize = 10;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Staff {
    pub user: StaffUser,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// A browser session; `csrf` must accompany its state-changing requests.
    Session {
        token_hash: String,
        csrf: String,
    },
    ApiToken {
        name: String,
    },
}

impl Staff {
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }

    pub fn csrf(&self) -> Option<&str> {
        match &self.via {
            Via::Session { csrf, .. } => Some(csrf),
            Via::ApiToken { .. } => None,
        }
    }

    /// Who did something, for logs and audit fields.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Session { .. } => self.user.email.clone(),
            Via::ApiToken { name } => format!("{} (token {name})", self.user.email),
        }
    }
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes). CPU-heavy: call from `spawn_blocking`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// Constant-time inside argon2. CPU-heavy: call from `spawn_blocking`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Hashes a password off the async workers.
pub async fn hash_password_async(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password)).await?
}

/// A new random bearer secret (session or API token), 256 bits as hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Session and API tokens are stored only as this hash.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn check_password_rules(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!("passwords need at least {MIN_PASSWORD} characters"));
    }
    Ok(())
}

pub fn check_email(email: &str) -> Result<(), String> {
    email
        .parse::<lettre::Address>()
        .map(|_| ())
        .map_err(|_| format!("{email:?} is not an email address"))
}

pub fn check_role(role: &str) -> Result<Role, String> {
    role.parse()
        .map_err(|_| format!("role must be admin or viewer, got {role:?}"))
}

/// Creates a staff user (the CLI's and the API's shared path).
pub async fn add_user(db: &Db, email: &str, password: &str, role: &str) -> Result<StaffUser, AddUserError> {
    check_email(email).map_err(AddUserError::Invalid)?;
    check_password_rules(password).map_err(AddUserError::Invalid)?;
    let role = check_role(role).map_err(AddUserError::Invalid)?;
    let hash = hash_password_async(password.to_owned())
        .await
        .map_err(|e| AddUserError::Invalid(e.to_string()))?;
    let email = email.trim().to_ascii_lowercase();
    match staff::create_user(db, &email, &hash, role, now()).await {
        Ok(user) => Ok(user),
        Err(StorageError::Conflict(_)) => Err(AddUserError::Exists(email)),
        Err(e) => Err(AddUserError::Storage(e)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    #[error("{0}")]
    Invalid(String),
    #[error("a user {0} already exists")]
    Exists(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Creates an API token for `user_id`; returns the token (shown once) and its row.
pub async fn add_api_token(db: &Db, user_id: i64, name: &str) -> StorageResult<(String, staff::ApiToken)> {
    let token = new_token();
    let row = staff::create_api_token(db, user_id, name, &token_hash(&token), now()).await?;
    Ok((token, row))
}

/// At start-up: the first admin from the config when there are no users yet, and the
/// configured automation token for that admin.
pub async fn bootstrap(db: &Db, auth: &AuthConfig) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&auth.admin_email, &auth.admin_password) else {
        return Ok(());
    };
    if staff::count_users(db).await? == 0 {
        match add_user(db, email, password.expose_secret(), Role::Admin.as_str()).await {
            Ok(user) => tracing::info!(email = %user.email, "created the first admin from the configuration"),
            Err(AddUserError::Exists(_)) => {}
            Err(e) => return Err(anyhow::anyhow!("cannot create the first admin: {e}")),
        }
    }
    if let Some(token) = &auth.api_token {
        let hash = token_hash(token.expose_secret());
        if !staff::api_token_exists(db, &hash).await? {
            let admin = staff::user_by_email(db, &email.trim().to_ascii_lowercase())
                .await
                .map_err(|_| anyhow::anyhow!("auth.api_token: no user {email} to grant it to"))?;
            match staff::create_api_token(db, admin.id, "configured", &hash, now()).await {
                Ok(_) | Err(StorageError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Resolves the caller of a request from its session cookie or bearer token.
pub async fn authenticate(
    db: &Db,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> StorageResult<Option<Staff>> {
    let at = now();
    if let Some(token) = bearer {
        if let Some((api_token, user)) = staff::api_token(db, &token_hash(token), at).await? {
            return Ok(Some(Staff {
                user,
                via: Via::ApiToken { name: api_token.name },
            }));
        }
        return Ok(None);
    }
    if let Some(token) = cookie {
        let hash = token_hash(token);
        if let Some((session, user)) = staff::session(db, &hash, at).await? {
            return Ok(Some(Staff {
                user,
                via: Via::Session {
                    token_hash: hash,
                    csrf: session.csrf_token,
                },
            }));
        }
    }
    Ok(None)
}

/// Why a sign-in failed. The message never says whether the email exists.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong email or password")]
    Refused,
    #[error("too many failed sign-ins from this address; try again in {} s", .0.as_secs() + 1)]
    Throttled(Duration),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The longest a client address waits between tries.
const LONGEST_WAIT: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

/// Failed sign-ins, counted per (client address, email) and per client address. Only failures
/// count and a success from the address clears them, so guesses from elsewhere never lock the
/// admin out. Past the allowed failures each try waits twice as long as the last (1 s, 2 s,
/// 4 s … up to 15 min); a client address gets four times the allowance for all emails together.
pub struct LoginThrottle {
    allowed: u32,
    failures: std::sync::Mutex<std::collections::HashMap<String, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
}

impl LoginThrottle {
    pub fn new(allowed: u32) -> LoginThrottle {
        LoginThrottle {
            allowed: allowed.max(1),
            failures: std::sync::Mutex::default(),
        }
    }

    fn keys(client: &str, email: &str) -> [(String, u32); 2] {
        [(format!("{client} {email}"), 1), (client.to_owned(), 4)]
    }

    /// How long `client` must still wait before trying `email`, if at all.
    pub fn wait(&self, client: &str, email: &str) -> Option<Duration> {
        let failures = self.failures.lock().ok()?;
        Self::keys(client, email)
            .iter()
            .filter_map(|(key, factor)| {
                let f = failures.get(key)?;
                // The allowed failures pass; each one beyond doubles the wait.
                let over = f.count.checked_sub(self.allowed * factor)?.checked_sub(1)?;
                let wait = Duration::from_secs(1u64 << over.min(10)).min(LONGEST_WAIT);
                wait.checked_sub(f.last.elapsed())
            })
            .max()
    }

    pub fn failed(&self, client: &str, email: &str) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        // Bounded: an address that stopped failing an hour ago is forgotten.
        if failures.len() > 10_000 {
            failures.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
        }
        let at = std::time::Instant::now();
        for (key, _) in Self::keys(client, email) {
            let entry = failures.entry(key).or_insert(Failures { count: 0, last: at });
            if entry.last.elapsed() >= FORGET_AFTER {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = at;
        }
    }

    pub fn succeeded(&self, client: &str, email: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            for (key, _) in Self::keys(client, email) {
                failures.remove(&key);
            }
        }
    }
}

/// A new session: the cookie's token and the session's CSRF token.
pub struct NewSession {
    pub token: String,
    pub csrf: String,
    pub user: StaffUser,
    pub expires_at: UtcTime,
}

/// Checks the password (throttled after failures from the client address) and opens a session.
pub async fn login(
    db: &Db,
    throttle: &LoginThrottle,
    settings: &AuthConfig,
    email: &str,
    password: &str,
    client: &str,
) -> Result<NewSession, LoginError> {
    let email = email.trim().to_ascii_lowercase();
    if let Some(wait) = throttle.wait(client, &email) {
        tracing::warn!(%email, %client, wait_secs = wait.as_secs(), "sign-in throttled");
        return Err(LoginError::Throttled(wait));
    }
    let user = match staff::user_by_email(db, &email).await {
        Ok(user) if !user.disabled => Some(user),
        Ok(_) | Err(StorageError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    // Unknown users cost a hash verification too, so timing does not reveal who exists.
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|_| matches) else {
        throttle.failed(client, &email);
        tracing::warn!(%email, %client, "sign-in refused");
        return Err(LoginError::Refused);
    };
    throttle.succeeded(client, &email);
    let session = open_session(db, settings, user).await?;
    tracing::info!(email = %session.user.email, "signed in");
    Ok(session)
}

/// Opens a session for `user` (after a sign-in or the first-run setup).
pub async fn open_session(db: &Db, settings: &AuthConfig, user: StaffUser) -> StorageResult<NewSession> {
    let token = new_token();
    let csrf = new_token();
    let at = now();
    let lifetime = chrono::Duration::from_std(settings.session_hours).unwrap_or_default();
    let expires_at = UtcTime::new(at.0 + lifetime);
    staff::create_session(db, user.id, &token_hash(&token), &csrf, at, expires_at).await?;
    staff::record_login(db, user.id, at).await?;
    Ok(NewSession {
        token,
        csrf,
        user,
        expires_at,
    })
}

static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("telltale-no-such-user").unwrap_or_default());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse battery").unwrap_or_else(|e| panic!("{e}"));
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash(&a), token_hash(&a));
    }

    #[test]
    fn only_failures_from_an_address_slow_that_address_down() {
        let throttle = LoginThrottle::new(2);
        let (guesser, admin) = ("10.0.0.9", "10.0.0.1");
        for _ in 0..2 {
            assert_eq!(throttle.wait(guesser, "admin@x"), None);
            throttle.failed(guesser, "admin@x");
        }
        assert_eq!(throttle.wait(guesser, "admin@x"), None, "the allowed failures");
        throttle.failed(guesser, "admin@x");
        let first = throttle.wait(guesser, "admin@x").unwrap_or_default();
        assert!(
            first > Duration::ZERO && first <= Duration::from_secs(1),
            "{first:?}"
        );
        throttle.failed(guesser, "admin@x");
        let second = throttle.wait(guesser, "admin@x").unwrap_or_default();
        assert!(second > Duration::from_secs(1), "the wait doubles: {second:?}");
        assert_eq!(
            throttle.wait(admin, "admin@x"),
            None,
            "another address is never held back"
        );
        assert_eq!(
            throttle.wait(guesser, "other@x"),
            None,
            "another email from it: its own count"
        );
        throttle.succeeded(guesser, "admin@x");
        assert_eq!(
            throttle.wait(guesser, "admin@x"),
            None,
            "a success clears the address"
        );
    }

    #[test]
    fn an_address_guessing_many_emails_is_slowed_too() {
        let throttle = LoginThrottle::new(1);
        for n in 0..5 {
            throttle.failed("10.0.0.9", &format!("user{n}@x"));
        }
        assert!(
            throttle.wait("10.0.0.9", "fresh@x").is_some(),
            "four times the allowance in all"
        );
        assert_eq!(throttle.wait("10.0.0.8", "fresh@x"), None);
    }
}
