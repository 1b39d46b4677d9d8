//! `GET /api/milesight/token`, `POST /api/milesight/token/refresh`: the OpenAPI token's health,
//! and a manual refresh. `/api/milesight/settings` and `/api/milesight/webhooks`: the OpenAPI
//! application and the webhook secrets, set up from the web UI. None ever returns a secret.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Staff;
use crate::milesight::client;
use crate::milesight::token::{ApiOrigin, PROVIDER, SaveError, TokenError, Trigger};
use crate::milesight::ui_webhooks::{WebhookSaveError, WebhookView};
use crate::storage::{now, usage};
use crate::web::ApiError;

pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status = state.milesight_token.status(now()).await.map_err(token_error)?;
    Ok(HttpResponse::Ok().json(status))
}

pub async fn refresh(
    state: web::Data<AppState>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    state
        .milesight_token
        .refresh_now_by(Trigger::Manual, &staff.actor())
        .await
        .map_err(token_error)?;
    let status = state.milesight_token.status(now()).await.map_err(token_error)?;
    Ok(HttpResponse::Ok().json(status))
}

fn token_error(err: TokenError) -> ApiError {
    match err {
        TokenError::NotConfigured => ApiError::new(StatusCode::CONFLICT, "not_configured", err.to_string()),
        TokenError::InvalidCredentials => {
            ApiError::new(StatusCode::BAD_GATEWAY, "invalid_credentials", err.to_string())
        }
        TokenError::Upstream(_) => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", err.to_string()),
        TokenError::Storage(e) => e.into(),
    }
}

/// The Milesight settings as the API and the settings page show them: values and where each
/// comes from, never a secret.
#[derive(Debug, Serialize)]
pub struct MilesightSettings {
    /// `config` (the file or environment win; read-only here), `ui`, or null (not set up).
    pub origin: Option<ApiOrigin>,
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_set: bool,
    /// The variables that set these instead (shown beside read-only values).
    pub env: [&'static str; 3],
    pub webhooks: Vec<WebhookView>,
}

pub async fn settings_data(state: &AppState) -> Result<MilesightSettings, ApiError> {
    let api = state.milesight_token.api().await.map_err(token_error)?;
    let webhooks = state.intake.webhooks.views().await.map_err(webhook_error)?;
    Ok(MilesightSettings {
        origin: api.as_ref().map(|(_, origin)| *origin),
        client_secret_set: api.is_some(),
        base_url: api.as_ref().map(|(a, _)| a.base_url.clone()),
        client_id: api.map(|(a, _)| a.client_id),
        env: [
            "MILESIGHT_BASE_URL",
            "MILESIGHT_CLIENT_ID",
            "MILESIGHT_CLIENT_SECRET",
        ],
        webhooks,
    })
}

/// `GET /api/milesight/settings`
pub async fn settings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(settings_data(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    base_url: String,
    client_id: String,
    /// Left out (or empty): keep the stored one.
    client_secret: Option<String>,
}

/// `PUT /api/milesight/settings` (admin): the OpenAPI application, when the config does not set it.
pub async fn save_settings(
    state: web::Data<AppState>,
    body: web::Json<ApiSettings>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state
        .milesight_token
        .save_ui(&body.base_url, &body.client_id, body.client_secret.as_deref())
        .await
        .map_err(save_error)?;
    tracing::info!(actor = %staff.actor(), base_url = %body.base_url.trim(), "Milesight OpenAPI settings saved from the UI");
    Ok(HttpResponse::Ok().json(settings_data(&state).await?))
}

/// `DELETE /api/milesight/settings` (admin): forgets the application entered in the UI.
pub async fn clear_settings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.milesight_token.clear_ui().await.map_err(save_error)? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(
            "no Milesight OpenAPI settings were entered in the UI",
        ))
    }
}

/// `POST /api/milesight/settings/test` (admin): fetches a token now and counts the devices
/// MDP lists, so staff see at once whether the settings work.
pub async fn test_settings(
    state: web::Data<AppState>,
    staff: web::ReqData<crate::auth::Staff>,
) -> Result<HttpResponse, ApiError> {
    let token = state
        .milesight_token
        .refresh_now_by(Trigger::Manual, &staff.actor())
        .await
        .map_err(token_error)?;
    let Some((api, _)) = state.milesight_token.api().await.map_err(token_error)? else {
        return Err(token_error(TokenError::NotConfigured));
    };
    let status = state.milesight_token.status(now()).await.map_err(token_error)?;
    let budget = state.config.milesight.daily_request_budget;
    let devices = if usage::reserve(&state.db, PROVIDER, now(), budget).await? {
        match client::search_devices(&state.http, &api.base_url, &token, 1, 1).await {
            Ok(page) => Ok(page.total.unwrap_or(page.content.len() as i64)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err("the daily request budget is spent".to_owned())
    };
    let expiry = status.expires_at.map(|t| t.to_string()).unwrap_or_default();
    let summary = match &devices {
        Ok(n) => format!("token fetched (valid until {expiry}); {n} device(s) in the inventory"),
        Err(e) => format!("token fetched (valid until {expiry}); the device list failed: {e}"),
    };
    Ok(HttpResponse::Ok().json(json!({
        "ok": devices.is_ok(),
        "summary": summary,
        "devices": devices.as_ref().ok(),
        "token": status,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The source its events are filed under (`default` for the plain URL).
    #[serde(default = "default_source")]
    source: String,
    /// MDP's webhook UUID; left out, the default webhook (any uuid not listed).
    uuid: Option<String>,
    /// MDP's Secret Key.
    secret: String,
}

fn default_source() -> String {
    "default".into()
}

/// `PUT /api/milesight/webhooks` (admin): adds or changes a webhook's secret.
pub async fn save_webhook(
    state: web::Data<AppState>,
    body: web::Json<WebhookSettings>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    state
        .intake
        .save_ui_webhook(body.source.trim(), body.uuid.as_deref(), &body.secret)
        .await
        .map_err(webhook_error)?;
    tracing::info!(actor = %staff.actor(), source = %body.source.trim(), "Milesight webhook secret saved from the UI");
    Ok(HttpResponse::Ok().json(settings_data(&state).await?))
}

/// `DELETE /api/milesight/webhooks/{source}` (admin): removes the UI's webhooks of a source.
pub async fn delete_webhook(
    state: web::Data<AppState>,
    source: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state
        .intake
        .remove_ui_webhook(&source)
        .await
        .map_err(webhook_error)?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(format!(
            "no webhook of source {source} was entered in the UI"
        )))
    }
}

fn save_error(err: SaveError) -> ApiError {
    match err {
        SaveError::SetInConfig => ApiError::new(StatusCode::CONFLICT, "set_in_config", err.to_string()),
        SaveError::Invalid(m) => ApiError::bad_request("invalid_settings", m),
        SaveError::Token(e) => token_error(e),
    }
}

fn webhook_error(err: WebhookSaveError) -> ApiError {
    match err {
        WebhookSaveError::Invalid(m) => ApiError::bad_request("invalid_webhook", m),
        e @ WebhookSaveError::SetInConfig(_) => {
            ApiError::new(StatusCode::CONFLICT, "set_in_config", e.to_string())
        }
        WebhookSaveError::Storage(e) => e.into(),
        e @ WebhookSaveError::Unreadable(_) => {
            tracing::error!(error = %e, "Milesight webhook settings unreadable");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_settings",
                "the stored webhook settings cannot be read; the cause is in the service log",
            )
        }
    }
}
