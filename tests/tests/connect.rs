//! Connecting platforms from the web UI: the authorization-code flow with PKCE against a fake
//! authorization server (authorize → callback → tokens stored sealed → a refresh works), its
//! refusals (wrong or foreign state, denied consent, an API token, a viewer), reconnecting a
//! connection that needs re-authorisation, Meta's code exchanged for a long-lived token with
//! its pages, and the connection pages and merge-patch edits. Both backends.

use std::time::Duration;

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, FakeAuthorizationServer, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TestDb, TestServer, api_client,
    assert_no_canary, both_backends, browser, sign_in,
};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    a_platform_is_connected_through_its_consent_screen,
    meta_connects_and_keeps_a_long_lived_token_with_its_pages,
    connection_pages_edit_disable_and_delete,
);

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    async fn admin(server: &TestServer) -> Session {
        let (cookie, csrf) = sign_in(server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
        Session { cookie, csrf }
    }

    async fn send(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
        let mut request = browser()
            .request(method, &url)
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_no_canary(&url, &text);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn page(&self, url: &str) -> (u16, String) {
        let resp = browser()
            .get(url)
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_no_canary(url, &text);
        (status, text.replace("&#x2f;", "/"))
    }

    /// `GET url` without following: the status and where it sends the browser.
    async fn redirect(&self, url: &str) -> (u16, String) {
        let resp = browser()
            .get(url)
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        let location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (resp.status().as_u16(), location)
    }

    /// `POST /api/connections` with `body`.
    async fn create(&self, server: &TestServer, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, server.url("/api/connections"), Some(body))
            .await
    }

    /// `POST /api/connections/{id}/authorize`: starts Connect.
    async fn authorize(&self, server: &TestServer, id: i64) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            server.url(&format!("/api/connections/{id}/authorize")),
            None,
        )
        .await
    }

    /// Starts Connect for `id` and follows the platform's consent (no browser: the redirect
    /// is read by hand); returns the callback URL the platform sent the browser to.
    async fn consent(&self, server: &TestServer, id: i64, extra: &str) -> String {
        let (status, started) = self.authorize(server, id).await;
        assert_eq!(status, 200, "{started}");
        let authorize = format!("{}{extra}", started["authorize_url"].as_str().unwrap());
        let resp = browser().get(&authorize).send().await.unwrap();
        assert_eq!(resp.status(), 302, "the fake consents: {authorize}");
        resp.headers()["location"].to_str().unwrap().to_owned()
    }
}

