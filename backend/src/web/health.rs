//! Liveness, readiness and metrics.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ApiError;
use crate::app::{AppState, ReadyState};

/// What anonymous callers are told; the cause goes to the log.
pub const DATABASE_UNREACHABLE: &str = "database unreachable; the cause is in the service log";

/// The process is alive and serving HTTP; says nothing about the database.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Ready when the database is migrated and answers now; otherwise 503 with the reason.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let ReadyState::Starting { reason } = state.readiness.get() {
        state.metrics.ready.set(0);
        // Expected while starting: a probe's 503 is not a server error worth an ERROR line.
        tracing::debug!(%reason, "readiness: still starting");
        return Ok(super::guard::starting(&reason));
    }
    match state.db.ping().await {
        Ok(()) => {
            state.metrics.ready.set(1);
            Ok(HttpResponse::Ok().json(json!({ "status": "ready", "database": state.db.backend_name() })))
        }
        Err(err) => {
            state.metrics.ready.set(0);
            // The cause (host names, driver text) is for operators, in the log only.
            tracing::warn!(error = %err, "readiness check failed");
            Err(ApiError::unavailable(
                "database_unavailable",
                DATABASE_UNREACHABLE,
            ))
        }
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&state.db).await)
}
