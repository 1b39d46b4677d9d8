//! `GET /api/milesight/token`, `POST /api/milesight/token/refresh`: the OpenAPI token's health,
//! and a manual refresh. Neither ever returns the token.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use crate::app::AppState;
use crate::milesight::token::{TokenError, Trigger};
use crate::storage::now;
use crate::web::ApiError;

pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status = state.milesight_token.status(now()).await.map_err(token_error)?;
    Ok(HttpResponse::Ok().json(status))
}

pub async fn refresh(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .milesight_token
        .refresh_now(Trigger::Manual)
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
