//! The Milesight OpenAPI token: fetched with the client-credentials grant, cached, refreshed
//! ahead of expiry (on a schedule, at start-up, on demand, or by hand), with one upstream
//! request however many callers need it at once.
//!
//! The token lives in the `connections` table as the `milesight` connection of the system
//! account, so it is sealed at rest, survives restarts, and shares the refresh log.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::client::{self, IssuedToken, MdpError};
use crate::app::AppState;
use crate::config::{Config, MilesightApi};
use crate::scheduler::JobSpec;
use crate::storage::connections::{self, Connection, RefreshedToken};
use crate::storage::refresh_log::{self, NewRefreshLogEntry};
use crate::storage::{StorageError, UtcTime, now};

pub const PROVIDER: &str = "milesight";
pub const SYSTEM_ACCOUNT: &str = "telltale";
pub const CONNECTION_NAME: &str = "default";
pub const TOKEN_JOB: &str = "milesight-token";

/// Why a refresh was attempted (recorded in the refresh log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Scheduled,
    Manual,
    /// A caller needed a token and the cached one was within the lead time.
    OnDemand,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
            Trigger::OnDemand => "on_demand",
        }
    }
}

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

pub struct TokenKeeper {
    /// Held while a refresh talks to MDP, so concurrent callers share one request.
    flight: tokio::sync::Mutex<()>,
    cached: RwLock<Option<Cached>>,
}

impl Default for TokenKeeper {
    fn default() -> Self {
        TokenKeeper::new()
    }
}

impl TokenKeeper {
    pub fn new() -> TokenKeeper {
        TokenKeeper {
            flight: tokio::sync::Mutex::new(()),
            cached: RwLock::new(None),
        }
    }

    fn cached_fresh(&self, at: UtcTime, lead: Duration) -> Option<String> {
        let cached = self.cached.read().ok()?.clone()?;
        let lead = chrono::Duration::from_std(lead).unwrap_or_default();
        (cached.expires_at.0 - lead > at.0).then_some(cached.access_token)
    }

    /// A usable token: the cached one, or, when it is within the lead time, a fresh one
    /// (one refresh shared by every caller waiting at that moment).
    pub async fn token(&self, state: &AppState) -> Result<String, TokenError> {
        if let Some(token) = self.cached_fresh(now(), state.config.milesight.token_lead) {
            return Ok(token);
        }
        self.refresh(state, Trigger::OnDemand, now(), false).await
    }

    /// Refreshes when the token is missing or expires within the lead time (the scheduled
    /// job and start-up). `at` is the time to judge by, so tests control the clock.
    pub async fn refresh_if_due(
        &self,
        state: &AppState,
        trigger: Trigger,
        at: UtcTime,
    ) -> Result<bool, TokenError> {
        if self.cached_fresh(at, state.config.milesight.token_lead).is_some() {
            return Ok(false);
        }
        self.refresh(state, trigger, at, false).await.map(|_| true)
    }

    /// Loads the stored token into the cache (so a restart does not fetch a new one).
    pub async fn load(&self, state: &AppState) -> Result<(), TokenError> {
        let Some(api) = &state.config.milesight.api else {
            return Ok(());
        };
        let connection = ensure_connection(state, api).await?;
        let secrets = connections::secrets(&state.crypto, &connection)?;
        if let (Some(access_token), Some(expires_at)) = (secrets.access_token, connection.expires_at)
            && let Ok(mut cached) = self.cached.write()
        {
            *cached = Some(Cached {
                access_token,
                expires_at,
            });
        }
        Ok(())
    }

