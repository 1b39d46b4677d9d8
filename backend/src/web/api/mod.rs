//! The JSON API under `/api`. Handlers only translate HTTP to storage calls and back.

pub mod alerts;
pub mod cron;
pub mod devices;
pub mod milesight;
pub mod polling;
pub mod scheduler;
pub mod tokens;
pub mod webhooks;

use actix_web::web;
use serde::Deserialize;

use super::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/devices", web::get().to(devices::list))
        .route("/api/devices/{id}", web::get().to(devices::detail))
        .route("/api/webhooks/sources", web::get().to(webhooks::sources))
        .route("/api/webhooks/events", web::get().to(webhooks::events))
        .route("/api/webhooks/rejections", web::get().to(webhooks::rejections))
        .route("/api/milesight/token", web::get().to(milesight::status))
        .route("/api/milesight/token/refresh", web::post().to(milesight::refresh))
        .route("/api/connections", web::get().to(tokens::list))
        .route("/api/connections", web::post().to(tokens::create))
        .route("/api/connections/{id}", web::get().to(tokens::detail))
        .route("/api/connections/{id}", web::delete().to(tokens::delete))
        .route("/api/connections/{id}", web::patch().to(tokens::update))
        .route("/api/tokens/status", web::get().to(tokens::status))
        .route("/api/tokens/{id}/refresh", web::post().to(tokens::refresh))
        .route("/api/refresh-log", web::get().to(tokens::log))
        .route("/api/refresh-stats", web::get().to(tokens::stats))
        .route("/api/scheduler", web::post().to(scheduler::control))
        .route("/api/alerts", web::get().to(alerts::alerts))
        .route("/api/alerts/test-email", web::post().to(alerts::test_email))
        .route("/api/alerts/{id}", web::get().to(alerts::alert))
        .route("/api/alerts/{id}/ack", web::post().to(alerts::acknowledge))
        .route("/api/outbox", web::get().to(alerts::list))
        .route("/api/silences", web::get().to(alerts::silences))
        .route("/api/silences", web::post().to(alerts::add_silence))
        .route("/api/silences/{id}", web::delete().to(alerts::delete_silence))
        .route("/api/polling", web::get().to(polling::list))
        .route(
            "/api/polling/{connection}/{endpoint}",
            web::patch().to(polling::update),
        )
        .route(
            "/api/polling/{connection}/{endpoint}/run",
            web::post().to(polling::run),
        )
        .route("/api/platform-data", web::get().to(polling::data))
        .service(
            web::resource("/api/cron/platform-polling")
                .route(web::get().to(cron::platform_polling))
                .route(web::post().to(cron::platform_polling)),
        )
        .service(
            web::resource("/api/cron/token-refresh")
                .route(web::get().to(cron::token_refresh))
                .route(web::post().to(cron::token_refresh)),
        );
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
