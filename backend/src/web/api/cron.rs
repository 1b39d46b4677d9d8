//! `GET|POST /api/cron/token-refresh` and `/api/cron/platform-polling`: one refresh or poll sweep
//! for external schedulers (serverless deployments), guarded by `Authorization: Bearer <CRON_SECRET>`.

use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::storage::{RefreshOutcome, now};
use crate::tokens::SweepRequest;
use crate::web::ApiError;

/// Checks the bearer secret in constant time. Without a configured secret the endpoints do
/// not exist (404), so an unset secret can never be matched. A refusal keeps the JSON error
/// shape with `"success": false` (what callers of the original endpoints read), is logged with
/// the client's address (never what it presented) and counted. Returns the refusal, if any.
fn refusal(state: &AppState, req: &HttpRequest, endpoint: &'static str) -> Option<HttpResponse> {
    let Some(secret) = &state.config.cron_secret else {
        return Some(actix_web::ResponseError::error_response(&ApiError::not_found(
            "no such route",
        )));
    };
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(secret.expose_secret().as_bytes())) {
        return None;
    }
    let client = req
        .connection_info()
        .realip_remote_addr()
        .unwrap_or("unknown")
        .to_owned();
    tracing::warn!(%endpoint, %client, "cron call refused: missing or wrong bearer secret");
    state.metrics.cron_refused.with_label_values(&[endpoint]).inc();
    Some(HttpResponse::Unauthorized().json(json!({
        "success": false,
        "error": {"code": "unauthorized", "message": "missing or wrong bearer secret"},
    })))
}

/// Adds the original scripts' field names to an answer's JSON object.
fn with_fields(answer: impl serde::Serialize, extra: Value) -> Value {
    let mut answer = serde_json::to_value(answer).unwrap_or_else(|_| json!({}));
    if let (Some(object), Value::Object(extra)) = (answer.as_object_mut(), extra) {
        object.extend(extra);
    }
    answer
}

/// `GET|POST /api/cron/token-refresh`: today's report, plus `success`, `cronType`,
/// `tokensChecked`, `tokensRefreshed` and per result `platform`, `userId`, `success`, `newExpiry`.
pub async fn token_refresh(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(refused) = refusal(&state, &req, "token-refresh") {
        return Ok(refused);
    }
    let request = SweepRequest {
        trigger: crate::storage::RefreshTrigger::CronEndpoint,
        actor: "cron".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    };
    let report = state.token_engine.sweep(&request, now()).await?;
    let results: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            let ok = !matches!(r.outcome, RefreshOutcome::Failed | RefreshOutcome::NeedsReauth);
            with_fields(
                r,
                json!({"platform": r.provider, "userId": r.account_id, "success": ok, "newExpiry": r.expires_at}),
            )
        })
        .collect();
    let mut answer = with_fields(
        &report,
        json!({
            "success": report.failed == 0,
            "cronType": "token-refresh",
            "tokensChecked": report.checked,
            "tokensRefreshed": report.refreshed,
        }),
    );
    answer["results"] = Value::Array(results);
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET|POST /api/cron/platform-polling`: today's report, plus `success`, `cronType`,
/// `userCount`, `platformCount`, `pollsSuccessful`, `pollsFailed`.
pub async fn platform_polling(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(refused) = refusal(&state, &req, "platform-polling") {
        return Ok(refused);
    }
    let request = crate::polling::PollRequest {
        trigger: crate::storage::PollTrigger::CronEndpoint,
        ..Default::default()
    };
    let report = state.poll_engine.sweep(&request, now()).await?;
    let platforms: std::collections::BTreeSet<&str> =
        report.results.iter().map(|r| r.platform.as_str()).collect();
    let answer = with_fields(
        &report,
        json!({
            "success": report.failed == 0,
            "cronType": "platform-polling",
            "userCount": report.users,
            "platformCount": platforms.len(),
            "pollsSuccessful": report.succeeded,
            "pollsFailed": report.failed,
        }),
    );
    Ok(HttpResponse::Ok().json(answer))
}
