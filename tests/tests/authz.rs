//! The authorisation matrix: every route × every kind of caller gets the expected answer, and
//! no combination is a 5xx. Callers: anonymous, a viewer's session, an admin's session, the
//! configured API token, the cron secret, the metrics token, and a wrong bearer secret.
//! Path ids name nothing that exists, so no request changes anything a later one relies on.
//! The matrix must cover every route the service declares (`telltale::web::all_routes`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use telltale_e2e::{
    Backend, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TEST_API_TOKEN, TestDb, TestServer, both_backends,
    browser, sign_in,
};

both_backends!(every_route_answers_every_caller_as_expected);

const CRON_SECRET: &str = "cron-secret-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Anonymous,
    Viewer,
    Admin,
    ApiToken,
    Cron,
    Metrics,
    WrongSecret,
}

const CALLERS: [Caller; 7] = [
    Caller::Anonymous,
    Caller::Viewer,
    Caller::Admin,
    Caller::ApiToken,
    Caller::Cron,
    Caller::Metrics,
    Caller::WrongSecret,
];

/// Who a route is for.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Anyone (health, sign-in, assets).
    Public,
    /// Milesight only: its own signature, whatever else the caller carries.
    Webhook,
    /// Signed-in staff, any role (a page: anyone else is sent to sign in).
    StaffPage,
    /// A page for admins: viewers are refused, anyone else is sent to sign in.
    AdminPage,
    /// Signed-in staff, any role (JSON API).
    StaffRead,
    /// Signed-in staff, any role, changing their own things (their password).
    StaffWrite,
    /// Admins and API tokens only (JSON API reads: the audit log).
    AdminRead,
    /// Admins and API tokens only.
    AdminWrite,
    /// The cron secret only.
    Cron,
    /// The metrics token only (when one is configured).
    Metrics,
    /// Off unless configured (or, for `/setup`, once the first admin exists): 404 for everyone.
    Disabled,
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// Passed authorisation: whatever the handler said, but not 401, 403 or 5xx.
    Through,
    /// 303 to /login.
    SignIn,
    Unauthorized,
    Forbidden,
    NotFound,
}

fn expect(access: Access, caller: Caller) -> Expect {
    use Caller::*;
    let staff = matches!(caller, Viewer | Admin | ApiToken);
    match access {
        Access::Public => Expect::Through,
        Access::Webhook => Expect::Unauthorized,
        Access::StaffPage if staff => Expect::Through,
        Access::AdminPage if matches!(caller, Admin | ApiToken) => Expect::Through,
        Access::AdminPage if caller == Viewer => Expect::Forbidden,
        Access::StaffPage | Access::AdminPage => Expect::SignIn,
        Access::StaffRead | Access::StaffWrite if staff => Expect::Through,
        Access::StaffRead | Access::StaffWrite => Expect::Unauthorized,
        Access::AdminRead if matches!(caller, Admin | ApiToken) => Expect::Through,
        Access::AdminRead if caller == Viewer => Expect::Forbidden,
        Access::AdminRead => Expect::Unauthorized,
        Access::AdminWrite if matches!(caller, Admin | ApiToken) => Expect::Through,
        Access::AdminWrite if caller == Viewer => Expect::Forbidden,
        Access::AdminWrite => Expect::Unauthorized,
        Access::Cron if caller == Cron => Expect::Through,
        Access::Cron => Expect::Unauthorized,
        Access::Metrics if caller == Metrics => Expect::Through,
        Access::Metrics => Expect::Unauthorized,
        Access::Disabled => Expect::NotFound,
    }
}

