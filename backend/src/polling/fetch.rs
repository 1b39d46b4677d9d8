//! One poll over HTTP: the connection's fresh token, every page up to the cap, per-item
//! details, with transient failures retried (backon), 401 answered by one token refresh and one
//! retry, and 429 pausing the platform for its `Retry-After`.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::PollEngine;
use super::catalogue::{Auth, Endpoint, Pagination};
use crate::providers::Answer;
use crate::redact::redact;
use crate::storage::connections::{self, Connection, Settings};
use crate::storage::{ConnectionStatus, RefreshOutcome, RefreshTrigger, now};

/// Everything a successful poll fetched.
pub struct Fetched {
    pub items: Vec<Value>,
    pub pages: i32,
    pub http_status: Option<i32>,
}

/// Why a poll did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The connection cannot be used until a person acts (`needs_reauth`, `disabled`).
    Skipped(ConnectionStatus),
    Failed {
        message: String,
        http_status: Option<i32>,
    },
}

/// One request's failure, in the terms the retry loop acts on.
#[derive(Debug)]
enum Attempt {
    Transient {
        message: String,
        http_status: Option<i32>,
        retry_after: Option<Duration>,
    },
    Unauthorized,
    Permanent {
        message: String,
        http_status: Option<i32>,
    },
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// What a poll needs of its connection, with the token kept current.
struct Session<'a> {
    engine: &'a PollEngine,
    endpoint: &'static Endpoint,
    connection_id: i64,
    token: String,
    refreshed: bool,
}

/// `connection` as read by the sweep moments ago (a token refreshed since is picked up by the
/// 401 path).
pub async fn poll(
    engine: &PollEngine,
    connection: &Connection,
    endpoint: &'static Endpoint,
) -> Result<Fetched, Failure> {
    let failed = |message: String| Failure::Failed {
        message,
        http_status: None,
    };
    let connection_id = connection.id;
    if !can_poll(connection) {
        return Err(Failure::Skipped(connection.status));
    }
    let token = usable_token(engine, connection).await?;
    let settings = &connection.settings;
    let base = base_url(engine, connection, endpoint).map_err(failed)?;
    let path = fill_path(endpoint.path, settings, &token).map_err(failed)?;
    let mut url = build_url(&base, &path, endpoint.query).map_err(failed)?;
    let mut session = Session {
        engine,
        endpoint,
        connection_id,
        token,
        refreshed: false,
    };
    let (mut items, mut pages, mut last_status) = (Vec::new(), 0_i32, None);
    let max_pages = engine.settings.max_pages as i32;
    while pages < max_pages {
        let page = session.get(&url).await?;
        pages += 1;
        last_status = Some(i32::from(page.status));
        let listed = pointer(&page.body, endpoint.items)
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Failed {
                message: format!("unexpected response shape: no item array at {:?}", endpoint.items),
                http_status: last_status,
            })?;
        let next = next_page(endpoint, &page, listed, &url, pages);
        items.extend(listed.iter().cloned());
        match next {
            Some(next) => url = next,
            None => break,
        }
    }
    if let Some(per_item) = endpoint.per_item {
        for item in items.iter_mut().take(per_item.max_items) {
            let Some(id) = item.pointer(per_item.id).and_then(id_text) else {
                continue;
            };
            let path = per_item.path.replace("{id}", &encode(&id));
            let detail_url = build_url(&base, &path, per_item.query).map_err(failed)?;
            let detail = session.get(&detail_url).await?;
            if let Value::Object(fields) = item {
                fields.insert(per_item.field.to_owned(), detail.body);
            }
        }
    }
    Ok(Fetched {
        items,
        pages,
        http_status: last_status,
    })
}

/// Where the endpoint's API lives: the connection's own `api_base_url`, the endpoint's
/// fixed base, or (ThingsBoard) the connection's server.
fn base_url(engine: &PollEngine, connection: &Connection, endpoint: &Endpoint) -> Result<String, String> {
    match (connection.settings.text("api_base_url"), endpoint.default_base) {
        (Some(own), _) => Ok(own.to_owned()),
        (None, "") => engine
            .tokens
            .with_defaults(connection)
            .base_url
            .clone()
            .ok_or_else(|| "the connection has no base_url (nor THINGSBOARD_URL)".into()),
        (None, default) => Ok(default.to_owned()),
    }
}

