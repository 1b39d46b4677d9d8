//! The Milesight token keeper against a fake MDP on 127.0.0.1 (apis.md §1.2 shapes), driven
//! in process so the clock and concurrency are under the test's control. Both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use serde_json::json;
use telltale::app::AppState;
use telltale::milesight::token::{TokenError, Trigger};
use telltale::storage::{connections, now, refresh_log};
use telltale_e2e::{Backend, TestApp, TestDb, TestServer, both_backends, get_json, post_with_headers};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    token_is_fetched_once_cached_and_kept_across_restarts,
    one_upstream_request_for_a_hundred_callers,
    scheduled_refresh_happens_only_within_the_lead_time,
    refused_credentials_stop_scheduled_refreshes,
    transient_failures_are_retried_honouring_retry_after,
    persistent_failures_give_up_and_are_recorded,
    a_slow_server_times_out_and_is_retried,
    token_api_and_schedule_in_the_service,
    token_api_reports_missing_and_refused_configuration,
);

const SECRET: &str = "CANARY-client-secret";

async fn app(db: &TestDb, mdp: &MockServer) -> AppState {
    app_with(db, mdp)
        .set("milesight.token_max_attempts", 3)
        .state()
        .await
}

/// The settings every test here starts from: the MDP application at the fake server.
fn app_with<'a>(db: &'a TestDb, mdp: &MockServer) -> TestApp<'a> {
    TestApp::on(db)
        .set("milesight.base_url", mdp.uri())
        .set("milesight.client_id", "cid-1")
        .set("milesight.client_secret", SECRET)
}

fn token_body(token: &str) -> serde_json::Value {
    json!({
        "data": {"access_token": token, "refresh_token": "r-token", "expires_in": 3599, "refresh_token_expires_in": 2591999},
        "status": "Success",
        "requestId": "4a5c0b2f"
    })
}

fn token_endpoint() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=cid-1"))
        .and(body_string_contains("client_secret=CANARY-client-secret"))
}

async fn token_is_fetched_once_cached_and_kept_across_restarts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("CANARY-access-token-AB12")))
        .expect(1)
        .mount(&mdp)
        .await;
    let state = app(&db, &mdp).await;
    let keeper = &state.milesight_token;
    assert_eq!(keeper.token().await.unwrap(), "CANARY-access-token-AB12");
    assert_eq!(
        keeper.token().await.unwrap(),
        "CANARY-access-token-AB12",
        "served from the cache"
    );

    let status = keeper.status(now()).await.unwrap();
    assert_eq!(status.status, "valid");
    assert_eq!(status.token_fingerprint.as_deref(), Some("…AB12"));
    assert_eq!(status.client_id.as_deref(), Some("cid-1"));
    let expires_in = (status.expires_at.unwrap().0 - now().0).num_seconds();
    assert!(
        (3590..=3599).contains(&expires_in),
        "expiry from expires_in: {expires_in}"
    );
    let shown = serde_json::to_string(&status).unwrap();
    assert!(
        !shown.contains("CANARY"),
        "status never shows a token or secret: {shown}"
    );

    let log = refresh_log::recent(&state.db, Some("oauth2_client_credentials"), 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert!(log[0].success && log[0].trigger == "on_demand" && log[0].new_expires_at.is_some());

    // Stored sealed; a restart (new state, same database and key) uses it without a request.
    let stored = connections::list_connections(&state.db).await.unwrap().remove(0);
    assert!(!stored.access_token.unwrap().windows(6).any(|w| w == b"CANARY"));
    assert!(
        !stored
            .credentials
            .as_ref()
            .unwrap()
            .windows(6)
            .any(|w| w == b"CANARY"),
        "client secret sealed"
    );
    let restarted = app(&db, &mdp).await;
    restarted.milesight_token.start_up().await;
    assert!(
        !restarted
            .milesight_token
            .refresh_if_due(Trigger::Startup, now())
            .await
            .unwrap()
    );
    assert_eq!(
        restarted.milesight_token.token().await.unwrap(),
        "CANARY-access-token-AB12"
    );
}

async fn one_upstream_request_for_a_hundred_callers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(token_body("shared"))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&mdp)
        .await;
    let state = Arc::new(app(&db, &mdp).await);
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { state.milesight_token.token().await.unwrap() })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "shared");
    }
    assert_eq!(mdp.received_requests().await.unwrap().len(), 1, "single flight");
}

async fn scheduled_refresh_happens_only_within_the_lead_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("t")))
        .mount(&mdp)
        .await;
    let state = app(&db, &mdp).await;
    let keeper = &state.milesight_token;
    let t0 = now();
    assert!(
        keeper.refresh_if_due(Trigger::Startup, t0).await.unwrap(),
        "nothing stored: fetch"
    );
    let at = |minutes: i64| (t0.0 + Span::minutes(minutes)).into();
    // The token lasts 3599 s; with the 5-minute lead it is due from minute 55 on.
    assert!(!keeper.refresh_if_due(Trigger::Scheduled, at(30)).await.unwrap());
    assert!(!keeper.refresh_if_due(Trigger::Scheduled, at(54)).await.unwrap());
    assert_eq!(mdp.received_requests().await.unwrap().len(), 1);
    assert!(keeper.refresh_if_due(Trigger::Scheduled, at(56)).await.unwrap());
    assert_eq!(mdp.received_requests().await.unwrap().len(), 2);
    let triggers: Vec<String> = refresh_log::recent(&state.db, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.trigger)
        .collect();
    assert_eq!(triggers, ["scheduled", "startup"]);
}

