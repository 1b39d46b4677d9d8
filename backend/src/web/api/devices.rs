//! `GET /api/devices`, `GET /api/devices/{id}`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{json_text, page_limit, page_offset};
use crate::app::AppState;
use crate::storage::devices::{self, Device, DeviceFilter};
use crate::storage::{DeviceStatus, StorageError, UtcTime, deliveries};
use crate::web::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Keyset pagination: the serial number the previous page ended at (its `next`).
    after: Option<String>,
    status: Option<String>,
    source: Option<String>,
    search: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// A device as the API shows it: the last payload as JSON rather than text.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    id: i64,
    sn: String,
    dev_eui: Option<String>,
    mdp_device_id: Option<String>,
    name: Option<String>,
    model: Option<String>,
    status: DeviceStatus,
    source_id: Option<i64>,
    last_seen_at: Option<UtcTime>,
    last_event_type: Option<String>,
    last_payload: Option<Value>,
    battery: Option<i32>,
    expected_interval_secs: Option<i64>,
    created_at: UtcTime,
    updated_at: UtcTime,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> DeviceView {
        DeviceView {
            id: d.id,
            sn: d.sn,
            dev_eui: d.dev_eui,
            mdp_device_id: d.mdp_device_id,
            name: d.name,
            model: d.model,
            status: d.status,
            source_id: d.source_id,
            last_seen_at: d.last_seen_at,
            last_event_type: d.last_event_type,
            last_payload: d.last_payload.as_deref().map(json_text),
            battery: d.battery,
            expected_interval_secs: d.expected_interval_secs,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = page_limit(query.limit)?;
    let offset = page_offset(query.offset)?;
    let status = match query.status.as_deref().map(str::parse::<DeviceStatus>) {
        Some(Err(_)) => {
            let known: Vec<&str> = DeviceStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("status must be one of {known:?}"),
            ));
        }
        other => other.transpose().ok().flatten(),
    };
    let source_id = match &query.source {
        Some(name) => match deliveries::source_by_name(&state.db, name).await {
            Ok(source) => Some(source.id),
            // An unknown source has no devices; say so plainly rather than 404 the list.
            Err(StorageError::NotFound) => {
                return Ok(HttpResponse::Ok()
                    .json(json!({"items": [], "total": 0, "limit": limit, "offset": offset})));
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    if query.after.is_some() && query.offset.is_some_and(|o| o != 0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "use either offset or after (the serial number a page ended at), not both",
        ));
    }
    let filter = DeviceFilter {
        status,
        source_id,
        after_sn: query.after.clone(),
        search: query
            .search
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().chars().take(100).collect()),
    };
    let (items, total) = devices::search(&state.db, &filter, limit, offset).await?;
    // A full page may have more after it: its last serial number is the next page's cursor.
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|d| d.sn.clone()))
        .flatten();
    let items: Vec<DeviceView> = items.into_iter().map(DeviceView::from).collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "items": items, "total": total, "limit": limit, "offset": offset, "next": next })))
}

/// A device with its most recent events (newest first).
pub async fn detail(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let device = devices::get(&state.db, *id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no device with id {id}")),
        other => other.into(),
    })?;
    let events = deliveries::list_events(&state.db, None, Some(device.id), 100).await?;
    let readings: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "event_id": e.event_id,
                "event_type": e.event_type,
                "event_time": e.event_time,
                "received_at": e.received_at,
                "event": json_text(&e.payload),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "device": DeviceView::from(device), "recent_events": readings })))
}
