//! RFC 6749 §6 refresh-token grant, with presets for Spotify, Google, GitHub (expiring user
//! tokens) and Discord (apis.md §4).
//!
//! Connection fields used: `base_url` overrides the preset's token URL; settings
//! `{"preset": "spotify", "client_auth": "basic"|"body", "scope": "…"}`; credentials (sealed)
//! `{"client_id": "…", "client_secret": "…"}`; the sealed refresh token.

use std::time::Duration;

use futures_core::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;

use super::{Answer, Issued, Outcome, Provider, unanswered};
use crate::redact::redact;
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct OAuth2Refresh;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// A platform's token endpoint and how it wants the client to authenticate.
pub struct Preset {
    pub name: &'static str,
    pub token_url: &'static str,
    pub client_auth: ClientAuth,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "spotify",
        token_url: "https://accounts.spotify.com/api/token",
        client_auth: ClientAuth::Basic,
    },
    Preset {
        name: "google",
        token_url: "https://oauth2.googleapis.com/token",
        client_auth: ClientAuth::Body,
    },
    Preset {
        name: "github",
        token_url: "https://github.com/login/oauth/access_token",
        client_auth: ClientAuth::Body,
    },
    Preset {
        name: "discord",
        token_url: "https://discord.com/api/oauth2/token",
        client_auth: ClientAuth::Basic,
    },
];

#[derive(Debug, Default, Deserialize)]
struct Settings {
    preset: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
}

/// The sealed credentials of an OAuth2 client.
#[derive(Deserialize)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<String>,
}

/// A token response, success and error fields together: GitHub answers some errors with 200.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    refresh_token_expires_in: Option<i64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Errors that mean the grant or the client is no longer accepted.
const REAUTH_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "bad_refresh_token",
    "incorrect_client_credentials",
];

impl Provider for OAuth2Refresh {
    fn kind(&self) -> &'static str {
        "oauth2_refresh"
    }

    fn default_lead(&self) -> Duration {
        Duration::from_secs(600)
    }

    fn refresh<'a>(
        &'a self,
        http: &'a reqwest::Client,
        connection: &'a Connection,
        secrets: &'a ConnectionSecrets,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let settings: Settings = serde_json::from_str(&connection.settings).unwrap_or_default();
            let preset = settings
                .preset
                .as_deref()
                .and_then(|p| PRESETS.iter().find(|x| x.name == p));
            let Some(token_url) = connection.base_url.as_deref().or(preset.map(|p| p.token_url)) else {
                return Outcome::Failed("no token URL: set the connection's base_url or a preset".into());
            };
            let Some(refresh_token) = secrets.refresh_token.as_deref() else {
                return Outcome::NeedsReauth("no refresh token stored".into());
            };
            let Some(client) = secrets
                .credentials
                .as_deref()
                .and_then(|c| serde_json::from_str::<ClientCredentials>(c).ok())
            else {
                return Outcome::Failed("credentials must be JSON with client_id and client_secret".into());
            };
            let auth = match settings.client_auth.as_deref() {
                Some("basic") => ClientAuth::Basic,
                Some("body") => ClientAuth::Body,
                _ => preset.map_or(ClientAuth::Body, |p| p.client_auth),
            };
            let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
            if let Some(scope) = settings.scope.as_deref() {
                form.push(("scope", scope));
            }
            let mut request = http
                .post(token_url)
                .header(reqwest::header::ACCEPT, "application/json");
            match auth {
                ClientAuth::Basic => {
                    request = request.basic_auth(&client.client_id, client.client_secret.as_deref())
                }
                ClientAuth::Body => {
                    form.push(("client_id", &client.client_id));
                    if let Some(secret) = client.client_secret.as_deref() {
                        form.push(("client_secret", secret));
                    }
                }
            }
            let hide: Vec<&str> = [Some(refresh_token), client.client_secret.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let response = match request.form(&form).send().await {
                Ok(r) => r,
                Err(e) => return unanswered(e, &hide),
            };
            let status = response.status();
            let answer = Answer::of(&response);
            let body = response.bytes().await.unwrap_or_default();
            let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
            if let Some(retry) = answer.retry(|| format!("HTTP {}", status.as_u16())) {
                return retry;
            }
            let Some(parsed) = parsed else {
                return Outcome::Transient {
                    message: format!("HTTP {} with an unreadable body", status.as_u16()),
                    retry_after: None,
                };
            };
            if let Some(error) = parsed.error.as_deref() {
                let described = redact(
                    &format!(
                        "HTTP {} {error}{}",
                        status.as_u16(),
                        parsed
                            .error_description
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                    &hide,
                );
                return if REAUTH_ERRORS.contains(&error) {
                    Outcome::NeedsReauth(described)
                } else {
                    Outcome::Failed(described)
                };
            }
            match (status.is_success(), parsed.access_token) {
                (true, Some(access_token)) if !access_token.is_empty() => Outcome::Refreshed(Issued {
                    access_token,
                    refresh_token: parsed.refresh_token.filter(|t| !t.is_empty()),
                    expires_in: parsed.expires_in,
                    refresh_expires_in: parsed.refresh_token_expires_in,
                    expires_at: None,
                    refresh_expires_at: None,
                    derived: Vec::new(),
                }),
                (true, _) => Outcome::Transient {
                    message: "success without an access_token".into(),
                    retry_after: None,
                },
                (false, _) if status == StatusCode::UNAUTHORIZED => {
                    Outcome::NeedsReauth(format!("HTTP {}", status.as_u16()))
                }
                (false, _) => Outcome::Failed(format!("HTTP {}", status.as_u16())),
            }
        })
    }
}
