//! Alerts, silences, the outbox, and the test email and test webhook notification that check
//! the paths to on-call.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::page_limit;
use crate::alerts::webhook::NoTestTarget;
use crate::app::AppState;
use crate::storage::{AlertState, outbox};
use crate::web::ApiError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEmail {
    /// Recipients; the on-call list when absent.
    #[serde(default)]
    to: Vec<String>,
}

/// `POST /api/alerts/test-email`: send a test email at once. 200 when the SMTP server took it;
/// 502 with what the server said when not (a test is not retried); 400 without an SMTP server
/// or recipients (nothing is queued).
pub async fn test_email(
    state: web::Data<AppState>,
    body: Option<web::Json<TestEmail>>,
) -> Result<HttpResponse, ApiError> {
    let to = body.map(|b| b.into_inner().to).unwrap_or_default();
    if let Some((code, message)) = state.mailer.refuse_test_email(&to).await {
        return Err(ApiError::bad_request(code, message));
    }
    let (email, result) = state.mailer.send_test(&to).await?;
    Ok(match result {
        Ok(()) => HttpResponse::Ok().json(json!({ "sent": true, "email": email })),
        Err(error) => HttpResponse::build(StatusCode::BAD_GATEWAY).json(json!({
            "sent": false,
            "error": { "code": "smtp_failed", "message": error },
            "email": email,
        })),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestNotification {
    /// One endpoint by name; every configured one when absent.
    #[serde(default)]
    endpoint: Option<String>,
}

/// `POST /api/alerts/test-notification`: queue a test notification to each webhook endpoint
/// (or the one named) and try each at once. 200 when every endpoint accepted it; 502 with what
/// the endpoint answered when one did not (a test is not retried).
pub async fn test_notification(
    state: web::Data<AppState>,
    body: Option<web::Json<TestNotification>>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = body.and_then(|b| b.into_inner().endpoint);
    match state.mailer.refuse_test_notification(endpoint.as_deref()).await {
        Some(missing @ NoTestTarget::NoneConfigured) => {
            return Err(ApiError::bad_request("no_webhooks", missing.to_string()));
        }
        Some(unknown) => return Err(ApiError::not_found(unknown.to_string())),
        None => {}
    }
    let results = state.mailer.send_test_notification(endpoint.as_deref()).await?;
    let all_sent = results.iter().all(|(_, r)| r.is_ok());
    let items: Vec<serde_json::Value> = results
        .iter()
        .map(|(row, result)| {
            json!({
                "endpoint": row.recipients,
                "sent": result.is_ok(),
                "error": result.as_ref().err(),
                "notification": row,
            })
        })
        .collect();
    if all_sent {
        return Ok(HttpResponse::Ok().json(json!({ "sent": true, "endpoints": items })));
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(row, result)| Some(format!("{}: {}", row.recipients, result.as_ref().err()?)))
        .collect();
    Ok(HttpResponse::build(StatusCode::BAD_GATEWAY).json(json!({
        "sent": false,
        "error": {
            "code": "webhook_failed",
            "message": format!("not delivered: {}", failures.join("; ")),
        },
        "endpoints": items,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    pending: Option<bool>,
    limit: Option<i64>,
}

/// `GET /api/outbox`: emails and webhook notifications newest first (without bodies), and how
/// many are waiting.
pub async fn outbox(
    state: web::Data<AppState>,
    query: web::Query<OutboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let items = outbox::list(&state.db, query.pending.unwrap_or(false), limit).await?;
    let pending = outbox::pending_count(&state.db).await?;
    Ok(HttpResponse::Ok().json(json!({ "pending": pending, "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// `firing`, `acknowledged`, `resolved`, or `open` (firing or acknowledged).
    state: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/alerts`: alerts newest first.
pub async fn alerts(
    state: web::Data<AppState>,
    query: web::Query<AlertQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let states = match query.state.as_deref() {
        None => Vec::new(),
        Some(text) => AlertState::selection(text).map_err(|m| ApiError::bad_request("invalid_query", m))?,
    };
    let items = crate::storage::alerts::list(&state.db, &states, limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

fn no_alert(id: i64) -> impl Fn(crate::storage::StorageError) -> ApiError {
    move |e| match e {
        crate::storage::StorageError::NotFound => ApiError::not_found(format!("no alert with id {id}")),
        other => other.into(),
    }
}

/// `GET /api/alerts/{id}`: one alert with its history (fired, notified, acknowledged, resolved).
pub async fn alert(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let (alert, history) = crate::storage::alerts::get(&state.db, *id)
        .await
        .map_err(no_alert(*id))?;
    Ok(HttpResponse::Ok().json(json!({ "alert": alert, "history": history })))
}

/// `POST /api/alerts/{id}/ack`: someone is on it (reminders stop; recovery is still emailed).
pub async fn acknowledge(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    crate::storage::alerts::get(&state.db, *id)
        .await
        .map_err(no_alert(*id))?;
    match crate::storage::alerts::acknowledge(&state.db, *id, &staff.actor(), crate::storage::now()).await? {
        Some(alert) => Ok(HttpResponse::Ok().json(json!({ "alert": alert }))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_firing",
            format!("alert {} is not firing", *id),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// A rule (`device_offline`), a subject (`connection:5`, `source:site-a`) or an alert key.
    matcher: String,
    reason: String,
    /// Defaults to now: a maintenance window can be scheduled ahead.
    starts_at: Option<chrono::DateTime<chrono::Utc>>,
    ends_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /api/silences`: hold back the notifications of matching alerts until `ends_at`
/// (they still open, resolve and show; their emails are recorded as held back).
pub async fn add_silence(
    state: web::Data<AppState>,
    body: web::Json<NewSilence>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let at = crate::storage::now();
    let starts_at = body.starts_at.map(crate::storage::UtcTime::new).unwrap_or(at);
    let ends_at = crate::storage::UtcTime::new(body.ends_at);
    let invalid = |m: &str| ApiError::bad_request("invalid_silence", m.to_owned());
    if body.matcher.trim().is_empty() || body.matcher.len() > 300 {
        return Err(invalid("matcher must be 1-300 characters"));
    }
    if body.reason.trim().is_empty() {
        return Err(invalid("give a reason, so others know why alerts are quiet"));
    }
    if ends_at.0 <= starts_at.0 || ends_at.0 <= at.0 {
        return Err(invalid("ends_at must be in the future and after starts_at"));
    }
    let silence = crate::storage::alerts::add_silence(
        &state.db,
        body.matcher.trim(),
        body.reason.trim(),
        Some(staff.actor().as_str()),
        starts_at,
        ends_at,
        at,
    )
    .await?;
    let target = format!("silence of {} ({})", silence.matcher, silence.reason);
    let mut response = HttpResponse::Created().json(silence);
    response
        .extensions_mut()
        .insert(crate::audit::AuditNote::target(target));
    Ok(response)
}

/// `GET /api/silences`: current and scheduled silences.
pub async fn silences(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = crate::storage::alerts::silences(&state.db, crate::storage::now()).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `DELETE /api/silences/{id}`: end a silence now.
pub async fn delete_silence(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    crate::storage::alerts::delete_silence(&state.db, *id)
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::NotFound => {
                ApiError::not_found(format!("no silence with id {}", *id))
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}