async fn connection(id: i64, server: &TestServer) -> Value {
    api_client()
        .get(server.url(&format!("/api/connections/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn a_platform_is_connected_through_its_consent_screen(backend: Backend) {
    let db = TestDb::new(backend).await;
    let auth = FakeAuthorizationServer::start().await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let admin = Session::admin(&server).await;

    // A Spotify connection pointed at the fake, as the form sends it (no tokens yet).
    let (status, created) = admin.create(&server, json!({
                "account": "acme", "provider": "oauth2_refresh", "name": "spotify-acme",
                "base_url": auth.token_url(),
                "settings": {"preset": "spotify", "authorize_url": auth.authorize_url(), "scopes": "user-top-read"},
                "credentials": {"client_id": auth.client_id, "client_secret": auth.client_secret},
            }))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["status"], "missing");

    // The consent screen's URL: PKCE S256, the redirect URI on this server, the scopes.
    let (status, started) = admin.authorize(&server, id).await;
    assert_eq!(status, 200, "{started}");
    let url = url::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let redirect_uri = format!("http://{}/oauth/callback", server.addr);
    assert_eq!(started["redirect_uri"], redirect_uri.as_str());
    assert_eq!(query["redirect_uri"], redirect_uri);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"].len(), 43);
    assert_eq!(query["scope"], "user-top-read");
    assert_eq!(query["client_id"], auth.client_id);
    assert!(!url.as_str().contains("CANARY"), "no secret in the URL: {url}");

    // An API token cannot start it (the state is bound to a browser session).
    let resp = api_client()
        .post(server.url(&format!("/api/connections/{id}/authorize")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Refusals store nothing: a forged state, another session's state, denied consent.
    let callback = admin.consent(&server, id, "").await;
    let forged = callback.replace("state=", "state=x");
    let (status, html) = admin.page(&forged).await;
    assert_eq!(status, 400);
    assert!(html.contains("not valid"), "{html}");
    let other = Session::admin(&server).await;
    let (status, html) = other.page(&callback).await;
    assert_eq!(status, 400);
    assert!(html.contains("another session"), "{html}");
    let denied = admin.consent(&server, id, "&deny=1").await;
    let (status, html) = admin.page(&denied).await;
    assert_eq!(status, 400);
    assert!(
        html.contains("did not give access") && html.contains("denied access"),
        "{html}"
    );
    assert_eq!(
        connection(id, &server).await["status"],
        "missing",
        "nothing stored"
    );

    // The real callback: tokens stored, a refresh-log row with trigger connect, and the browser
    // sent on (303) to the connection's page, so the code leaves the address bar.
    let (status, location) = admin.redirect(&callback).await;
    assert_eq!(
        (status, location.as_str()),
        (303, format!("/connections/{id}?connected=1").as_str())
    );
    let (status, html) = admin.page(&server.url(&location)).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Connected spotify-acme: tokens stored"), "{html}");
    assert_eq!(auth.code_exchanges().await, 1);
    let stored = connection(id, &server).await;
    assert_eq!(stored["status"], "active", "{stored}");
    assert_eq!(stored["has_refresh_token"], true);
    assert_eq!(
        stored["token_fingerprint"], "…ss-1",
        "the fake's first access token: {stored}"
    );
    let log: Value = api_client()
        .get(server.url("/api/refresh-log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &log["items"][0];
    assert_eq!(row["trigger"], "connect", "{log}");
    assert_eq!(row["success"], true);
    assert_eq!(row["actor"], TEST_ADMIN_EMAIL);
    // The state is single-use: a reload, the live refresh or a replay never sends the code to
    // the platform again (RFC 6749 §4.1.2 lets it revoke the tokens when a code comes twice).
    for _ in 0..3 {
        let (status, html) = admin.page(&callback).await;
        assert_eq!(status, 200, "{html}");
        assert!(
            html.contains("This consent was already used: the connection is connected"),
            "{html}"
        );
    }
    assert_eq!(auth.code_exchanges().await, 1, "one exchange for one consent");
    let log: Value = api_client()
        .get(server.url("/api/refresh-log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        log["items"].as_array().unwrap().len(),
        1,
        "no failed connects logged: {log}"
    );
    // The audit log has the consent under the admin, after the Connect that began it.
    let (_, audit) = telltale_e2e::get_json(&server.url("/api/audit")).await;
    let actions: Vec<(&str, &str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
            )
        })
        .filter(|(action, _, _)| action.starts_with("Connect") || action.starts_with("Started"))
        .collect();
    assert_eq!(
        actions[..2],
        [
            (
                "Connected (consent given)",
                TEST_ADMIN_EMAIL,
                "Spotify connection 'spotify-acme'"
            ),
            (
                "Started Connect",
                TEST_ADMIN_EMAIL,
                "Spotify connection 'spotify-acme'"
            ),
        ],
        "{audit}"
    );

    // The stored refresh token works.
    let (status, refreshed) = admin
        .send(
            reqwest::Method::POST,
            server.url(&format!("/api/tokens/{id}/refresh")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(connection(id, &server).await["token_fingerprint"], "…ss-2");

    // Revoked at the platform: needs re-authorisation; Reconnect mends it.
    let (status, _) = admin
        .send(
            reqwest::Method::PATCH,
            server.url(&format!("/api/connections/{id}")),
            Some(json!({"refresh_token": "revoked-elsewhere"})),
        )
        .await;
    assert_eq!(status, 200);
    admin
        .send(
            reqwest::Method::POST,
            server.url(&format!("/api/tokens/{id}/refresh")),
            None,
        )
        .await;
    assert_eq!(connection(id, &server).await["status"], "needs_reauth");
    let (_, page) = admin.page(&server.url(&format!("/connections/{id}"))).await;
    assert!(page.contains(">Reconnect</button>"), "{page}");
    let callback = admin.consent(&server, id, "").await;
    let (status, location) = admin.redirect(&callback).await;
    assert_eq!(status, 303, "{location}");
    assert_eq!(connection(id, &server).await["status"], "active");

    // A viewer can open neither the flow nor its callback.
    api_client()
        .post(server.url("/api/users"))
        .json(&json!({"email": "viewer@example.com", "password": "viewer-password", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    let (cookie, csrf) = sign_in(&server, "viewer@example.com", "viewer-password").await;
    let viewer = Session { cookie, csrf };
    let (status, _) = viewer.authorize(&server, id).await;
    assert_eq!(status, 403);
    let (status, _) = viewer.page(&callback).await;
    assert_eq!(status, 403);
    let (_, page) = viewer.page(&server.url(&format!("/connections/{id}"))).await;
    assert!(
        page.contains("id=\"connect\" data-post") && page.contains("disabled title=\"Needs the admin role\"")
    );
}

async fn meta_connects_and_keeps_a_long_lived_token_with_its_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let graph = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v25.0/oauth/access_token"))
        .and(query_param("code", "CANARY-meta-code"))
        .and(query_param("client_id", "app-1"))
        .and(query_param("client_secret", "CANARY-app-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "CANARY-short", "token_type": "bearer", "expires_in": 5000}),
        ))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v25.0/oauth/access_token"))
        .and(query_param("grant_type", "fb_exchange_token"))
        .and(query_param("fb_exchange_token", "CANARY-short"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "CANARY-long-lived-9999", "token_type": "bearer", "expires_in": 5183944}),
        ))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v25.0/me/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
            {"id": "page-1", "name": "Shop", "category": "Retail", "access_token": "CANARY-page-1"}
        ]})))
        .mount(&graph)
        .await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let admin = Session::admin(&server).await;
    let (status, created) = admin
        .create(
            &server,
            json!({
                "account": "acme", "provider": "meta_long_lived", "name": "meta-acme",
                "base_url": graph.uri(),
                "settings": {"authorize_url": format!("{}/dialog/oauth", graph.uri())},
                "credentials": {"app_id": "app-1", "app_secret": "CANARY-app-secret"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let (status, started) = admin.authorize(&server, id).await;
    assert_eq!(status, 200);
    let url = url::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/dialog/oauth");
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "scope" && v.contains("pages_show_list"))
    );
    // Meta sends the browser back with a code.
    let mut callback = url::Url::parse(&server.url("/oauth/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", "CANARY-meta-code")
        .append_pair("state", &state);
    let (status, location) = admin.redirect(callback.as_str()).await;
    assert_eq!(status, 303, "{location}");
    let stored = connection(id, &server).await;
    assert_eq!(
        stored["token_fingerprint"], "…9999",
        "the long-lived token, not the short one"
    );
    assert_eq!(stored["status"], "active");
    let all: Value = api_client()
        .get(server.url("/api/connections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["provider"] == "meta_page" && c["name"] == "page-1"),
        "the page token is kept: {all}"
    );
}

async fn connection_pages_edit_disable_and_delete(backend: Backend) {
    let db = TestDb::new(backend).await;
    let auth = FakeAuthorizationServer::start().await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let admin = Session::admin(&server).await;

    // The choices, then one platform's own fields; the redirect URI to register.
    let (status, html) = admin.page(&server.url("/connections/new")).await;
    assert_eq!(status, 200);
    for choice in [
        "choice-spotify",
        "choice-google",
        "choice-github",
        "choice-discord",
        "choice-meta",
        "choice-thingsboard",
        "choice-password_login",
    ] {
        assert!(html.contains(choice), "{choice}");
    }
    let (_, html) = admin.page(&server.url("/connections/new?kind=github")).await;
    assert!(
        html.contains("name=\"credentials.client_secret\" type=\"password\""),
        "{html}"
    );
    assert!(html.contains("name=\"settings.preset\" value=\"github\""));
    assert!(html.contains(&format!("http://{}/oauth/callback", server.addr)));
    let (_, html) = admin.page(&server.url("/connections/new?kind=thingsboard")).await;
    assert!(html.contains("name=\"credentials.username\""));
    assert!(
        !html.contains("redirect-uri"),
        "no consent screen for ThingsBoard"
    );

    let (_, created) = admin
        .create(
            &server,
            json!({
                "account": "acme", "provider": "oauth2_refresh", "name": "github-acme",
                "base_url": auth.token_url(),
                "settings": {"preset": "github", "authorize_url": auth.authorize_url()},
                "credentials": {"client_id": "old-id", "client_secret": auth.client_secret},
                "refresh_token": "CANARY-fake-refresh-0",
            }),
        )
        .await;
    let id = created["id"].as_i64().unwrap();

    // The edit form shows values but never a secret.
    let (_, html) = admin.page(&server.url(&format!("/connections/{id}"))).await;
    assert!(html.contains("value=\"old-id\""), "{html}");
    assert!(html.contains("Client secret (set; leave empty to keep it)"));
    assert!(html.contains("value=\"") && !html.contains(auth.client_secret));

    // A form sends only what changed: the client id; the secret is kept (the refresh works).
    let (status, _) = admin
        .send(
            reqwest::Method::PATCH,
            server.url(&format!("/api/connections/{id}")),
            Some(json!({"credentials": {"client_id": auth.client_id}, "settings": {"scopes": "repo"}})),
        )
        .await;
    assert_eq!(status, 200);
    let stored = connection(id, &server).await;
    assert_eq!(
        stored["settings"]["preset"], "github",
        "settings merged: {stored}"
    );
    assert_eq!(stored["settings"]["scopes"], "repo");
    let (status, body) = admin
        .send(
            reqwest::Method::POST,
            server.url(&format!("/api/tokens/{id}/refresh")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Disable, enable, delete.
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            server.url(&format!("/api/connections/{id}")),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "disabled");
    let (_, html) = admin.page(&server.url(&format!("/connections/{id}"))).await;
    assert!(html.contains("id=\"enable\""));
    admin
        .send(
            reqwest::Method::PATCH,
            server.url(&format!("/api/connections/{id}")),
            Some(json!({"disabled": false})),
        )
        .await;
    let (status, _) = admin
        .send(
            reqwest::Method::DELETE,
            server.url(&format!("/api/connections/{id}")),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = admin.page(&server.url(&format!("/connections/{id}"))).await;
    assert_eq!(status, 404);
}
