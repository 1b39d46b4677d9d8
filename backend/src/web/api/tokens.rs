//! Connections and their tokens: create, list, delete; token status; refresh now; the
//! refresh log and success rates. No response ever contains a secret: tokens show as a
//! fingerprint (their last characters).

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{json_text, page_limit};
use crate::app::AppState;
use crate::providers;
use crate::storage::connections::{self, Connection, NewConnection};
use crate::storage::refresh_log::{self, LogFilter};
use crate::storage::{StorageError, UtcTime, now};
use crate::tokens::{lead_for, token_status};
use crate::web::ApiError;

/// A connection as the API shows it.
pub fn view(c: &Connection, at: UtcTime) -> Value {
    let lead = lead_for(c);
    json!({
        "id": c.id,
        "account_id": c.account_id,
        "provider": c.provider,
        "name": c.name,
        "base_url": c.base_url,
        "settings": json_text(&c.settings),
        "status": token_status(c, lead, at),
        "expires_at": c.expires_at,
        "runway_secs": c.expires_at.map(|e| (e.0 - at.0).num_seconds()),
        "refresh_expires_at": c.refresh_expires_at,
        "token_fingerprint": c.token_fingerprint,
        "has_refresh_token": c.refresh_token.is_some(),
        "has_credentials": c.credentials.is_some(),
        "consecutive_failures": c.consecutive_failures,
        "last_error": c.last_error,
        "last_refresh_attempt_at": c.last_refresh_attempt_at,
        "last_refresh_success_at": c.last_refresh_success_at,
        "last_sync_at": c.last_sync_at,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    account: String,
    provider: String,
    name: String,
    base_url: Option<String>,
    #[serde(default)]
    settings: Option<Value>,
    /// Secret: e.g. `{"client_id": "…", "client_secret": "…"}`; stored sealed.
    credentials: Option<Value>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_connection", message)
}

pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<CreateConnection>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if providers::provider_for(&body.provider).is_none() {
        return Err(invalid(format!(
            "unknown provider {:?}; known: oauth2_refresh, thingsboard, password_login, meta_long_lived",
            body.provider
        )));
    }
    let name_ok = |s: &str| !s.trim().is_empty() && s.len() <= 100;
    if !name_ok(&body.account) || !name_ok(&body.name) {
        return Err(invalid("account and name must be 1-100 characters"));
    }
    if let Some(url) = &body.base_url
        && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        return Err(invalid("base_url must be an http(s) URL"));
    }
    let settings = body.settings.unwrap_or_else(|| json!({}));
    if !settings.is_object() {
        return Err(invalid("settings must be a JSON object"));
    }
    let credentials = match body.credentials {
        Some(c @ Value::Object(_)) => Some(c.to_string()),
        Some(_) => return Err(invalid("credentials must be a JSON object")),
        None => None,
    };
    let account = match connections::account_by_name(&state.db, &body.account).await {
        Ok(account) => account,
        Err(StorageError::NotFound) => connections::create_account(&state.db, &body.account, None).await?,
        Err(e) => return Err(e.into()),
    };
    let new = NewConnection {
        account_id: account.id,
        provider: body.provider,
        name: body.name,
        base_url: body.base_url,
        settings,
        credentials,
        access_token: body.access_token.filter(|t| !t.is_empty()),
        refresh_token: body.refresh_token.filter(|t| !t.is_empty()),
        expires_at: body.expires_at.map(UtcTime::new),
        refresh_expires_at: None,
    };
    let created = connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .map_err(|e| match e {
            StorageError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "this account already has a connection with that provider and name",
            ),
            other => other.into(),
        })?;
    Ok(HttpResponse::Created().json(view(&created, now())))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let at = now();
    let items: Vec<Value> = connections::list_connections(&state.db)
        .await?
        .iter()
        .map(|c| view(c, at))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

fn not_found(id: i64) -> impl Fn(StorageError) -> ApiError {
    move |e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no connection with id {id}")),
        other => other.into(),
    }
}

pub async fn detail(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let c = connections::get_connection(&state.db, *id)
        .await
        .map_err(not_found(*id))?;
    Ok(HttpResponse::Ok().json(view(&c, now())))
}