/// The next page's URL as the endpoint pages (`None`: this was the last), from the page just
/// read (`listed` its items, `pages` how many were read so far).
fn next_page(
    endpoint: &Endpoint,
    page: &Page,
    listed: &[Value],
    url: &url::Url,
    pages: i32,
) -> Option<url::Url> {
    match endpoint.pagination {
        Pagination::None => None,
        Pagination::NextUrl(field) => page
            .body
            .pointer(field)
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok()),
        Pagination::PageToken { field, param } => page
            .body
            .pointer(field)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(|t| with_param(url, param, t)),
        Pagination::LinkHeader => next_link(&page.headers),
        Pagination::AfterLastId { id, param, limit } => listed
            .last()
            .and_then(|item| item.pointer(id))
            .and_then(id_text)
            .filter(|_| listed.len() >= limit)
            .map(|last| with_param(url, param, &last)),
        Pagination::PageNumber { param, has_next } => (page.body.pointer(has_next).and_then(Value::as_bool)
            == Some(true))
        .then(|| with_param(url, param, &pages.to_string())),
    }
}

/// The stored access token, refreshed first when it is missing or about to expire.
/// Whether a connection's polls run: not while it is disabled; while it needs
/// re-authorisation only until its token in hand expires (the refresh engine and its alert
/// report the grant meanwhile).
pub fn can_poll(connection: &Connection) -> bool {
    match connection.status {
        ConnectionStatus::Disabled => false,
        ConnectionStatus::NeedsReauth => crate::tokens::still_usable(connection.expires_at),
        _ => true,
    }
}

async fn usable_token(engine: &PollEngine, connection: &Connection) -> Result<String, Failure> {
    let soon = now().0 + chrono::Duration::seconds(60);
    let mut connection = connection.clone();
    if connection.access_token.is_none() || connection.expires_at.is_some_and(|e| e.0 <= soon) {
        let result = engine
            .tokens
            .refresh_due(connection.id, RefreshTrigger::Poll, "poller", now())
            .await
            .map_err(|e| Failure::Failed {
                message: format!("storage: {e}"),
                http_status: None,
            })?;
        if result.outcome == RefreshOutcome::NeedsReauth {
            // The grant is gone, but the token in hand works until it expires: poll with it
            // while it does (the refresh engine and its alert report the grant).
            let in_hand = connections::secrets(&engine.crypto, &connection)
                .ok()
                .and_then(|s| s.access_token)
                .filter(|_| crate::tokens::still_usable(connection.expires_at));
            return in_hand.ok_or(Failure::Skipped(ConnectionStatus::NeedsReauth));
        }
        connection = connections::get_connection(&engine.db, connection.id)
            .await
            .map_err(|e| Failure::Failed {
                message: format!("storage: {e}"),
                http_status: None,
            })?;
    }
    connections::secrets(&engine.crypto, &connection)
        .ok()
        .and_then(|s| s.access_token)
        .ok_or_else(|| Failure::Failed {
            message: "no usable access token".into(),
            http_status: None,
        })
}

