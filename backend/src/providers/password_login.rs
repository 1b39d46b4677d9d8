//! A generic login service: POST a username (or email) and password and take the token from
//! the response, the way many in-house APIs issue tokens.
//!
//! Connection fields used: `base_url` = the login URL, or just the service's address (then
//! the login path is found, see `CANDIDATE_PATHS`, and kept in `login_path`); credentials
//! (sealed) `{"username": "…", "password": "…"}` (`email` accepted for `username`); settings:
//! - `login_path`: the path to post to on `base_url` (found by discovery when absent);
//! - `body`: `"json"` or `"form"`; `username_field`: `"username"`, `"email"`, …;
//!   `password_field`: `"password"` (discovery tries JSON then form, `email` then `username`);
//! - `token_field`: a field name (searched at any depth up to 4) or a JSON pointer (`/data/auth/jwt`);
//!   default: the first of `TOKEN_FIELDS` found, shallowest first; else the response's
//!   `token_header`, or its `Authorization` header (`Bearer ` is stripped).
//!
//! Expiry from `expires_in`, else `expires_at` (Unix seconds or RFC 3339), else the JWT `exp`.
//! With no credentials, a token pasted by hand is kept as it is (nothing to refresh with). When
//! a login fails while a token set by hand is still unexpired, that token stays in use and the
//! failure says so.

use std::time::Duration;

use futures_core::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Choice, Failure, Field, Issued, Outcome, Provider, jwt_expiry, unanswered};
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct PasswordLogin;

#[derive(Default, Deserialize)]
struct Settings {
    login_path: Option<String>,
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

/// Where login services usually listen, tried in this order when no path is known.
const CANDIDATE_PATHS: &[&str] = &[
    "/api/auth/login",
    "/api/login",
    "/auth/login",
    "/login",
    "/api/auth/token",
    "/oauth/token",
    "/api/oauth/token",
    "/auth/oauth/token",
];

/// Names a token goes by, in order of preference at each depth.
const TOKEN_FIELDS: &[&str] = &[
    "access_token",
    "accessToken",
    "access",
    "token",
    "auth_token",
    "jwt",
    "id_token",
];
/// How deep into nested objects a token or expiry is looked for.
const MAX_DEPTH: usize = 4;

/// The first of `names` found in `body`, shallowest first (breadth-first, up to `MAX_DEPTH`).
fn find_field<'v>(body: &'v Value, names: &[&str]) -> Option<&'v Value> {
    let mut level: Vec<&Value> = vec![body];
    for _ in 0..MAX_DEPTH {
        for name in names {
            if let Some(found) = level.iter().find_map(|o| o.get(*name).filter(|v| !v.is_null())) {
                return Some(found);
            }
        }
        level = level
            .iter()
            .filter_map(|o| o.as_object())
            .flat_map(|o| o.values().filter(|v| v.is_object()))
            .collect();
        if level.is_empty() {
            break;
        }
    }
    None
}

/// The token in a login response: at the configured field or JSON pointer, else the first
/// usual name found.
fn find_token(body: &Value, field: Option<&str>) -> Option<String> {
    let found = match field {
        Some(pointer) if pointer.starts_with('/') => body.pointer(pointer),
        Some(name) => find_field(body, &[name]),
        None => find_field(body, TOKEN_FIELDS),
    };
    found
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn expires_in(body: &Value) -> Option<i64> {
    find_field(body, &["expires_in", "expiresIn"]).and_then(Value::as_i64)
}

/// `expires_at` as Unix seconds (or milliseconds) or an RFC 3339 time.
fn expires_at(body: &Value) -> Option<i64> {
    match find_field(body, &["expires_at", "expiresAt"])? {
        Value::Number(n) => n.as_i64().map(|t| if t > 100_000_000_000 { t / 1000 } else { t }),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp()),
        _ => None,
    }
}

/// One way of posting the credentials.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    path: Option<&'a str>,
    form: bool,
    user_field: &'a str,
}

/// What one login attempt came to.
enum Tried {
    Token(Issued),
    /// 401/403 with a body: the service refused these credentials; no other path will take them.
    Refused(Failure),
    /// Not a login endpoint (404, 405, 400, …), or a login answer without a token.
    NotHere(Failure),
    Transient(Outcome),
}

async fn try_login(
    http: &reqwest::Client,
    base: &str,
    attempt: Attempt<'_>,
    settings: &Settings,
    credentials: &Credentials,
) -> Tried {
    let url = match attempt.path {
        Some(path) => format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/')),
        None => base.to_owned(),
    };
    let pass_field = settings.password_field.as_deref().unwrap_or("password");
    let request = http
        .post(&url)
        .header(reqwest::header::ACCEPT, "application/json");
    let request = if attempt.form {
        request.form(&[
            (attempt.user_field, credentials.username.as_str()),
            (pass_field, credentials.password.as_str()),
        ])
    } else {
        request.json(&json!({ attempt.user_field: credentials.username, pass_field: credentials.password }))
    };
    let hide = [credentials.password.as_str()];
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Tried::Transient(unanswered(e, &hide)),
    };
    let status = response.status();
    let answer = Answer::of(&response);
    let header_name = settings.token_header.as_deref().unwrap_or("authorization");
    let from_header = response
        .headers()
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").trim().to_owned())
        .filter(|t| !t.is_empty());
    let text = response.text().await.unwrap_or_default();
    let code = status.as_u16();
    if let Some(retry) = answer.retry(|| Failure::answered(code, format!("HTTP {code}"))) {
        return Tried::Transient(retry);
    }
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !text.trim().is_empty() => {
            return Tried::Refused(Failure::answered(code, format!("HTTP {code}: login refused")));
        }
        s if !s.is_success() => return Tried::NotHere(Failure::answered(code, format!("HTTP {code}"))),
        _ => {}
    }
    let token = if settings.token_header.is_some() {
        from_header.or_else(|| find_token(&body, settings.token_field.as_deref()))
    } else {
        find_token(&body, settings.token_field.as_deref()).or(from_header)
    };
    let Some(token) = token else {
        return Tried::NotHere(Failure::answered(
            code,
            "the login answer held no token (set token_field or token_header)",
        ));
    };
    let expires_in = expires_in(&body);
    Tried::Token(Issued {
        // Absolute expiries only when the service did not say expires_in.
        expires_at: if expires_in.is_none() {
            expires_at(&body).or_else(|| jwt_expiry(&token))
        } else {
            None
        },
        refresh_expires_at: None,
        expires_in,
        access_token: token,
        refresh_token: None,
        refresh_expires_in: None,
        derived: Vec::new(),
        learned: None,
    })
}

