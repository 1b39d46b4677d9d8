//! Sign-in, sign-out, who am I, and the admin's users and API tokens.

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::app::AppState;
use crate::auth::{self, AddUserError, LoginError, SESSION_COOKIE, Staff, Via};
use crate::storage::{Role, StorageError, staff};

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// The caller's address: the peer's, or the one a trusted proxy names (`[auth]`).
pub(crate) fn client_address(state: &AppState, req: &HttpRequest) -> String {
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    state
        .config
        .auth
        .client_address(req.peer_addr().map(|a| a.ip()), forwarded)
}

/// Only same-site paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/",
    }
}

fn page(status: StatusCode, next: &str, email: &str, error: Option<&str>) -> HttpResponse {
    let body = super::pages::login_page(next, email, error);
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// `GET /login`; on a fresh install, where there is nobody to sign in as, `/setup`.
pub async fn login_page(
    state: web::Data<AppState>,
    query: web::Query<NextQuery>,
) -> Result<HttpResponse, ApiError> {
    if crate::auth::setup::needed(&state.db).await? {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/setup"))
            .finish());
    }
    Ok(page(StatusCode::OK, safe_next(query.next.as_deref()), "", None))
}

/// The answer to a sign-in (or the first-run setup) that opened `session`: its cookie, and
/// JSON with the user and the CSRF token (with `json_status`), or else a redirect to `location`.
pub(super) fn signed_in(
    state: &AppState,
    session: auth::NewSession,
    json_status: Option<StatusCode>,
    location: &str,
) -> HttpResponse {
    let lifetime = time::Duration::seconds(state.config.auth.session_hours.as_secs() as i64);
    let cookie = session_cookie(state, session.token, lifetime);
    match json_status {
        Some(status) => HttpResponse::build(status).cookie(cookie).json(json!({
            "user": session.user,
            "csrf_token": session.csrf,
            "expires_at": session.expires_at,
        })),
        None => HttpResponse::SeeOther()
            .cookie(cookie)
            .insert_header((header::LOCATION, location.to_owned()))
            .finish(),
    }
}

/// One field of a form-encoded body.
pub(super) fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Whether a request's body is JSON (else a form).
pub(super) fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
    next: Option<String>,
}

/// A cross-site form cannot sign a browser in as someone else (login CSRF).
pub(super) fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = req.connection_info().host().to_owned();
    url::Url::parse(origin).is_ok_and(|u| {
        let origin_host = match u.port() {
            Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        };
        origin_host == host
    })
}

fn session_cookie(state: &AppState, value: String, max_age: time::Duration) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.config.auth.secure_cookies())
        .max_age(max_age)
        .finish()
}

/// `POST /login`: a form (redirects) or JSON (answers with the user and the CSRF token).
pub async fn login(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let is_json = is_json(&req);
    let parsed: Option<Credentials> = if is_json {
        serde_json::from_slice(&body).ok()
    } else {
        let field = |name: &str| form_field(&body, name);
        match (field("email"), field("password")) {
            (Some(email), Some(password)) => Some(Credentials {
                email,
                password,
                next: field("next"),
            }),
            _ => None,
        }
    };
    let fail = |status: StatusCode, code: &'static str, message: String, email: &str, next: &str| {
        if is_json {
            actix_web::ResponseError::error_response(&ApiError::new(status, code, message))
        } else {
            page(status, next, email, Some(&message))
        }
    };
    let Some(credentials) = parsed else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_login",
            "give an email and a password".into(),
            "",
            "/",
        );
    };
    let next = safe_next(credentials.next.as_deref()).to_owned();
    if !same_origin(&req) {
        return fail(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "sign-in from another site refused".into(),
            &credentials.email,
            &next,
        );
    }
    let client = client_address(&state, &req);
    match auth::login(
        &state.db,
        &state.login_throttle,
        &state.config.auth,
        &credentials.email,
        &credentials.password,
        &client,
    )
    .await
    {
        Ok(session) => {
            crate::audit::record_unguarded(&state, &session.user.email, &client, "Signed in", "POST /login")
                .await;
            signed_in(&state, session, is_json.then_some(StatusCode::OK), &next)
        }
        Err(LoginError::Refused) => fail(
            StatusCode::UNAUTHORIZED,
            "login_refused",
            LoginError::Refused.to_string(),
            &credentials.email,
            &next,
        ),
        Err(e @ LoginError::Throttled(wait)) => {
            let mut response = fail(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                e.to_string(),
                &credentials.email,
                &next,
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(whole_seconds(wait)),
            );
            response
        }
        Err(LoginError::Storage(e)) => actix_web::ResponseError::error_response(&ApiError::from(e)),
    }
}

/// A wait in whole seconds, rounded up (a client retrying sooner would be refused again).
fn whole_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// `POST /logout`: ends this session everywhere (it is deleted from the database).
pub async fn logout(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Via::Session { token_hash, .. } = &staff.via {
        staff::delete_session(&state.db, token_hash).await?;
    }
    let expired = session_cookie(&state, String::new(), time::Duration::ZERO);
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    Ok(if wants_json {
        HttpResponse::NoContent().cookie(expired).finish()
    } else {
        HttpResponse::SeeOther()
            .cookie(expired)
            .insert_header((header::LOCATION, "/login"))
            .finish()
    })
}

