//! Third-party platforms. Each provider kind is one file implementing `Provider`; the only
//! code that knows a platform's token API. Base URLs come from the connection, so tests aim
//! providers at fake servers.

pub mod circuit;
pub mod meta_long_lived;
pub mod oauth2;
pub mod oauth2_client_credentials;
pub mod oauth2_refresh;
pub mod password_login;
pub mod thingsboard;

use std::time::Duration;

use futures_core::future::BoxFuture;
use serde::Serialize;

use crate::storage::connections::{Connection, ConnectionSecrets};

/// What a provider's token endpoint issued.
#[derive(Clone)]
pub struct Issued {
    pub access_token: String,
    /// A rotated refresh token; `None` keeps the stored one.
    pub refresh_token: Option<String>,
    pub expires_in: Option<i64>,
    pub refresh_expires_in: Option<i64>,
    /// Absolute expiries (Unix seconds) when the token says so itself (a JWT `exp`); they
    /// win over the relative ones, which would drift by the time between receipt and storage.
    pub expires_at: Option<i64>,
    pub refresh_expires_at: Option<i64>,
    /// Tokens derived from this one and stored as connections of their own (Meta page tokens).
    pub derived: Vec<DerivedToken>,
    /// Settings the provider learned (a discovered login path), merged into the connection's.
    pub learned: Option<serde_json::Value>,
}

/// A token issued alongside the refreshed one, e.g. a Facebook page's token.
#[derive(Clone)]
pub struct DerivedToken {
    /// Its connection's provider kind, e.g. `meta_page`.
    pub provider: &'static str,
    /// Its connection's name, e.g. the page id.
    pub name: String,
    pub access_token: String,
    /// Non-secret details, e.g. the page name.
    pub settings: serde_json::Value,
}

/// The result of one refresh attempt, in the terms the engine acts on.
#[derive(Clone)]
pub enum Outcome {
    Refreshed(Issued),
    /// Worth retrying: timeouts, 5xx, 429 (with the server's `Retry-After`), garbage.
    Transient {
        failure: Failure,
        retry_after: Option<Duration>,
    },
    /// The grant is gone (revoked, expired refresh token, refused client): a person must
    /// re-authorise. Never retried.
    NeedsReauth(Failure),
    /// Refused for another reason (bad request, misconfiguration); not retried.
    Failed(Failure),
}

/// Why an attempt did not get a token: what people read (secrets already redacted) and, when
/// the platform answered, its HTTP status, kept as a value so logs and alerts need not parse
/// it back out of the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub http_status: Option<u16>,
}

impl Failure {
    /// A failure the platform answered with `status`.
    pub fn answered(status: u16, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            http_status: Some(status),
        }
    }
}

/// A failure without an HTTP answer (no answer at all, or Telltale's own refusal).
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            http_status: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Refreshed(_) => "success",
            Outcome::Transient { .. } => "transient_failure",
            Outcome::NeedsReauth(_) | Outcome::Failed(_) => "permanent_failure",
        }
    }

    /// A failure worth retrying at the engine's own pace (no `Retry-After`).
    pub fn transient(failure: impl Into<Failure>) -> Outcome {
        Outcome::Transient {
            failure: failure.into(),
            retry_after: None,
        }
    }

    /// Why it failed; `None` when it refreshed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Refreshed(_) => None,
            Outcome::Transient { failure, .. } | Outcome::NeedsReauth(failure) | Outcome::Failed(failure) => {
                Some(failure)
            }
        }
    }
}

/// One way to connect a platform, as the web UI offers it: a provider, maybe with a preset,
/// and the fields a person fills in (besides the account and the connection's name).
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The form's id, e.g. `spotify`.
    pub id: &'static str,
    pub label: &'static str,
    pub provider: &'static str,
    /// `settings.preset`, when the choice is a preset.
    pub preset: Option<&'static str>,
    pub help: &'static str,
    /// Whether its first tokens come from the platform's consent screen ("Connect").
    pub consent: bool,
    pub fields: Vec<Field>,
}

/// One input of a connection form. `key` says where the value goes: `base_url`,
/// `settings.<name>`, `credentials.<name>` (sealed), `access_token` or `refresh_token` (sealed).
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    /// `text`, `url` or `password` (secrets: never shown back, left empty to keep).
    pub input: &'static str,
    pub required: bool,
    /// Shown as the placeholder: the value used when left empty.
    pub placeholder: &'static str,
    pub help: &'static str,
}