impl Session<'_> {
    /// One page: transient failures retried with backoff (or the server's `Retry-After`, up to
    /// `max_retry_wait`), a 401 answered by one refresh of the connection and one more try.
    async fn get(&mut self, url: &url::Url) -> Result<Page, Failure> {
        loop {
            let config = &self.engine.settings;
            let max_wait = config.max_retry_wait_secs;
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .with_max_times(config.max_attempts.saturating_sub(1) as usize);
            let result = (|| self.attempt(url))
                .retry(backoff)
                .when(|a: &Attempt| match a {
                    Attempt::Transient { retry_after, .. } => retry_after.is_none_or(|w| w <= max_wait),
                    _ => false,
                })
                .adjust(|a: &Attempt, delay| match a {
                    Attempt::Transient {
                        retry_after: Some(wait),
                        ..
                    } => Some(*wait),
                    _ => delay,
                })
                .await;
            match result {
                Ok(page) => return Ok(page),
                Err(Attempt::Unauthorized) if !self.refreshed => {
                    self.refreshed = true;
                    self.refresh_token().await?;
                }
                Err(Attempt::Unauthorized) => {
                    return Err(Failure::Failed {
                        message: "HTTP 401 even with a freshly refreshed token".into(),
                        http_status: Some(401),
                    });
                }
                Err(Attempt::Transient {
                    message, http_status, ..
                })
                | Err(Attempt::Permanent { message, http_status }) => {
                    return Err(Failure::Failed { message, http_status });
                }
            }
        }
    }

    async fn refresh_token(&mut self) -> Result<(), Failure> {
        let result = self
            .engine
            .tokens
            .refresh_now(self.connection_id, RefreshTrigger::PollUnauthorized, "poller")
            .await
            .map_err(|e| Failure::Failed {
                message: format!("storage: {e}"),
                http_status: Some(401),
            })?;
        match result.outcome {
            RefreshOutcome::Refreshed => {}
            RefreshOutcome::NeedsReauth => {
                return Err(Failure::Skipped(ConnectionStatus::NeedsReauth));
            }
            _ => {
                return Err(Failure::Failed {
                    message: format!(
                        "HTTP 401; the token refresh that followed failed: {}",
                        result.detail.unwrap_or_default()
                    ),
                    http_status: Some(401),
                });
            }
        }
        let connection = connections::get_connection(&self.engine.db, self.connection_id)
            .await
            .map_err(|e| Failure::Failed {
                message: format!("storage: {e}"),
                http_status: None,
            })?;
        self.token = usable_token(self.engine, &connection).await?;
        Ok(())
    }

    async fn attempt(&self, url: &url::Url) -> Result<Page, Attempt> {
        let response = self.send(url).await?;
        self.read_page(response).await
    }

    /// Sends the request once the platform's rate-limit pause (if any) is over.
    async fn send(&self, url: &url::Url) -> Result<reqwest::Response, Attempt> {
        let platform = self.endpoint.platform;
        let max_wait = self.engine.settings.max_retry_wait_secs;
        if let Err(left) = self.engine.wait_turn(platform, max_wait).await {
            return Err(Attempt::Permanent {
                message: format!("{platform} is paused for {}s after a 429", left.as_secs()),
                http_status: Some(429),
            });
        }
        let request = self.engine.http.get(url.clone());
        let request = match self.endpoint.auth {
            Auth::Bearer => request.bearer_auth(&self.token),
            Auth::XAuthorization => request.header("X-Authorization", format!("Bearer {}", self.token)),
        };
        let hide = [self.token.as_str()];
        request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Attempt::Transient {
                message: redact(
                    &format!(
                        "{}: {}",
                        if e.is_timeout() {
                            "timed out"
                        } else {
                            "request failed"
                        },
                        e.without_url()
                    ),
                    &hide,
                ),
                http_status: None,
                retry_after: None,
            })
    }

    /// What the platform answered, in the engine's terms: a page, or a failure worth retrying
    /// (429 pauses the platform's polls), or a refusal.
    async fn read_page(&self, response: reqwest::Response) -> Result<Page, Attempt> {
        let platform = self.endpoint.platform;
        let hide = [self.token.as_str()];
        let status = response.status();
        let code = Some(i32::from(status.as_u16()));
        let headers = response.headers().clone();
        let answer = Answer::of(&response);
        let bytes = response.bytes().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            return Err(Attempt::Unauthorized);
        }
        if let Answer::RateLimited { retry_after } = answer {
            let wait = retry_after.unwrap_or(Duration::from_secs(30));
            self.engine.pause(platform, wait);
            tracing::warn!(
                platform,
                wait_secs = wait.as_secs(),
                "platform rate limit hit; pausing its polls"
            );
            return Err(Attempt::Transient {
                message: format!(
                    "HTTP 429: rate limited; {platform} paused for {}s",
                    wait.as_secs()
                ),
                http_status: code,
                retry_after: Some(wait),
            });
        }
        let snippet = || redact(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)]), &hide);
        if let Answer::Unavailable { retry_after } = answer {
            return Err(Attempt::Transient {
                message: format!("HTTP {}", status.as_u16()),
                http_status: code,
                retry_after,
            });
        }
        if answer == Answer::Refused {
            return Err(Attempt::Permanent {
                message: format!("HTTP {}: {}", status.as_u16(), snippet()),
                http_status: code,
            });
        }
        let body = serde_json::from_slice(&bytes).map_err(|_| Attempt::Transient {
            message: format!("HTTP {} with a body that is not JSON", status.as_u16()),
            http_status: code,
            retry_after: None,
        })?;
        Ok(Page {
            status: status.as_u16(),
            headers,
            body,
        })
    }
}

