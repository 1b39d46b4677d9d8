//! RFC 6749 §4.4 client-credentials grant: the token is simply requested again with the
//! client id and secret ahead of expiry. The Milesight OpenAPI token uses it (apis.md §1.2),
//! through the `milesight` preset, whose responses come wrapped as `{"data": {…}, "status"}`.
//!
//! Connection fields used: `base_url` (the token URL, or with the `milesight` preset the MDP
//! server address); settings `{"preset": "milesight", "token_url": "…", "client_auth":
//! "basic"|"body", "scope": "…"}`; credentials (sealed) `{"client_id": "…", "client_secret": "…"}`.

use std::time::Duration;

use futures_core::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;

use super::oauth2::{ClientAuth, ClientCredentials, TokenAnswer, post_token_form};
use super::{Choice, Failure, Field, Issued, Outcome, Provider, jwt_expiry};
use crate::redact::redact;
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct OAuth2ClientCredentials;

pub const KIND: &str = "oauth2_client_credentials";
/// The preset of the Milesight Development Platform's token endpoint.
pub const MILESIGHT_PRESET: &str = "milesight";

#[derive(Debug, Default, Deserialize)]
struct Settings {
    preset: Option<String>,
    token_url: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
}

/// Error codes meaning the client itself is refused: retrying cannot help.
const REFUSED_CLIENT: &[&str] = &["invalid_client", "unauthorized_client", "authentication_failed"];

fn token_url(connection: &Connection, settings: &Settings) -> Option<String> {
    if let Some(url) = settings.token_url.as_deref() {
        return Some(url.to_owned());
    }
    let base = connection.base_url.as_deref()?.trim_end_matches('/');
    Some(match settings.preset.as_deref() {
        Some(MILESIGHT_PRESET) => format!("{base}/oauth/token"),
        _ => base.to_owned(),
    })
}

/// The token object and the error, from either a plain RFC 6749 body or an MDP envelope.
struct TokenBody {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    refresh_expires_in: Option<i64>,
    /// `error` / `errCode`.
    error: Option<String>,
    /// `error_description` / `errMsg`.
    description: Option<String>,
    /// MDP's `status: "Failed"` on a 200.
    failed: bool,
}

fn read_answer(body: &[u8]) -> Option<TokenBody> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let token = object.get("data").filter(|d| d.is_object()).unwrap_or(&value);
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let number = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_i64);
    Some(TokenBody {
        access_token: text(token, "access_token").filter(|t| !t.is_empty()),
        refresh_token: text(token, "refresh_token").filter(|t| !t.is_empty()),
        expires_in: number(token, "expires_in"),
        refresh_expires_in: number(token, "refresh_token_expires_in"),
        error: text(&value, "error").or_else(|| text(&value, "errCode")),
        description: text(&value, "error_description").or_else(|| text(&value, "errMsg")),
        failed: text(&value, "status").is_some_and(|s| s.eq_ignore_ascii_case("failed")),
    })
}

impl Provider for OAuth2ClientCredentials {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn choices(&self) -> Vec<Choice> {
        vec![Choice {
            id: "client_credentials",
            label: "OAuth 2.0 client credentials (machine to machine)",
            provider: KIND,
            preset: None,
            help: "A token requested with the client id and secret alone; Telltale asks again before it expires.",
            consent: false,
            fields: vec![
                Field::new("base_url", "Token URL", "url").required(),
                Field::new("credentials.client_id", "Client id", "text").required(),
                Field::new("credentials.client_secret", "Client secret", "password").required(),
                Field::new("settings.scope", "Scope", "text"),
            ],
        }]
    }

    fn logs_in_with_credentials(&self) -> bool {
        true
    }

    fn default_lead(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn refresh<'a>(
        &'a self,
        http: &'a reqwest::Client,
        connection: &'a Connection,
        secrets: &'a ConnectionSecrets,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let settings: Settings = connection.settings.parse();
            let Some(url) = token_url(connection, &settings) else {
                return Outcome::Failed("no token URL: set the connection's base_url or token_url".into());
            };
            let Some(client) = secrets
                .credentials
                .as_deref()
                .and_then(|c| serde_json::from_str::<ClientCredentials>(c).ok())
            else {
                return Outcome::NeedsReauth(
                    "credentials must be JSON with client_id and client_secret".into(),
                );
            };
            let mut form = vec![("grant_type", "client_credentials")];
            if let Some(scope) = settings.scope.as_deref() {
                form.push(("scope", scope));
            }
            let auth = match settings.client_auth.as_deref() {
                Some("basic") => ClientAuth::Basic,
                _ => ClientAuth::Body,
            };
            let hide: Vec<&str> = client.client_secret.as_deref().into_iter().collect();
            match post_token_form(http, &url, auth, &client, form, &hide).await {
                Ok(answered) => read_token_answer(answered, &settings, &hide),
                Err(unanswered) => unanswered,
            }
        })
    }
}

