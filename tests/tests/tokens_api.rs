//! Connections and tokens over HTTP with the real binary: create, status, refresh now, the
//! refresh log and stats, scheduled sweeps, bad input, and no secret in any response.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{Backend, TestDb, TestServer, both_backends, get_json, post_with_headers, run_cli};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    connections_are_managed_refreshed_and_reported,
    bad_connection_input_is_refused,
    the_cron_endpoint_needs_its_secret,
    the_cli_sweeps_and_reports,
    connections_are_reauthorised_disabled_and_enabled,
    a_cleared_token_is_fetched_anew,
    a_stopped_cli_sweep_leaves_no_connection_claimed,
);

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

/// The newest JSON log line whose message starts with `start` (waiting a moment for it: the
/// server's output is read as it comes).
async fn log_line(server: &TestServer, start: &str) -> Value {
    let starts = |line: &str| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|v| v["message"].as_str().is_some_and(|m| m.starts_with(start)))
    };
    server
        .logs_matching(1, Duration::from_secs(5), starts)
        .await
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no {start:?} line in:\n{}", server.log_text()))
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
    let metrics = server.metrics().await;
    assert!(!metrics.contains("CANARY") && !server.log_text().contains("CANARY"));
    assert!(metrics.contains(r#"telltale_token_refresh_attempts_total{outcome="success",provider="oauth2_refresh",trigger="manual"} 1"#), "{metrics}");

    let resp = telltale_e2e::api_client()
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

const CRON: &str = "CANARY-cron-secret-0123456789";

async fn the_cron_endpoint_needs_its_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let without = TestServer::start(db.url(), &[]).await;
    without.wait_ready(Duration::from_secs(30)).await;
    let (code, _) = get_json(&without.url("/api/cron/token-refresh")).await;
    assert_eq!(code, 404, "disabled without a configured secret");
    drop(without);

    // The service's own sweep stays out of the way (once a year), so the cron call refreshes.
    let server = TestServer::start(
        db.url(),
        &[
            ("CRON_SECRET", CRON),
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "0 0 0 1 1 *"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let client = telltale_e2e::api_client();
    for auth in [
        None,
        Some("Bearer wrong-secret-wrong-secret"),
        Some(&format!("Bearer {CRON}x")[..]),
        Some(CRON),
    ] {
        let mut request = client.post(server.url("/api/cron/token-refresh"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(body["success"], false, "as the original endpoint answered");
    }
    // Each refusal is logged with the client's address (never what it presented) and counted.
    let refusals = server
        .logs_matching(4, Duration::from_secs(5), |l| {
            l.contains("cron call refused") && l.contains("127.0.0.1")
        })
        .await
        .len();
    assert_eq!(refusals, 4, "{}", server.log_text());
    let metrics = server.metrics().await;
    assert_eq!(
        telltale_e2e::metric_sample(
            &metrics,
            "telltale_cron_requests_refused_total",
            &[("endpoint", "token-refresh")]
        ),
        Some(4.0)
    );
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let resp = client
            .request(method.clone(), server.url("/api/cron/token-refresh"))
            .bearer_auth(CRON)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let report: Value = resp.json().await.unwrap();
        assert_eq!(
            (
                report["checked"].as_i64(),
                report["refreshed"].as_i64(),
                report["failed"].as_i64()
            ),
            (Some(0), Some(0), Some(0))
        );
        assert!(
            report["timestamp"].is_string() && report["results"].is_array(),
            "{report}"
        );
        // The original token-refresh script's fields.
        assert_eq!(report["cronType"], "token-refresh");
        assert_eq!(report["success"], true);
        assert_eq!(
            (
                report["tokensChecked"].as_i64(),
                report["tokensRefreshed"].as_i64()
            ),
            (Some(0), Some(0))
        );
    }
    // With a connection to refresh, each result carries the original per-token fields.
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "CANARY-cron-token", "expires_in": 3600})),
        )
        .mount(&provider)
        .await;
    let (code, created) = create(
        &server,
        json!({"account": "acme", "provider": "oauth2_client_credentials", "name": "cron-machine",
               "base_url": format!("{}/token", provider.uri()),
               "credentials": {"client_id": "m", "client_secret": "CANARY-m-secret"}}),
    )
    .await;
    assert_eq!(code, 201);
    let resp = client
        .post(server.url("/api/cron/token-refresh"))
        .bearer_auth(CRON)
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            report["tokensChecked"].as_i64(),
            report["tokensRefreshed"].as_i64()
        ),
        (Some(1), Some(1)),
        "{report}"
    );
    let result = &report["results"][0];
    assert_eq!(result["platform"], "oauth2_client_credentials");
    assert_eq!(result["userId"], created["account_id"]);
    assert_eq!(result["success"], true);
    assert!(result["newExpiry"].is_string(), "{result}");
    assert!(!server.log_text().contains(CRON), "the secret is never logged");
}