pub async fn delete(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    connections::delete_connection(&state.db, *id)
        .await
        .map_err(not_found(*id))?;
    Ok(HttpResponse::NoContent().finish())
}

/// Summary counts plus every connection, shortest runway first.
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let at = now();
    let all = connections::list_connections(&state.db).await?;
    let mut rows: Vec<Value> = all.iter().map(|c| view(c, at)).collect();
    rows.sort_by_key(|r| r["runway_secs"].as_i64().unwrap_or(i64::MIN));
    let count = |status: &str| rows.iter().filter(|r| r["status"] == status).count();
    Ok(HttpResponse::Ok().json(json!({
        "summary": {
            "total": rows.len(),
            "valid": count("active"),
            "expiring_soon": count("expiring"),
            "expired": count("expired"),
            "missing": count("missing"),
            "needs_reauth": count("needs_reauth"),
            "disabled": count("disabled"),
        },
        "connections": rows,
    })))
}

pub async fn refresh(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let result = state
        .token_engine
        .refresh_now(&state, *id, "manual", "api")
        .await
        .map_err(not_found(*id))?;
    let code = match result.outcome {
        "refreshed" => StatusCode::OK,
        "skipped" => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let connection = connections::get_connection(&state.db, *id)
        .await
        .map_err(not_found(*id))?;
    Ok(HttpResponse::build(code).json(json!({ "result": result, "connection": view(&connection, now()) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    provider: Option<String>,
    success: Option<bool>,
    connection: Option<i64>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<i64>,
}

pub async fn log(state: web::Data<AppState>, query: web::Query<LogQuery>) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = LogFilter {
        provider: query.provider,
        success: query.success,
        connection_id: query.connection,
        since: query.since.map(UtcTime::new),
    };
    let items = refresh_log::query(&state.db, &filter, page_limit(query.limit)?).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Hours back from now (1 to 720, default 24).
    window_hours: Option<i64>,
}

/// Success rate per provider and trigger over a window.
pub async fn stats(
    state: web::Data<AppState>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let hours = query.window_hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "window_hours must be 1 to 720",
        ));
    }
    let since = UtcTime::new(now().0 - chrono::Duration::hours(hours));
    let mut by_key: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for (provider, trigger, success, n) in refresh_log::counts_since(&state.db, since).await? {
        let entry = by_key.entry((provider, trigger)).or_default();
        entry.0 += n;
        if success {
            entry.1 += n;
        }
    }
    let items: Vec<Value> = by_key
        .into_iter()
        .map(|((provider, trigger), (attempts, successes))| {
            json!({
                "provider": provider,
                "trigger": trigger,
                "attempts": attempts,
                "successes": successes,
                "success_rate": successes as f64 / attempts.max(1) as f64,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "window_hours": hours, "since": since, "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConnection {
    /// An empty string clears it.
    base_url: Option<String>,
    settings: Option<Value>,
    credentials: Option<Value>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    disabled: Option<bool>,
}

/// `PATCH /api/connections/{id}`: change settings, rotate credentials or paste new tokens
/// (which re-authorises a `needs_reauth` connection), or disable / enable it.
pub async fn update(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<UpdateConnection>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if let Some(url) = body.base_url.as_deref().filter(|u| !u.is_empty())
        && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        return Err(invalid("base_url must be an http(s) URL"));
    }
    if body.settings.as_ref().is_some_and(|s| !s.is_object()) {
        return Err(invalid("settings must be a JSON object"));
    }
    let credentials = match body.credentials {
        Some(c @ Value::Object(_)) => Some(c.to_string()),
        Some(_) => return Err(invalid("credentials must be a JSON object")),
        None => None,
    };
    let update = connections::ConnectionUpdate {
        base_url: body.base_url.map(|u| Some(u).filter(|u| !u.is_empty())),
        settings: body.settings,
        credentials,
        access_token: body.access_token.filter(|t| !t.is_empty()),
        refresh_token: body.refresh_token.filter(|t| !t.is_empty()),
        expires_at: body.expires_at.map(|t| Some(UtcTime::new(t))),
        disabled: body.disabled,
    };
    let updated = connections::update_connection(&state.db, &state.crypto, *id, &update)
        .await
        .map_err(not_found(*id))?;
    Ok(HttpResponse::Ok().json(view(&updated, now())))
}
