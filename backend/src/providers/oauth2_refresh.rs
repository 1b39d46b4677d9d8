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

pub use super::oauth2::{ClientAuth, ClientCredentials};
use super::oauth2::{TokenAnswer, post_token_form};
use super::{Choice, Consent, Failure, Field, Issued, Outcome, Provider};
use crate::redact::redact;
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct OAuth2Refresh;

/// A platform's token endpoint and how it wants the client to authenticate, and its consent
/// screen (apis.md §6) with the scopes the polled endpoints need.
pub struct Preset {
    pub name: &'static str,
    pub label: &'static str,
    pub token_url: &'static str,
    pub client_auth: ClientAuth,
    pub authorize_url: &'static str,
    pub scopes: &'static str,
    pub extra: &'static [(&'static str, &'static str)],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "spotify",
        label: "Spotify",
        authorize_url: "https://accounts.spotify.com/authorize",
        scopes: "user-read-recently-played user-top-read",
        extra: &[],
        token_url: "https://accounts.spotify.com/api/token",
        client_auth: ClientAuth::Basic,
    },
    Preset {
        name: "google",
        label: "Google",
        authorize_url: "https://accounts.google.com/o/oauth2/v2/auth",
        scopes: "https://www.googleapis.com/auth/youtube.readonly https://www.googleapis.com/auth/gmail.readonly https://www.googleapis.com/auth/calendar.readonly",
        extra: &[("access_type", "offline"), ("prompt", "consent")],
        token_url: "https://oauth2.googleapis.com/token",
        client_auth: ClientAuth::Body,
    },
    Preset {
        name: "github",
        label: "GitHub",
        authorize_url: "https://github.com/login/oauth/authorize",
        scopes: "read:user repo",
        extra: &[],
        token_url: "https://github.com/login/oauth/access_token",
        client_auth: ClientAuth::Body,
    },
    Preset {
        name: "discord",
        label: "Discord",
        authorize_url: "https://discord.com/oauth2/authorize",
        scopes: "identify guilds",
        extra: &[],
        token_url: "https://discord.com/api/oauth2/token",
        client_auth: ClientAuth::Basic,
    },
];

#[derive(Debug, Default, Deserialize)]
struct Settings {
    preset: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
    /// The consent screen, when not the preset's.
    authorize_url: Option<String>,
    /// The scopes asked for on the consent screen, when not the preset's.
    scopes: Option<String>,
}

impl Settings {
    fn of(connection: &Connection) -> Settings {
        connection.settings.parse()
    }

    fn preset(&self) -> Option<&'static Preset> {
        self.preset
            .as_deref()
            .and_then(|p| PRESETS.iter().find(|x| x.name == p))
    }

    fn client_auth(&self) -> ClientAuth {
        match self.client_auth.as_deref() {
            Some("basic") => ClientAuth::Basic,
            Some("body") => ClientAuth::Body,
            _ => self.preset().map_or(ClientAuth::Body, |p| p.client_auth),
        }
    }
}

fn client_of(secrets: &ConnectionSecrets) -> Option<ClientCredentials> {
    secrets
        .credentials
        .as_deref()
        .and_then(|c| serde_json::from_str::<ClientCredentials>(c).ok())
}

