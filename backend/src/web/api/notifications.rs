//! `/api/notifications`: the notification channels that Settings → Notifications shows and
//! changes (SMTP server, sender, on-call and per-rule recipients, alert webhooks). Values set
//! in the config or environment are shown and refused with 409; no answer ever holds a secret.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use crate::alerts::channels::{ChannelsError, RecipientsForm, SmtpForm, WebhookForm};
use crate::app::AppState;
use crate::auth::Staff;
use crate::web::ApiError;

/// `GET /api/notifications`
pub async fn channels(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.channels.view().await.map_err(channels_error)?))
}

/// `PUT /api/notifications/smtp` (admin): the SMTP server, as a URL or its parts.
pub async fn save_smtp(
    state: web::Data<AppState>,
    body: web::Json<SmtpForm>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state.channels.save_smtp(&body).await.map_err(channels_error)?;
    tracing::info!(actor = %staff.actor(), "SMTP server saved from the UI");
    channels(state).await
}

/// `DELETE /api/notifications/smtp` (admin): forgets the SMTP server entered in the UI.
pub async fn clear_smtp(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    if !state.channels.clear_smtp().await.map_err(channels_error)? {
        return Err(ApiError::not_found("no SMTP server was entered in the UI"));
    }
    tracing::info!(actor = %staff.actor(), "SMTP server removed from the UI");
    Ok(HttpResponse::NoContent().finish())
}

/// `PUT /api/notifications/recipients` (admin): sender, on-call and per-rule recipients.
pub async fn save_recipients(
    state: web::Data<AppState>,
    body: web::Json<RecipientsForm>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state
        .channels
        .save_recipients(&body)
        .await
        .map_err(channels_error)?;
    tracing::info!(actor = %staff.actor(), "notification recipients saved from the UI");
    channels(state).await
}

/// `PUT /api/notifications/webhooks` (admin): adds or changes an alert webhook endpoint.
pub async fn save_webhook(
    state: web::Data<AppState>,
    body: web::Json<WebhookForm>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state.channels.save_webhook(&body).await.map_err(channels_error)?;
    tracing::info!(actor = %staff.actor(), endpoint = %body.name.trim(), "alert webhook saved from the UI");
    channels(state).await
}

/// `DELETE /api/notifications/webhooks/{name}` (admin)
pub async fn delete_webhook(
    state: web::Data<AppState>,
    name: web::Path<String>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state
        .channels
        .remove_webhook(&name)
        .await
        .map_err(channels_error)?;
    tracing::info!(actor = %staff.actor(), endpoint = %name, "alert webhook removed from the UI");
    Ok(HttpResponse::NoContent().finish())
}

pub fn channels_error(err: ChannelsError) -> ApiError {
    match err {
        ChannelsError::Invalid(m) => ApiError::bad_request("invalid_settings", m),
        e @ ChannelsError::SetInConfig(_) => {
            ApiError::new(StatusCode::CONFLICT, "set_in_config", e.to_string())
        }
        ChannelsError::NotFound(m) => ApiError::not_found(m),
        ChannelsError::Storage(e) => e.into(),
        e @ ChannelsError::Unreadable(_) => {
            tracing::error!(error = %e, "notification settings unreadable");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_settings",
                "the stored notification settings cannot be read; the cause is in the service log",
            )
        }
    }
}