/// Every route the service serves (`web/mod.rs`, `web/api/mod.rs`), with who it is for.
fn routes() -> Vec<(Method, &'static str, Access)> {
    use Access::*;
    let (get, post, patch, delete, head) = (
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
    );
    vec![
        (get.clone(), "/healthz", Public),
        (get.clone(), "/readyz", Public),
        (get.clone(), "/login", Public),
        // The matrix runs with staff users, so the first-run setup is gone.
        (get.clone(), "/setup", Disabled),
        (post.clone(), "/setup", Disabled),
        (get.clone(), "/static/app.css", Public),
        (get.clone(), "/favicon.ico", Public),
        // Percent-encoded so the client sends it as is; only embedded assets are ever served.
        (get.clone(), "/static/..%2F..%2F..%2Fetc%2Fpasswd", Public),
        (get.clone(), "/static/%2e%2e/%2e%2e/Cargo.toml", Public),
        (get.clone(), "/webhooks/milesight", Public),
        (get.clone(), "/webhooks/milesight/site-a", Public),
        (head.clone(), "/webhooks/milesight", Public),
        (head.clone(), "/webhooks/milesight/site-a", Public),
        (post.clone(), "/webhooks/milesight", Webhook),
        (post.clone(), "/webhooks/milesight/site-a", Webhook),
        (post.clone(), "/bench/discard", Disabled),
        (get.clone(), "/metrics", Metrics),
        (get.clone(), "/", StaffPage),
        (get.clone(), "/devices", StaffPage),
        (get.clone(), "/devices/999999", StaffPage),
        (get.clone(), "/webhooks", StaffPage),
        (get.clone(), "/tokens", StaffPage),
        (get.clone(), "/polling", StaffPage),
        (get.clone(), "/alerts", StaffPage),
        (get.clone(), "/alerts/999999", StaffPage),
        (get.clone(), "/scheduler", StaffPage),
        (get.clone(), "/settings", AdminPage),
        (get.clone(), "/settings/staff", AdminPage),
        (get.clone(), "/settings/audit", AdminPage),
        (get.clone(), "/account", StaffPage),
        (get.clone(), "/reset-password", Public),
        (get.clone(), "/reset-password?token=0123", Public),
        (post.clone(), "/reset-password", Public),
        (post.clone(), "/api/users/999999/reset-link", AdminWrite),
        (post.clone(), "/api/me/password", StaffWrite),
        (get.clone(), "/api/audit", AdminRead),
        (get.clone(), "/connections/new", StaffPage),
        (get.clone(), "/connections/999999", StaffPage),
        // A viewer's session is refused by the handler (a GET, but it stores tokens).
        (get.clone(), "/oauth/callback", AdminPage),
        (post.clone(), "/api/connections/999999/authorize", AdminWrite),
        (get.clone(), "/api/me", StaffRead),
        (get.clone(), "/api/users", StaffRead),
        (post.clone(), "/api/users", AdminWrite),
        (patch.clone(), "/api/users/999999", AdminWrite),
        (delete.clone(), "/api/users/999999", AdminWrite),
        (get.clone(), "/api/api-tokens", StaffRead),
        (post.clone(), "/api/api-tokens", AdminWrite),
        (delete.clone(), "/api/api-tokens/999999", AdminWrite),
        (get.clone(), "/api/devices", StaffRead),
        (get.clone(), "/api/devices/999999", StaffRead),
        (get.clone(), "/api/webhooks/sources", StaffRead),
        (get.clone(), "/api/webhooks/events", StaffRead),
        (get.clone(), "/api/webhooks/rejections", StaffRead),
        (get.clone(), "/api/milesight/token", StaffRead),
        (post.clone(), "/api/milesight/token/refresh", AdminWrite),
        (get.clone(), "/api/milesight/settings", StaffRead),
        (Method::PUT, "/api/milesight/settings", AdminWrite),
        (delete.clone(), "/api/milesight/settings", AdminWrite),
        (post.clone(), "/api/milesight/settings/test", AdminWrite),
        (Method::PUT, "/api/milesight/webhooks", AdminWrite),
        (get.clone(), "/api/notifications", StaffRead),
        (Method::PUT, "/api/notifications/smtp", AdminWrite),
        (delete.clone(), "/api/notifications/smtp", AdminWrite),
        (Method::PUT, "/api/notifications/recipients", AdminWrite),
        (Method::PUT, "/api/notifications/webhooks", AdminWrite),
        (delete.clone(), "/api/notifications/webhooks/ops", AdminWrite),
        (delete.clone(), "/api/milesight/webhooks/site-z", AdminWrite),
        (get.clone(), "/api/connections", StaffRead),
        (post.clone(), "/api/connections", AdminWrite),
        (get.clone(), "/api/connections/999999", StaffRead),
        (patch.clone(), "/api/connections/999999", AdminWrite),
        (delete.clone(), "/api/connections/999999", AdminWrite),
        (delete.clone(), "/api/connections/999999/token", AdminWrite),
        (get.clone(), "/api/tokens/status", StaffRead),
        (post.clone(), "/api/tokens/999999/refresh", AdminWrite),
        (get.clone(), "/api/refresh-log", StaffRead),
        (get.clone(), "/api/refresh-stats", StaffRead),
        (post.clone(), "/api/scheduler", AdminWrite),
        (get.clone(), "/api/alerts", StaffRead),
        (post.clone(), "/api/alerts/test-email", AdminWrite),
        (post.clone(), "/api/alerts/test-notification", AdminWrite),
        (get.clone(), "/api/alerts/999999", StaffRead),
        (post.clone(), "/api/alerts/999999/ack", AdminWrite),
        (get.clone(), "/api/outbox", StaffRead),
        (get.clone(), "/api/silences", StaffRead),
        (post.clone(), "/api/silences", AdminWrite),
        (delete.clone(), "/api/silences/999999", AdminWrite),
        (get.clone(), "/api/polling", StaffRead),
        (patch.clone(), "/api/polling/999999/repos", AdminWrite),
        (post.clone(), "/api/polling/999999/repos/run", AdminWrite),
        (get.clone(), "/api/platform-data", StaffRead),
        (get.clone(), "/api/cron/token-refresh", Cron),
        (post.clone(), "/api/cron/token-refresh", Cron),
        (get.clone(), "/api/cron/platform-polling", Cron),
        (post, "/api/cron/platform-polling", Cron),
    ]
}

