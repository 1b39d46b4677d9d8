//! `POST /webhooks/milesight[/{source}]`: thin HTTP glue around `milesight::intake`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::ApiError;
use crate::app::AppState;
use crate::milesight::intake::{IntakeError, WebhookRequest};
use crate::milesight::payload::Rejection;

/// MDP probes a callback URL before using it, and refuses URLs that answer non-POST requests
/// with an error, so GET and HEAD succeed here.
pub async fn probe() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "accepts": "POST" }))
}

/// `POST /bench/discard`, when `bench_discard_route` is on: reads the body as the webhook
/// route does and answers 200, through the same middleware. Its rate is the ceiling that
/// webhook ingest is benchmarked against.
pub async fn discard(state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    if !state.config.bench_discard_route {
        return Err(ApiError::not_found("no such route"));
    }
    let body = payload
        .to_bytes_limited(state.config.milesight.max_body_bytes)
        .await
        .map_err(|_| ApiError::bad_request("too_large", "the body is over the limit"))?
        .map_err(|err| ApiError::bad_request("incomplete_body", format!("could not read the body: {err}")))?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ok", "bytes": body.len() })))
}

pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request = WebhookRequest {
        path_source: req.match_info().get("source"),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        remote_addr: req.peer_addr().map(|a| a.ip().to_string()),
    };
    let limit = state.config.milesight.max_body_bytes;
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = Rejection::TooLarge { limit };
    let intake = &state.intake;
    if declared.is_some_and(|n| n > limit) {
        intake
            .record_rejection(&request, declared.unwrap_or_default(), &[], &too_large)
            .await;
        return Err(rejected(&too_large));
    }
    let body = match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            intake
                .record_rejection(&request, limit + 1, &[], &too_large)
                .await;
            return Err(rejected(&too_large));
        }
        Err(err) => {
            return Err(ApiError::bad_request(
                "incomplete_body",
                format!("could not read the body: {err}"),
            ));
        }
    };
    match intake.receive(&request, &body).await {
        Ok(accepted) => Ok(HttpResponse::Ok().json(json!({
            "status": "ok",
            "source": accepted.source,
            "stored": accepted.outcome.stored,
            "duplicates": accepted.outcome.duplicates,
        }))),
        Err(IntakeError::Rejected(rejection)) => Err(rejected(&rejection)),
        // Nothing was committed; 503 (with Retry-After) makes MDP deliver again.
        Err(IntakeError::Storage(err)) => Err(ApiError::unavailable(
            "database_unavailable",
            format!(
                "the event could not be stored ({}); retry later",
                if err.is_unavailable() {
                    "database unavailable"
                } else {
                    "storage error"
                }
            ),
        )),
    }
}

fn rejected(rejection: &Rejection) -> ApiError {
    let status = actix_web::http::StatusCode::from_u16(rejection.status())
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    ApiError::new(status, rejection.code(), rejection.message())
}
