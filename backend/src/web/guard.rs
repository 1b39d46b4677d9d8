//! The middleware in front of every route: who may call what (the rules are in `crate::auth`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpResponse, web};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::app::{AppState, ReadyState};
use crate::auth::{CSRF_HEADER, SESSION_COOKIE, Staff, authenticate};
use crate::web::ApiError;

/// Routes that answer without a staff identity (they have their own protection or none).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/login"
            | "/setup"
            | "/reset-password"
            | "/favicon.ico"
            | "/webhooks/milesight"
            | "/bench/discard"
    ) || path.starts_with("/webhooks/milesight/")
        || path.starts_with("/api/cron/")
        || path.starts_with("/static/")
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub fn bearer(req: &ServiceRequest) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// 503 `starting`, to be tried again in a second. A response, not an error, so request logging
/// does not report every probe and retry during a normal start as a server error.
pub fn starting(reason: &str) -> HttpResponse {
    let mut response =
        actix_web::ResponseError::error_response(&ApiError::unavailable("starting", reason.to_owned()));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

fn refuse(req: ServiceRequest, error: ApiError) -> ServiceResponse {
    let response = actix_web::ResponseError::error_response(&error);
    req.into_response(response)
}

/// Lets a request through, or answers it: public routes pass; `/metrics` needs its bearer
/// token when one is set; everything else needs a staff identity (a session or an API token),
/// and a change also the session's CSRF token and the admin role.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse, Error> {
    let path = req.path().to_owned();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // Until migrations and the configured admin are in place, nothing but the probes (and
    // `/metrics`, which then says `telltale_ready 0`) may answer: a page could show a
    // half-made install, a webhook could find no table.
    if let Some(state) = &state
        && !matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics")
        && let ReadyState::Starting { reason } = state.readiness.get()
    {
        tracing::debug!(%path, "answered 503 while starting");
        return Ok(req.into_response(starting(&reason)));
    }
    if is_public(&path) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some(state) = state else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if path == "/metrics" {
        if !metrics_allowed(&state, &req) {
            let refused = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the metrics bearer token",
            );
            return Ok(refuse(req, refused));
        }
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    let staff = match authenticate(&state.db, cookie.as_deref(), bearer(&req).as_deref()).await {
        Ok(Some(staff)) => staff,
        Ok(None) => {
            let response = anonymous(&state, &req, &path).await;
            return Ok(req.into_response(response));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the caller; answering 503");
            return Ok(refuse(req, caller_unknown()));
        }
    };
    if !is_safe(req.method())
        && let Some(refused) = change_refused(&req, &staff, &path)
    {
        return Ok(refuse(req, refused));
    }
    if admin_only(&path) && !staff.is_admin() {
        let response = if path.starts_with("/api/") {
            actix_web::ResponseError::error_response(&ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs the admin role",
            ))
        } else {
            crate::web::pages::forbidden(&state.db, &staff, &path).await
        };
        return Ok(req.into_response(response));
    }
    if is_safe(req.method()) {
        req.extensions_mut().insert::<Staff>(staff);
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    audited(req, next, staff, &state).await
}

/// Pages and reads for admins only; a viewer gets a page (or JSON) saying which role it needs.
fn admin_only(path: &str) -> bool {
    path == "/settings" || path.starts_with("/settings/") || matches!(path, "/api/audit" | "/oauth/callback")
}

/// Runs a change and writes it to the audit log under its caller: what the route does, what
/// it acted on (read before, as a removal's target is gone after), settings before and after.
/// Refusals that changed nothing (400, 404, 409 …) are not entries; a far end that said no
/// (502: the platform, the SMTP server) is, as the attempt was made.
async fn audited(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    staff: Staff,
    state: &web::Data<AppState>,
) -> Result<ServiceResponse, Error> {
    let pattern = req.match_pattern().unwrap_or_default();
    let path = req.path().to_owned();
    let route = format!("{} {pattern}", req.method());
    let action = crate::audit::action(req.method().as_str(), &pattern);
    let (target, before) = match action {
        Some(_) => (
            crate::audit::target(state, &pattern, &path).await,
            crate::audit::snapshot(state, &pattern, &path).await,
        ),
        None => (None, None),
    };
    let client = crate::web::auth::client_address(state, req.request());
    let actor = staff.actor();
    req.extensions_mut().insert::<Staff>(staff);
    let response = next.call(req).await?.map_into_boxed_body();
    let status = response.status();
    let Some(action) = action else {
        return Ok(response);
    };
    if !(status.is_success() || status.is_redirection() || status == StatusCode::BAD_GATEWAY) {
        return Ok(response);
    }
    let note = response
        .response()
        .extensions()
        .get::<crate::audit::AuditNote>()
        .cloned()
        .unwrap_or_default();
    let changes = match before {
        Some(before) => match crate::audit::snapshot(state, &pattern, &path).await {
            Some(after) => crate::audit::changes(&before, &after),
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    crate::audit::record(
        state,
        crate::storage::audit::NewAuditEntry {
            at: crate::storage::now(),
            actor,
            client: (!client.is_empty()).then_some(client),
            action: action.to_owned(),
            target: note.target.or(target),
            route,
            status: i32::from(status.as_u16()),
            details: crate::audit::details(&changes, note.note.as_deref()),
        },
    )
    .await;
    Ok(response)
}

fn metrics_allowed(state: &AppState, req: &ServiceRequest) -> bool {
    match &state.config.auth.metrics_token {
        None => true,
        Some(token) => bearer(req).is_some_and(|given| same(&given, token.expose_secret())),
    }
}

fn caller_unknown() -> ApiError {
    ApiError::unavailable("database_unavailable", "cannot check the caller; retry later")
}

/// The answer to a caller with no identity: 401 for the API and for changes; a page sends
/// the browser to sign in and back afterwards, or on a fresh install, where there is nobody to
/// sign in as, to the first-run setup.
async fn anonymous(state: &AppState, req: &ServiceRequest, path: &str) -> HttpResponse {
    if path.starts_with("/api/") || !is_safe(req.method()) {
        let mut response = actix_web::ResponseError::error_response(&ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in, or send an API token as Authorization: Bearer",
        ));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let location = match crate::auth::setup::needed(&state.db).await {
        Ok(true) => "/setup".to_owned(),
        Ok(false) => {
            let target = match req.query_string() {
                "" => path.to_owned(),
                query => format!("{path}?{query}"),
            };
            format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check for staff users; answering 503");
            return actix_web::ResponseError::error_response(&caller_unknown());
        }
    };
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Why a change may not be made: a session's change without its CSRF token, or a viewer's
/// change (signing out excepted).
fn change_refused(req: &ServiceRequest, staff: &Staff, path: &str) -> Option<ApiError> {
    if let Some(expected) = staff.csrf() {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same(given, expected) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "missing or wrong X-CSRF-Token; reload the page",
            ));
        }
    }
    (!staff.is_admin() && !matches!(path, "/logout" | "/api/me/password"))
        .then(|| ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs the admin role"))
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_self_protected_routes_are_public() {
        for path in [
            "/healthz",
            "/readyz",
            "/login",
            "/setup",
            "/webhooks/milesight",
            "/webhooks/milesight/site-a",
            "/api/cron/token-refresh",
            "/static/telltale.css",
        ] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/",
            "/api/devices",
            "/api/users",
            "/logout",
            "/metrics",
            "/webhooks",
            "/api/cronx",
            "/loginx",
            "/setupx",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }
}
