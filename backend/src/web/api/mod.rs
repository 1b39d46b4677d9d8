//! The JSON API under `/api`. Handlers only translate HTTP to storage calls and back.

pub mod alerts;
pub mod audit;
pub mod connections;
pub mod cron;
pub mod devices;
pub mod milesight;
pub mod notifications;
pub mod polling;
pub mod scheduler;
pub mod webhook_sources;

use serde::Deserialize;

use super::ApiError;

super::route_table! {
    /// The JSON API's routes.
    pub fn routes, const ROUTES {
        get "/api/devices" => devices::list,
        get "/api/devices/{id}" => devices::detail,
        get "/api/webhooks/sources" => webhook_sources::sources,
        get "/api/webhooks/events" => webhook_sources::events,
        get "/api/webhooks/rejections" => webhook_sources::rejections,
        get "/api/milesight/token" => milesight::status,
        post "/api/milesight/token/refresh" => milesight::refresh,
        get "/api/milesight/settings" => milesight::settings,
        put "/api/milesight/settings" => milesight::save_settings,
        delete "/api/milesight/settings" => milesight::clear_settings,
        post "/api/milesight/settings/test" => milesight::test_settings,
        put "/api/milesight/webhooks" => milesight::save_webhook,
        delete "/api/milesight/webhooks/{source}" => milesight::delete_webhook,
        get "/api/connections" => connections::list,
        post "/api/connections" => connections::create,
        get "/api/connections/{id}" => connections::detail,
        delete "/api/connections/{id}" => connections::delete,
        patch "/api/connections/{id}" => connections::update,
        delete "/api/connections/{id}/token" => connections::clear_token,
        get "/api/tokens/status" => connections::status,
        post "/api/tokens/{id}/refresh" => connections::refresh,
        get "/api/refresh-log" => connections::log,
        get "/api/refresh-stats" => connections::stats,
        post "/api/scheduler" => scheduler::control,
        get "/api/alerts" => alerts::alerts,
        get "/api/audit" => audit::entries,
        get "/api/notifications" => notifications::channels,
        put "/api/notifications/smtp" => notifications::save_smtp,
        delete "/api/notifications/smtp" => notifications::clear_smtp,
        put "/api/notifications/recipients" => notifications::save_recipients,
        put "/api/notifications/webhooks" => notifications::save_webhook,
        delete "/api/notifications/webhooks/{name}" => notifications::delete_webhook,
        post "/api/alerts/test-email" => alerts::test_email,
        post "/api/alerts/test-notification" => alerts::test_notification,
        get "/api/alerts/{id}" => alerts::alert,
        post "/api/alerts/{id}/ack" => alerts::acknowledge,
        get "/api/outbox" => alerts::outbox,
        get "/api/silences" => alerts::silences,
        post "/api/silences" => alerts::add_silence,
        delete "/api/silences/{id}" => alerts::delete_silence,
        get "/api/polling" => polling::list,
        patch "/api/polling/{connection}/{endpoint}" => polling::update,
        post "/api/polling/{connection}/{endpoint}/run" => polling::run,
        get "/api/platform-data" => polling::data,
        get "/api/cron/platform-polling" => cron::platform_polling,
        post "/api/cron/platform-polling" => cron::platform_polling,
        get "/api/cron/token-refresh" => cron::token_refresh,
        post "/api/cron/token-refresh" => cron::token_refresh,
    }
}

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 500;
const MAX_OFFSET: i64 = 1_000_000_000;

/// `limit` checked against the API's bounds (1..=500, default 50).
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_PAGE}, got {n}"),
        )),
    }
}

pub fn page_offset(offset: Option<i64>) -> Result<i64, ApiError> {
    match offset {
        None => Ok(0),
        Some(n) if (0..=MAX_OFFSET).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("offset must be 0 to {MAX_OFFSET}, got {n}"),
        )),
    }
}

/// A stored JSON text as a JSON value (a row written by us is always valid JSON; anything
/// else is returned as a string rather than failing the request).
pub fn json_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOnly {
    pub limit: Option<i64>,
}
