//! Connections and their tokens: create, list, delete; token status; refresh now; the
//! refresh log and success rates. No response ever contains a secret: tokens show as a
//! fingerprint (their last characters).

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::page_limit;
use crate::app::AppState;
use crate::storage::connections;
use crate::storage::refresh_log::{self, LogFilter};
use crate::storage::{RefreshOutcome, StorageError, TokenHealth, UtcTime, now};
use crate::tokens::manage::{self, ConnectionChange, ConnectionSpec, ConnectionView, ManageError, view};
use crate::web::ApiError;

/// How a connection-management failure reads over HTTP.
fn manage_error(err: ManageError) -> ApiError {
    match err {
        ManageError::Invalid(message) => ApiError::bad_request("invalid_connection", message),
        ManageError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string()),
        ManageError::NotFound(_) => ApiError::not_found(err.to_string()),
        ManageError::Storage(e) => e.into(),
    }
}

pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<ConnectionSpec>,
) -> Result<HttpResponse, ApiError> {
    let created = manage::create(&state.db, &state.crypto, body.into_inner())
        .await
        .map_err(manage_error)?;
    let mut response = HttpResponse::Created().json(view(&created, now()));
    response
        .extensions_mut()
        .insert(crate::audit::AuditNote::target(crate::present::connection_name(
            &created,
        )));
    Ok(response)
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let at = now();
    let items: Vec<ConnectionView> = connections::list_connections(&state.db)
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
    manage::delete(&state.db, *id).await.map_err(manage_error)?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(status_data(&state).await?))
}

/// How many connections are in each token health.
#[derive(Debug, Serialize)]
pub struct TokenSummary {
    pub total: usize,
    pub valid: usize,
    pub expiring_soon: usize,
    pub expired: usize,
    pub missing: usize,
    pub needs_reauth: usize,
    pub disabled: usize,
}

/// `GET /api/tokens/status` and the tokens page: the summary and every connection.
#[derive(Debug, Serialize)]
pub struct TokensStatus {
    pub summary: TokenSummary,
    /// Shortest runway first (no expiry first of all).
    pub connections: Vec<ConnectionView>,
}

/// Summary counts plus every connection, shortest runway first (the API and the tokens page).
pub async fn status_data(state: &AppState) -> Result<TokensStatus, ApiError> {
    let at = now();
    let all = connections::list_connections(&state.db).await?;
    let mut rows: Vec<ConnectionView> = all.iter().map(|c| view(c, at)).collect();
    rows.sort_by_key(|r| r.runway_secs.unwrap_or(i64::MIN));
    let count = |health: TokenHealth| rows.iter().filter(|r| r.status == health).count();
    Ok(TokensStatus {
        summary: TokenSummary {
            total: rows.len(),
            valid: count(TokenHealth::Active),
            expiring_soon: count(TokenHealth::Expiring),
            expired: count(TokenHealth::Expired),
            missing: count(TokenHealth::Missing),
            needs_reauth: count(TokenHealth::NeedsReauth),
            disabled: count(TokenHealth::Disabled),
        },
        connections: rows,
    })
}

/// `POST /api/tokens/{id}/refresh`: Refresh now, recorded in the refresh log under the person.
pub async fn refresh(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    let result = state
        .token_engine
        .refresh_now(*id, crate::storage::RefreshTrigger::Manual, &staff.actor())
        .await
        .map_err(not_found(*id))?;
    let code = match result.outcome {
        RefreshOutcome::Refreshed => StatusCode::OK,
        RefreshOutcome::Skipped => StatusCode::CONFLICT,
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

pub async fn stats(
    state: web::Data<AppState>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(stats_data(&state, query.window_hours.unwrap_or(24)).await?))
}

/// Refresh attempts of one provider and trigger in the window.
#[derive(Debug, Serialize)]
pub struct RefreshStat {
    pub provider: String,
    pub trigger: String,
    pub attempts: i64,
    pub successes: i64,
    pub success_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct RefreshStats {
    pub window_hours: i64,
    pub since: UtcTime,
    pub items: Vec<RefreshStat>,
}

/// Success rate per provider and trigger over the last `hours`.
pub async fn stats_data(state: &AppState, hours: i64) -> Result<RefreshStats, ApiError> {
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
    let items = by_key
        .into_iter()
        .map(|((provider, trigger), (attempts, successes))| RefreshStat {
            provider,
            trigger,
            attempts,
            successes,
            success_rate: successes as f64 / attempts.max(1) as f64,
        })
        .collect();
    Ok(RefreshStats {
        window_hours: hours,
        since,
        items,
    })
}

/// `DELETE /api/connections/{id}/token` (admin): forgets the stored tokens, keeps the
/// credentials and settings; the next refresh logs in anew.
pub async fn clear_token(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    let cleared = manage::clear_token(&state.db, *id, &staff.actor())
        .await
        .map_err(manage_error)?;
    Ok(HttpResponse::Ok().json(view(&cleared, now())))
}

/// `PATCH /api/connections/{id}`: change settings, rotate credentials or paste new tokens
/// (which re-authorises a `needs_reauth` connection), or disable / enable it.
pub async fn update(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<ConnectionChange>,
) -> Result<HttpResponse, ApiError> {
    let updated = manage::update(&state.db, &state.crypto, *id, body.into_inner())
        .await
        .map_err(manage_error)?;
    Ok(HttpResponse::Ok().json(view(&updated, now())))
}
