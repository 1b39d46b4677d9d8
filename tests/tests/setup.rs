//! First run: a blank install leads every page to `/setup`, which only the token from the
//! server log opens; the first admin is created and signed in; then `/setup` is gone.

use std::time::Duration;

use serde_json::{Value, json};
use telltale_e2e::{Backend, FRESH_INSTALL, TestDb, TestServer, both_backends, browser};

both_backends!(a_blank_install_is_claimed_only_through_the_logged_link);

async fn a_blank_install_is_claimed_only_through_the_logged_link(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), FRESH_INSTALL).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let setup_url = server.setup_url(Duration::from_secs(10)).await;
    let logged = url::Url::parse(&setup_url).unwrap();
    assert_eq!(logged.path(), "/setup");
    assert_eq!(
        logged.port(),
        Some(server.addr.port()),
        "the logged link points at this server: {setup_url}"
    );
    let token = logged
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no token in {setup_url}"));
    assert!(token.len() >= 32, "an unguessable token: {token}");

    // A second replica (PostgreSQL) or a restart (SQLite serves one process) on the same
    // database logs the same link.
    let (server, replica) = match backend {
        Backend::Postgres => (server, Some(TestServer::start(db.url(), FRESH_INSTALL).await)),
        Backend::Sqlite => {
            drop(server);
            (TestServer::start(db.url(), FRESH_INSTALL).await, None)
        }
    };
    let second = replica.as_ref().unwrap_or(&server);
    second.wait_ready(Duration::from_secs(30)).await;
    let second_url = second.setup_url(Duration::from_secs(10)).await;
    assert!(
        second_url.ends_with(&format!("/setup?token={token}")),
        "{second_url}"
    );

    // Every page leads to /setup; the API still asks for credentials.
    let client = browser();
    for page in ["/", "/devices?q=x", "/settings", "/login"] {
        let resp = client.get(server.url(page)).send().await.unwrap();
        assert_eq!(resp.status(), 303, "{page}");
        assert_eq!(resp.headers()["location"], "/setup", "{page}");
    }
    let resp = client.get(server.url("/api/devices")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // Without the token the page says where to find it and offers no form.
    let resp = client.get(server.url("/setup")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("server writes to its log"), "{html}");
    assert!(!html.contains("action=\"/setup\""), "no form without the token");
    let resp = client
        .get(server.url("/setup?token=guessed"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(!resp.text().await.unwrap().contains("action=\"/setup\""));

    // A stranger cannot create an admin, with no token, a wrong one, or from another site.
    let resp = client
        .post(server.url("/setup"))
        .json(&json!({"email": "stranger@example.com", "password": "long enough pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "setup_refused");
    let resp = client
        .post(server.url("/setup"))
        .json(&json!({"token": "guessed", "email": "stranger@example.com", "password": "long enough pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = client
        .post(server.url("/setup"))
        .header("origin", "http://evil.example")
        .form(&[
            ("token", token.as_str()),
            ("email", "stranger@example.com"),
            ("password", "long enough pw"),
            ("confirm", "long enough pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // The right link shows the form; mistakes re-show it with the reason and create nobody.
    let resp = client
        .get(server.url(&format!("/setup?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.text().await.unwrap().contains("Create the first admin"));
    for (password, confirm, reason) in [
        ("short", "short", "at least 10 characters"),
        ("long enough pw", "long enough px", "the two passwords differ"),
    ] {
        let resp = client
            .post(server.url("/setup"))
            .form(&[
                ("token", token.as_str()),
                ("email", "owner@example.com"),
                ("password", password),
                ("confirm", confirm),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let html = resp.text().await.unwrap();
        assert!(html.contains(reason), "{reason}: {html}");
        assert!(html.contains("value=\"owner@example.com\""), "the email is kept");
    }
    let resp = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.headers()["location"], "/setup", "still not set up");

    // The right token creates the admin and signs them in.
    let resp = client
        .post(server.url("/setup"))
        .form(&[
            ("token", token.as_str()),
            ("email", "Owner@Example.com"),
            ("password", "long enough pw"),
            ("confirm", "long enough pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let resp = client
        .get(server.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("owner@example.com (admin)"), "{html}");
    let me: Value = client
        .get(server.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");

    // Then /setup is gone on every replica, even with the token, and pages ask to sign in.
    for target in std::iter::once(&server).chain(replica.as_ref()) {
        let resp = client
            .get(target.url(&format!("/setup?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = client
            .post(target.url("/setup"))
            .json(&json!({"token": token, "email": "second@example.com", "password": "long enough pw"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = client.get(target.url("/devices")).send().await.unwrap();
        assert_eq!(resp.headers()["location"], "/login?next=%2Fdevices");
    }
    let resp = client
        .post(server.url("/login"))
        .json(&json!({"email": "owner@example.com", "password": "long enough pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the new admin signs in");

    // A restart no longer logs a setup link.
    drop(replica);
    drop(server);
    let restarted = TestServer::start(db.url(), FRESH_INSTALL).await;
    restarted.wait_ready(Duration::from_secs(30)).await;
    assert!(
        !restarted.log_text().contains("setup_url"),
        "{}",
        restarted.log_text()
    );
}

both_backends!(configured_admins_skip_the_setup);

async fn configured_admins_skip_the_setup(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    assert!(!server.log_text().contains("setup_url"), "{}", server.log_text());
    let client = browser();
    let resp = client.get(server.url("/setup")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.headers()["location"], "/login?next=%2F");
}
