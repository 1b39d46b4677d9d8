//! `/setup`: the first admin, on a fresh install (the rules are in `crate::auth::setup`).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::ApiError;
use super::auth::{form_field, is_json, same_origin, signed_in};
use crate::app::AppState;
use crate::auth::setup::{self, SetupAccess, SetupError};

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

fn page(status: StatusCode, granted: bool, token: &str, email: &str, error: Option<&str>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(super::pages::setup_page(granted, token, email, error))
}

/// `GET /setup?token=…`: the form with the right token, how to find it without; 404 once done.
pub async fn setup_page(
    state: web::Data<AppState>,
    query: web::Query<TokenQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = query.token.as_deref();
    Ok(match setup::access(&state.db, &state.crypto, token).await? {
        SetupAccess::Done => return Err(ApiError::not_found("setup is done; sign in at /login")),
        SetupAccess::Granted { .. } => page(StatusCode::OK, true, token.unwrap_or_default(), "", None),
        SetupAccess::Refused if token.is_some() => page(
            StatusCode::FORBIDDEN,
            false,
            "",
            "",
            Some("That setup link is not valid (its token is wrong). Copy it again from the server log."),
        ),
        SetupAccess::Refused => page(StatusCode::OK, false, "", "", None),
    })
}

#[derive(Deserialize)]
pub struct SetupForm {
    token: Option<String>,
    email: String,
    password: String,
    /// The password typed again (a form always sends it; JSON callers may leave it out).
    confirm: Option<String>,
}

/// The setup form, sent as JSON or as a form; `None` when the email or password is missing.
fn read_setup_form(json: bool, body: &[u8]) -> Option<SetupForm> {
    if json {
        return serde_json::from_slice(body).ok();
    }
    let field = |name: &str| form_field(body, name);
    Some(SetupForm {
        token: field("token"),
        email: field("email")?,
        password: field("password")?,
        confirm: field("confirm"),
    })
}

/// `POST /setup`: a form (signs in and redirects to the overview) or JSON (answers with the
/// user and the session's CSRF token).
pub async fn create_admin(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let json = is_json(&req);
    let parsed = read_setup_form(json, &body);
    let fail = |status: StatusCode, code: &'static str, message: String, form: Option<&SetupForm>| {
        if json {
            actix_web::ResponseError::error_response(&ApiError::new(status, code, message))
        } else {
            let granted = status != StatusCode::FORBIDDEN && status != StatusCode::NOT_FOUND;
            let token = form
                .and_then(|f| f.token.as_deref())
                .filter(|_| granted)
                .unwrap_or_default();
            let email = form.map(|f| f.email.as_str()).unwrap_or_default();
            page(status, granted, token, email, Some(&message))
        }
    };
    match setup::needed(&state.db).await {
        Ok(true) => {}
        Ok(false) => {
            return fail(
                StatusCode::NOT_FOUND,
                "setup_done",
                SetupError::Done.to_string(),
                None,
            );
        }
        Err(e) => return actix_web::ResponseError::error_response(&ApiError::from(e)),
    }
    let Some(form) = parsed else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_setup",
            "give the setup token, an email and a password".into(),
            None,
        );
    };
    if !same_origin(&req) {
        return fail(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "setup from another site refused".into(),
            Some(&form),
        );
    }
    let confirm = form.confirm.as_deref().unwrap_or(&form.password);
    let result = setup::create_first_admin(
        &state.db,
        &state.crypto,
        &state.config.auth,
        form.token.as_deref(),
        &form.email,
        &form.password,
        confirm,
    )
    .await;
    match result {
        Ok(session) => {
            let client = super::auth::client_address(&state, &req);
            crate::audit::record_unguarded(
                &state,
                &session.user.email,
                &client,
                "Created the first admin (setup)",
                "POST /setup",
            )
            .await;
            signed_in(&state, session, json.then_some(StatusCode::CREATED), "/")
        }
        Err(e @ SetupError::Refused) => {
            fail(StatusCode::FORBIDDEN, "setup_refused", e.to_string(), Some(&form))
        }
        Err(e @ SetupError::Done) => fail(StatusCode::NOT_FOUND, "setup_done", e.to_string(), Some(&form)),
        Err(e @ SetupError::Invalid(_)) => fail(
            StatusCode::BAD_REQUEST,
            "invalid_setup",
            e.to_string(),
            Some(&form),
        ),
        Err(SetupError::Storage(e)) => actix_web::ResponseError::error_response(&ApiError::from(e)),
    }
}
