//! The generic password-login provider against fake login services. In process, both backends.

use base64::Engine;
use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::now;
use telltale_e2e::{Backend, TestApp, TestDb, both_backends, sweep_all};
use wiremock::matchers::{body_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    logins_of_every_shape_yield_tokens,
    refused_logins_and_pasted_tokens,
    the_login_path_is_found_and_kept,
    discovery_stops_at_a_refusal_and_a_token_set_by_hand_stays_in_use,
    a_service_under_a_path_is_discovered_beneath_it
);

async fn app(db: &TestDb) -> AppState {
    TestApp::on(db).set("tokens.max_attempts", 2).state().await
}

async fn login(
    state: &AppState,
    name: &str,
    url: Option<String>,
    settings: serde_json::Value,
    with_credentials: bool,
) -> i64 {
    let account = telltale_e2e::acme_account(state).await;
    let new = NewConnection {
        account_id: account.id,
        provider: "password_login".into(),
        name: name.into(),
        base_url: url,
        settings,
        credentials: with_credentials
            .then(|| json!({"username": "ops@acme.test", "password": "CANARY-pw"}).to_string()),
        access_token: (!with_credentials).then(|| "pasted-token".to_owned()),
        expires_at: (!with_credentials).then(|| (now().0 + chrono::Duration::minutes(1)).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

async fn token_of(state: &AppState, id: i64) -> (Option<String>, Option<i64>) {
    let c = connections::get_connection(&state.db, id).await.unwrap();
    (
        connections::secrets(&state.crypto, &c).unwrap().access_token,
        c.expires_at.map(|t| t.timestamp()),
    )
}

async fn logins_of_every_shape_yield_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    // JSON body with an email field; the token under data, with expires_in.
    Mock::given(method("POST"))
        .and(path("/json-login"))
        .and(body_json(
            json!({"email": "ops@acme.test", "password": "CANARY-pw"}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": {"token": "from-json", "expires_in": 1800}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Form body; the token in a header, its expiry in the JWT.
    let exp = now().0.timestamp() + 7200;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"exp": exp}).to_string());
    let header_jwt = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln");
    Mock::given(method("POST"))
        .and(path("/form-login"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("username=ops%40acme.test"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-auth-token", format!("Bearer {header_jwt}").as_str())
                .set_body_json(json!({"ok": true})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let json_login = login(
        &state,
        "json",
        Some(format!("{}/json-login", server.uri())),
        json!({"username_field": "email"}),
        true,
    )
    .await;
    let form_login = login(
        &state,
        "form",
        Some(format!("{}/form-login", server.uri())),
        json!({"body": "form", "token_header": "x-auth-token"}),
        true,
    )
    .await;
    let report = sweep_all(&state).await;
    assert_eq!((report.refreshed, report.failed), (2, 0), "{report:?}");
    let (token, expires) = token_of(&state, json_login).await;
    assert_eq!(token.as_deref(), Some("from-json"));
    let runway = expires.unwrap() - now().0.timestamp();
    assert!((1790..=1800).contains(&runway), "{runway}");
    assert_eq!(token_of(&state, form_login).await, (Some(header_jwt), Some(exp)));
}

async fn refused_logins_and_pasted_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "bad credentials"})))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let refused = login(
        &state,
        "refused",
        Some(format!("{}/login", server.uri())),
        json!({}),
        true,
    )
    .await;
    let pasted = login(&state, "pasted", None, json!({}), false).await;
    let report = sweep_all(&state).await;
    assert_eq!(
        report.checked, 1,
        "a pasted token has nothing to refresh with and is left alone: {report:?}"
    );
    assert_eq!(report.results[0].id, refused);
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth");
    assert_eq!(token_of(&state, pasted).await.0.as_deref(), Some("pasted-token"));
}

/// A service that serves only `/auth/login`, only JSON, only with `email`, and puts the token
/// at `data.auth.jwt`: discovery finds it, keeps it in the settings, and goes straight there
/// afterwards.
async fn the_login_path_is_found_and_kept(backend: Backend) {
    let db = TestDb::new(backend).await;
    let service = MockServer::start().await;
    let expires = now().0.timestamp() + 7200;
    Mock::given(method("POST"))
        .and(path("/auth/login"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"email": "ops@acme.test", "password": "CANARY-pw"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true, "data": {"user": {"id": 7}, "auth": {"jwt": "CANARY-found-5555", "expires_at": expires}}
        })))
        .mount(&service)
        .await;
    // Everything else: not a login endpoint.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&service)
        .await;
    let state = app(&db).await;
    let id = login(&state, "bare", Some(service.uri()), json!({}), true).await;
    let report = sweep_all(&state).await;
    assert_eq!(report.refreshed, 1, "{report:?}");
    let c = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(c.token_fingerprint.as_deref(), Some("…5555"));
    assert_eq!(
        c.expires_at.map(|t| t.timestamp()),
        Some(expires),
        "expires_at read"
    );
    let settings: serde_json::Value = c.settings.to_value();
    assert_eq!(
        settings,
        json!({"login_path": "/auth/login", "body": "json", "username_field": "email"}),
        "kept, and shown in the API and UI"
    );
    // /api/auth/login and /api/login (JSON and form, email and username each), then /auth/login.
    let tried = service.received_requests().await.unwrap().len();
    assert_eq!(tried, 9, "found in order");
    state
        .token_engine
        .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "test")
        .await
        .unwrap();
    assert_eq!(
        service.received_requests().await.unwrap().len(),
        tried + 1,
        "straight to the kept path"
    );
}

