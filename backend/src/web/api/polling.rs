//! Platform polling: per-pair status, "poll now", per-pair switches and schedules, and the
//! stored payloads.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{json_text, page_limit};
use crate::app::AppState;
use crate::polling::{catalogue, next_due, schedule_for};
use crate::storage::polling as store;
use crate::storage::{ConnectionStatus, PollOutcome, PollStatus, StorageError, UtcTime, connections, now};
use crate::web::ApiError;

/// `GET /api/polling`: every (connection, endpoint) pair with its last result and next run.
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "items": list_data(&state).await? })))
}

/// A (connection, endpoint) pair as the API and the polling page show it.
#[derive(Debug, Serialize)]
pub struct PairView {
    pub connection_id: i64,
    pub account_id: i64,
    pub connection: String,
    pub connection_status: ConnectionStatus,
    pub platform: &'static str,
    pub endpoint: &'static str,
    pub enabled: bool,
    pub schedule: String,
    pub next_due_at: Option<UtcTime>,
    pub last_run_at: Option<UtcTime>,
    pub last_success_at: Option<UtcTime>,
    pub last_status: Option<PollStatus>,
    pub last_items: Option<i64>,
    pub last_pages: Option<i32>,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub consecutive_failures: i32,
}

/// The pairs as the API and the polling page show them.
pub async fn list_data(state: &AppState) -> Result<Vec<PairView>, ApiError> {
    let by_id: std::collections::HashMap<i64, connections::Connection> =
        connections::list_connections(&state.db)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
    let at = now();
    // A connection made moments ago is listed with its endpoints before the first poll sweep
    // gives them state rows (the same rows the sweep would add, due at once).
    let mut states = store::list_states(&state.db, None).await?;
    let known: std::collections::HashSet<(i64, &str)> = states
        .iter()
        .map(|s| (s.connection_id, s.endpoint.as_str()))
        .collect();
    let missing: Vec<(i64, &'static str)> = by_id
        .values()
        .filter_map(|c| catalogue::platform_of(c).map(|p| (c.id, p)))
        .flat_map(|(id, platform)| catalogue::endpoints_of(platform).map(move |e| (id, e.name)))
        .filter(|pair| !known.contains(pair))
        .collect();
    if !missing.is_empty() {
        store::ensure_pairs(&state.db, &missing).await?;
        states = store::list_states(&state.db, None).await?;
    }
    let mut items = Vec::new();
    for pair in states {
        let Some(connection) = by_id.get(&pair.connection_id) else {
            continue;
        };
        let Some(endpoint) =
            catalogue::platform_of(connection).and_then(|p| catalogue::find(p, &pair.endpoint))
        else {
            continue;
        };
        let schedule = schedule_for(&state.config.polling, endpoint, pair.schedule.as_deref());
        let next = match pair.next_due_at {
            Some(due) if pair.enabled => Some(due),
            None if pair.enabled => next_due(&schedule, state.config.scheduler.timezone, at),
            _ => None,
        };
        items.push(PairView {
            connection_id: connection.id,
            account_id: connection.account_id,
            connection: connection.name.clone(),
            connection_status: connection.status,
            platform: endpoint.platform,
            endpoint: endpoint.name,
            enabled: pair.enabled,
            schedule,
            next_due_at: next,
            last_run_at: pair.last_run_at,
            last_success_at: pair.last_success_at,
            last_status: pair.last_status,
            last_items: pair.last_items,
            last_pages: pair.last_pages,
            last_http_status: pair.last_http_status,
            last_error: pair.last_error,
            consecutive_failures: pair.consecutive_failures,
        });
    }
    Ok(items)
}

fn unknown_pair(connection: i64, endpoint: &str) -> ApiError {
    ApiError::not_found(format!(
        "connection {connection} has no poll endpoint {endpoint:?}"
    ))
}

/// `POST /api/polling/{connection}/{endpoint}/run`: poll now.
pub async fn run(
    state: web::Data<AppState>,
    path: web::Path<(i64, String)>,
) -> Result<HttpResponse, ApiError> {
    let (connection, endpoint) = path.into_inner();
    let result = state
        .poll_engine
        .poll_now(connection, &endpoint, crate::storage::PollTrigger::Manual)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => unknown_pair(connection, &endpoint),
            other => other.into(),
        })?
        .ok_or_else(|| unknown_pair(connection, &endpoint))?;
    let code = match result.outcome {
        PollOutcome::Ok | PollOutcome::WouldPoll => StatusCode::OK,
        PollOutcome::Skipped => StatusCode::CONFLICT,
        PollOutcome::Failed => StatusCode::BAD_GATEWAY,
    };
    Ok(HttpResponse::build(code).json(json!({ "result": result })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairChange {
    enabled: Option<bool>,
    /// This pair's own schedule (five-field crontab or six fields with seconds); `null` goes
    /// back to the default.
    #[serde(default, deserialize_with = "double_option")]
    schedule: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /api/polling/{connection}/{endpoint}`: switch a pair off or on, or set its schedule.
pub async fn update(
    state: web::Data<AppState>,
    path: web::Path<(i64, String)>,
    body: web::Json<PairChange>,
) -> Result<HttpResponse, ApiError> {
    let (connection_id, endpoint) = path.into_inner();
    let connection = connections::get_connection(&state.db, connection_id)
        .await
        .map_err(|_| unknown_pair(connection_id, &endpoint))?;
    let known = catalogue::platform_of(&connection).and_then(|p| catalogue::find(p, &endpoint));
    let Some(known) = known else {
        return Err(unknown_pair(connection_id, &endpoint));
    };
    let body = body.into_inner();
    // Kept as it runs: a five-field crontab expression gets second 0.
    let schedule = match body.schedule {
        Some(Some(given)) => Some(Some(
            crate::scheduler::normalize_schedule(&given)
                .map_err(|m| ApiError::bad_request("invalid_schedule", format!("{given:?}: {m}")))?,
        )),
        other => other,
    };
    store::ensure_pairs(&state.db, &[(connection_id, known.name)]).await?;
    let pair = store::configure(&state.db, connection_id, known.name, body.enabled, schedule).await?;
    Ok(HttpResponse::Ok().json(json!({
        "connection_id": connection_id,
        "endpoint": known.name,
        "enabled": pair.enabled,
        "schedule": schedule_for(&state.config.polling, known, pair.schedule.as_deref()),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataQuery {
    connection: Option<i64>,
    endpoint: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/platform-data`: stored payloads, newest first.
pub async fn data(
    state: web::Data<AppState>,
    query: web::Query<DataQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = page_limit(query.limit)?;
    let items: Vec<Value> = store::payloads(&state.db, query.connection, query.endpoint.as_deref(), limit)
        .await?
        .into_iter()
        .map(|p| {
            json!({
                "id": p.id,
                "connection_id": p.connection_id,
                "endpoint": p.endpoint,
                "item_count": p.item_count,
                "content_hash": p.content_hash,
                "fetched_at": p.fetched_at,
                "payload": json_text(&p.payload),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
