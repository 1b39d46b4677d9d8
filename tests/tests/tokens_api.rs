//! Connections and tokens over HTTP with the real binary: create, status, refresh now, the
//! refresh log and stats, scheduled sweeps, bad input, and no secret in any response.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{Backend, TestDb, TestServer, both_backends, get_json, post_with_headers};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    connections_are_managed_refreshed_and_reported,
    bad_connection_input_is_refused
);

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

async fn create(server: &TestServer, body: Value) -> (u16, Value) {
    post_with_headers(&server.url("/api/connections"), &json_headers(), body.to_string()).await
}

async fn connections_are_managed_refreshed_and_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=CANARY-refresh-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "CANARY-access-2-WXYZ", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "CANARY-refresh-2"
        })))
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=CANARY-refresh-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "CANARY-access-3-WXYZ", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(&provider)
        .await;
    let server = TestServer::start(db.url(), &[("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *")]).await;
    server.wait_ready(Duration::from_secs(30)).await;

    let expiring = (chrono::Utc::now() + chrono::Duration::minutes(3)).to_rfc3339();
    let (code, created) = create(
        &server,
        json!({
            "account": "acme", "provider": "oauth2_refresh", "name": "spotify-main",
            "base_url": format!("{}/token", provider.uri()),
            "settings": {"preset": "spotify"},
            "credentials": {"client_id": "cid", "client_secret": "CANARY-client-secret"},
            "access_token": "CANARY-access-1-ABCD", "refresh_token": "CANARY-refresh-1", "expires_at": expiring
        }),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["token_fingerprint"], "…ABCD");
    assert_eq!(created["status"], "expiring", "3 minutes left, 10-minute lead");
    let id = created["id"].as_i64().unwrap();

    // The every-second sweep refreshes it (rotating the refresh token).
    let deadline = Instant::now() + Duration::from_secs(15);
    let refreshed = loop {
        let (_, c) = get_json(&server.url(&format!("/api/connections/{id}"))).await;
        if c["token_fingerprint"] == "…WXYZ" {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "never refreshed: {c}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refreshed["status"], "active");
    assert!(refreshed["runway_secs"].as_i64().unwrap() > 3500);

    // Refresh now, by hand.
    let (code, manual) = post_with_headers(&server.url(&format!("/api/tokens/{id}/refresh")), &[], "").await;
    assert_eq!(
        (code, manual["result"]["outcome"].as_str()),
        (200, Some("refreshed")),
        "{manual}"
    );

    let (_, status) = get_json(&server.url("/api/tokens/status")).await;
    assert_eq!(status["summary"]["total"], 1);
    assert_eq!(status["summary"]["valid"], 1);
    assert_eq!(status["connections"][0]["id"], id);

    let (_, log) = get_json(&server.url("/api/refresh-log?provider=oauth2_refresh&success=true")).await;
    let triggers: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers.first(), Some(&"manual"), "{log}");
    assert!(
        triggers.contains(&"scheduled") || triggers.contains(&"startup"),
        "{triggers:?}"
    );
    let (_, stats) = get_json(&server.url("/api/refresh-stats?window_hours=1")).await;
    let manual_stats = stats["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["trigger"] == "manual")
        .unwrap()
        .clone();
    assert_eq!(
        (
            manual_stats["attempts"].as_i64(),
            manual_stats["success_rate"].as_f64()
        ),
        (Some(1), Some(1.0))
    );

    // Nothing anywhere shows a token or secret.
    let (_, listed) = get_json(&server.url("/api/connections")).await;
    for shown in [
        created.to_string(),
        listed.to_string(),
        status.to_string(),
        log.to_string(),
        manual.to_string(),
    ] {
        assert!(!shown.contains("CANARY"), "secret in a response: {shown}");
    }
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("CANARY") && !server.log_text().contains("CANARY"));
    assert!(metrics.contains(r#"telltale_token_refresh_attempts_total{outcome="success",provider="oauth2_refresh",trigger="manual"} 1"#), "{metrics}");

    let resp = reqwest::Client::new()
        .delete(server.url(&format!("/api/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (code, _) = get_json(&server.url(&format!("/api/connections/{id}"))).await;
    assert_eq!(code, 404);
}

async fn bad_connection_input_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let base = json!({"account": "acme", "provider": "oauth2_refresh", "name": "one"});
    assert_eq!(create(&server, base.clone()).await.0, 201);
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for (case, body, code, error) in [
        ("duplicate", base.clone(), 409, "conflict"),
        (
            "unknown provider",
            with("provider", json!("myspace")),
            400,
            "invalid_connection",
        ),
        ("empty name", with("name", json!(" ")), 400, "invalid_connection"),
        ("unknown field", with("colour", json!("red")), 400, "invalid_json"),
        (
            "wrong type",
            with("settings", json!([1, 2])),
            400,
            "invalid_connection",
        ),
        (
            "bad url",
            with("base_url", json!("file:///etc/passwd")),
            400,
            "invalid_connection",
        ),
        ("bad date", with("expires_at", json!("soon")), 400, "invalid_json"),
    ] {
        let body = if case == "duplicate" {
            body
        } else {
            with_name(body, case)
        };
        let (got, response) = create(&server, body).await;
        assert_eq!(
            (got, response["error"]["code"].as_str()),
            (code, Some(error)),
            "{case}: {response}"
        );
    }
    let (code, response) =
        post_with_headers(&server.url("/api/connections"), &json_headers(), "{not json").await;
    assert_eq!(
        (code, response["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (code, _) = post_with_headers(&server.url("/api/tokens/424242/refresh"), &[], "").await;
    assert_eq!(code, 404);
    let (code, _) = get_json(&server.url("/api/refresh-stats?window_hours=100000")).await;
    assert_eq!(code, 400);
}

/// A distinct name per case, so only the field under test can make it fail.
fn with_name(mut body: Value, case: &str) -> Value {
    if body["name"] == "one" {
        body["name"] = json!(case);
    }
    body
}
