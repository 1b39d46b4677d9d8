//! A generic login service: POST a username (or email) and password to a configured URL and
//! take the token from the response, the way many in-house APIs issue tokens.
//!
//! Connection fields used: `base_url` = the login URL; credentials (sealed)
//! `{"username": "…", "password": "…"}`; settings:
//! - `body`: `"json"` (default) or `"form"`;
//! - `username_field`: `"username"` (default), `"email"`, …; `password_field`: `"password"`;
//! - `token_field`: where the token is in the JSON response (default: the first of
//!   `access_token`, `token`, `jwt`, `accessToken`, also under `data`), or
//! - `token_header`: a response header carrying it instead (`Bearer ` is stripped).
//!
//! Expiry from `expires_in`, else the JWT `exp`. With no credentials, a token pasted by hand
//! is kept as it is (nothing to refresh with, so sweeps leave it alone): it shows as `expired`
//! once it expires.

use std::time::Duration;

use futures_core::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{Answer, Choice, Field, Issued, Outcome, Provider, jwt_expiry, unanswered};
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct PasswordLogin;

#[derive(Default, Deserialize)]
struct Settings {
    body: Option<String>,
    username_field: Option<String>,
    password_field: Option<String>,
    token_field: Option<String>,
    token_header: Option<String>,
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(alias = "email")]
    username: String,
    password: String,
}

const TOKEN_FIELDS: &[&str] = &["access_token", "token", "jwt", "accessToken"];

/// The token in a login response: the configured field, else a usual one, at the top level
/// or under `data`.
fn find_token(body: &Value, field: Option<&str>) -> Option<String> {
    let candidates: Vec<&str> = field.map(|f| vec![f]).unwrap_or_else(|| TOKEN_FIELDS.to_vec());
    [Some(body), body.get("data")]
        .into_iter()
        .flatten()
        .find_map(|object| {
            candidates.iter().find_map(|name| {
                object
                    .get(*name)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            })
        })
        .map(str::to_owned)
}

fn expires_in(body: &Value) -> Option<i64> {
    [Some(body), body.get("data")]
        .into_iter()
        .flatten()
        .find_map(|o| o.get("expires_in").and_then(Value::as_i64))
}

impl Provider for PasswordLogin {
    fn kind(&self) -> &'static str {
        "password_login"
    }

    fn choices(&self) -> Vec<Choice> {
        vec![Choice {
            id: "password_login",
            label: "Login service (username and password)",
            provider: "password_login",
            preset: None,
            help: "An in-house API that issues a token for a username and password: Telltale logs in again before the token expires.",
            consent: false,
            fields: vec![
                Field::new("base_url", "Login URL", "url")
                    .required()
                    .placeholder("https://api.example.com/api/auth/login"),
                Field::new("credentials.username", "Username", "text").required(),
                Field::new("credentials.password", "Password", "password").required(),
                Field::new("settings.body", "Body format (json or form)", "text").placeholder("json"),
                Field::new("settings.username_field", "Username field name", "text").placeholder("username"),
                Field::new("settings.token_field", "Token field in the answer", "text")
                    .placeholder("access_token, token, jwt or accessToken"),
            ],
        }]
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
            let Some(credentials) = secrets
                .credentials
                .as_deref()
                .and_then(|c| serde_json::from_str::<Credentials>(c).ok())
            else {
                return Outcome::NeedsReauth(
                    "no username and password stored: paste a new token by hand".into(),
                );
            };
            let Some(url) = connection.base_url.as_deref() else {
                return Outcome::Failed("a password_login connection needs base_url = the login URL".into());
            };
            let settings: Settings = serde_json::from_str(&connection.settings).unwrap_or_default();
            let user_field = settings.username_field.as_deref().unwrap_or("username");
            let pass_field = settings.password_field.as_deref().unwrap_or("password");
            let request = http.post(url).header(reqwest::header::ACCEPT, "application/json");
            let request = if settings.body.as_deref() == Some("form") {
                request.form(&[
                    (user_field, credentials.username.as_str()),
                    (pass_field, credentials.password.as_str()),
                ])
            } else {
                request.json(&serde_json::json!({ user_field: credentials.username, pass_field: credentials.password }))
            };
            let hide = [credentials.password.as_str()];
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => return unanswered(e, &hide),
            };
            let status = response.status();
            let answer = Answer::of(&response);
            let from_header = settings.token_header.as_deref().and_then(|name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_start_matches("Bearer ").to_owned())
            });
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if let Some(retry) = answer.retry(|| format!("HTTP {}", status.as_u16())) {
                return retry;
            }
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Outcome::NeedsReauth(format!("HTTP {}: login refused", status.as_u16()));
                }
                s if !s.is_success() => return Outcome::Failed(format!("HTTP {}", s.as_u16())),
                _ => {}
            }
            let token = from_header
                .filter(|t| !t.is_empty())
                .or_else(|| find_token(&body, settings.token_field.as_deref()));
            let Some(token) = token else {
                return Outcome::Failed(
                    "the login response held no token (set token_field or token_header)".into(),
                );
            };
            let expires_in = expires_in(&body);
            Outcome::Refreshed(Issued {
                // The JWT's own expiry only when the service did not say expires_in.
                expires_at: if expires_in.is_none() {
                    jwt_expiry(&token)
                } else {
                    None
                },
                refresh_expires_at: None,
                expires_in,
                access_token: token,
                refresh_token: None,
                refresh_expires_in: None,
                derived: Vec::new(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_are_found_where_services_put_them() {
        assert_eq!(
            find_token(&json!({"access_token": "a"}), None).as_deref(),
            Some("a")
        );
        assert_eq!(
            find_token(&json!({"jwt": "j", "user": {}}), None).as_deref(),
            Some("j")
        );
        assert_eq!(
            find_token(&json!({"data": {"token": "d"}}), None).as_deref(),
            Some("d")
        );
        assert_eq!(
            find_token(&json!({"session": "s", "token": "t"}), Some("session")).as_deref(),
            Some("s")
        );
        assert_eq!(find_token(&json!({"token": ""}), None), None);
        assert_eq!(expires_in(&json!({"data": {"expires_in": 60}})), Some(60));
    }
}