/// A definite refusal (401 with a body) stops discovery at once; a token set by hand that is
/// still unexpired stays in use, and the connection says so.
async fn discovery_stops_at_a_refusal_and_a_token_set_by_hand_stays_in_use(backend: Backend) {
    let db = TestDb::new(backend).await;
    let service = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/auth/login"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Invalid credentials"})))
        .mount(&service)
        .await;
    let state = app(&db).await;
    let refused = login(&state, "refused", Some(service.uri()), json!({}), true).await;
    let report = sweep_all(&state).await;
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth", "{report:?}");
    assert_eq!(
        service.received_requests().await.unwrap().len(),
        1,
        "no other path tried"
    );
    let c = connections::get_connection(&state.db, refused).await.unwrap();
    assert!(
        c.last_error
            .unwrap_or_default()
            .contains("login refused at /api/auth/login")
    );

    // The same refusal with a token set by hand that still holds: it stays in use.
    let account = connections::account_by_name(&state.db, "acme").await.unwrap();
    let until = now().0 + chrono::Duration::minutes(5);
    let new = NewConnection {
        account_id: account.id,
        provider: "password_login".into(),
        name: "with-manual-token".into(),
        base_url: Some(service.uri()),
        settings: json!({}),
        credentials: Some(json!({"username": "ops@acme.test", "password": "CANARY-pw"}).to_string()),
        access_token: Some("CANARY-set-by-hand".into()),
        expires_at: Some(until.into()),
        ..Default::default()
    };
    let id = connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id;
    let result = state
        .token_engine
        .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "test")
        .await
        .unwrap();
    assert_eq!(result.outcome.as_str(), "failed", "{result:?}");
    let c = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(c.status.as_str(), "active", "still usable");
    assert!(
        c.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("using the token set by hand until it expires"),
        "the connection says so"
    );
    let secrets = connections::secrets(&state.crypto, &c).unwrap();
    assert_eq!(secrets.access_token.as_deref(), Some("CANARY-set-by-hand"));
}

/// A service that lives under a path (`https://host/ext`): the address itself is no login
/// endpoint (404), so the login paths are looked for beneath it, found and kept; the next
/// refresh goes straight there instead of posting to `/ext` again.
async fn a_service_under_a_path_is_discovered_beneath_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let service = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ext/api/login"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"token": "CANARY-under-path-7777", "expires_in": 3600})),
        )
        .mount(&service)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&service)
        .await;
    let state = app(&db).await;
    let id = login(
        &state,
        "under-path",
        Some(format!("{}/ext", service.uri())),
        json!({}),
        true,
    )
    .await;
    let report = sweep_all(&state).await;
    assert_eq!(report.refreshed, 1, "{report:?}");
    let c = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(c.token_fingerprint.as_deref(), Some("…7777"));
    assert_eq!(
        c.settings.to_value()["login_path"],
        "/api/login",
        "kept, relative to the address"
    );
    let tried = service.received_requests().await.unwrap().len();
    state
        .token_engine
        .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "test")
        .await
        .unwrap();
    let requests = service.received_requests().await.unwrap();
    assert_eq!(requests.len(), tried + 1, "straight to the kept path");
    assert_eq!(requests[tried].url.path(), "/ext/api/login");
}
