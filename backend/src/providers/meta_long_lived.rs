//! Meta (Facebook) long-lived user tokens and the page tokens derived from them (apis.md §3).
//!
//! A long-lived user token (~60 days) is extended by exchanging it again
//! (`GET /{version}/oauth/access_token?grant_type=fb_exchange_token`) when within the lead time
//! (default 7 days); then the page tokens are fetched again from `/{version}/me/accounts` and
//! stored per page as `meta_page` connections (they do not expire while the user token lives).
//!
//! Connection fields used: `base_url` (default `https://graph.facebook.com`); settings
//! `{"graph_version": "v25.0"}` (the default); credentials (sealed) `{"app_id": "…", "app_secret": "…"}`;
//! the sealed access token (the user token to exchange).

use std::time::Duration;

use futures_core::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Answer, Choice, Consent, DerivedToken, Failure, Field, Issued, Outcome, Provider, retry_after, unanswered,
};
use crate::redact::redact;
use crate::storage::connections::{Connection, ConnectionSecrets};

pub struct MetaLongLived;

const DEFAULT_BASE: &str = "https://graph.facebook.com";
/// Released 2026-02-18, available until 2028-07-29 (Meta's Graph API changelog); v19.0, the
/// earlier default, stopped working on 2026-05-21. A connection's `graph_version` overrides it.
const DEFAULT_VERSION: &str = "v25.0";
/// Pages of `/me/accounts` followed at most.
const MAX_ACCOUNT_PAGES: usize = 20;

#[derive(Deserialize)]
struct App {
    app_id: String,
    app_secret: String,
}

#[derive(Deserialize)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_subcode: Option<i64>,
}

/// A Graph API failure in the engine's terms: 190 (any subcode) ends the token; throttling
/// (4, 17, 32, 613) and transient codes (1, 2) are retried.
fn classify(status: u16, answer: Answer, wait: Option<Duration>, body: &Value, hide: &[&str]) -> Outcome {
    let error: Option<GraphError> = body
        .get("error")
        .and_then(|e| serde_json::from_value(e.clone()).ok());
    let code = error.as_ref().and_then(|e| e.code);
    let message = Failure::answered(
        status,
        redact(
            &format!(
                "HTTP {status} code {} subcode {}: {}",
                code.map_or("-".into(), |c| c.to_string()),
                error
                    .as_ref()
                    .and_then(|e| e.error_subcode)
                    .map_or("-".into(), |c| c.to_string()),
                error.as_ref().and_then(|e| e.message.clone()).unwrap_or_default()
            ),
            hide,
        ),
    );
    match code {
        Some(190) => Outcome::NeedsReauth(message),
        Some(1 | 2 | 4 | 17 | 32 | 613) => Outcome::Transient {
            failure: message,
            // Graph throttles inside a 200 or 400 too; its Retry-After counts whatever the status.
            retry_after: wait,
        },
        _ => answer
            .retry(|| message.clone())
            .unwrap_or(Outcome::Failed(message)),
    }
}

async fn get(http: &reqwest::Client, url: &str, hide: &[&str]) -> Result<Value, Outcome> {
    let response = http.get(url).send().await.map_err(|e| unanswered(e, hide))?;
    let status = response.status().as_u16();
    let answer = Answer::of(&response);
    let wait = retry_after(response.headers());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if answer == Answer::Ok && body.get("error").is_none() {
        return Ok(body);
    }
    Err(classify(status, answer, wait, &body, hide))
}

/// The consent screen's permissions when the connection names none: the pages and their
/// Instagram accounts, read only.
const DEFAULT_SCOPES: &str = "pages_show_list,pages_read_engagement,instagram_basic";

fn app_of(secrets: &ConnectionSecrets) -> Option<App> {
    secrets
        .credentials
        .as_deref()
        .and_then(|c| serde_json::from_str::<App>(c).ok())
}

/// The Graph API version a connection calls: its own `graph_version`, else the default.
fn version_of(connection: &Connection) -> String {
    connection
        .text_setting("graph_version")
        .unwrap_or_else(|| DEFAULT_VERSION.into())
}

/// `{base_url}/{version}/{path}` on the connection's Graph API.
fn graph_url(connection: &Connection, path: &str) -> Result<url::Url, String> {
    let base = connection
        .base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE)
        .trim_end_matches('/');
    url::Url::parse(&format!("{base}/{}/{path}", version_of(connection)))
        .map_err(|e| format!("bad base_url: {e}"))
}

