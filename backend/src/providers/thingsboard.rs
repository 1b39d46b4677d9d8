//! ThingsBoard: per-customer JWT login at the customer's own server (apis.md §2).
//!
//! Connection fields used: `base_url` = the customer's ThingsBoard URL; credentials (sealed)
//! `{"username": "…", "password": "…"}`; the sealed token pair. Expiry comes from the JWT
//! `exp`. While the refresh token is valid it is used (`/api/auth/token`); after that, or if
//! it is refused, a fresh login (`/api/auth/login`).

use std::time::Duration;

use futures_core::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;

use super::{Answer, Choice, Failure, Field, Issued, Outcome, Provider, jwt_expiry, unanswered};
use crate::redact::redact;
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct ThingsBoard;

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenPair {
    token: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TbError {
    message: Option<String>,
    error_code: Option<i64>,
}

/// What one call to ThingsBoard's auth API came to.
enum Call {
    Pair(String, Option<String>),
    /// 401: the refresh token (errorCode 11, expired) or the credentials (10) were refused.
    Refused(Failure),
    Other(Outcome),
}

impl Provider for ThingsBoard {
    fn kind(&self) -> &'static str {
        "thingsboard"
    }

    fn choices(&self) -> Vec<Choice> {
        vec![Choice {
            id: "thingsboard",
            label: "ThingsBoard (a customer's server)",
            provider: "thingsboard",
            preset: None,
            help: "One connection per customer: their ThingsBoard URL and a user of theirs. Telltale logs in, keeps the JWT fresh, and polls their devices.",
            consent: false,
            fields: vec![
                Field::new("base_url", "ThingsBoard URL", "url")
                    .placeholder("https://thingsboard.example.com")
                    .help("Leave empty to use the server set in THINGSBOARD_URL."),
                Field::new("credentials.username", "Username (email)", "text").required(),
                Field::new("credentials.password", "Password", "password").required(),
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
            let Some(base) = connection.base_url.as_deref().map(|b| b.trim_end_matches('/')) else {
                return Outcome::Failed(
                    "a ThingsBoard connection needs the customer's base_url (or THINGSBOARD_URL)".into(),
                );
            };
            let now = chrono::Utc::now().timestamp();
            let refresh_usable = secrets
                .refresh_token
                .as_deref()
                .filter(|t| jwt_expiry(t).is_none_or(|exp| exp > now + 30));
            if let Some(refresh_token) = refresh_usable {
                let body = serde_json::json!({ "refreshToken": refresh_token });
                match call(http, &format!("{base}/api/auth/token"), &body, &[refresh_token]).await {
                    Call::Pair(token, refresh) => return issued(token, refresh),
                    // An expired or revoked refresh token: log in afresh below.
                    Call::Refused(_) => {}
                    Call::Other(outcome) => return outcome,
                }
            }
            let Some(credentials) = secrets
                .credentials
                .as_deref()
                .and_then(|c| serde_json::from_str::<Credentials>(c).ok())
            else {
                return Outcome::NeedsReauth(
                    "no usable refresh token and no username/password stored".into(),
                );
            };
            let body =
                serde_json::json!({ "username": credentials.username, "password": credentials.password });
            match call(
                http,
                &format!("{base}/api/auth/login"),
                &body,
                &[&credentials.password],
            )
            .await
            {
                Call::Pair(token, refresh) => issued(token, refresh),
                Call::Refused(message) => Outcome::NeedsReauth(message),
                Call::Other(outcome) => outcome,
            }
        })
    }
}

fn issued(token: String, refresh: Option<String>) -> Outcome {
    Outcome::Refreshed(Issued {
        expires_at: jwt_expiry(&token),
        refresh_expires_at: refresh.as_deref().and_then(jwt_expiry),
        expires_in: None,
        refresh_expires_in: None,
        access_token: token,
        refresh_token: refresh,
        derived: Vec::new(),
        learned: None,
    })
}

async fn call(http: &reqwest::Client, url: &str, body: &serde_json::Value, hide: &[&str]) -> Call {
    let response = match http.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Call::Other(unanswered(e, hide)),
    };
    let status = response.status();
    let answer = Answer::of(&response);
    let bytes = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        return match serde_json::from_slice::<TokenPair>(&bytes) {
            Ok(TokenPair {
                token: Some(token),
                refresh_token,
            }) if !token.is_empty() => Call::Pair(token, refresh_token),
            _ => Call::Other(Outcome::transient(Failure::answered(
                status.as_u16(),
                "login answered without a token",
            ))),
        };
    }
    let error: Option<TbError> = serde_json::from_slice(&bytes).ok();
    let described = Failure::answered(
        status.as_u16(),
        redact(
            &format!(
                "HTTP {} errorCode {}: {}",
                status.as_u16(),
                error
                    .as_ref()
                    .and_then(|e| e.error_code)
                    .map_or("-".into(), |c| c.to_string()),
                error.as_ref().and_then(|e| e.message.clone()).unwrap_or_default()
            ),
            hide,
        ),
    );
    if status == StatusCode::UNAUTHORIZED {
        return Call::Refused(described);
    }
    Call::Other(
        answer
            .retry(|| described.clone())
            .unwrap_or(Outcome::Failed(described)),
    )
}