/// `GET /api/me`
pub async fn me(staff: web::ReqData<Staff>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "user": staff.user,
        "role": staff.user.role,
        "csrf_token": staff.csrf(),
        "via": match &staff.via { Via::Session { .. } => "session", Via::ApiToken { .. } => "api_token" },
    }))
}

/// `GET /api/users` (any signed-in user may see who has access).
pub async fn users(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "items": staff::list_users(&state.db).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    password: String,
    #[serde(default = "viewer")]
    role: String,
}

fn viewer() -> String {
    Role::Viewer.as_str().into()
}

/// `POST /api/users` (admin)
pub async fn add_user(
    state: web::Data<AppState>,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    match auth::add_user(&state.db, &body.email, &body.password, &body.role).await {
        Ok(user) => {
            let target = format!("staff user {} ({})", user.email, user.role);
            let mut response = HttpResponse::Created().json(user);
            response
                .extensions_mut()
                .insert(crate::audit::AuditNote::target(target));
            Ok(response)
        }
        Err(AddUserError::Invalid(m)) => Err(ApiError::bad_request("invalid_user", m)),
        Err(e @ AddUserError::Exists(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "user_exists", e.to_string()))
        }
        Err(AddUserError::Storage(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    password: Option<String>,
    role: Option<String>,
    disabled: Option<bool>,
}

/// `PATCH /api/users/{id}` (admin): new password, role, or disabled. Ends the user's sessions
/// on a new password or when disabled.
pub async fn update_user(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<UserChange>,
    me: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_user", m);
    let role = body
        .role
        .as_deref()
        .map(auth::check_role)
        .transpose()
        .map_err(invalid)?;
    if *id == me.user.id && (body.disabled == Some(true) || role == Some(Role::Viewer)) {
        return Err(invalid("you cannot disable or demote yourself".into()));
    }
    let hash = match &body.password {
        Some(p) => {
            auth::check_password_rules(p).map_err(invalid)?;
            Some(
                auth::hash_password_async(p.clone())
                    .await
                    .map_err(|e| invalid(e.to_string()))?,
            )
        }
        None => None,
    };
    let user = staff::update_user(&state.db, *id, hash.as_deref(), role, body.disabled)
        .await
        .map_err(not_found("user", *id))?;
    let mut response = HttpResponse::Ok().json(&user);
    if hash.is_some() {
        // The change itself is not in the before/after (a hash is never shown).
        response.extensions_mut().insert(crate::audit::AuditNote::note(
            "password set; their sessions ended",
        ));
    }
    Ok(response)
}

fn not_found(what: &'static str, id: i64) -> impl Fn(StorageError) -> ApiError {
    move |e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no {what} {id}")),
        StorageError::Conflict(m) if m == staff::LAST_ADMIN => {
            ApiError::new(StatusCode::CONFLICT, "last_admin", m)
        }
        other => other.into(),
    }
}

/// `DELETE /api/users/{id}` (admin)
pub async fn delete_user(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    me: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    if *id == me.user.id {
        return Err(ApiError::bad_request(
            "invalid_user",
            "you cannot delete yourself",
        ));
    }
    staff::delete_user(&state.db, *id)
        .await
        .map_err(not_found("user", *id))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/api-tokens` (names and use, never the tokens)
pub async fn api_tokens(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "items": staff::list_api_tokens(&state.db).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    name: String,
    /// The user the token acts as (default: the caller). A number, or its text (a form's select).
    #[serde(default, deserialize_with = "id_or_text")]
    user_id: Option<i64>,
}

fn id_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(i64),
        Text(String),
    }
    match Option::<Id>::deserialize(d)? {
        None => Ok(None),
        Some(Id::Number(n)) => Ok(Some(n)),
        Some(Id::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("user_id must be a number, got {t:?}"))),
    }
}

/// `POST /api/api-tokens` (admin): the token is in this response only.
pub async fn add_api_token(
    state: web::Data<AppState>,
    body: web::Json<NewApiToken>,
    me: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_token",
            "give the token a name (1 to 100 characters)",
        ));
    }
    let user_id = body.user_id.unwrap_or(me.user.id);
    let owner = staff::user(&state.db, user_id)
        .await
        .map_err(not_found("user", user_id))?;
    let (token, row) = auth::add_api_token(&state.db, user_id, name).await?;
    let mut response = HttpResponse::Created().json(json!({ "token": token, "api_token": row }));
    response
        .extensions_mut()
        .insert(crate::audit::AuditNote::target(format!(
            "API token '{name}' of {}",
            owner.email
        )));
    Ok(response)
}

/// `DELETE /api/api-tokens/{id}` (admin)
pub async fn delete_api_token(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    staff::delete_api_token(&state.db, *id)
        .await
        .map_err(not_found("API token", *id))?;
    Ok(HttpResponse::NoContent().finish())
}
