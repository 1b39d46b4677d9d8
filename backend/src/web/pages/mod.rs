//! The staff web UI: pages rendered on the server from `frontend/templates/` (askama: each
//! template is checked against its view model while building, HTML escaped automatically),
//! from the same data the JSON API serves. One file here per page: its handler gathers the
//! data, a function of its own builds the view model. Values are worded for people through
//! `crate::present` (the templates' filters). `frontend/static/telltale.js` keeps each page
//! live by re-fetching it and swapping `<main>`, and sends the buttons' requests with the
//! CSRF token.

mod account;
mod alert;
mod alerts;
mod audit;
mod connection;
mod connection_new;
mod device;
mod devices;
mod overview;
mod polling;
mod scheduler;
mod settings;
mod staff;
mod tokens;
mod webhooks;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use askama::Template;

pub use account::account;
pub use alert::alert;
pub use alerts::alerts_page;
pub use audit::audit_page;
pub use connection::connection;
pub use connection_new::new_connection;
pub use device::device;
pub use devices::devices;
pub use overview::overview;
pub use polling::polling;
pub use scheduler::scheduler;
pub use settings::settings;
pub use staff::staff_page;
pub use tokens::tokens;
pub(crate) use webhooks::public_base;
pub use webhooks::webhooks_page;

use super::ApiError;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::{UtcTime, now};

const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/webhooks", "Webhooks"),
    ("/tokens", "Tokens"),
    ("/polling", "Polling"),
    ("/alerts", "Alerts"),
    ("/scheduler", "Scheduler"),
    ("/settings", "Settings"),
];

pub(super) struct NavItem {
    href: &'static str,
    label: &'static str,
}

/// What `layout.html` shows around every page: title, navigation, who is signed in.
pub(super) struct Base {
    title: String,
    /// The navigation entry marked current.
    active: &'static str,
    nav: Vec<NavItem>,
    user: String,
    role: &'static str,
    admin: bool,
    csrf: String,
    /// Seconds between the page's live refreshes.
    live: u32,
    generated_at: UtcTime,
}

impl Base {
    pub(super) fn new(title: impl Into<String>, active: &'static str, staff: &Staff) -> Base {
        Base {
            title: title.into(),
            active,
            nav: NAV
                .iter()
                .filter(|(href, _)| *href != "/settings" || staff.is_admin())
                .map(|&(href, label)| NavItem { href, label })
                .collect(),
            user: staff.user.email.clone(),
            role: staff.user.role.as_str(),
            admin: staff.is_admin(),
            csrf: staff.csrf().unwrap_or_default().to_owned(),
            live: 10,
            generated_at: now(),
        }
    }
}

/// Answers 200 with a rendered page.
fn render(page: &impl Template) -> Result<HttpResponse, ApiError> {
    render_with_status(StatusCode::OK, page)
}

/// Answers `status` with a rendered page. Rendering fails only on a value's own `Display`
/// error; the template itself was checked while building.
pub(super) fn render_with_status(status: StatusCode, page: &impl Template) -> Result<HttpResponse, ApiError> {
    let html = page.render().map_err(|e| {
        tracing::error!(error = %e, "cannot render a page");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "render_failed",
            "the page could not be rendered",
        )
    })?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(html))
}

/// A page with no layout (nobody is signed in yet), rendered to text.
fn render_plain(page: &impl Template, what: &str) -> String {
    page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render the {what} page");
        format!("cannot render the {what} page; the cause is in the service log")
    })
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    email: &'a str,
    error: Option<&'a str>,
}

/// The sign-in page.
pub fn login_page(next: &str, email: &str, error: Option<&str>) -> String {
    render_plain(&LoginPage { next, email, error }, "sign-in")
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage<'a> {
    granted: bool,
    token: &'a str,
    email: &'a str,
    error: Option<&'a str>,
}

/// The first-run page: the admin form when `granted`, else how to find the link.
pub fn setup_page(granted: bool, token: &str, email: &str, error: Option<&str>) -> String {
    render_plain(
        &SetupPage {
            granted,
            token,
            email,
            error,
        },
        "setup",
    )
}

/// The result of a platform's consent screen (`/oauth/callback`).
#[derive(Template)]
#[template(path = "connect.html")]
pub(super) struct ConnectResultPage {
    pub(super) base: Base,
    pub(super) ok: bool,
    pub(super) message: String,
    pub(super) connection_id: Option<i64>,
}

#[derive(Template)]
#[template(path = "forbidden.html")]
struct ForbiddenPage {
    base: Base,
    /// What the page is, in words.
    what: &'static str,
    /// Whom to ask.
    admins: Vec<String>,
}

/// 403 for a viewer who opened an admin page: which role it needs and whom to ask.
pub async fn forbidden(db: &crate::storage::Db, staff: &Staff, path: &str) -> HttpResponse {
    let what = match path {
        p if p.starts_with("/settings/staff") => "staff accounts and API tokens",
        p if p.starts_with("/settings/audit") => "the audit log",
        "/oauth/callback" => "connecting a platform",
        _ => "the settings",
    };
    let admins = crate::storage::staff::list_users(db)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|u| u.role == crate::storage::Role::Admin && !u.disabled)
        .map(|u| u.email)
        .collect();
    let page = ForbiddenPage {
        base: Base::new("Settings", "/settings", staff),
        what,
        admins,
    };
    render_with_status(StatusCode::FORBIDDEN, &page)
        .unwrap_or_else(|e| actix_web::ResponseError::error_response(&e))
}

/// A short, one-line view of a payload for the tables.
fn one_line(payload: Option<&str>) -> String {
    let text = payload.unwrap_or("");
    let short: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_devices_and_providers_send() {
        let html = login_page("/x\"><script>", "<b>@example.com", Some("<img src=x>"));
        assert!(
            !html.contains("<script>") && !html.contains("<img src=x>") && !html.contains("<b>@"),
            "{html}"
        );
        assert!(html.contains("Sign in"), "{html}");
    }

    #[test]
    fn the_setup_page_shows_the_form_only_with_the_link() {
        assert!(setup_page(true, "t0k", "", None).contains("value=\"t0k\""));
        let refused = setup_page(false, "", "", Some("that link has expired"));
        assert!(refused.contains("that link has expired") && !refused.contains("name=\"token\""));
    }
}