async fn refused_credentials_stop_scheduled_refreshes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "Failed", "requestId": "9", "errCode": "authentication_failed", "errMsg": "client authentication failed"
        })))
        .mount(&mdp)
        .await;
    let state = app(&db, &mdp).await;
    let keeper = &state.milesight_token;
    assert!(matches!(
        keeper.token().await,
        Err(TokenError::InvalidCredentials)
    ));
    assert_eq!(
        mdp.received_requests().await.unwrap().len(),
        1,
        "a refusal is not retried"
    );

    let status = keeper.status(now()).await.unwrap();
    assert_eq!(status.status, "invalid_credentials");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("authentication_failed")
    );
    let log = refresh_log::recent(&state.db, None, 10).await.unwrap();
    assert!(!log[0].success && log[0].error.as_deref().unwrap().contains("authentication_failed"));
    assert!(!log[0].error.as_deref().unwrap().contains("CANARY"));
    assert!(
        state
            .metrics
            .render(&state.db)
            .await
            .contains("telltale_milesight_invalid_credentials 1")
    );

    // The schedule and callers do not hammer MDP with credentials it refused...
    assert!(matches!(
        keeper.refresh_if_due(Trigger::Scheduled, now()).await,
        Err(TokenError::InvalidCredentials)
    ));
    assert!(keeper.token().await.is_err());
    assert_eq!(mdp.received_requests().await.unwrap().len(), 1);
    // ...but a person can try again.
    assert!(keeper.refresh_now(Trigger::Manual).await.is_err());
    assert_eq!(mdp.received_requests().await.unwrap().len(), 2);

    // Fixing the configured secret lifts the refusal: the next start uses the new one.
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("client_secret=fixed-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("after-fix")))
        .mount(&mdp)
        .await;
    let fixed = app_with(&db, &mdp)
        .set("milesight.client_secret", "fixed-secret")
        .state()
        .await;
    fixed.milesight_token.start_up().await;
    assert_eq!(fixed.milesight_token.token().await.unwrap(), "after-fix");
    let status = fixed.milesight_token.status(now()).await.unwrap();
    assert_eq!((status.status, status.consecutive_failures), ("valid", 0));
}

async fn transient_failures_are_retried_honouring_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1").set_body_json(json!({
            "status": "Failed", "requestId": "1", "errCode": "too_many_requests", "errMsg": "slow down"
        })))
        .up_to_n_times(1)
        .mount(&mdp)
        .await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"))
        .up_to_n_times(1)
        .mount(&mdp)
        .await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("after-retry")))
        .mount(&mdp)
        .await;
    let state = app(&db, &mdp).await;
    let started = Instant::now();
    assert_eq!(state.milesight_token.token().await.unwrap(), "after-retry");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(
        mdp.received_requests().await.unwrap().len(),
        3,
        "429, garbage, success"
    );
    let log = refresh_log::recent(&state.db, None, 10).await.unwrap();
    let outcomes: Vec<bool> = log.iter().map(|e| e.success).collect();
    assert_eq!(
        outcomes,
        [true, false, false],
        "every attempt logged, newest first"
    );
    assert!(
        log[2].error.as_deref().unwrap().contains("429"),
        "{:?}",
        log[2].error
    );
    let metrics = state.metrics.render(&state.db).await;
    assert!(
        metrics.contains(r#"telltale_token_refresh_attempts_total{outcome="transient_failure",provider="oauth2_client_credentials",trigger="on_demand"} 2"#),
        "{metrics}"
    );
}

async fn persistent_failures_give_up_and_are_recorded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"status": "Failed", "errCode": "server_error", "errMsg": "down"})),
        )
        .mount(&mdp)
        .await;
    let state = app(&db, &mdp).await;
    let err = state
        .milesight_token
        .refresh_if_due(Trigger::Scheduled, now())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Upstream(_)), "{err}");
    assert_eq!(
        mdp.received_requests().await.unwrap().len(),
        3,
        "token_max_attempts"
    );
    let status = state.milesight_token.status(now()).await.unwrap();
    assert_eq!((status.status, status.consecutive_failures), ("missing", 1));
    assert!(
        status.last_error.as_deref().unwrap().contains("503"),
        "{status:?}"
    );
    assert_eq!(refresh_log::recent(&state.db, None, 10).await.unwrap().len(), 3);
}

