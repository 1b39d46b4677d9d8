//! Connecting a platform through its consent screen, from the web UI: `POST
//! /api/connections/{id}/authorize` hands the browser the consent screen's URL, and the
//! platform sends it back to `GET /oauth/callback` (the flow is in `crate::tokens::connect`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use super::pages::{Base, ConnectResultPage, public_base, render_with_status};
use crate::app::AppState;
use crate::auth::{Staff, Via};
use crate::storage::{RefreshOutcome, StorageError, connections, consents, now};
use crate::tokens::connect::{self, ConnectError};

/// The redirect URI to register at the platform: one for every connection.
pub fn redirect_uri(state: &AppState, req: &HttpRequest) -> String {
    format!("{}/oauth/callback", public_base(state, req))
}

fn connect_error(err: ConnectError) -> ApiError {
    match err {
        ConnectError::NotFound(_) => ApiError::not_found(err.to_string()),
        ConnectError::Storage(e) => e.into(),
        e @ (ConnectError::NoConsent | ConnectError::MissingClient) => {
            ApiError::new(StatusCode::CONFLICT, "cannot_connect", e.to_string())
        }
        e => ApiError::bad_request("cannot_connect", e.to_string()),
    }
}

/// `POST /api/connections/{id}/authorize` (admin, from a browser session): where to send the
/// browser, with the state bound to this session.
pub async fn authorize(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    staff: web::ReqData<Staff>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Via::Session { token_hash, .. } = &staff.via else {
        return Err(connect_error(ConnectError::NeedsSession));
    };
    let connection = connections::get_connection(&state.db, *id)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => ApiError::not_found(format!("no connection with id {id}")),
            other => other.into(),
        })?;
    let redirect_uri = redirect_uri(&state, &req);
    let authorize_url = connect::start(&state.crypto, &connection, token_hash, &redirect_uri, now())
        .map_err(connect_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "authorize_url": authorize_url,
        "redirect_uri": redirect_uri,
        "expires_in": connect::STATE_LIFETIME_SECS,
    })))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth/callback`: the platform sends the browser back here with a code (or why not).
/// Only an admin's session that started the flow gets anything stored, and each state once:
/// the code is exchanged by the first request that brings it, which is then sent (303) to the
/// connection's page.
pub async fn callback(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    staff: web::ReqData<Staff>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    let show = |status: StatusCode, ok: bool, message: String, connection_id: Option<i64>| {
        let page = ConnectResultPage {
            base: Base::new("Connect", "/tokens", &staff),
            ok,
            message,
            connection_id,
        };
        render_with_status(status, &page)
    };
    let flow = match opened_flow(&state, &staff, &query) {
        Ok(flow) => flow,
        Err(e) => return show(StatusCode::BAD_REQUEST, false, e.to_string(), None),
    };
    let id = Some(flow.connection_id);
    let code = match code_of(&query, flow.connection_id) {
        Ok(code) => code,
        Err(e) => return show(StatusCode::BAD_REQUEST, false, e.to_string(), id),
    };
    // The state is used once, on every replica: a reload, the page's live refresh or a replay
    // is shown what the first request did, and the platform never sees the code twice.
    let state_hash = crate::auth::token_hash(query.state.as_deref().unwrap_or_default());
    let forget_before =
        crate::storage::UtcTime::new(now().0 - chrono::Duration::seconds(2 * connect::STATE_LIFETIME_SECS));
    if let Some(used) =
        consents::claim(&state.db, &state_hash, flow.connection_id, now(), forget_before).await?
    {
        let (status, ok, message) = already_used(&used);
        return show(status, ok, message, id);
    }
    let engine = &state.token_engine;
    let result = connect::finish(
        &state.db,
        &state.crypto,
        engine.http(),
        engine,
        &flow,
        code,
        &staff.actor(),
    )
    .await;
    if let Err(ConnectError::Storage(e)) = result {
        return Err(e.into());
    }
    let (status, ok, message) = exchange_answer(result);
    consents::record(&state.db, &state_hash, ok, &message).await?;
    let target = crate::storage::connections::get_connection(&state.db, flow.connection_id)
        .await
        .map(|c| crate::present::connection_name(&c))
        .ok();
    crate::audit::record_event(
        &state,
        &staff.actor(),
        &super::auth::client_address(&state, &req),
        if ok {
            "Connected (consent given)"
        } else {
            "Connect failed"
        },
        "GET /oauth/callback",
        target,
        Some(&message),
    )
    .await;
    if ok {
        // The address bar no longer holds the code: a reload shows the connection.
        return Ok(HttpResponse::SeeOther()
            .insert_header((
                "location",
                format!("/connections/{}?connected=1", flow.connection_id),
            ))
            .finish());
    }
    show(status, ok, message, id)
}

/// What a replayed callback is told: what the first request did with it.
fn already_used(used: &consents::UsedConsent) -> (StatusCode, bool, String) {
    let said = used.message.as_deref().unwrap_or_default();
    match used.succeeded {
        Some(true) => (
            StatusCode::OK,
            true,
            format!("This consent was already used: the connection is connected. {said}"),
        ),
        Some(false) => (
            StatusCode::CONFLICT,
            false,
            format!("This consent was already used, and it failed: {said} Press Connect to start again."),
        ),
        None => (
            StatusCode::CONFLICT,
            false,
            "This consent is being exchanged right now by another request; open the connection in a moment."
                .into(),
        ),
    }
}

/// The flow this callback's `state` belongs to, if it is this session's and unexpired.
fn opened_flow(
    state: &AppState,
    staff: &Staff,
    query: &CallbackQuery,
) -> Result<connect::Flow, ConnectError> {
    let Via::Session { token_hash, .. } = &staff.via else {
        return Err(ConnectError::NeedsSession);
    };
    query
        .state
        .as_deref()
        .ok_or(ConnectError::BadState)
        .and_then(|s| connect::open(&state.crypto, s, token_hash, now()))
        .inspect_err(|e| tracing::warn!(reason = %e, "consent callback refused"))
}

/// The code the platform sent, or why there is none (the platform's own words, shortened:
/// they come from the browser's address bar).
fn code_of(query: &CallbackQuery, connection_id: i64) -> Result<&str, ConnectError> {
    if let Some(error) = &query.error {
        let reason: String = match &query.error_description {
            Some(d) => format!("{error}: {d}"),
            None => error.clone(),
        }
        .chars()
        .take(200)
        .collect();
        tracing::warn!(connection = connection_id, "consent refused at the platform");
        return Err(ConnectError::Denied(reason));
    }
    query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(ConnectError::BadState)
}

/// What the result page says about the code exchange: (status, success, message).
fn exchange_answer(
    result: Result<crate::tokens::ConnectionResult, ConnectError>,
) -> (StatusCode, bool, String) {
    match result {
        Ok(r) if r.outcome == RefreshOutcome::Refreshed => {
            let until = r
                .expires_at
                .map(|t| {
                    format!(
                        ", valid until {}",
                        crate::present::when(t, now(), crate::present::zone())
                    )
                })
                .unwrap_or_default();
            (
                StatusCode::OK,
                true,
                format!(
                    "Connected {}: tokens stored{until}. Telltale refreshes them from now on.",
                    r.name
                ),
            )
        }
        Ok(r) => (
            StatusCode::BAD_GATEWAY,
            false,
            format!(
                "The platform did not accept the code: {}. Nothing was stored; try Connect again.",
                r.detail.unwrap_or_default()
            ),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, false, e.to_string()),
    }
}