impl Field {
    pub const fn new(key: &'static str, label: &'static str, input: &'static str) -> Field {
        Field {
            key,
            label,
            input,
            required: false,
            placeholder: "",
            help: "",
        }
    }

    pub const fn required(mut self) -> Field {
        self.required = true;
        self
    }

    pub const fn placeholder(mut self, placeholder: &'static str) -> Field {
        self.placeholder = placeholder;
        self
    }

    pub const fn help(mut self, help: &'static str) -> Field {
        self.help = help;
        self
    }

    /// Whether the value is a secret (write-only).
    pub fn secret(&self) -> bool {
        self.input == "password"
    }
}

/// Where a provider's consent screen is, for the authorization-code flow (apis.md §6).
pub struct Consent {
    pub authorize_url: String,
    pub client_id: String,
    /// Space-separated (Meta: comma-separated, as it documents).
    pub scopes: String,
    /// Extra query parameters the platform needs (Google: a refresh token only with these).
    pub extra: Vec<(&'static str, &'static str)>,
}

pub trait Provider: Send + Sync {
    /// The `provider` value of connections this handles.
    fn kind(&self) -> &'static str;
    /// The ways to connect it that the web UI offers (none: created through the API only).
    fn choices(&self) -> Vec<Choice> {
        Vec::new()
    }
    /// Whether a token of unknown expiry that Telltale never refreshed is due at once (Meta:
    /// a pasted token may be a short-lived one, which dies within hours unless exchanged).
    fn refresh_unknown_expiry_at_once(&self) -> bool {
        false
    }
    /// Whether stored credentials alone get a new token (client credentials, a login), so
    /// tokens cleared by hand come back at the next refresh; otherwise (refresh-token grants,
    /// Meta) only Reconnect or a pasted token brings them back.
    fn logs_in_with_credentials(&self) -> bool {
        false
    }
    /// Its consent screen, when its first tokens come from one (`None`: no "Connect").
    fn consent(&self, _connection: &Connection, _secrets: &ConnectionSecrets) -> Option<Consent> {
        None
    }
    /// Exchanges the authorization code the consent screen returned for tokens (PKCE
    /// `verifier`, the same `redirect_uri`). Must not put secrets in any message it returns.
    fn exchange_code<'a>(
        &'a self,
        _http: &'a reqwest::Client,
        _connection: &'a Connection,
        _secrets: &'a ConnectionSecrets,
        _code: &'a str,
        _verifier: &'a str,
        _redirect_uri: &'a str,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::Failed("this provider has no consent screen".into()) })
    }
    /// Refresh this long before expiry unless the connection's settings say otherwise.
    fn default_lead(&self) -> Duration;
    /// One attempt to get a fresh token. Must not put secrets in any message it returns.
    fn refresh<'a>(
        &'a self,
        http: &'a reqwest::Client,
        connection: &'a Connection,
        secrets: &'a ConnectionSecrets,
    ) -> BoxFuture<'a, Outcome>;
}

static OAUTH2_REFRESH: oauth2_refresh::OAuth2Refresh = oauth2_refresh::OAuth2Refresh;
static OAUTH2_CLIENT_CREDENTIALS: oauth2_client_credentials::OAuth2ClientCredentials =
    oauth2_client_credentials::OAuth2ClientCredentials;
static THINGSBOARD: thingsboard::ThingsBoard = thingsboard::ThingsBoard;
static PASSWORD_LOGIN: password_login::PasswordLogin = password_login::PasswordLogin;
static META_LONG_LIVED: meta_long_lived::MetaLongLived = meta_long_lived::MetaLongLived;

const PROVIDERS: [&dyn Provider; 5] = [
    &OAUTH2_REFRESH,
    &OAUTH2_CLIENT_CREDENTIALS,
    &THINGSBOARD,
    &PASSWORD_LOGIN,
    &META_LONG_LIVED,
];

/// The provider for a connection's `provider` value.
pub fn provider_for(kind: &str) -> Option<&'static dyn Provider> {
    PROVIDERS.into_iter().find(|p| p.kind() == kind)
}

/// Every way to connect a platform the web UI offers, in the order shown.
pub fn choices() -> Vec<Choice> {
    PROVIDERS.iter().flat_map(|p| p.choices()).collect()
}

/// The form a connection was made with: its provider's choice with the same preset.
pub fn choice_of(connection: &Connection) -> Option<Choice> {
    let preset = connection.settings.text("preset").map(str::to_owned);
    let offered = provider_for(&connection.provider)?.choices();
    offered
        .iter()
        .find(|c| c.preset == preset.as_deref())
        .or_else(|| offered.iter().find(|c| c.preset.is_none()))
        .cloned()
}