/// Routes left out of the matrix, each with the test that covers it instead.
const EXERCISED_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        "post",
        "/login",
        "sign_in() in every suite, and the throttling tests in auth.rs",
    ),
    (
        "post",
        "/logout",
        "the sign-out check at the end of this test (it would end a session mid-matrix)",
    ),
];

/// Whether a concrete path is an instance of an actix pattern (`{id}` one segment, `{x:.*}` the rest).
fn instance_of(pattern: &str, path: &str) -> bool {
    let mut path_parts = path.split('/');
    for part in pattern.split('/') {
        if part.starts_with('{') && part.ends_with(":.*}") {
            return path_parts.next().is_some();
        }
        match path_parts.next() {
            Some(given) if part.starts_with('{') => {
                if given.is_empty() {
                    return false;
                }
            }
            Some(given) if given == part => {}
            _ => return false,
        }
    }
    path_parts.next().is_none()
}

/// Every route the service declares is in the matrix (or named above with where it is
/// tested): a new route fails here until someone decides who may call it.
#[test]
fn every_declared_route_is_classified() {
    let matrix = routes();
    let unclassified: Vec<String> = telltale::web::all_routes()
        .into_iter()
        .filter(|(method, pattern)| {
            !EXERCISED_ELSEWHERE
                .iter()
                .any(|(m, p, _)| m == method && p == pattern)
        })
        .filter(|(method, pattern)| {
            !matrix
                .iter()
                .any(|(m, path, _)| m.as_str().eq_ignore_ascii_case(method) && instance_of(pattern, path))
        })
        .map(|(method, pattern)| format!("{} {pattern}", method.to_uppercase()))
        .collect();
    assert!(
        unclassified.is_empty(),
        "routes the authorisation matrix does not classify: {unclassified:?}"
    );
    assert!(instance_of(
        "/api/polling/{connection}/{endpoint}/run",
        "/api/polling/9/repos/run"
    ));
    assert!(!instance_of(
        "/api/polling/{connection}/{endpoint}",
        "/api/polling/9/repos/run"
    ));
}

