//! `GET /api/audit` (admin): the audit log, newest first.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, page_limit};
use crate::app::AppState;
use crate::audit::read_details;
use crate::storage::audit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries with ids below this (the previous page's `next_before`).
    before: Option<i64>,
    /// One person's entries (their email; their API tokens' included).
    actor: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/audit?before=&actor=&limit=`
pub async fn entries(
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let rows = audit::list(&state.db, query.before, query.actor.as_deref(), limit).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|e| e.id))
        .flatten();
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|e| {
            let (changes, note) = read_details(e.details.as_deref());
            json!({
                "id": e.id,
                "at": e.at,
                "actor": e.actor,
                "client": e.client,
                "action": e.action,
                "target": e.target,
                "route": e.route,
                "status": e.status,
                "changes": changes,
                "note": note,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_before": next_before })))
}
