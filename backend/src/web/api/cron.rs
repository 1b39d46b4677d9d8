//! `GET|POST /api/cron/token-refresh` and `/api/cron/platform-polling`: one refresh or poll sweep
//! for external schedulers (serverless deployments), guarded by `Authorization: Bearer <CRON_SECRET>`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::storage::now;
use crate::tokens::SweepRequest;
use crate::web::ApiError;

/// Checks the bearer secret in constant time. Without a configured secret the endpoints do
/// not exist (404), so an unset secret can never be matched.
fn authorise(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(secret) = &state.config.cron_secret else {
        return Err(ApiError::not_found("no such route"));
    };
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(secret.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer secret",
        ))
    }
}

pub async fn token_refresh(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorise(&state, &req)?;
    let request = SweepRequest {
        trigger: "cron_endpoint",
        actor: "cron".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    };
    let report = state.token_engine.sweep(&request, now()).await?;
    Ok(HttpResponse::Ok().json(report))
}

pub async fn platform_polling(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorise(&state, &req)?;
    let request = crate::polling::PollRequest {
        trigger: "cron_endpoint",
        ..Default::default()
    };
    let report = state.poll_engine.sweep(&request, now()).await?;
    Ok(HttpResponse::Ok().json(report))
}
