//! `GET /api/webhooks/sources|events|rejections`: webhook health and what arrived or was refused.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{LimitOnly, json_text, page_limit};
use crate::app::AppState;
use crate::milesight::source_status;
use crate::storage::deliveries::WebhookSource;
use crate::storage::{SourceStatus, StorageError, UtcTime, deliveries, now};
use crate::web::ApiError;

pub async fn sources(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "items": sources_data(&state).await? })))
}

/// A webhook source as the API and the webhooks page show it.
#[derive(Debug, Serialize)]
pub struct SourceView {
    pub id: i64,
    pub name: String,
    pub webhook_uuid: Option<String>,
    pub secret_configured: bool,
    pub status: SourceStatus,
    pub last_event_at: Option<UtcTime>,
    pub events_last_hour: i64,
    pub events_last_day: i64,
    pub period_secs: i64,
    pub grace_secs: i64,
    pub verified_at: Option<UtcTime>,
    pub last_system_notice: Option<serde_json::Value>,
    pub last_system_notice_at: Option<UtcTime>,
}

/// A source's status at `at`, from its last event, its set-up time, period and grace.
pub fn status_of(source: &WebhookSource, at: UtcTime) -> SourceStatus {
    let period = std::time::Duration::from_secs(source.period_secs.max(0) as u64);
    let grace = std::time::Duration::from_secs(source.grace_secs.max(0) as u64);
    source_status(source.last_event_at, source.created_at, period, grace, at)
}

/// Every source with its status and event counts (the API and the webhooks page).
pub async fn sources_data(state: &AppState) -> Result<Vec<SourceView>, ApiError> {
    let at = now();
    let sources = deliveries::list_sources(&state.db).await?;
    // Counted at most once per `milesight.fleet_summary_max_age_secs`: a day of events at
    // fleet scale is a long count for each page load.
    let counts = state.metrics.source_events.get(&state.db).await?;
    let config = &state.config.milesight;
    Ok(sources
        .into_iter()
        .map(|s| SourceView {
            secret_configured: s.secret.is_some() || config.webhooks.iter().any(|w| w.uuid.is_none()),
            status: status_of(&s, at),
            events_last_hour: counts.last_hour.get(&s.id).copied().unwrap_or(0),
            events_last_day: counts.last_day.get(&s.id).copied().unwrap_or(0),
            last_system_notice: s.last_system_notice.as_deref().map(json_text),
            id: s.id,
            name: s.name,
            webhook_uuid: s.webhook_uuid,
            last_event_at: s.last_event_at,
            period_secs: s.period_secs,
            grace_secs: s.grace_secs,
            verified_at: s.verified_at,
            last_system_notice_at: s.last_system_notice_at,
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    source: Option<String>,
    limit: Option<i64>,
}

pub async fn events(
    state: web::Data<AppState>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let source_id = match &query.source {
        Some(name) => Some(
            deliveries::source_by_name(&state.db, name)
                .await
                .map_err(|e| match e {
                    StorageError::NotFound => {
                        ApiError::not_found(format!("no webhook source named {name:?}"))
                    }
                    other => other.into(),
                })?,
        ),
        None => None,
    };
    let events = deliveries::list_events(&state.db, source_id.as_ref().map(|s| s.id), None, limit).await?;
    let items: Vec<_> = events
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "source_id": e.source_id,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "device_id": e.device_id,
                "event_time": e.event_time,
                "received_at": e.received_at,
                "event": json_text(&e.payload),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

pub async fn rejections(
    state: web::Data<AppState>,
    query: web::Query<LimitOnly>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let items: Vec<_> = deliveries::recent_rejections(&state.db, limit)
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "source": r.source_name,
                "reason": r.reason,
                "status": r.status,
                "remote_addr": r.remote_addr,
                "headers": json_text(&r.headers),
                "body_excerpt": r.body_excerpt,
                "body_size": r.body_size,
                "received_at": r.received_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
