//! Meta long-lived user tokens and their page tokens through the refresh engine, against a
//! fake Graph API on 127.0.0.1 (apis.md §3). In process, both backends.

use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::now;
use telltale_e2e::{Backend, TestApp, TestDb, both_backends, sweep_all};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    the_user_token_is_extended_and_page_tokens_stored,
    graph_errors_are_classified,
    a_pasted_token_without_expiry_is_exchanged_at_once
);

async fn app(db: &TestDb) -> AppState {
    TestApp::on(db).set("tokens.max_attempts", 2).state().await
}

/// A Meta connection on Graph API v19.0 whose user token expires in `days`.
async fn meta(state: &AppState, graph: &MockServer, days: i64) -> i64 {
    let expires_at = Some((now().0 + chrono::Duration::days(days)).into());
    meta_with(
        state,
        graph,
        json!({"graph_version": "v19.0"}),
        "LL-1",
        expires_at,
    )
    .await
}

async fn meta_with(
    state: &AppState,
    graph: &MockServer,
    settings: serde_json::Value,
    user_token: &str,
    expires_at: Option<telltale::storage::UtcTime>,
) -> i64 {
    let account = connections::create_account(&state.db, "brand", None)
        .await
        .unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "meta_long_lived".into(),
        name: "facebook".into(),
        base_url: Some(graph.uri()),
        settings,
        credentials: Some(json!({"app_id": "app-1", "app_secret": "CANARY-app-secret"}).to_string()),
        access_token: Some(user_token.into()),
        expires_at,
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

async fn the_user_token_is_extended_and_page_tokens_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let graph = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v19.0/oauth/access_token"))
        .and(query_param("grant_type", "fb_exchange_token"))
        .and(query_param("client_id", "app-1"))
        .and(query_param("client_secret", "CANARY-app-secret"))
        .and(query_param("fb_exchange_token", "LL-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "LL-2", "token_type": "bearer", "expires_in": 5183944}),
            ),
        )
        .expect(1)
        .mount(&graph)
        .await;
    let next = format!(
        "{}/v19.0/me/accounts?access_token=LL-2&after=cursor-1",
        graph.uri()
    );
    Mock::given(method("GET"))
        .and(path("/v19.0/me/accounts"))
        .and(query_param("after", "cursor-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{"access_token": "PAGE-C", "id": "300", "name": "Gamma", "category": "Shop", "tasks": ["ANALYZE"]}],
            "paging": {"cursors": {"before": "x", "after": "y"}}
        })))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v19.0/me/accounts"))
        .and(query_param("access_token", "LL-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [
                {"access_token": "PAGE-A", "id": "100", "name": "Alpha", "category": "Brand"},
                {"access_token": "PAGE-B", "id": "200", "name": "Beta", "category": "Brand"}
            ],
            "paging": {"cursors": {"before": "a", "after": "cursor-1"}, "next": next}
        })))
        .mount(&graph)
        .await;
    let state = app(&db).await;
    let id = meta(&state, &graph, 3).await;
    let report = sweep_all(&state).await;
    assert_eq!(
        (report.checked, report.refreshed),
        (1, 1),
        "3 days left is within the 7-day lead: {report:?}"
    );

    let user = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(
        connections::secrets(&state.crypto, &user)
            .unwrap()
            .access_token
            .as_deref(),
        Some("LL-2")
    );
    let days = (user.expires_at.unwrap().0 - now().0).num_days();
    assert_eq!(days, 59, "about 60 days");
    let pages: Vec<_> = connections::list_connections(&state.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.provider == "meta_page")
        .collect();
    let mut named: Vec<(String, String)> = pages
        .iter()
        .map(|p| {
            let settings: serde_json::Value = p.settings.to_value();
            (
                p.name.clone(),
                connections::secrets(&state.crypto, p)
                    .unwrap()
                    .access_token
                    .unwrap()
                    + "/"
                    + settings["page_name"].as_str().unwrap(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            ("100".into(), "PAGE-A/Alpha".into()),
            ("200".into(), "PAGE-B/Beta".into()),
            ("300".into(), "PAGE-C/Gamma".into())
        ],
        "every page, across the paging link, stored per page"
    );
    assert!(
        pages.iter().all(|p| p.account_id == user.account_id
            && p.expires_at.is_none()
            && p.status.as_str() == "active")
    );
    assert_eq!(
        sweep_all(&state).await.checked,
        0,
        "nothing due: the user token is fresh and page tokens have nothing to refresh with"
    );
}

async fn graph_errors_are_classified(backend: Backend) {
    let db = TestDb::new(backend).await;
    let graph = MockServer::start().await;
    // Throttled once (code 4), then the token is found invalid (190, subcode 460: password changed).
    Mock::given(method("GET"))
        .and(path("/v19.0/oauth/access_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Application request limit reached", "type": "OAuthException", "code": 4, "fbtrace_id": "t"
        }})))
        .up_to_n_times(1)
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v19.0/oauth/access_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Error validating access token: The session has been invalidated because the user changed their password",
            "type": "OAuthException", "code": 190, "error_subcode": 460, "fbtrace_id": "u"
        }})))
        .mount(&graph)
        .await;
    let state = app(&db).await;
    let id = meta(&state, &graph, 1).await;
    let report = sweep_all(&state).await;
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth", "{report:?}");
    assert_eq!(
        graph.received_requests().await.unwrap().len(),
        2,
        "throttling retried, 190 not"
    );
    let c = connections::get_connection(&state.db, id).await.unwrap();
    let error = c.last_error.unwrap();
    assert!(
        error.contains("code 190 subcode 460") && !error.contains("CANARY") && !error.contains("LL-1"),
        "{error}"
    );
}

/// A user token pasted without an expiry may be a short-lived one (about an hour): the next
/// sweep exchanges it for a long-lived one, on the default Graph API version, rather than
/// waiting for it to fail.
async fn a_pasted_token_without_expiry_is_exchanged_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let graph = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v25.0/oauth/access_token"))
        .and(query_param("fb_exchange_token", "CANARY-pasted-short"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "CANARY-long-7777", "expires_in": 5183944})),
        )
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v25.0/me/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&graph)
        .await;
    let state = app(&db).await;
    let id = meta_with(&state, &graph, json!({}), "CANARY-pasted-short", None).await;
    let report = sweep_all(&state).await;
    assert_eq!((report.checked, report.refreshed), (1, 1), "{report:?}");
    let c = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(c.token_fingerprint.as_deref(), Some("…7777"));
    assert!(
        c.expires_at.is_some_and(|e| (e.0 - now().0).num_days() >= 59),
        "about 60 days"
    );
    assert_eq!(
        sweep_all(&state).await.checked,
        0,
        "then left alone until its lead time"
    );
}
