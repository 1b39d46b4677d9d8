//! Staff access through the built binary: sign-in with a session cookie, CSRF on every change
//! from a browser session, roles, API tokens, throttling, sign-out, the CLI, and what stays
//! public. Both backends.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use telltale_e2e::{
    Backend, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TestDb, TestServer, both_backends, browser,
    post_with_headers, run_cli, run_cli_with_stdin, sign_in,
};

both_backends!(
    pages_and_api_need_a_signed_in_user,
    sessions_carry_csrf_and_roles,
    api_tokens_and_the_metrics_token,
    guessing_cannot_lock_the_admin_out,
    users_come_from_the_cli,
);

fn with_session(session: &str, csrf: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_str(session).unwrap());
    if let Some(csrf) = csrf {
        headers.insert("x-csrf-token", HeaderValue::from_str(csrf).unwrap());
    }
    headers
}

async fn pages_and_api_need_a_signed_in_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let client = browser();

    let resp = client.get(server.url("/api/devices")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let resp = client.get(server.url("/?tab=x")).send().await.unwrap();
    assert_eq!(resp.status(), 303, "a page sends the browser to sign in");
    assert_eq!(resp.headers()["location"], "/login?next=%2F%3Ftab%3Dx");
    let resp = client.post(server.url("/api/users")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    for public in [
        "/healthz",
        "/readyz",
        "/login",
        "/metrics",
        "/static/telltale.css",
    ] {
        let resp = client.get(server.url(public)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{public} is public");
    }
    let login = client
        .get(server.url("/login?next=/alerts"))
        .send()
        .await
        .unwrap();
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(login.headers()["x-content-type-options"], "nosniff");
    let html = login.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/login\""), "{html}");
    assert!(
        html.contains("name=\"next\" value=\"/alerts\""),
        "the page returns to where it was asked for"
    );

    // The HTML form: a wrong password re-shows the form; the right one redirects with the cookie.
    let form = [
        ("email", TEST_ADMIN_EMAIL),
        ("password", "wrong-password"),
        ("next", "/alerts"),
    ];
    let resp = client
        .post(server.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("wrong email or password"));
    let form = [
        ("email", TEST_ADMIN_EMAIL),
        ("password", TEST_ADMIN_PASSWORD),
        ("next", "//evil.example/"),
    ];
    let resp = client
        .post(server.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/", "no open redirect");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    for attribute in ["telltale_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http here: {cookie}");

    // A cross-site form cannot sign the browser in.
    let resp = client
        .post(server.url("/login"))
        .header("origin", "http://evil.example")
        .form(&[("email", TEST_ADMIN_EMAIL), ("password", TEST_ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

async fn sessions_carry_csrf_and_roles(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let client = browser();
    let (admin, csrf) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;

    let me: Value = client
        .get(server.url("/api/me"))
        .headers(with_session(&admin, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["role"].as_str(), me["via"].as_str()),
        (Some("admin"), Some("session"))
    );
    assert_eq!(me["csrf_token"], csrf.as_str());
    assert!(me["user"].get("password_hash").is_none());

    // A change without the CSRF token is refused, even from the admin's own session.
    let new_user = json!({"email": "viewer@example.com", "password": "viewer-password-1", "role": "viewer"});
    let resp = client
        .post(server.url("/api/users"))
        .headers(with_session(&admin, None))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "csrf_failed"
    );
    let resp = client
        .post(server.url("/api/users"))
        .headers(with_session(&admin, Some("not-the-token")))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = client
        .post(server.url("/api/users"))
        .headers(with_session(&admin, Some(&csrf)))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A viewer reads but changes nothing.
    let (viewer, viewer_csrf) = sign_in(&server, "viewer@example.com", "viewer-password-1").await;
    let resp = client
        .get(server.url("/api/alerts"))
        .headers(with_session(&viewer, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(server.url("/api/scheduler"))
        .headers(with_session(&viewer, Some(&viewer_csrf)))
        .json(&json!({"action": "stop", "job": "token-refresh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "forbidden");

    // Signing out ends the session on the server, not just in the browser.
    let resp = client
        .post(server.url("/logout"))
        .headers(with_session(&viewer, Some(&viewer_csrf)))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = client
        .get(server.url("/api/me"))
        .headers(with_session(&viewer, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the old cookie is worthless");

    // Disabling a user ends their sessions at once.
    let (second, _) = sign_in(&server, "viewer@example.com", "viewer-password-1").await;
    let users: Value = client
        .get(server.url("/api/users"))
        .headers(with_session(&admin, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let viewer_id = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "viewer@example.com")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let resp = client
        .patch(server.url(&format!("/api/users/{viewer_id}")))
        .headers(with_session(&admin, Some(&csrf)))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(server.url("/api/me"))
        .headers(with_session(&second, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        !server.log_text().contains("viewer-password-1"),
        "no password in the logs"
    );
}

async fn api_tokens_and_the_metrics_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[("TELLTALE_METRICS_TOKEN", "CANARY-metrics-token")]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let client = browser();

    // The configured token works (post_with_headers sends it); an admin creates another.
    let (code, created) = post_with_headers(
        &server.url("/api/api-tokens"),
        &[("content-type".into(), "application/json".into())],
        json!({"name": "grafana"}).to_string(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let me: Value = client
        .get(server.url("/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["via"], "api_token");
    let (_, listed) = telltale_e2e::get_json(&server.url("/api/api-tokens")).await;
    assert!(
        !listed.to_string().contains(&token),
        "tokens are never shown again"
    );
    let id = created["api_token"]["id"].as_i64().unwrap();
    let resp = telltale_e2e::api_client()
        .delete(server.url(&format!("/api/api-tokens/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = client
        .get(server.url("/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a revoked token stops working");

    // /metrics behind its own token.
    let resp = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(server.url("/metrics"))
        .bearer_auth("CANARY-metrics-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Sign-in from a given loopback address (the whole 127/8 is this machine), as a distinct client.
async fn sign_in_from(
    server: &TestServer,
    from: [u8; 4],
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap();
    let mut request = client
        .post(server.url("/login"))
        .json(&json!({"email": TEST_ADMIN_EMAIL, "password": password}));
    if let Some(hops) = forwarded_for {
        request = request.header("x-forwarded-for", hops);
    }
    request.send().await.unwrap()
}

async fn guessing_cannot_lock_the_admin_out(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(
        db.url(),
        &[
            ("TELLTALE_LOGIN_FAILURES_ALLOWED", "3"),
            ("TELLTALE_TRUSTED_PROXIES", "127.0.0.5"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let guesser = [127, 0, 0, 2];
    for _ in 0..4 {
        assert_eq!(
            sign_in_from(&server, guesser, "guess-guess", None).await.status(),
            401
        );
    }
    // Past the allowed failures the guesser waits, even with the right password…
    let held = sign_in_from(&server, guesser, TEST_ADMIN_PASSWORD, None).await;
    assert_eq!(held.status(), 429);
    assert_eq!(held.headers()["retry-after"], "1");
    // …while the admin at another address signs in at once, however many guesses were made.
    for _ in 0..20 {
        sign_in_from(&server, guesser, "guess-guess", None).await;
    }
    assert_eq!(
        sign_in_from(&server, [127, 0, 0, 3], TEST_ADMIN_PASSWORD, None)
            .await
            .status(),
        200
    );
    // Held-back tries do not count; after the wait, one more failure doubles it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        sign_in_from(&server, guesser, "guess-guess", None).await.status(),
        401
    );
    let held = sign_in_from(&server, guesser, "guess-guess", None).await;
    assert_eq!(held.status(), 429);
    let wait: u64 = held.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 2, "the wait grew: {wait} s");

    // A success clears the address's failures.
    let mistaken = [127, 0, 0, 4];
    for _ in 0..3 {
        sign_in_from(&server, mistaken, "typo-typo", None).await;
    }
    assert_eq!(
        sign_in_from(&server, mistaken, TEST_ADMIN_PASSWORD, None)
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        assert_eq!(
            sign_in_from(&server, mistaken, "typo-typo", None).await.status(),
            401
        );
    }

    // X-Forwarded-For names the client only from a trusted proxy: a guesser cannot dodge the
    // throttle by inventing addresses, and clients behind the proxy are told apart.
    for n in 0..4 {
        let forged = format!("198.51.100.{n}");
        sign_in_from(&server, [127, 0, 0, 6], "guess-guess", Some(&forged)).await;
    }
    assert_eq!(
        sign_in_from(&server, [127, 0, 0, 6], "guess-guess", Some("198.51.100.99"))
            .await
            .status(),
        429,
        "the header from an untrusted peer is ignored"
    );
    let proxy = [127, 0, 0, 5];
    for _ in 0..4 {
        sign_in_from(&server, proxy, "guess-guess", Some("203.0.113.7")).await;
    }
    assert_eq!(
        sign_in_from(&server, proxy, "guess-guess", Some("203.0.113.7"))
            .await
            .status(),
        429
    );
    assert_eq!(
        sign_in_from(&server, proxy, TEST_ADMIN_PASSWORD, Some("203.0.113.8"))
            .await
            .status(),
        200,
        "another client behind the same proxy"
    );
}

async fn users_come_from_the_cli(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [("DATABASE_URL", db.url())];
    let added = run_cli_with_stdin(
        &["user", "add", "--admin", "ops@example.com"],
        &env,
        "ops-password-123\n",
    );
    assert!(added.status.success(), "{added:?}");
    assert!(String::from_utf8_lossy(&added.stdout).contains("added ops@example.com (admin)"));
    let short = run_cli_with_stdin(&["user", "add", "short@example.com"], &env, "short\n");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10 characters"));
    let again = run_cli_with_stdin(&["user", "add", "ops@example.com"], &env, "ops-password-123\n");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let listed = run_cli(&["user", "list"], &env);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("ops@example.com") && text.contains("admin"),
        "{text}"
    );
    assert!(!text.contains("argon2"), "no hashes: {text}");
    let token = run_cli(&["api-token", "--user", "ops@example.com", "ci"], &env);
    assert!(token.status.success(), "{token:?}");
    let stdout = String::from_utf8_lossy(&token.stdout).into_owned();
    let token = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert_eq!(token.len(), 64);

    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (session, _) = sign_in(&server, "ops@example.com", "ops-password-123").await;
    let resp = browser()
        .get(server.url("/api/me"))
        .headers(with_session(&session, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = browser()
        .get(server.url("/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["user"]["email"], "ops@example.com");
}