/// The fields every form of this provider has.
fn fields(preset: Option<&Preset>) -> Vec<Field> {
    let mut fields = vec![
        Field::new("credentials.client_id", "Client id", "text").required(),
        Field::new("credentials.client_secret", "Client secret", "password").required(),
        Field::new("settings.scopes", "Scopes (space-separated)", "text")
            .placeholder(preset.map_or("", |p| p.scopes)),
        Field::new(
            "settings.authorize_url",
            "Authorize URL (the consent screen)",
            "url",
        )
        .placeholder(preset.map_or("", |p| p.authorize_url)),
        Field::new("base_url", "Token URL", "url").placeholder(preset.map_or("", |p| p.token_url)),
        Field::new(
            "refresh_token",
            "Refresh token (optional: or press Connect)",
            "password",
        )
        .help(
            "Paste one obtained elsewhere, or leave empty and connect through the platform's consent screen.",
        ),
    ];
    if preset.is_none() {
        for field in &mut fields {
            if matches!(field.key, "settings.authorize_url" | "base_url") {
                field.required = true;
            }
        }
    }
    fields
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

/// Where a connection asks for tokens, and as which client.
struct TokenEndpoint {
    url: String,
    auth: ClientAuth,
    client: ClientCredentials,
}

impl TokenEndpoint {
    /// The endpoint, or why the connection is misconfigured.
    fn of(connection: &Connection, secrets: &ConnectionSecrets) -> Result<TokenEndpoint, String> {
        let settings = Settings::of(connection);
        let url = connection
            .base_url
            .clone()
            .or(settings.preset().map(|p| p.token_url.to_owned()))
            .ok_or("no token URL: set the connection's base_url or a preset")?;
        let client = client_of(secrets).ok_or("credentials must be JSON with client_id and client_secret")?;
        Ok(TokenEndpoint {
            url,
            auth: settings.client_auth(),
            client,
        })
    }

    async fn request(&self, http: &reqwest::Client, form: Vec<(&str, &str)>, hide: &[&str]) -> Outcome {
        token_request(http, &self.url, self.auth, &self.client, form, hide).await
    }
}

/// Posts a token request (`form` plus the client's authentication) and reads the answer.
async fn token_request(
    http: &reqwest::Client,
    token_url: &str,
    auth: ClientAuth,
    client: &ClientCredentials,
    form: Vec<(&str, &str)>,
    hide: &[&str],
) -> Outcome {
    let mut hide = hide.to_vec();
    hide.extend(client.client_secret.as_deref());
    let TokenAnswer { status, answer, body } =
        match post_token_form(http, token_url, auth, client, form, &hide).await {
            Ok(answered) => answered,
            Err(unanswered) => return unanswered,
        };
    let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
    let code = status.as_u16();
    // What the platform said, in its own words when its body names an error (a busy or
    // failing platform often does: on-call reads this line first).
    let said = parsed.as_ref().and_then(|p| p.error.as_deref()).map(|error| {
        redact(
            &format!(
                "HTTP {code} {error}{}",
                parsed
                    .as_ref()
                    .and_then(|p| p.error_description.as_deref())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            &hide,
        )
    });
    if let Some(retry) =
        answer.retry(|| Failure::answered(code, said.clone().unwrap_or_else(|| format!("HTTP {code}"))))
    {
        return retry;
    }
    let Some(parsed) = parsed else {
        return Outcome::transient(Failure::answered(
            code,
            format!("HTTP {code} with an unreadable body"),
        ));
    };
    if let (Some(error), Some(said)) = (parsed.error.as_deref(), said) {
        let described = Failure::answered(code, said);
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
            learned: None,
        }),
        (true, _) => Outcome::transient(Failure::answered(code, "success without an access_token")),
        (false, _) if status == StatusCode::UNAUTHORIZED => {
            Outcome::NeedsReauth(Failure::answered(code, format!("HTTP {code}")))
        }
        (false, _) => Outcome::Failed(Failure::answered(code, format!("HTTP {code}"))),
    }
}

impl Provider for OAuth2Refresh {
    fn kind(&self) -> &'static str {
        "oauth2_refresh"
    }

    fn choices(&self) -> Vec<Choice> {
        let mut choices: Vec<Choice> = PRESETS
            .iter()
            .map(|p| Choice {
                id: p.name,
                label: p.label,
                provider: "oauth2_refresh",
                preset: Some(p.name),
                help: "Register an OAuth app at the platform with the redirect URI shown after saving, then Connect.",
                consent: true,
                fields: fields(Some(p)),
            })
            .collect();
        choices.push(Choice {
            id: "oauth2",
            label: "Other OAuth 2.0 platform",
            provider: "oauth2_refresh",
            preset: None,
            help: "Any platform with an authorization-code consent screen and refresh tokens.",
            consent: true,
            fields: fields(None),
        });
        choices
    }

    fn consent(&self, connection: &Connection, secrets: &ConnectionSecrets) -> Option<Consent> {
        let settings = Settings::of(connection);
        let preset = settings.preset();
        Some(Consent {
            authorize_url: settings
                .authorize_url
                .clone()
                .filter(|u| !u.is_empty())
                .or(preset.map(|p| p.authorize_url.to_owned()))?,
            client_id: client_of(secrets)?.client_id,
            scopes: settings
                .scopes
                .clone()
                .filter(|s| !s.is_empty())
                .or(preset.map(|p| p.scopes.to_owned()))
                .unwrap_or_default(),
            extra: preset.map(|p| p.extra.to_vec()).unwrap_or_default(),
        })
    }

    fn exchange_code<'a>(
        &'a self,
        http: &'a reqwest::Client,
        connection: &'a Connection,
        secrets: &'a ConnectionSecrets,
        code: &'a str,
        verifier: &'a str,
        redirect_uri: &'a str,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let endpoint = match TokenEndpoint::of(connection, secrets) {
                Ok(endpoint) => endpoint,
                Err(problem) => return Outcome::Failed(problem.into()),
            };
            let form = vec![
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ];
            endpoint.request(http, form, &[code, verifier]).await
        })
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
            let Some(refresh_token) = secrets.refresh_token.as_deref() else {
                return Outcome::NeedsReauth("no refresh token stored".into());
            };
            let endpoint = match TokenEndpoint::of(connection, secrets) {
                Ok(endpoint) => endpoint,
                Err(problem) => return Outcome::Failed(problem.into()),
            };
            let scope = Settings::of(connection).scope;
            let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
            if let Some(scope) = scope.as_deref() {
                form.push(("scope", scope));
            }
            endpoint.request(http, form, &[refresh_token]).await
        })
    }
}