fn service_env<'a>(mdp: &'a str, schedule: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MILESIGHT_BASE_URL", mdp),
        ("MILESIGHT_CLIENT_ID", "cid-1"),
        ("MILESIGHT_CLIENT_SECRET", SECRET),
        ("TELLTALE_TOKEN_SWEEP_SCHEDULE", schedule),
    ]
}

/// The binary checks the token at start-up, refreshes on `POST /api/milesight/token/refresh`,
/// and its cron job refreshes a token once it is within the lead time.
async fn token_api_and_schedule_in_the_service(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    // 301 s of validity with the 300 s lead: due again one second after each refresh.
    let short_lived = json!({
        "data": {"access_token": "CANARY-tok-XY99", "expires_in": 301}, "status": "Success", "requestId": "r"
    });
    token_endpoint()
        .respond_with(ResponseTemplate::new(200).set_body_json(short_lived))
        .mount(&mdp)
        .await;
    let uri = mdp.uri();
    let server = TestServer::start(db.url(), &service_env(&uri, "* * * * * *")).await;
    server.wait_ready(Duration::from_secs(30)).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let (code, status) = get_json(&server.url("/api/milesight/token")).await;
        assert_eq!(code, 200);
        if status["status"] == "expiring" || status["status"] == "valid" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no token after start-up: {status}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["token_fingerprint"], "…XY99");
    assert_eq!(status["base_url"], uri.as_str());

    let (code, refreshed) = post_with_headers(&server.url("/api/milesight/token/refresh"), &[], "").await;
    assert_eq!(code, 200, "{refreshed}");
    assert!(refreshed["last_refreshed_at"].is_string());

    // One engine, one status API: the token is an ordinary connection there too.
    let (code, tokens) = get_json(&server.url("/api/tokens/status")).await;
    assert_eq!(code, 200);
    let rows = tokens["connections"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{tokens}");
    assert_eq!(rows[0]["provider"], "oauth2_client_credentials");
    assert_eq!(rows[0]["id"], status["connection_id"]);
    let id = rows[0]["id"].as_i64().unwrap();
    let (code, body) = post_with_headers(&server.url(&format!("/api/tokens/{id}/refresh")), &[], "").await;
    assert_eq!(
        (code, body["result"]["outcome"].as_str()),
        (200, Some("refreshed")),
        "{body}"
    );
    assert!(!tokens.to_string().contains("CANARY") && !body.to_string().contains("CANARY"));

    // The every-second schedule keeps refreshing the short-lived token.
    let direct = db.open_migrated().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = refresh_log::recent(&direct, Some("oauth2_client_credentials"), 50)
            .await
            .unwrap();
        if log
            .iter()
            .filter(|e| e.trigger == "scheduled" && e.success)
            .count()
            >= 2
        {
            let triggers: Vec<&str> = log.iter().map(|e| e.trigger.as_str()).collect();
            assert!(
                triggers.contains(&"startup") && triggers.contains(&"manual"),
                "{triggers:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scheduled refreshes did not happen:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"provider="oauth2_client_credentials",trigger="manual""#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("CANARY") && !server.log_text().contains("CANARY"),
        "no token or secret in logs or metrics"
    );
}

async fn token_api_reports_missing_and_refused_configuration(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, status) = get_json(&server.url("/api/milesight/token")).await;
    assert_eq!(
        (code, status["status"].as_str(), status["configured"].as_bool()),
        (200, Some("missing"), Some(false))
    );
    let (code, body) = post_with_headers(&server.url("/api/milesight/token/refresh"), &[], "").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("not_configured")),
        "{body}"
    );
    drop(server);

    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "Failed", "requestId": "9", "errCode": "authentication_failed", "errMsg": "client authentication failed"
        })))
        .mount(&mdp)
        .await;
    let uri = mdp.uri();
    let server = TestServer::start(db.url(), &service_env(&uri, "0 */30 * * * *")).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, body) = post_with_headers(&server.url("/api/milesight/token/refresh"), &[], "").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("invalid_credentials")),
        "{body}"
    );
    let (_, status) = get_json(&server.url("/api/milesight/token")).await;
    assert_eq!(status["status"], "invalid_credentials", "{status}");
    assert!(!status.to_string().contains("CANARY"));
    assert!(
        server.log_text().contains("refused the client credentials"),
        "{}",
        server.log_text()
    );
}

async fn a_slow_server_times_out_and_is_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    token_endpoint()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(token_body("late"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&mdp)
        .await;
    let state = app_with(&db, &mdp)
        .set("milesight.request_timeout_secs", 1)
        .set("milesight.token_max_attempts", 2)
        .state()
        .await;
    let started = Instant::now();
    let err = state.milesight_token.token().await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by the timeout, not the server"
    );
    assert_eq!(mdp.received_requests().await.unwrap().len(), 2, "retried once");
    let log = refresh_log::recent(&state.db, None, 10).await.unwrap();
    assert!(
        log.iter()
            .all(|e| !e.success && e.error.as_deref().is_some_and(|m| m.contains("timed out")))
    );
}