/// What a client-credentials token endpoint's answer means: a token (expiry from
/// `expires_in`, else the JWT's `exp`), a refused client (`needs_reauth`), or a failure.
fn read_token_answer(answered: TokenAnswer, settings: &Settings, hide: &[&str]) -> Outcome {
    let TokenAnswer {
        status,
        answer: http_answer,
        body,
    } = answered;
    let answer = read_answer(&body);
    let code = status.as_u16();
    let described = Failure::answered(
        code,
        redact(
            &match &answer {
                Some(a) => format!(
                    "HTTP {} {}{}",
                    status.as_u16(),
                    a.error.as_deref().unwrap_or("(no error code)"),
                    a.description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                None => format!("HTTP {} with an unreadable body", status.as_u16()),
            },
            hide,
        ),
    );
    if let Some(retry) = http_answer.retry(|| described.clone()) {
        return retry;
    }
    let Some(answer) = answer else {
        // A proxy's HTML page or a truncated body: the next attempt may be answered properly.
        return Outcome::transient(described);
    };
    let refused = answer
        .error
        .as_deref()
        .is_some_and(|e| REFUSED_CLIENT.contains(&e));
    if refused || status == StatusCode::UNAUTHORIZED {
        if settings.preset.as_deref() == Some(MILESIGHT_PRESET) {
            // Every Milesight API call stops with this token: worth an error line of its
            // own (the gauge and the alert read the connection's status).
            tracing::error!(
                "Milesight refused the client credentials; token refresh stops until they are fixed"
            );
        }
        return Outcome::NeedsReauth(described);
    }
    if !status.is_success() || answer.failed || answer.error.is_some() {
        return Outcome::Failed(described);
    }
    let Some(access_token) = answer.access_token else {
        return Outcome::transient(Failure::answered(code, "token response without a usable token"));
    };
    // `expires_in` is the documented source; a JWT's `exp` covers servers that omit it.
    let expires_in = answer.expires_in.filter(|s| *s > 0);
    let expires_at = expires_in.is_none().then(|| jwt_expiry(&access_token)).flatten();
    if expires_in.is_none() && expires_at.is_none() {
        return Outcome::transient(Failure::answered(code, "token response without a usable expiry"));
    }
    Outcome::Refreshed(Issued {
        access_token,
        refresh_token: answer.refresh_token,
        expires_in,
        refresh_expires_in: answer.refresh_expires_in,
        expires_at,
        refresh_expires_at: None,
        derived: Vec::new(),
        learned: None,
    })
}

#[cfg(test)]
mod tests {
    use super::{Settings, read_answer, read_token_answer};
    use crate::providers::oauth2::TokenAnswer;
    use crate::providers::{Answer, Failure, Outcome};
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn answered(status: StatusCode, body: &str) -> Outcome {
        let answer = TokenAnswer {
            status,
            answer: Answer::classify(status, &HeaderMap::new()),
            body: body.as_bytes().to_vec(),
        };
        read_token_answer(answer, &Settings::default(), &["s3cret"])
    }

    #[test]
    fn failures_carry_the_platforms_status_beside_its_words() {
        match answered(StatusCode::TOO_MANY_REQUESTS, r#"{"error":"slow_down"}"#) {
            Outcome::Transient { failure, .. } => {
                assert_eq!(failure, Failure::answered(429, "HTTP 429 slow_down"));
            }
            _ => panic!("a 429 is worth retrying"),
        }
        match answered(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client","error_description":"bad s3cret"}"#,
        ) {
            Outcome::NeedsReauth(failure) => {
                assert_eq!(failure.http_status, Some(401));
                assert_eq!(failure.message, "HTTP 401 invalid_client: bad ****");
            }
            _ => panic!("a refused client needs re-authorisation"),
        }
        match answered(StatusCode::BAD_GATEWAY, "<html>proxy</html>") {
            Outcome::Transient { failure, .. } => assert_eq!(failure.http_status, Some(502)),
            _ => panic!("a 502 is worth retrying"),
        }
    }

    #[test]
    fn reads_plain_and_wrapped_answers() {
        let plain = read_answer(br#"{"access_token":"a","expires_in":60,"token_type":"bearer"}"#).unwrap();
        assert_eq!(
            (plain.access_token.as_deref(), plain.expires_in),
            (Some("a"), Some(60))
        );
        let wrapped = read_answer(
            br#"{"data":{"access_token":"b","expires_in":3599,"refresh_token":"r"},"status":"Success"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                wrapped.access_token.as_deref(),
                wrapped.refresh_token.as_deref(),
                wrapped.failed
            ),
            (Some("b"), Some("r"), false)
        );
        let failed =
            read_answer(br#"{"status":"Failed","errCode":"authentication_failed","errMsg":"no"}"#).unwrap();
        assert_eq!(
            (
                failed.error.as_deref(),
                failed.description.as_deref(),
                failed.failed
            ),
            (Some("authentication_failed"), Some("no"), true)
        );
        assert!(read_answer(b"<html>").is_none());
        assert!(read_answer(b"[1,2]").is_none());
    }
}
