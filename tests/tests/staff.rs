//! Staff accounts run from the UI's API as an admin would: roles, disabling (sessions end at
//! once), removal, the last admin kept, reset links (server log, then email), your own
//! password, API tokens; and the audit log that records each of those under its person. Both
//! backends, through the built binary.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use telltale_e2e::{
    Backend, SmtpSink, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TestDb, TestServer, both_backends, browser,
    sign_in,
};

both_backends!(
    an_admin_runs_staff_accounts,
    reset_links_set_a_password_once,
    people_change_their_own_password,
    every_change_is_in_the_audit_log_under_its_person,
    the_last_admin_cannot_be_removed_or_demoted,
);

/// A signed-in browser session: cookie and CSRF token.
type Session = (String, String);

async fn send(
    server: &TestServer,
    who: &Session,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = browser()
        .request(method.clone(), server.url(path))
        .header("cookie", &who.0)
        .header("x-csrf-token", &who.1)
        .header("accept", "application/json");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    telltale_e2e::assert_no_canary(&format!("{method} {path}"), &text);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `PATCH path` as `who` (a user's role, status or password).
async fn change(server: &TestServer, who: &Session, path: &str, body: Value) -> (u16, Value) {
    send(server, who, Method::PATCH, path, Some(body)).await
}

async fn page(server: &TestServer, who: &Session, path: &str) -> (u16, String) {
    let resp = browser()
        .get(server.url(path))
        .header("cookie", &who.0)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn start(backend: Backend, env: &[(&str, &str)]) -> (TestDb, TestServer, Session) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), env).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let admin = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    (db, server, admin)
}

