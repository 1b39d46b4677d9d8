//! The middleware in front of every route: who may call what (the rules are in `crate::auth`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpResponse, web};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::auth::{CSRF_HEADER, SESSION_COOKIE, Staff, authenticate};
use crate::web::ApiError;

/// Routes that answer without a staff identity (they have their own protection or none).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/login" | "/setup" | "/webhooks/milesight" | "/bench/discard"
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

fn refuse(req: ServiceRequest, error: ApiError) -> ServiceResponse {
    let response = actix_web::ResponseError::error_response(&error);
    req.into_response(response)
}

pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse, Error> {
    let path = req.path().to_owned();
    if is_public(&path) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if path == "/metrics" {
        let allowed = match &state.config.auth.metrics_token {
            None => true,
            Some(token) => bearer(&req).is_some_and(|given| same(&given, token.expose_secret())),
        };
        if !allowed {
            return Ok(refuse(
                req,
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send the metrics bearer token",
                ),
            ));
        }
        return Ok(next.call(req).await?.map_into_boxed_body());
    }

    let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    let staff = match authenticate(&state.db, cookie.as_deref(), bearer(&req).as_deref()).await {
        Ok(staff) => staff,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the caller; answering 503");
            return Ok(refuse(
                req,
                ApiError::unavailable("database_unavailable", "cannot check the caller; retry later"),
            ));
        }
    };
    let Some(staff) = staff else {
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
            return Ok(req.into_response(response));
        }
        // A page: send the browser to sign in, and back here afterwards; on a fresh install,
        // where there is nobody to sign in as, to the first-run setup.
        let fresh = match crate::auth::setup::needed(&state.db).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for staff users; answering 503");
                return Ok(refuse(
                    req,
                    ApiError::unavailable("database_unavailable", "cannot check the caller; retry later"),
                ));
            }
        };
        if fresh {
            let response = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/setup"))
                .finish();
            return Ok(req.into_response(response));
        }
        let target = match req.query_string() {
            "" => path.clone(),
            query => format!("{path}?{query}"),
        };
        let location = format!(
            "/login?next={}",
            url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        );
        let response = HttpResponse::SeeOther()
            .insert_header((header::LOCATION, location))
            .finish();
        return Ok(req.into_response(response));
    };

    if !is_safe(req.method()) {
        if let Some(expected) = staff.csrf() {
            let given = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(given, expected) {
                return Ok(refuse(
                    req,
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "missing or wrong X-CSRF-Token; reload the page",
                    ),
                ));
            }
        }
        if !staff.is_admin() && path != "/logout" {
            return Ok(refuse(
                req,
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs the admin role"),
            ));
        }
    }
    req.extensions_mut().insert::<Staff>(staff);
    Ok(next.call(req).await?.map_into_boxed_body())
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
