//! Passwords: an admin's one-time reset link for someone (emailed, or written to the server
//! log when no SMTP server is set), the page that link opens, and changing your own password.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use super::auth::{client_address as client_of, form_field, same_origin};
use crate::alerts::templates::{self, ResetView};
use crate::app::AppState;
use crate::audit::AuditNote;
use crate::auth::{self, Staff, Via};
use crate::storage::{StorageError, UtcTime, now, staff};

/// `POST /api/users/{id}/reset-link` (admin): a link that sets the person's password once.
/// Emailed to them when an SMTP server is set; otherwise (or when sending fails) written to
/// the server log like the setup link, and the answer says so.
pub async fn reset_link(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    me: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let user = staff::user(&state.db, *id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no user {}", *id)),
        other => other.into(),
    })?;
    if user.disabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_disabled",
            format!("{} is disabled: enable them first", user.email),
        ));
    }
    let token = auth::new_token();
    let at = now();
    let lifetime = state.config.auth.reset_link_hours;
    let expires_at = UtcTime::new(at.0 + chrono::Duration::from_std(lifetime).unwrap_or_default());
    staff::create_password_reset(&state.db, user.id, &auth::token_hash(&token), at, expires_at).await?;
    let link = format!(
        "{}/reset-password?token={token}",
        state.config.alerts.public_url.trim_end_matches('/')
    );
    let hours = lifetime.as_secs() / 3600;
    let emailed = if state.channels.current().await.smtp.is_some() {
        let (text, html) = templates::password_reset(&ResetView {
            admin: &me.user.email,
            email: &user.email,
            link: &link,
            hours,
        });
        Some(
            state
                .mailer
                .send_direct(&user.email, "[Telltale] Set your password", &text, &html)
                .await,
        )
    } else {
        None
    };
    let (message, note) = match emailed {
        Some(Ok(())) => (
            format!(
                "A reset link was emailed to {}; it works once, within {hours} h.",
                user.email
            ),
            format!("emailed to {}", user.email),
        ),
        failed => {
            tracing::warn!(
                reset_url = %link,
                user = %user.email,
                "password reset link made: give it to the person; it works once"
            );
            let why = match failed {
                Some(Err(e)) => format!("It could not be emailed ({e}), so the"),
                _ => "No SMTP server is set, so the".to_owned(),
            };
            (
                format!(
                    "{why} link for {} is in the server log (look for reset_url); it works once, within {hours} h.",
                    user.email
                ),
                "written to the server log".to_owned(),
            )
        }
    };
    let mut response = HttpResponse::Ok().json(json!({ "message": message, "expires_at": expires_at }));
    response.extensions_mut().insert(AuditNote::note(note));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnPassword {
    current_password: String,
    new_password: String,
}

/// `POST /api/me/password` (any role): asks the current password; ends the person's other
/// sessions. Wrong current passwords count in the sign-in throttle, so a borrowed session
/// cannot guess it.
pub async fn change_own_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    me: web::ReqData<Staff>,
    body: web::Json<OwnPassword>,
) -> Result<HttpResponse, ApiError> {
    let client = client_of(&state, &req);
    let email = me.user.email.clone();
    if let Some(wait) = state.login_throttle.wait(&client, &email) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            auth::LoginError::Throttled(wait).to_string(),
        ));
    }
    let (given, hash) = (body.current_password.clone(), me.user.password_hash.clone());
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&given, &hash))
        .await
        .unwrap_or(false);
    if !matches {
        state.login_throttle.failed(&client, &email);
        return Err(ApiError::bad_request(
            "wrong_password",
            "the current password is not right",
        ));
    }
    auth::check_password_rules(&body.new_password)
        .map_err(|m| ApiError::bad_request("invalid_password", m))?;
    let hash = auth::hash_password_async(body.new_password.clone())
        .await
        .map_err(|e| ApiError::bad_request("invalid_password", e.to_string()))?;
    staff::set_password(&state.db, me.user.id, &hash).await?;
    let keep = match &me.via {
        Via::Session { token_hash, .. } => Some(token_hash.as_str()),
        Via::ApiToken { .. } => None,
    };
    let ended = staff::end_other_sessions(&state.db, me.user.id, keep).await?;
    let mut response = HttpResponse::Ok().json(json!({
        "message": format!("Your password is changed; {ended} other session(s) ended."),
    }));
    response
        .extensions_mut()
        .insert(AuditNote::note(format!("{ended} other session(s) ended")));
    Ok(response)
}