async fn add_user(server: &TestServer, admin: &Session, email: &str, password: &str, role: &str) -> i64 {
    let (status, user) = send(
        server,
        admin,
        Method::POST,
        "/api/users",
        Some(json!({"email": email, "password": password, "role": role})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    user["id"].as_i64().unwrap()
}

async fn me_status(server: &TestServer, who: &Session) -> u16 {
    browser()
        .get(server.url("/api/me"))
        .header("cookie", &who.0)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn sign_in_status(server: &TestServer, email: &str, password: &str) -> u16 {
    browser()
        .post(server.url("/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn an_admin_runs_staff_accounts(backend: Backend) {
    let (_db, server, admin) = start(backend, &[]).await;
    let vera = add_user(&server, &admin, "vera@example.com", "vera-password-1", "viewer").await;
    let viewer = sign_in(&server, "vera@example.com", "vera-password-1").await;

    // The Staff page lists her; a viewer opening it is told, in a page, which role it needs.
    let (status, html) = page(&server, &admin, "/settings/staff").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("vera@example.com") && html.contains("admin@example.com (you)"),
        "{html}"
    );
    for admin_page in ["/settings", "/settings/staff", "/settings/audit"] {
        let (status, html) = page(&server, &viewer, admin_page).await;
        assert_eq!(status, 403, "{admin_page}");
        assert!(
            html.contains("This page needs the admin role")
                && html.contains("vera@example.com")
                && html.contains("mailto:admin@example.com"),
            "{admin_page}: {html}"
        );
        assert!(html.contains("<!doctype html>"), "an HTML page, not JSON");
    }
    let (status, _) = send(&server, &viewer, Method::GET, "/api/audit", None).await;
    assert_eq!(status, 403, "the audit log is for admins");

    // Promote, then back: her existing session follows the role at once.
    let path = format!("/api/users/{vera}");
    let (status, body) = change(&server, &admin, &path, json!({"role": "admin"})).await;
    assert_eq!((status, body["role"].as_str()), (200, Some("admin")), "{body}");
    assert_eq!(page(&server, &viewer, "/settings/staff").await.0, 200);
    let (status, _) = change(&server, &admin, &path, json!({"role": "viewer"})).await;
    assert_eq!(status, 200);
    assert_eq!(page(&server, &viewer, "/settings/staff").await.0, 403);

    // Disabling ends her session at once and refuses her sign-in; enabling lets her back.
    let (status, body) = change(&server, &admin, &path, json!({"disabled": true})).await;
    assert_eq!((status, body["disabled"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(me_status(&server, &viewer).await, 401, "her session ended");
    assert_eq!(
        sign_in_status(&server, "vera@example.com", "vera-password-1").await,
        401
    );
    let (status, _) = change(&server, &admin, &path, json!({"disabled": false})).await;
    assert_eq!(status, 200);
    let viewer = sign_in(&server, "vera@example.com", "vera-password-1").await;

    // An admin sets a new password for her: her sessions end, the new one works.
    let (status, _) = change(&server, &admin, &path, json!({"password": "vera-new-password"})).await;
    assert_eq!(status, 200);
    assert_eq!(me_status(&server, &viewer).await, 401);
    assert_eq!(
        sign_in_status(&server, "vera@example.com", "vera-password-1").await,
        401
    );
    let viewer = sign_in(&server, "vera@example.com", "vera-new-password").await;

    // Nobody can disable, demote or remove themselves.
    let mine = format!("/api/users/{}", admin_id(&server, &admin).await);
    for change in [json!({"disabled": true}), json!({"role": "viewer"})] {
        let (status, body) = send(&server, &admin, Method::PATCH, &mine, Some(change)).await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(send(&server, &admin, Method::DELETE, &mine, None).await.0, 400);

    // An API token for her, chosen from the form's list (its value arrives as text): shown
    // once, listed with whom it acts as, never listed with its value, and revoked.
    let (status, created) = send(
        &server,
        &admin,
        Method::POST,
        "/api/api-tokens",
        Some(json!({"name": "backup script", "user_id": vera.to_string()})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let with_token = |token: String| {
        let url = server.url("/api/me");
        async move { browser().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let me: Value = with_token(token.clone()).await.json().await.unwrap();
    assert_eq!(
        me["user"]["email"], "vera@example.com",
        "the token acts as her: {me}"
    );
    let (_, html) = page(&server, &admin, "/settings/staff").await;
    let row = html
        .split("<tr>")
        .find(|r| r.contains("backup script"))
        .unwrap_or_else(|| panic!("no token row: {html}"));
    assert!(row.contains("vera@example.com"), "{row}");
    assert!(!html.contains(&token), "the token is shown once, when created");
    let token_id = created["api_token"]["id"].as_i64().unwrap();
    let (status, _) = send(
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/api-tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(with_token(token.clone()).await.status(), 401, "revoked");

    // Removing her ends her session and her tokens.
    let (_, created) = send(
        &server,
        &admin,
        Method::POST,
        "/api/api-tokens",
        Some(json!({"name": "second", "user_id": vera})),
    )
    .await;
    let second = created["token"].as_str().unwrap().to_owned();
    assert_eq!(send(&server, &admin, Method::DELETE, &path, None).await.0, 204);
    assert_eq!(me_status(&server, &viewer).await, 401);
    assert_eq!(with_token(second).await.status(), 401);
    let (_, html) = page(&server, &admin, "/settings/staff").await;
    assert!(!html.contains("vera@example.com"), "{html}");
}

async fn admin_id(server: &TestServer, admin: &Session) -> i64 {
    let (_, me) = send(server, admin, Method::GET, "/api/me", None).await;
    me["user"]["id"].as_i64().unwrap()
}

/// The reset link the server logged for `email`, the `n`th one (counting from 1).
async fn logged_reset_link(server: &TestServer, email: &str, n: usize) -> String {
    let lines = server
        .logs_matching(n, Duration::from_secs(10), |l| {
            l.contains("reset_url") && l.contains(email)
        })
        .await;
    assert!(
        lines.len() >= n,
        "no reset link logged for {email}:\n{}",
        server.log_text()
    );
    let v: Value = serde_json::from_str(&lines[n - 1]).unwrap();
    assert_eq!(v["level"], "WARN", "{v}");
    v["reset_url"].as_str().unwrap().to_owned()
}

async fn reset_links_set_a_password_once(backend: Backend) {
    let (_db, server, admin) = start(backend, &[]).await;
    let sam = add_user(&server, &admin, "sam@example.com", "sam-password-1", "viewer").await;
    let old_session = sign_in(&server, "sam@example.com", "sam-password-1").await;

    // No SMTP server: the link goes to the server log, and the answer says where.
    let (status, answer) = send(
        &server,
        &admin,
        Method::POST,
        &format!("/api/users/{sam}/reset-link"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("server log") && message.contains("sam@example.com"),
        "{message}"
    );
    let link = logged_reset_link(&server, "sam@example.com", 1).await;
    let url = url::Url::parse(&link).unwrap();
    assert_eq!(url.path(), "/reset-password");
    let token = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned();
    assert!(
        !answer.to_string().contains(&token),
        "the answer never holds the link"
    );

    // The page names whom it is for; a mismatch is refused; then the password is set.
    let reset_page = server.url(&format!("/reset-password?token={token}"));
    let resp = browser().get(&reset_page).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert!(resp.text().await.unwrap().contains("For sam@example.com"));
    let post = |password: &str, confirm: &str| {
        let form = [
            ("token", token.as_str()),
            ("password", password),
            ("confirm", confirm),
        ];
        let request = browser().post(server.url("/reset-password")).form(&form);
        async move {
            let resp = request.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, html) = post("sam-new-password", "sam-other-password").await;
    assert_eq!(status, 400);
    assert!(html.contains("the two passwords differ"), "{html}");
    let (status, html) = post("sam-new-password", "sam-new-password").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Your password is set"), "{html}");
    assert_eq!(me_status(&server, &old_session).await, 401, "old sessions ended");
    assert_eq!(
        sign_in_status(&server, "sam@example.com", "sam-password-1").await,
        401
    );
    sign_in(&server, "sam@example.com", "sam-new-password").await;

    // Once only: the page and the form both refuse it now.
    let resp = browser().get(&reset_page).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("This link does not work"));
    let (status, _) = post("sam-third-password", "sam-third-password").await;
    assert_eq!(status, 404);
    sign_in(&server, "sam@example.com", "sam-new-password").await;

    // With an SMTP server set in Settings → Notifications, the link is emailed to the person.
    let smtp = SmtpSink::start().await;
    let (status, body) = send(
        &server,
        &admin,
        Method::PUT,
        "/api/notifications/smtp",
        Some(json!({"host": "127.0.0.1", "port": smtp.port.to_string(), "tls": "none"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, answer) = send(
        &server,
        &admin,
        Method::POST,
        &format!("/api/users/{sam}/reset-link"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("emailed to sam@example.com"),
        "{answer}"
    );
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.join("\n");
    assert!(
        mail.contains("To: sam@example.com") && mail.contains("Set your password"),
        "{mail}"
    );
    let emailed = mail
        .split_whitespace()
        .find(|w| w.contains("/reset-password?token="))
        .unwrap_or_else(|| panic!("no link in {mail}"))
        .trim_end_matches(['.', '"', '>'])
        .to_owned();
    assert!(emailed.starts_with("http"), "{emailed}");
    let logged = server.logs().iter().filter(|l| l.contains("reset_url")).count();
    assert_eq!(logged, 1, "an emailed link is not logged too");
}

async fn people_change_their_own_password(backend: Backend) {
    let (_db, server, admin) = start(backend, &[]).await;
    add_user(&server, &admin, "ana@example.com", "ana-password-1", "viewer").await;
    let here = sign_in(&server, "ana@example.com", "ana-password-1").await;
    let elsewhere = sign_in(&server, "ana@example.com", "ana-password-1").await;

    // The Account page is hers, viewer or not.
    let (status, html) = page(&server, &here, "/account").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("ana@example.com") && html.contains("Change your password"),
        "{html}"
    );

    let change = |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let (status, body) = send(
        &server,
        &here,
        Method::POST,
        "/api/me/password",
        Some(change("wrong-password-1", "ana-new-password")),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "wrong_password");
    let (status, body) = send(
        &server,
        &here,
        Method::POST,
        "/api/me/password",
        Some(change("ana-password-1", "short")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(
        &server,
        &here,
        Method::POST,
        "/api/me/password",
        Some(change("ana-password-1", "ana-new-password")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("1 other session(s) ended"),
        "{body}"
    );
    assert_eq!(me_status(&server, &here).await, 200, "this session stays");
    assert_eq!(me_status(&server, &elsewhere).await, 401, "the other one ended");
    assert_eq!(
        sign_in_status(&server, "ana@example.com", "ana-password-1").await,
        401
    );
    sign_in(&server, "ana@example.com", "ana-new-password").await;

    // Guessing the current password from a stolen session is throttled like sign-in.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            send(
                &server,
                &here,
                Method::POST,
                "/api/me/password",
                Some(change("guess-password-1", "whatever-password")),
            )
            .await
            .0,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

async fn every_change_is_in_the_audit_log_under_its_person(backend: Backend) {
    let (db, server, admin) = start(backend, &[]).await;
    let second = add_user(&server, &admin, "ops@example.com", "ops-password-1", "admin").await;
    let ops = sign_in(&server, "ops@example.com", "ops-password-1").await;

    // A settings change by ops: the before/after of what changed, a secret only as changed.
    let recipients = json!({"on_call": ["oncall@example.com"]});
    assert_eq!(
        send(
            &server,
            &ops,
            Method::PUT,
            "/api/notifications/recipients",
            Some(recipients)
        )
        .await
        .0,
        200
    );
    let smtp = json!({"host": "mail.example.com", "port": "587", "tls": "starttls", "user": "alerts", "password": "CANARY-smtp-secret"});
    assert_eq!(
        send(&server, &ops, Method::PUT, "/api/notifications/smtp", Some(smtp))
            .await
            .0,
        200
    );

    // Silence and Refresh now by ops; an alert acknowledged by the admin.
    let silence =
        json!({"matcher": "device_offline", "reason": "site visit", "ends_at": "2099-01-01T00:00:00Z"});
    let (status, silenced) = send(&server, &ops, Method::POST, "/api/silences", Some(silence)).await;
    assert_eq!(status, 201, "{silenced}");
    assert_eq!(silenced["created_by"], "ops@example.com");
    let (status, connection) = send(
        &server,
        &admin,
        Method::POST,
        "/api/connections",
        Some(
            json!({"account": "acme", "provider": "oauth2_refresh", "name": "marketing",
            "base_url": "http://127.0.0.1:9/token", "settings": {"preset": "spotify"},
            "credentials": {"client_id": "cid", "client_secret": "CANARY-client-secret"},
            "refresh_token": "CANARY-refresh"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{connection}");
    let id = connection["id"].as_i64().unwrap();
    let status = send(
        &server,
        &ops,
        Method::POST,
        &format!("/api/tokens/{id}/refresh"),
        None,
    )
    .await
    .0;
    assert!(status == 200 || status == 502, "{status}");
    let (_, log) = send(
        &server,
        &admin,
        Method::GET,
        &format!("/api/refresh-log?connection={id}"),
        None,
    )
    .await;
    let actors: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(
        actors.contains(&"ops@example.com"),
        "the refresh log names the person: {log}"
    );
    assert!(!actors.contains(&"api"), "{log}");

    // Acknowledged by ops from the UI: the alert and its history name her.
    let store = db.open().await;
    let firing = telltale::storage::alerts::Firing {
        rule: telltale::storage::AlertRule::DeviceOffline,
        subject: "device:freezer".into(),
        severity: telltale::storage::Severity::Warning,
        summary: "Freezer is offline".into(),
        details: "last seen 2 hours ago".into(),
    };
    let (alert, _) =
        telltale::storage::alerts::fire(&store, &firing, telltale::storage::now(), None, |_| None)
            .await
            .unwrap();
    let (status, _) = send(
        &server,
        &ops,
        Method::POST,
        &format!("/api/alerts/{}/ack", alert.id),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, acked) = send(
        &server,
        &admin,
        Method::GET,
        &format!("/api/alerts/{}", alert.id),
        None,
    )
    .await;
    assert_eq!(acked["alert"]["acknowledged_by"], "ops@example.com", "{acked}");
    let history = acked["history"].to_string();
    assert!(
        history.contains("ops@example.com") && !history.contains("\"api\""),
        "{history}"
    );

    // A change through an API token is recorded as the token of its person.
    let status = telltale_e2e::api_send(
        Method::PUT,
        server.url("/api/notifications/recipients"),
        Some(json!({"on_call": ["pager@example.com"]})),
    )
    .await
    .0;
    assert_eq!(status, 200);
    // A refused change (bad input) changes nothing and is no entry.
    assert_eq!(
        send(
            &server,
            &ops,
            Method::PUT,
            "/api/notifications/recipients",
            Some(json!({"on_call": ["not an address"]}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            &server,
            &admin,
            Method::PATCH,
            &format!("/api/users/{second}"),
            Some(json!({"role": "viewer"}))
        )
        .await
        .0,
        200
    );

    let (status, audit) = send(&server, &admin, Method::GET, "/api/audit", None).await;
    assert_eq!(status, 200);
    let text = audit.to_string();
    assert!(!text.contains("CANARY"), "no secret in the audit log: {text}");
    let items = audit["items"].as_array().unwrap();
    let find = |action: &str| {
        items
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action:?} in {audit:#}"))
            .clone()
    };
    let recipients = items
        .iter()
        .filter(|e| e["action"] == "Changed who gets notifications")
        .collect::<Vec<_>>();
    assert_eq!(
        recipients.len(),
        2,
        "the refused change is not an entry: {audit:#}"
    );
    let by_ops = recipients
        .iter()
        .find(|e| e["actor"] == "ops@example.com")
        .unwrap();
    let change = by_ops["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "on_call.value")
        .unwrap_or_else(|| panic!("{by_ops}"));
    assert_eq!(
        (change["before"].as_str(), change["after"].as_str()),
        (Some("(empty)"), Some("oncall@example.com")),
        "{by_ops}"
    );
    assert_eq!(by_ops["client"], "127.0.0.1");
    let by_token = recipients
        .iter()
        .find(|e| e["actor"] != "ops@example.com")
        .unwrap();
    assert_eq!(by_token["actor"], "admin@example.com (token configured)");

    let smtp = find("Changed the SMTP server");
    let fields: Vec<&str> = smtp["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"smtp.host") && fields.contains(&"smtp.password_set"),
        "{smtp}"
    );
    assert_eq!(
        find("Silenced alerts")["target"],
        "silence of device_offline (site visit)"
    );
    let refresh = find("Refresh now");
    assert_eq!(
        (refresh["actor"].as_str(), refresh["target"].as_str()),
        (Some("ops@example.com"), Some("Spotify connection 'marketing'")),
        "{refresh}"
    );
    let demoted = find("Changed a staff user");
    assert_eq!(demoted["target"], "staff user ops@example.com");
    assert_eq!(
        demoted["changes"],
        json!([{"field": "role", "before": "admin", "after": "viewer"}])
    );
    assert_eq!(find("Signed in")["actor"], "ops@example.com");
    let ack = find("Acknowledged an alert");
    assert_eq!(
        (ack["actor"].as_str(), ack["target"].as_str()),
        (Some("ops@example.com"), Some("alert: Freezer is offline")),
        "{ack}"
    );
    assert_eq!(
        find("Added a staff user")["target"],
        "staff user ops@example.com (admin)"
    );

    // One person's entries, and paging back.
    let (_, only_ops) = send(
        &server,
        &admin,
        Method::GET,
        "/api/audit?actor=ops%40example.com",
        None,
    )
    .await;
    assert!(
        only_ops["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "ops@example.com"),
        "{only_ops}"
    );
    let (_, first) = send(&server, &admin, Method::GET, "/api/audit?limit=2", None).await;
    let before = first["next_before"].as_i64().unwrap();
    let (_, next) = send(
        &server,
        &admin,
        Method::GET,
        &format!("/api/audit?limit=2&before={before}"),
        None,
    )
    .await;
    assert!(next["items"][0]["id"].as_i64().unwrap() < before);

    // The Audit page says the same in words.
    let (status, html) = page(&server, &admin, "/settings/audit").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("on_call.value: (empty) → oncall@example.com"),
        "{html}"
    );
    assert!(
        html.contains("Refresh now: Spotify connection &#39;marketing&#39;"),
        "{html}"
    );
    assert!(!html.contains("CANARY"));
}

async fn the_last_admin_cannot_be_removed_or_demoted(backend: Backend) {
    let (db, server, admin) = start(backend, &[]).await;
    let b = add_user(&server, &admin, "b@example.com", "b-password-12", "admin").await;
    let a = admin_id(&server, &admin).await;
    let b_session = sign_in(&server, "b@example.com", "b-password-12").await;

    // Two admins demoting each other at the same moment: one of them stays an admin.
    let (path_b, path_a) = (format!("/api/users/{b}"), format!("/api/users/{a}"));
    let demote = || Some(json!({"role": "viewer"}));
    let (one, two) = tokio::join!(
        send(&server, &admin, Method::PATCH, &path_b, demote()),
        send(&server, &b_session, Method::PATCH, &path_a, demote()),
    );
    let (_, users) = send(&server, &admin, Method::GET, "/api/users", None).await;
    let admins = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "admin" && u["disabled"] == false)
        .count();
    assert!(admins >= 1, "no admin left: {one:?} {two:?} {users}");
    let refused: Vec<u16> = [one.0, two.0].into_iter().filter(|s| *s != 200).collect();
    assert!(refused.iter().all(|s| matches!(s, 403 | 409)), "{one:?} {two:?}");

    // Directly in storage (what the CLI and the API share): the last enabled admin stays.
    let store = db.open_migrated().await;
    let users = telltale::storage::staff::list_users(&store).await.unwrap();
    let last = users
        .iter()
        .find(|u| u.role == telltale::storage::Role::Admin)
        .unwrap();
    for result in [
        telltale::storage::staff::update_user(
            &store,
            last.id,
            None,
            Some(telltale::storage::Role::Viewer),
            None,
        )
        .await,
        telltale::storage::staff::update_user(&store, last.id, None, None, Some(true)).await,
    ] {
        match result {
            Err(telltale::storage::StorageError::Conflict(m)) => {
                assert!(m.contains("no enabled admin"), "{m}")
            }
            other => panic!("the last admin was changed: {other:?}"),
        }
    }
    assert!(matches!(
        telltale::storage::staff::delete_user(&store, last.id).await,
        Err(telltale::storage::StorageError::Conflict(_))
    ));
    assert_eq!(
        telltale::storage::staff::user(&store, last.id)
            .await
            .unwrap()
            .role,
        telltale::storage::Role::Admin
    );
}