    /// Fetches a new token now (`force`), or unless another caller just did.
    pub async fn refresh(
        &self,
        state: &AppState,
        trigger: Trigger,
        at: UtcTime,
        force: bool,
    ) -> Result<String, TokenError> {
        let api = state
            .config
            .milesight
            .api
            .as_ref()
            .ok_or(TokenError::NotConfigured)?;
        let _flight = self.flight.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if !force && let Some(token) = self.cached_fresh(at, state.config.milesight.token_lead) {
            return Ok(token);
        }
        let connection = ensure_connection(state, api).await?;
        // Refused credentials stay refused until someone changes them: only a person
        // (manual refresh) or a restart (start-up, typically after a config change) tries again.
        if connection.status == "needs_reauth" && matches!(trigger, Trigger::Scheduled | Trigger::OnDemand) {
            return Err(TokenError::InvalidCredentials);
        }
        let issued = self.fetch_with_retries(state, api, &connection, trigger).await?;
        let expires_at = UtcTime::new(at.0 + chrono::Duration::seconds(issued.expires_in));
        let refreshed = RefreshedToken {
            access_token: issued.access_token.clone(),
            refresh_token: issued.refresh_token.clone(),
            expires_at: Some(expires_at),
            refresh_expires_at: issued
                .refresh_token_expires_in
                .map(|s| UtcTime::new(at.0 + chrono::Duration::seconds(s))),
        };
        connections::store_refreshed_token(&state.db, &state.crypto, connection.id, &refreshed, now())
            .await?;
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some(Cached {
                access_token: issued.access_token.clone(),
                expires_at,
            });
        }
        tracing::info!(trigger = trigger.as_str(), expires_at = %expires_at, "Milesight token refreshed");
        Ok(issued.access_token)
    }

    /// Calls MDP, retrying transient failures with exponential backoff and jitter (or the
    /// server's `Retry-After`); each attempt is written to the refresh log.
    async fn fetch_with_retries(
        &self,
        state: &AppState,
        api: &MilesightApi,
        connection: &Connection,
        trigger: Trigger,
    ) -> Result<IssuedToken, TokenError> {
        let config = &state.config.milesight;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(config.token_max_attempts.saturating_sub(1) as usize);
        let attempt = || async {
            // Token requests count towards the plan's quota too, but are never refused for it.
            if let Err(err) = crate::storage::usage::reserve(&state.db, PROVIDER, now(), i64::MAX).await {
                tracing::debug!(error = %err, "could not count a Milesight request");
            }
            let started = Instant::now();
            let result = client::fetch_token(
                &state.http,
                &api.base_url,
                &api.client_id,
                api.client_secret.expose_secret(),
            )
            .await;
            self.record_attempt(state, connection, trigger, &result, started.elapsed())
                .await;
            result
        };
        let result = attempt
            .retry(backoff)
            .when(MdpError::is_transient)
            // Honour the server's Retry-After (bounded), else the backoff's own delay.
            .adjust(|err, delay| err.retry_after().map(|d| d.min(Duration::from_secs(300))).or(delay))
            .notify(|err, delay| {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "Milesight token request failed; retrying");
            })
            .await;
        match result {
            Ok(issued) => Ok(issued),
            Err(MdpError::InvalidCredentials(message)) => {
                connections::record_refresh_failure(
                    &state.db,
                    connection.id,
                    Some("needs_reauth"),
                    &message,
                    now(),
                )
                .await?;
                state.metrics.milesight_invalid_credentials.set(1);
                tracing::error!(error = %message, "Milesight refused the client credentials; token refresh stops until they are fixed");
                Err(TokenError::InvalidCredentials)
            }
            Err(err) => {
                connections::record_refresh_failure(&state.db, connection.id, None, &err.to_string(), now())
                    .await?;
                Err(TokenError::Upstream(err.to_string()))
            }
        }
    }

    async fn record_attempt(
        &self,
        state: &AppState,
        connection: &Connection,
        trigger: Trigger,
        result: &Result<IssuedToken, MdpError>,
        took: Duration,
    ) {
        let outcome = match result {
            Ok(_) => "success",
            Err(e) if e.is_transient() => "transient_failure",
            Err(_) => "permanent_failure",
        };
        state
            .metrics
            .token_refreshes
            .with_label_values(&[PROVIDER, trigger.as_str(), outcome])
            .inc();
        state
            .metrics
            .token_refresh_seconds
            .with_label_values(&[PROVIDER])
            .observe(took.as_secs_f64());
        if result.is_ok() {
            state.metrics.milesight_invalid_credentials.set(0);
        }
        let attempted_at = now();
        let entry = NewRefreshLogEntry {
            connection_id: Some(connection.id),
            provider: PROVIDER.into(),
            trigger: trigger.as_str().into(),
            actor: Some(match trigger {
                Trigger::Manual => "api".into(),
                _ => "telltale".into(),
            }),
            dry_run: false,
            success: result.is_ok(),
            error: result.as_ref().err().map(ToString::to_string),
            old_expires_at: connection.expires_at,
            new_expires_at: result
                .as_ref()
                .ok()
                .map(|t| UtcTime::new(attempted_at.0 + chrono::Duration::seconds(t.expires_in))),
            duration_ms: took.as_millis() as i64,
            attempted_at,
        };
        if let Err(err) = refresh_log::append(&state.db, &entry).await {
            tracing::warn!(error = %err, "could not write the refresh log");
        }
    }

    pub async fn status(&self, state: &AppState, at: UtcTime) -> Result<TokenStatus, TokenError> {
        let Some(api) = &state.config.milesight.api else {
            return Ok(TokenStatus {
                status: "missing",
                configured: false,
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
        let c = ensure_connection(state, api).await?;
        let lead = chrono::Duration::from_std(state.config.milesight.token_lead).unwrap_or_default();
        let status = match (c.status.as_str(), c.access_token.is_some(), c.expires_at) {
            ("needs_reauth", _, _) => "invalid_credentials",
            (_, false, _) | (_, _, None) => "missing",
            (_, true, Some(exp)) if exp.0 <= at.0 => "expired",
            (_, true, Some(exp)) if exp.0 - lead <= at.0 => "expiring",
            _ => "valid",
        };
        Ok(TokenStatus {
            status,
            configured: true,
            base_url: Some(api.base_url.clone()),
            client_id: Some(api.client_id.clone()),
            expires_at: c.expires_at,
            last_refreshed_at: c.last_refresh_success_at,
            last_attempt_at: c.last_refresh_attempt_at,
            last_error: c.last_error,
            consecutive_failures: c.consecutive_failures,
            token_fingerprint: c.token_fingerprint,
        })
    }
}

/// The Milesight connection row, created on first use, with the configured client id and
/// (sealed) secret recorded.
async fn ensure_connection(state: &AppState, api: &MilesightApi) -> Result<Connection, TokenError> {
    let settings = serde_json::json!({ "client_id": api.client_id });
    let connection = connections::ensure_connection(
        &state.db,
        SYSTEM_ACCOUNT,
        PROVIDER,
        CONNECTION_NAME,
        Some(&api.base_url),
        &settings,
    )
    .await?;
    if connection.credentials.is_none() {
        let credentials = serde_json::json!({ "client_id": api.client_id, "client_secret": api.client_secret.expose_secret() });
        connections::set_credentials(&state.db, &state.crypto, connection.id, &credentials.to_string())
            .await?;
    }
    Ok(connection)
}

/// The scheduled refresh, present only when the OpenAPI is configured.
pub fn job_specs(config: &Config) -> Vec<JobSpec> {
    if config.milesight.api.is_none() {
        return Vec::new();
    }
    vec![JobSpec {
        name: TOKEN_JOB,
        schedule: config.milesight.token_schedule.clone(),
        timezone: config.scheduler_timezone,
        run: Arc::new(|state| {
            Box::pin(async move {
                let refreshed = state
                    .milesight_token
                    .refresh_if_due(&state, Trigger::Scheduled, now())
                    .await?;
                Ok(if refreshed {
                    "token refreshed".into()
                } else {
                    "token still valid".into()
                })
            })
        }),
    }]
}

/// At start-up: load the stored token, and refresh it at once if it is missing or due.
pub async fn start_up(state: &AppState) {
    if state.config.milesight.api.is_none() {
        return;
    }
    let keeper = &state.milesight_token;
    if let Err(err) = keeper.load(state).await {
        tracing::warn!(error = %err, "could not load the stored Milesight token");
    }
    match keeper.refresh_if_due(state, Trigger::Startup, now()).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("stored Milesight token is still valid"),
        Err(err) => tracing::warn!(error = %err, "Milesight token not available at start-up"),
    }
}