/// Every provider kind a connection can be created with.
pub fn kinds() -> Vec<&'static str> {
    PROVIDERS.iter().map(|p| p.kind()).collect()
}

/// A request that got no answer (timeout, refused connection, …): worth retrying. The URL is
/// left out of the message, since some APIs take secrets in the query string.
pub fn unanswered(err: reqwest::Error, hide: &[&str]) -> Outcome {
    let kind = if err.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    Outcome::transient(crate::redact::redact(
        &format!("{kind}: {}", err.without_url()),
        hide,
    ))
}

/// What an upstream's HTTP status means, before the body says more: the one place that decides
/// which answers are worth retrying and how long the server asked us to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Ok,
    /// 429: the upstream wants us to slow down, for `retry_after` when it says.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx: the upstream is struggling; worth retrying (after `retry_after` when it says).
    Unavailable { retry_after: Option<Duration> },
    /// Anything else: the request itself was refused; the body says why.
    Refused,
}

impl Answer {
    pub fn classify(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Answer {
        if status.is_success() {
            Answer::Ok
        } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Answer::RateLimited {
                retry_after: retry_after(headers),
            }
        } else if status.is_server_error() {
            Answer::Unavailable {
                retry_after: retry_after(headers),
            }
        } else {
            Answer::Refused
        }
    }

    pub fn of(response: &reqwest::Response) -> Answer {
        Answer::classify(response.status(), response.headers())
    }

    /// For a 429 or 5xx, the transient outcome a refresh reports (the engine retries it with
    /// backoff, or after the server's `Retry-After`); `None` for answers the body must explain.
    pub fn retry(self, failure: impl FnOnce() -> Failure) -> Option<Outcome> {
        match self {
            Answer::RateLimited { retry_after } | Answer::Unavailable { retry_after } => {
                Some(Outcome::Transient {
                    failure: failure(),
                    retry_after,
                })
            }
            Answer::Ok | Answer::Refused => None,
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// The `exp` claim (Unix seconds) of a JWT, read without verifying the signature: only the
/// issuer can verify it, and we only need to know when to refresh.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    jwt_claims(token)?.get("exp")?.as_i64().filter(|exp| *exp > 0)
}

/// A JWT's claims, read without verifying the signature (see `jwt_expiry`).
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::{Answer, Failure, Outcome, jwt_expiry};
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use std::time::Duration;

    #[test]
    fn answers_are_classified_once_for_every_upstream() {
        let mut wait = HeaderMap::new();
        wait.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let none = HeaderMap::new();
        let seven = Some(Duration::from_secs(7));
        assert_eq!(Answer::classify(StatusCode::OK, &wait), Answer::Ok);
        assert_eq!(
            Answer::classify(StatusCode::TOO_MANY_REQUESTS, &wait),
            Answer::RateLimited { retry_after: seven }
        );
        assert_eq!(
            Answer::classify(StatusCode::SERVICE_UNAVAILABLE, &wait),
            Answer::Unavailable { retry_after: seven }
        );
        assert_eq!(
            Answer::classify(StatusCode::BAD_GATEWAY, &none),
            Answer::Unavailable { retry_after: None }
        );
        for refused in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FOUND,
        ] {
            assert_eq!(Answer::classify(refused, &wait), Answer::Refused, "{refused}");
        }
        assert!(matches!(
            Answer::classify(StatusCode::TOO_MANY_REQUESTS, &wait).retry(|| Failure::answered(429, "HTTP 429")),
            Some(Outcome::Transient { retry_after, .. }) if retry_after == seven
        ));
        assert!(Answer::Refused.retry(|| unreachable!()).is_none());
        assert!(Answer::Ok.retry(|| unreachable!()).is_none());
    }

    #[test]
    fn jwt_expiry_reads_exp_and_refuses_garbage() {
        // {"alg":"HS512"} . {"sub":"tenant@thingsboard.org","exp":1742881448,"iat":1742872448} . sig
        let token = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJ0ZW5hbnRAdGhpbmdzYm9hcmQub3JnIiwiZXhwIjoxNzQyODgxNDQ4LCJpYXQiOjE3NDI4NzI0NDh9.c2ln";
        assert_eq!(jwt_expiry(token), Some(1_742_881_448));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("a.eyJzdWIiOiJ4In0.c"), None, "no exp claim");
        assert_eq!(jwt_expiry(""), None);
    }
}