async fn the_cli_sweeps_and_reports(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoked"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&provider)
        .await;
    let server = TestServer::start(db.url(), &[("TELLTALE_TOKEN_SWEEP_SCHEDULE", "0 0 0 1 1 *")]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, _) = create(
        &server,
        json!({"account": "acme", "provider": "oauth2_refresh", "name": "revoked",
               "base_url": format!("{}/revoked", provider.uri()),
               "credentials": {"client_id": "c", "client_secret": "s"},
               "access_token": "a", "refresh_token": "r",
               "expires_at": (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339()}),
    )
    .await;
    assert_eq!(code, 201);
    drop(server);
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", telltale_e2e::TEST_SECRET_KEY),
    ];

    let dry = run_cli(&["refresh-tokens", "--dry-run"], &env);
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        out.contains("would_refresh") && out.contains("1 due, 0 refreshed, 0 failed (dry run"),
        "{out}"
    );
    assert!(
        provider.received_requests().await.unwrap().is_empty(),
        "a dry run calls no provider"
    );

    let real = run_cli(&["refresh-tokens", "--provider", "oauth2_refresh"], &env);
    let out = String::from_utf8_lossy(&real.stdout);
    assert_eq!(
        real.status.code(),
        Some(1),
        "a failed refresh fails the command: {real:?}"
    );
    assert!(
        out.contains("needs_reauth") && out.contains("1 due, 0 refreshed, 1 failed"),
        "{out}"
    );

    let none = run_cli(&["refresh-tokens", "--connection", "999"], &env);
    assert!(none.status.success());
    assert!(String::from_utf8_lossy(&none.stdout).contains("0 due"));
}

/// SIGTERM to `telltale refresh-tokens` in the middle of a slow sweep: the refresh under way
/// finishes (its new token is stored), no other starts, and no connection stays claimed, so a
/// server starting next refreshes them at once instead of skipping them for the lease's 30 s.
async fn a_stopped_cli_sweep_leaves_no_connection_claimed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "fresh", "token_type": "Bearer", "expires_in": 3600}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&provider)
        .await;
    let server = TestServer::start(db.url(), &[("TELLTALE_TOKEN_SWEEP_SCHEDULE", "0 0 0 1 1 *")]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    for n in 0..3 {
        let (code, _) = create(
            &server,
            json!({"account": "acme", "provider": "oauth2_refresh", "name": format!("slow-{n}"),
                   "base_url": format!("{}/slow", provider.uri()),
                   "credentials": {"client_id": "c", "client_secret": "s"},
                   "access_token": "a", "refresh_token": "r",
                   "expires_at": (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339()}),
        )
        .await;
        assert_eq!(code, 201);
    }
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(telltale_e2e::telltale_bin())
        .arg("refresh-tokens")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("TELLTALE_SECRET_KEY", telltale_e2e::TEST_SECRET_KEY)
        .env("TELLTALE_TOKEN_CONCURRENCY", "1")
        .env("TELLTALE_DATA_DIR", dir.path())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once the first request is at the platform.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while provider.received_requests().await.unwrap_or_default().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never called the platform"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped before every due connection was refreshed"),
        "{stderr}"
    );
    assert_eq!(
        provider.received_requests().await.unwrap().len(),
        1,
        "none started after the signal"
    );

    let db = db.open().await;
    let all = telltale::storage::connections::list_connections(&db)
        .await
        .unwrap();
    assert!(
        all.iter().all(|c| c.lease_owner.is_none()),
        "no claim left behind"
    );
    let refreshed = all.iter().filter(|c| c.last_refresh_success_at.is_some()).count();
    assert_eq!(refreshed, 1, "the refresh under way finished and was stored");
}

