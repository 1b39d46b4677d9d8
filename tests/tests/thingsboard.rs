//! The ThingsBoard provider through the refresh engine, against fake customer servers on
//! 127.0.0.1 (apis.md §2). In process, both backends.

use base64::Engine;
use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::now;
use telltale_e2e::{Backend, TestApp, TestDb, both_backends, sweep_all};
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    each_customer_logs_in_at_its_own_server,
    a_valid_refresh_token_is_used_and_an_expired_one_falls_back_to_login,
    a_wrong_password_needs_reauth,
    connections_without_a_url_use_thingsboard_url,
);

/// A JWT with the given `exp` and scopes, as ThingsBoard issues (signature not checked by us).
fn jwt(exp: i64, scope: &str) -> String {
    let part = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(json!({"alg": "HS512"})),
        part(
            json!({"sub": "user@customer.test", "scopes": [scope], "iss": "thingsboard.io", "iat": exp - 9000, "exp": exp})
        )
    )
}

async fn app(db: &TestDb) -> AppState {
    TestApp::on(db).set("tokens.max_attempts", 2).state().await
}

async fn customer(state: &AppState, name: &str, url: &str, refresh_token: Option<String>) -> i64 {
    let account = connections::create_account(&state.db, name, None).await.unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "thingsboard".into(),
        name: "thingsboard".into(),
        base_url: Some(url.into()),
        credentials: Some(
            json!({"username": format!("{name}@customer.test"), "password": "CANARY-pw"}).to_string(),
        ),
        access_token: refresh_token.as_ref().map(|_| "old-token".to_owned()),
        refresh_token,
        expires_at: Some((now().0 + chrono::Duration::minutes(2)).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

/// `who`'s customer server: one login with their credentials, answered with a token pair
/// expiring at `exp`.
async fn expect_one_login(server: &MockServer, who: &str, exp: i64) {
    Mock::given(method("POST"))
        .and(path("/api/auth/login"))
        .and(body_json(
            json!({"username": format!("{who}@customer.test"), "password": "CANARY-pw"}),
        ))
        .respond_with(pair(
            &jwt(exp, "CUSTOMER_USER"),
            &jwt(exp + 600_000, "REFRESH_TOKEN"),
        ))
        .expect(1)
        .mount(server)
        .await;
}

fn pair(token: &str, refresh: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"token": token, "refreshToken": refresh}))
}

async fn each_customer_logs_in_at_its_own_server(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let exp = now().0.timestamp() + 9000;
    for (server, who) in [(&a, "alpha"), (&b, "beta")] {
        expect_one_login(server, who, exp).await;
    }
    let state = app(&db).await;
    let alpha = customer(&state, "alpha", &a.uri(), None).await;
    let beta = customer(&state, "beta", &format!("{}/", b.uri()), None).await;
    let report = sweep_all(&state).await;
    assert_eq!((report.refreshed, report.failed), (2, 0), "{report:?}");
    for id in [alpha, beta] {
        let c = connections::get_connection(&state.db, id).await.unwrap();
        assert_eq!(
            c.expires_at.map(|t| t.timestamp()),
            Some(exp),
            "expiry read from the JWT exp"
        );
        assert_eq!(c.refresh_expires_at.map(|t| t.timestamp()), Some(exp + 600_000));
        let secrets = connections::secrets(&state.crypto, &c).unwrap();
        assert_eq!(
            secrets.access_token.as_deref(),
            Some(jwt(exp, "CUSTOMER_USER").as_str())
        );
    }
}

async fn a_valid_refresh_token_is_used_and_an_expired_one_falls_back_to_login(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    let exp = now().0.timestamp() + 9000;
    let live_refresh = jwt(exp + 600_000, "REFRESH_TOKEN");
    let stale_refresh = jwt(exp + 500_000, "REFRESH_TOKEN");
    Mock::given(method("POST"))
        .and(path("/api/auth/token"))
        .and(body_json(json!({"refreshToken": live_refresh})))
        .respond_with(pair(
            &jwt(exp, "CUSTOMER_USER"),
            &jwt(exp + 700_000, "REFRESH_TOKEN"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    // ThingsBoard refuses a refresh token it no longer accepts with 401 and errorCode 11.
    Mock::given(method("POST"))
        .and(path("/api/auth/token"))
        .and(body_json(json!({"refreshToken": stale_refresh})))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": 401, "message": "Token has expired", "errorCode": 11, "timestamp": 1
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/auth/login"))
        .respond_with(pair(
            &jwt(exp + 1, "CUSTOMER_USER"),
            &jwt(exp + 600_001, "REFRESH_TOKEN"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let refreshed = customer(&state, "alpha", &server.uri(), Some(live_refresh.clone())).await;
    let relogged = customer(&state, "beta", &server.uri(), Some(stale_refresh)).await;
    let report = sweep_all(&state).await;
    assert_eq!((report.refreshed, report.failed), (2, 0), "{report:?}");
    let expiry = |id: i64| {
        let db = state.db.clone();
        async move {
            connections::get_connection(&db, id)
                .await
                .unwrap()
                .expires_at
                .map(|t| t.timestamp())
        }
    };
    assert_eq!(expiry(refreshed).await, Some(exp));
    assert_eq!(
        expiry(relogged).await,
        Some(exp + 1),
        "a fresh login after the refresh token was refused"
    );
    let rotated = connections::secrets(
        &state.crypto,
        &connections::get_connection(&state.db, refreshed).await.unwrap(),
    )
    .unwrap()
    .refresh_token;
    assert_eq!(
        rotated,
        Some(jwt(exp + 700_000, "REFRESH_TOKEN")),
        "the new refresh token is kept"
    );
}

async fn a_wrong_password_needs_reauth(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/auth/login"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": 401, "message": "Invalid username or password", "errorCode": 10, "timestamp": 1
        })))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let id = customer(&state, "alpha", &server.uri(), None).await;
    let report = sweep_all(&state).await;
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth", "{report:?}");
    let c = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(c.status.as_str(), "needs_reauth");
    let error = c.last_error.unwrap();
    assert!(
        error.contains("errorCode 10") && !error.contains("CANARY"),
        "{error}"
    );
}

/// `THINGSBOARD_URL` (`tokens.thingsboard_url`) serves connections that name no server; one
/// that names its own keeps it.
async fn connections_without_a_url_use_thingsboard_url(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (shared, own) = (MockServer::start().await, MockServer::start().await);
    let exp = now().0.timestamp() + 9000;
    for (server, who) in [(&shared, "alpha"), (&own, "beta")] {
        expect_one_login(server, who, exp).await;
    }
    let state = TestApp::on(&db)
        .set("tokens.max_attempts", 1)
        .set("tokens.thingsboard_url", format!("{}/", shared.uri()))
        .state()
        .await;
    let alpha = customer(&state, "alpha", "unused", None).await;
    connections::update_connection(
        &state.db,
        &state.crypto,
        alpha,
        &connections::ConnectionUpdate {
            base_url: Some(None),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let beta = customer(&state, "beta", &own.uri(), None).await;
    let report = sweep_all(&state).await;
    assert_eq!((report.refreshed, report.failed), (2, 0), "{report:?}");
    for id in [alpha, beta] {
        let c = connections::get_connection(&state.db, id).await.unwrap();
        assert_eq!(c.expires_at.map(|t| t.timestamp()), Some(exp));
    }
    let c = connections::get_connection(&state.db, alpha).await.unwrap();
    assert!(c.base_url.is_none(), "the default is applied, not written");
}