#[derive(Template)]
#[template(path = "reset_password.html")]
struct ResetPage<'a> {
    token: &'a str,
    /// Whom the live link is for; `None` when it does not work.
    email: Option<&'a str>,
    error: Option<&'a str>,
    done: bool,
}

fn page(status: StatusCode, page: &ResetPage<'_>) -> HttpResponse {
    let html = page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render the reset page");
        "cannot render the page; the cause is in the service log".into()
    });
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        // The token is in this page's URL: never send it on to another site.
        .insert_header(("referrer-policy", "no-referrer"))
        .body(html)
}

#[derive(Deserialize)]
pub struct ResetQuery {
    token: Option<String>,
}

/// `GET /reset-password?token=…` (public: the token is the permission).
pub async fn reset_page(
    state: web::Data<AppState>,
    query: web::Query<ResetQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = query.token.as_deref().unwrap_or_default();
    let user = match token {
        "" => None,
        token => staff::password_reset_user(&state.db, &auth::token_hash(token), now()).await?,
    };
    let status = if user.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok(page(
        status,
        &ResetPage {
            token,
            email: user.as_ref().map(|u| u.email.as_str()),
            error: None,
            done: false,
        },
    ))
}

/// `POST /reset-password` (a form): sets the password and uses the link up.
pub async fn reset_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let field = |name: &str| form_field(&body, name).unwrap_or_default();
    let (token, password, confirm) = (field("token"), field("password"), field("confirm"));
    let hash_of_token = auth::token_hash(&token);
    let user = match token.as_str() {
        "" => None,
        _ => staff::password_reset_user(&state.db, &hash_of_token, now()).await?,
    };
    let Some(user) = user else {
        return Ok(page(
            StatusCode::NOT_FOUND,
            &ResetPage {
                token: "",
                email: None,
                error: None,
                done: false,
            },
        ));
    };
    let refuse = |error: String| {
        page(
            StatusCode::BAD_REQUEST,
            &ResetPage {
                token: &token,
                email: Some(&user.email),
                error: Some(&error),
                done: false,
            },
        )
    };
    if !same_origin(&req) {
        return Ok(refuse("a form from another site cannot set a password".into()));
    }
    if password != confirm {
        return Ok(refuse("the two passwords differ".into()));
    }
    if let Err(rule) = auth::check_password_rules(&password) {
        return Ok(refuse(rule));
    }
    let hash = auth::hash_password_async(password)
        .await
        .map_err(|e| ApiError::bad_request("invalid_password", e.to_string()))?;
    match staff::use_password_reset(&state.db, &hash_of_token, &hash, now()).await {
        Ok(user) => {
            crate::audit::record_unguarded(
                &state,
                &user.email,
                &client_of(&state, &req),
                "Set their password with a reset link",
                "POST /reset-password",
            )
            .await;
            Ok(page(
                StatusCode::OK,
                &ResetPage {
                    token: "",
                    email: Some(&user.email),
                    error: None,
                    done: true,
                },
            ))
        }
        // Used a moment ago, in another tab or on another replica.
        Err(StorageError::NotFound) => Ok(page(
            StatusCode::NOT_FOUND,
            &ResetPage {
                token: "",
                email: None,
                error: Some("This link was used a moment ago."),
                done: false,
            },
        )),
        Err(e) => Err(e.into()),
    }
}