async fn patch(server: &TestServer, id: i64, body: Value) -> (u16, Value) {
    let resp = telltale_e2e::api_client()
        .patch(server.url(&format!("/api/connections/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

/// A revoked grant is re-authorised by new tokens through PATCH and is refreshed again; a
/// disabled connection is left alone by sweeps until enabled.
async fn connections_are_reauthorised_disabled_and_enabled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-revoked"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=CANARY-rt-new"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "fresh-9876", "expires_in": 3600})),
        )
        .mount(&provider)
        .await;
    let server = TestServer::start(db.url(), &[("TELLTALE_TOKEN_SWEEP_SCHEDULE", "0 0 0 1 1 *")]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let (_, created) = create(
        &server,
        json!({"account": "acme", "provider": "oauth2_refresh", "name": "g", "base_url": format!("{}/token", provider.uri()),
               "credentials": {"client_id": "c", "client_secret": "s"}, "access_token": "old", "refresh_token": "rt-revoked",
               "expires_at": soon}),
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    let refresh_url = server.url(&format!("/api/tokens/{id}/refresh"));
    let refresh = || post_with_headers(&refresh_url, &[], "");
    let (code, _) = refresh().await;
    assert_eq!(code, 502);
    let (_, c) = get_json(&server.url(&format!("/api/connections/{id}"))).await;
    assert_eq!(
        (c["status"].as_str(), c["consecutive_failures"].as_i64()),
        (Some("needs_reauth"), Some(1))
    );
    // One warn line says so, with the reason class and the HTTP status.
    let line = log_line(&server, "token refresh refused").await;
    assert_eq!(
        (
            line["level"].as_str(),
            line["reason"].as_str(),
            line["http_status"].as_u64(),
            line["name"].as_str()
        ),
        (Some("WARN"), Some("needs_reauth"), Some(400), Some("g")),
        "{line}"
    );
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("needs re-authorisation"),
        "{line}"
    );

    // A person re-authorises: new refresh token in, failures cleared, refreshable again.
    let (code, c) = patch(
        &server,
        id,
        json!({"refresh_token": "CANARY-rt-new", "settings": {"lead_secs": 120}}),
    )
    .await;
    assert_eq!(code, 200, "{c}");
    // Eligible again; its current access token still expires within the (new) lead time.
    assert_eq!(
        (
            c["status"].as_str(),
            c["consecutive_failures"].as_i64(),
            c["last_error"].is_null()
        ),
        (Some("expiring"), Some(0), true)
    );
    assert_eq!(c["settings"]["lead_secs"], 120);
    assert!(!c.to_string().contains("CANARY"), "{c}");
    let (code, refreshed) = refresh().await;
    assert_eq!(code, 200, "{refreshed}");
    assert_eq!(refreshed["connection"]["token_fingerprint"], "…9876");

    let (_, c) = patch(&server, id, json!({"disabled": true})).await;
    assert_eq!(c["status"], "disabled");
    let (_, status) = get_json(&server.url("/api/tokens/status")).await;
    assert_eq!(status["summary"]["disabled"], 1);
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", telltale_e2e::TEST_SECRET_KEY),
    ];
    let forced = run_cli(&["refresh-tokens", "--connection", &id.to_string()], &env);
    assert!(
        String::from_utf8_lossy(&forced.stdout).contains("0 due"),
        "sweeps skip a disabled connection: {forced:?}"
    );
    let (_, c) = patch(&server, id, json!({"disabled": false})).await;
    assert_eq!(c["status"], "active");

    for (body, code) in [
        (json!({"colour": "red"}), 400),
        (json!({"settings": [1]}), 400),
        (json!({"base_url": "ftp://x"}), 400),
        (json!({"disabled": "yes"}), 400),
    ] {
        assert_eq!(patch(&server, id, body.clone()).await.0, code, "{body}");
    }
    assert_eq!(patch(&server, 999_999, json!({"disabled": true})).await.0, 404);
}