async fn every_route_answers_every_caller_as_expected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(
        db.url(),
        &[
            ("CRON_SECRET", CRON_SECRET),
            ("TELLTALE_METRICS_TOKEN", METRICS_TOKEN),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let admin = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let resp = browser()
        .post(server.url("/api/users"))
        .header("cookie", &admin.0)
        .header("x-csrf-token", &admin.1)
        .json(&json!({"email": "viewer@example.com", "password": "viewer-password-1", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let viewer = sign_in(&server, "viewer@example.com", "viewer-password-1").await;

    let mut failures = Vec::new();
    for (method, path, access) in routes() {
        for caller in CALLERS {
            let mut request = browser()
                .request(method.clone(), server.url(path))
                .header("content-type", "application/json")
                .body("{}");
            let bearer = match caller {
                Caller::ApiToken => Some(TEST_API_TOKEN),
                Caller::Cron => Some(CRON_SECRET),
                Caller::Metrics => Some(METRICS_TOKEN),
                Caller::WrongSecret => Some("wrong-secret-0123456789"),
                _ => None,
            };
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let session = match caller {
                Caller::Viewer => Some(&viewer),
                Caller::Admin => Some(&admin),
                _ => None,
            };
            if let Some((cookie, csrf)) = session {
                request = request.header("cookie", cookie).header("x-csrf-token", csrf);
            }
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = resp.text().await.unwrap_or_default();
            telltale_e2e::assert_no_canary(&format!("{method} {path} as {caller:?}"), &body);
            if path.starts_with("/static/") && path.contains("%2") {
                // Nothing found (or, for a caller without a session, sent to sign in first).
                if !matches!(status, 303 | 404) || body.contains("root:") || body.contains("[package]") {
                    failures.push(format!(
                        "{method} {path} as {caller:?}: {status} served {body:.80}"
                    ));
                }
                continue;
            }
            let got = match status {
                303 if location.starts_with("/login") => Expect::SignIn,
                401 => Expect::Unauthorized,
                403 => Expect::Forbidden,
                404 if access_is_disabled(access) => Expect::NotFound,
                s if s >= 500 => {
                    failures.push(format!("{method} {path} as {caller:?}: {status} {body}"));
                    continue;
                }
                _ => Expect::Through,
            };
            let wanted = expect(access, caller);
            if got != wanted {
                failures.push(format!(
                    "{method} {path} as {caller:?}: {status} ({got:?}), expected {wanted:?}: {body}"
                ));
            }
            // A viewer on an admin page is told in a page which role it needs.
            if matches!(access, Access::AdminPage) && got == Expect::Forbidden {
                if !body.contains("This page needs the admin role") || !body.contains("viewer@example.com") {
                    failures.push(format!(
                        "{method} {path} as {caller:?}: 403 page does not name the role: {body:.200}"
                    ));
                }
                continue;
            }
            // Refusals are JSON in the one error shape (pages redirect instead).
            if matches!(got, Expect::Unauthorized | Expect::Forbidden)
                && serde_json::from_str::<Value>(&body).map_or(true, |v| v["error"]["code"].is_null())
            {
                failures.push(format!("{method} {path} as {caller:?}: refusal not JSON: {body}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Signing out needs a session (and its CSRF token) and ends only that session.
    let resp = browser()
        .post(server.url("/logout"))
        .header("cookie", &viewer.0)
        .header("x-csrf-token", &viewer.1)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success() || resp.status() == 303,
        "{}",
        resp.status()
    );
    let me = |cookie: String| {
        let url = server.url("/api/me");
        async move {
            browser()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(viewer.0.clone()).await, 401, "the viewer's session ended");
    assert_eq!(me(admin.0.clone()).await, 200, "the admin's did not");
}

fn access_is_disabled(access: Access) -> bool {
    matches!(access, Access::Disabled)
}
