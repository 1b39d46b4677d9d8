//! The `oauth2_client_credentials` provider for any RFC 6749 §4.4 token endpoint (the
//! Milesight preset has its own suite in `milesight_token.rs`). In process, both backends.

use chrono::Duration as Span;
use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::{now, refresh_log};
use telltale_e2e::{Backend, TestApp, TestDb, both_backends, sweep_all, sweep_at};
use wiremock::matchers::{basic_auth, body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    a_plain_token_endpoint_is_asked_again_before_expiry,
    a_refused_client_needs_reauth_and_is_not_retried,
);

async fn connection(state: &AppState, token_url: &str, settings: serde_json::Value) -> i64 {
    let account = connections::create_account(&state.db, "acme", None)
        .await
        .unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "oauth2_client_credentials".into(),
        name: "reporting-api".into(),
        base_url: Some(token_url.into()),
        settings,
        credentials: Some(json!({"client_id": "svc-1", "client_secret": "CANARY-svc-secret"}).to_string()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

async fn a_plain_token_endpoint_is_asked_again_before_expiry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = db.app_state("").await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(basic_auth("svc-1", "CANARY-svc-secret"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=read"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "CANARY-cc-token", "token_type": "Bearer", "expires_in": 1800}),
        ))
        .mount(&server)
        .await;
    let id = connection(
        &state,
        &format!("{}/token", server.uri()),
        json!({"client_auth": "basic", "scope": "read"}),
    )
    .await;

    let report = sweep_all(&state).await;
    assert_eq!((report.checked, report.refreshed), (1, 1), "no token yet: due");
    let stored = connections::get_connection(&state.db, id).await.unwrap();
    let runway = (stored.expires_at.unwrap().0 - now().0).num_seconds();
    assert!(
        (1790..=1800).contains(&runway),
        "expiry from expires_in: {runway}"
    );
    assert_eq!(stored.status.as_str(), "active");

    // The 5-minute default lead: not due at 20 minutes, due at 26.
    let report = sweep_at(&state, (now().0 + Span::minutes(20)).into()).await;
    assert_eq!(report.checked, 0);
    let report = sweep_at(&state, (now().0 + Span::minutes(26)).into()).await;
    assert_eq!(report.refreshed, 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    let log = refresh_log::recent(&state.db, Some("oauth2_client_credentials"), 10)
        .await
        .unwrap();
    assert!(log.len() == 2 && log.iter().all(|e| e.success));
}

async fn a_refused_client_needs_reauth_and_is_not_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = TestApp::on(&db).set("tokens.max_attempts", 3).state().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_client", "error_description": "client CANARY-svc-secret unknown"}),
        ))
        .mount(&server)
        .await;
    let id = connection(&state, &format!("{}/token", server.uri()), json!({})).await;

    let report = sweep_all(&state).await;
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "never retried"
    );
    let stored = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(stored.status.as_str(), "needs_reauth");
    let error = stored.last_error.unwrap();
    assert!(
        error.contains("invalid_client") && !error.contains("CANARY"),
        "{error}"
    );

    // Later sweeps leave it alone until someone supplies new credentials.
    sweep_all(&state).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}