/// Whether the login URL is the service's address alone (so its login path must be found).
fn is_bare_address(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.path(), "" | "/"))
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
            help: "An in-house API that issues a token for a username and password: Telltale finds its login path, and logs in again before the token expires.",
            consent: false,
            fields: vec![
                Field::new("base_url", "Service address or login URL", "url")
                    .required()
                    .placeholder("https://api.example.com")
                    .help("The address alone: Telltale tries the usual login paths and keeps the one that works."),
                Field::new("credentials.username", "Username or email", "text").required(),
                Field::new("credentials.password", "Password", "password").required(),
                Field::new("settings.login_path", "Login path (found when empty)", "text").placeholder("/api/auth/login"),
                Field::new("settings.token_field", "Token field or JSON pointer", "text")
                    .placeholder("access_token, token, jwt … or /data/auth/jwt"),
            ],
        }]
    }

    fn logs_in_with_credentials(&self) -> bool {
        true
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
            let Some(base) = connection.base_url.as_deref() else {
                return Outcome::Failed(
                    "a password_login connection needs base_url = the service or its login URL".into(),
                );
            };
            let settings: Settings = connection.settings.parse();
            let outcome = login(http, base, &settings, &credentials).await;
            keep_manual_token(outcome, connection, secrets)
        })
    }
}

/// Logs in: at the known path; else at the address itself when it has a path; else (or when
/// that is not a login endpoint) at the first candidate path beneath the address that answers
/// with a token (remembered in the connection's settings).
async fn login(
    http: &reqwest::Client,
    base: &str,
    settings: &Settings,
    credentials: &Credentials,
) -> Outcome {
    let known = settings.login_path.as_deref().filter(|p| !p.is_empty());
    if known.is_some() || !is_bare_address(base) {
        let attempt = Attempt {
            path: known,
            form: settings.body.as_deref() == Some("form"),
            user_field: settings.username_field.as_deref().unwrap_or("username"),
        };
        match try_login(http, base, attempt, settings, credentials).await {
            Tried::Token(issued) => return Outcome::Refreshed(issued),
            Tried::Refused(message) => return Outcome::NeedsReauth(message),
            // An address with a path may be the login URL itself, or the service living under
            // that path (`https://host/ext`): then its login paths are looked for beneath it.
            Tried::NotHere(message) if known.is_some() => return Outcome::Failed(message),
            Tried::NotHere(_) => {}
            Tried::Transient(outcome) => return outcome,
        }
    }
    let mut last_transient = None;
    for path in CANDIDATE_PATHS {
        for form in [false, true] {
            for user_field in ["email", "username"] {
                let attempt = Attempt {
                    path: Some(path),
                    form,
                    user_field,
                };
                match try_login(http, base, attempt, settings, credentials).await {
                    Tried::Token(mut issued) => {
                        issued.learned = Some(json!({
                            "login_path": path,
                            "body": if form { "form" } else { "json" },
                            "username_field": user_field,
                        }));
                        return Outcome::Refreshed(issued);
                    }
                    Tried::Refused(failure) => {
                        return Outcome::NeedsReauth(Failure {
                            message: format!("{} at {path}", failure.message),
                            ..failure
                        });
                    }
                    Tried::NotHere(_) => {}
                    Tried::Transient(outcome) => last_transient = Some(outcome),
                }
            }
        }
    }
    last_transient.unwrap_or_else(|| {
        Outcome::Failed(
            format!(
                "no login path answered with a token (tried {}); set settings.login_path",
                CANDIDATE_PATHS.join(", ")
            )
            .into(),
        )
    })
}

/// A failed login leaves a token set by hand in use while it is unexpired, and says so (the
/// connection stays usable instead of waiting for a person).
fn keep_manual_token(outcome: Outcome, connection: &Connection, secrets: &ConnectionSecrets) -> Outcome {
    let unexpired = connection
        .expires_at
        .filter(|e| e.0 > chrono::Utc::now())
        .filter(|_| secrets.access_token.is_some());
    match (outcome, unexpired) {
        (Outcome::NeedsReauth(failure) | Outcome::Failed(failure), Some(until)) => Outcome::Failed(Failure {
            message: format!(
                "{}; using the token set by hand until it expires at {until}",
                failure.message
            ),
            ..failure
        }),
        (outcome, _) => outcome,
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