impl Provider for MetaLongLived {
    fn kind(&self) -> &'static str {
        "meta_long_lived"
    }

    fn choices(&self) -> Vec<Choice> {
        vec![Choice {
            id: "meta",
            label: "Meta (Facebook pages, Instagram)",
            provider: "meta_long_lived",
            preset: None,
            help: "Create a Meta app with Facebook Login, add the redirect URI shown after saving, then Connect: the user token is made long-lived at once and each page's token is kept.",
            consent: true,
            fields: vec![
                Field::new("credentials.app_id", "App id", "text").required(),
                Field::new("credentials.app_secret", "App secret", "password").required(),
                Field::new("settings.graph_version", "Graph API version", "text")
                    .placeholder(DEFAULT_VERSION),
                Field::new("settings.scopes", "Permissions (comma-separated)", "text")
                    .placeholder(DEFAULT_SCOPES),
                Field::new("settings.authorize_url", "Login dialog URL", "url")
                    .placeholder("https://www.facebook.com/{version}/dialog/oauth"),
                Field::new("base_url", "Graph API URL", "url").placeholder(DEFAULT_BASE),
                Field::new(
                    "access_token",
                    "User token (optional: or press Connect)",
                    "password",
                ),
            ],
        }]
    }

    fn consent(&self, connection: &Connection, secrets: &ConnectionSecrets) -> Option<Consent> {
        let version = version_of(connection);
        Some(Consent {
            authorize_url: connection
                .text_setting("authorize_url")
                .unwrap_or_else(|| format!("https://www.facebook.com/{version}/dialog/oauth")),
            client_id: app_of(secrets)?.app_id,
            scopes: connection
                .text_setting("scopes")
                .unwrap_or_else(|| DEFAULT_SCOPES.into()),
            extra: Vec::new(),
        })
    }

    /// The code buys a short-lived user token, exchanged at once for a long-lived one (with
    /// the page tokens), as a refresh does.
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
            let Some(app) = app_of(secrets) else {
                return Outcome::Failed("credentials must be JSON with app_id and app_secret".into());
            };
            let mut url = match graph_url(connection, "oauth/access_token") {
                Ok(u) => u,
                Err(problem) => return Outcome::Failed(problem.into()),
            };
            url.query_pairs_mut()
                .append_pair("client_id", &app.app_id)
                .append_pair("client_secret", &app.app_secret)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code", code)
                .append_pair("code_verifier", verifier);
            let hide = [app.app_secret.as_str(), code, verifier];
            let body = match get(http, url.as_str(), &hide).await {
                Ok(body) => body,
                Err(outcome) => return outcome,
            };
            let Some(short_lived) = body
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            else {
                return Outcome::Failed("the code exchange answered without an access_token".into());
            };
            let with_user_token = ConnectionSecrets {
                access_token: Some(short_lived.to_owned()),
                ..secrets.clone()
            };
            self.refresh(http, connection, &with_user_token).await
        })
    }

    fn default_lead(&self) -> Duration {
        Duration::from_secs(7 * 86_400)
    }

    fn refresh_unknown_expiry_at_once(&self) -> bool {
        true
    }

    fn refresh<'a>(
        &'a self,
        http: &'a reqwest::Client,
        connection: &'a Connection,
        secrets: &'a ConnectionSecrets,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(user_token) = secrets.access_token.as_deref() else {
                return Outcome::NeedsReauth("no user token to exchange: connect the account again".into());
            };
            let Some(app) = app_of(secrets) else {
                return Outcome::Failed("credentials must be JSON with app_id and app_secret".into());
            };
            let hide = [user_token, app.app_secret.as_str()];

            let mut exchange = match graph_url(connection, "oauth/access_token") {
                Ok(u) => u,
                Err(problem) => return Outcome::Failed(problem.into()),
            };
            exchange
                .query_pairs_mut()
                .append_pair("grant_type", "fb_exchange_token")
                .append_pair("client_id", &app.app_id)
                .append_pair("client_secret", &app.app_secret)
                .append_pair("fb_exchange_token", user_token);
            let body = match get(http, exchange.as_str(), &hide).await {
                Ok(body) => body,
                Err(outcome) => return outcome,
            };
            let Some(long_lived) = body
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            else {
                return Outcome::transient("exchange answered without an access_token");
            };
            let hide = [user_token, app.app_secret.as_str(), long_lived];

            let derived = match page_tokens(http, connection, long_lived, &hide).await {
                Ok(derived) => derived,
                Err(outcome) => return outcome,
            };
            Outcome::Refreshed(Issued {
                access_token: long_lived.to_owned(),
                refresh_token: None,
                expires_in: body.get("expires_in").and_then(Value::as_i64),
                refresh_expires_in: None,
                expires_at: None,
                refresh_expires_at: None,
                derived,
                learned: None,
            })
        })
    }
}

/// The pages the user manages, with their tokens, following the paging links (at most
/// `MAX_ACCOUNT_PAGES` pages).
async fn page_tokens(
    http: &reqwest::Client,
    connection: &Connection,
    long_lived: &str,
    hide: &[&str],
) -> Result<Vec<DerivedToken>, Outcome> {
    let mut derived = Vec::new();
    let mut next = graph_url(connection, "me/accounts").ok().map(|mut u| {
        u.query_pairs_mut().append_pair("access_token", long_lived);
        u.to_string()
    });
    for _ in 0..MAX_ACCOUNT_PAGES {
        let Some(url) = next.take() else { break };
        let page = get(http, &url, hide).await?;
        for account in page.get("data").and_then(Value::as_array).into_iter().flatten() {
            let (Some(id), Some(token)) = (
                account.get("id").and_then(Value::as_str),
                account.get("access_token").and_then(Value::as_str),
            ) else {
                continue;
            };
            derived.push(DerivedToken {
                provider: "meta_page",
                name: id.to_owned(),
                access_token: token.to_owned(),
                settings: serde_json::json!({
                    "page_name": account.get("name"),
                    "category": account.get("category"),
                    "user_connection_id": connection.id,
                }),
            });
        }
        next = page
            .pointer("/paging/next")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    Ok(derived)
}