/// The endpoint path with `{login}` and `{customer_id}` filled in from the connection's settings
/// (ThingsBoard's customer id also from its token's `customerId` claim).
fn fill_path(path: &str, settings: &Settings, token: &str) -> Result<String, String> {
    let mut filled = path.to_owned();
    if filled.contains("{login}") {
        let login = settings
            .get("login")
            .and_then(Value::as_str)
            .ok_or("set the connection's settings.login (the GitHub user name)")?;
        filled = filled.replace("{login}", &encode(login));
    }
    if filled.contains("{customer_id}") {
        let customer = settings
            .get("customer_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                crate::providers::jwt_claims(token)
                    .and_then(|c| c.get("customerId").and_then(Value::as_str).map(str::to_owned))
            })
            .ok_or("set the connection's settings.customer_id (the token names no customer)")?;
        filled = filled.replace("{customer_id}", &encode(&customer));
    }
    Ok(filled)
}

fn build_url(base: &str, path: &str, query: &[(&str, &str)]) -> Result<url::Url, String> {
    let mut url = url::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
        .map_err(|e| format!("bad API URL: {e}"))?;
    {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in query {
            if *value == "{now}" {
                pairs.append_pair(key, &now().0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            } else {
                pairs.append_pair(key, value);
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// `url` with `param` set to `value` (replacing an earlier value).
fn with_param(url: &url::Url, param: &str, value: &str) -> url::Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != param)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut next = url.clone();
    next.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(param, value);
    next
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
fn next_link(headers: &HeaderMap) -> Option<url::Url> {
    let value = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    value.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| url::Url::parse(target.trim().trim_start_matches('<').trim_end_matches('>')).ok())
            .flatten()
    })
}

fn pointer<'a>(body: &'a Value, at: &str) -> Option<&'a Value> {
    if at.is_empty() {
        Some(body)
    } else {
        body.pointer(at)
    }
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            r#"<https://api.github.com/user/repos?page=3>; rel="next", <https://api.github.com/user/repos?page=9>; rel="last""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).unwrap().as_str(),
            "https://api.github.com/user/repos?page=3"
        );
        headers.insert(
            reqwest::header::LINK,
            r#"<https://x/?page=1>; rel="prev""#.parse().unwrap(),
        );
        assert!(next_link(&headers).is_none());
    }

    #[test]
    fn paths_and_params_are_filled() {
        let url = build_url("http://h/", "/a", &[("limit", "50")]).unwrap();
        assert_eq!(
            with_param(&url, "after", "9").as_str(),
            "http://h/a?limit=50&after=9"
        );
        let again = with_param(&with_param(&url, "page", "1"), "page", "2");
        assert_eq!(again.as_str(), "http://h/a?limit=50&page=2");
        let settings = Settings::from_text(r#"{"login": "octo/cat"}"#);
        assert_eq!(
            fill_path("/users/{login}/events", &settings, "").unwrap(),
            "/users/octo%2Fcat/events"
        );
        assert!(fill_path("/api/customer/{customer_id}/devices", &settings, "not-a-jwt").is_err());
    }
}