/// `DELETE /api/connections/{id}/token` and `telltale connections clear-token` forget the stored
/// tokens but keep the credentials, so the next refresh logs in anew; each is in the refresh log.
async fn a_cleared_token_is_fetched_anew(backend: Backend) {
    let db = TestDb::new(backend).await;
    let provider = MockServer::start().await;
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(move |_: &wiremock::Request| {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": format!("CANARY-cc-token-{n}"), "expires_in": 3600}))
        })
        .mount(&provider)
        .await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, created) = create(
        &server,
        json!({"account": "acme", "provider": "oauth2_client_credentials", "name": "machine",
               "base_url": format!("{}/token", provider.uri()),
               "credentials": {"client_id": "m", "client_secret": "CANARY-m-secret"}}),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let refresh = server.url(&format!("/api/tokens/{id}/refresh"));
    let (code, _) = post_with_headers(&refresh, &[], "").await;
    assert_eq!(code, 200);
    let (_, before) = get_json(&server.url(&format!("/api/connections/{id}"))).await;
    assert!(before["token_fingerprint"].is_string(), "{before}");

    let cleared = telltale_e2e::api_client()
        .delete(server.url(&format!("/api/connections/{id}/token")))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    let cleared: Value = cleared.json().await.unwrap();
    assert_eq!(cleared["status"], "missing", "{cleared}");
    assert!(cleared["token_fingerprint"].is_null() && cleared["expires_at"].is_null());
    assert_eq!(cleared["has_credentials"], true, "credentials kept");
    let (_, log) = get_json(&server.url(&format!("/api/refresh-log?connection={id}"))).await;
    let row = &log["items"][0];
    assert_eq!(
        (row["trigger"].as_str(), row["success"].as_bool()),
        (Some("clear"), Some(true)),
        "{log}"
    );
    assert_eq!(row["actor"], "admin@example.com (token configured)");

    // The next refresh logs in anew with the kept credentials.
    let (code, _) = post_with_headers(&refresh, &[], "").await;
    assert_eq!(code, 200);
    // Each refresh is one info line with the new expiry and how long the token is valid.
    let line = log_line(&server, "token refreshed").await;
    assert_eq!(
        (line["level"].as_str(), line["name"].as_str()),
        (Some("INFO"), Some("machine")),
        "{line}"
    );
    let valid_for = line["valid_for_secs"].as_i64().unwrap_or_default();
    assert!((3500..=3600).contains(&valid_for), "{line}");
    assert!(
        line["expires_at"].is_string() && line["message"].as_str().unwrap().contains("valid for"),
        "{line}"
    );
    // And each sweep one line, with the soonest expiry.
    let sweep = log_line(&server, "token sweep").await;
    assert!(
        sweep["checked"].is_u64() && sweep["soonest_expiry"].is_string(),
        "{sweep}"
    );
    let (_, after) = get_json(&server.url(&format!("/api/connections/{id}"))).await;
    assert!(
        after["token_fingerprint"].is_string() && after["token_fingerprint"] != before["token_fingerprint"],
        "a new token: {after}"
    );
    assert_eq!(after["status"], "active");

    // A refresh-token grant cannot log in anew: cleared, it needs Reconnect at once and says
    // so, and no platform is asked for anything.
    let (code, granted) = create(
        &server,
        json!({"account": "acme", "provider": "oauth2_refresh", "name": "granted",
               "base_url": format!("{}/grant-token", provider.uri()),
               "credentials": {"client_id": "g", "client_secret": "CANARY-g-secret"},
               "access_token": "CANARY-granted-at", "refresh_token": "CANARY-granted-rt"}),
    )
    .await;
    assert_eq!(code, 201, "{granted}");
    let granted_id = granted["id"].as_i64().unwrap();
    let cleared: Value = telltale_e2e::api_client()
        .delete(server.url(&format!("/api/connections/{granted_id}/token")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["status"], "needs_reauth", "{cleared}");
    let why = cleared["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("Reconnect needed") && why.contains("no platform was asked"),
        "{cleared}"
    );
    let asked = provider.received_requests().await.unwrap();
    assert!(
        asked.iter().all(|r| r.url.path() != "/grant-token"),
        "no request for a cleared grant"
    );

    let missing = telltale_e2e::api_client()
        .delete(server.url("/api/connections/999999/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The CLI does the same (with the service stopped: SQLite serves one process).
    drop(server);
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", telltale_e2e::TEST_SECRET_KEY),
    ];
    let out = run_cli(&["connections", "clear-token", &id.to_string()], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the next refresh logs in anew"));
    let out = run_cli(&["connections", "show", &id.to_string()], &env);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(shown["status"], "missing", "{shown}");
}
