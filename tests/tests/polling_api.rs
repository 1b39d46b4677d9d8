//! Polling through the built binary: the scheduled sweep, `/api/polling`, "poll now", per-pair
//! switches, `/api/platform-data`, the cron endpoint and `telltale poll`. Both backends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, TEST_SECRET_KEY, TestDb, TestServer, both_backends, get_json, post_with_headers, run_cli,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    the_service_polls_on_schedule_and_on_request,
    the_cron_endpoint_and_cli_poll
);

const CRON: &str = "CANARY-cron-secret-0123456789";

async fn fake_spotify() -> MockServer {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"items": [{"n": 1}, {"n": 2}], "next": null})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/top/tracks"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&api)
        .await;
    api
}

async fn add_spotify(server: &TestServer, api: &MockServer, name: &str) -> i64 {
    let body = json!({
        "account": "acme", "provider": "oauth2_refresh", "name": name,
        "settings": {"preset": "spotify", "api_base_url": api.uri()},
        "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
        "access_token": "CANARY-access", "refresh_token": "CANARY-refresh",
        "expires_at": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
    });
    let (code, created) = post_with_headers(
        &server.url("/api/connections"),
        &[("content-type".into(), "application/json".into())],
        body.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    created["id"].as_i64().unwrap()
}

fn pair<'a>(listing: &'a Value, endpoint: &str) -> &'a Value {
    listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no {endpoint} in {listing}"))
}

async fn the_service_polls_on_schedule_and_on_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let api = fake_spotify().await;
    let env = [
        ("TELLTALE_POLL_SWEEP_SCHEDULE", "* * * * * *"),
        ("TELLTALE_POLL_MAX_ATTEMPTS", "1"),
    ];
    let server = TestServer::start(db.url(), &env).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let id = add_spotify(&server, &api, "spotify").await;

    // The every-second sweep polls both endpoints of the new connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listing = loop {
        let (code, listing) = get_json(&server.url("/api/polling")).await;
        assert_eq!(code, 200);
        let done = listing["items"]
            .as_array()
            .is_some_and(|items| items.len() == 2 && items.iter().all(|p| p["last_run_at"].is_string()));
        if done {
            break listing;
        }
        assert!(
            Instant::now() < deadline,
            "not polled: {listing}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recent = pair(&listing, "recently_played");
    assert_eq!(
        (recent["last_status"].as_str(), recent["last_items"].as_i64()),
        (Some("ok"), Some(2))
    );
    assert_eq!(recent["schedule"], "0 */15 * * * *");
    assert!(recent["next_due_at"].is_string());
    let top = pair(&listing, "top_tracks");
    assert_eq!(
        (top["last_status"].as_str(), top["last_http_status"].as_i64()),
        (Some("failed"), Some(500))
    );
    assert_eq!(top["consecutive_failures"], 1);

    let (code, data) = get_json(&server.url(&format!(
        "/api/platform-data?connection={id}&endpoint=recently_played"
    )))
    .await;
    assert_eq!(code, 200);
    assert_eq!(data["items"][0]["item_count"], 2);
    assert_eq!(data["items"][0]["payload"][1]["n"], 2);

    // Poll now: answered with the run's result.
    let url = server.url(&format!("/api/polling/{id}/recently_played/run"));
    let (code, ran) = post_with_headers(&url, &[], "").await;
    assert_eq!(
        (
            code,
            ran["result"]["outcome"].as_str(),
            ran["result"]["stored"].as_bool()
        ),
        (200, Some("ok"), Some(false)),
        "{ran}"
    );
    let (code, ran) =
        post_with_headers(&server.url(&format!("/api/polling/{id}/top_tracks/run")), &[], "").await;
    assert_eq!((code, ran["result"]["outcome"].as_str()), (502, Some("failed")));
    let (code, body) = post_with_headers(&server.url(&format!("/api/polling/{id}/nope/run")), &[], "").await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")));

    // Switch a pair off and give the other its own schedule.
    let client = telltale_e2e::api_client();
    let patch = |endpoint: &str, body: Value| {
        client
            .patch(server.url(&format!("/api/polling/{id}/{endpoint}")))
            .json(&body)
            .send()
    };
    let resp = patch("top_tracks", json!({"enabled": false})).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = patch("recently_played", json!({"schedule": "0 0 * * * *"}))
        .await
        .unwrap();
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(changed["schedule"], "0 0 * * * *");
    // Standard crontab syntax, as the original scripts wrote it, runs at second 0.
    let resp = patch("recently_played", json!({"schedule": "*/20 * * * *"}))
        .await
        .unwrap();
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(changed["schedule"], "0 */20 * * * *");
    let resp = patch("recently_played", json!({"schedule": "every minute"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (_, listing) = get_json(&server.url("/api/polling")).await;
    assert_eq!(pair(&listing, "top_tracks")["enabled"], false);
    assert!(pair(&listing, "top_tracks")["next_due_at"].is_null());

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            r#"telltale_poll_runs_total{endpoint="recently_played",outcome="ok",platform="spotify"}"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("CANARY") && !server.log_text().contains("CANARY"));
    assert!(!listing.to_string().contains("CANARY"));
}

async fn the_cron_endpoint_and_cli_poll(backend: Backend) {
    let db = TestDb::new(backend).await;
    let api = fake_spotify().await;
    // The service's own sweep stays out of the way (once a year).
    let server = TestServer::start(
        db.url(),
        &[
            ("CRON_SECRET", CRON),
            ("TELLTALE_POLL_SWEEP_SCHEDULE", "0 0 0 1 1 *"),
            ("TELLTALE_POLL_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    add_spotify(&server, &api, "first").await;

    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ("TELLTALE_POLL_MAX_ATTEMPTS", "1"),
    ];
    let dry = run_cli(&["poll", "--dry-run"], &env);
    let stdout = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(dry.status.success(), "{dry:?}");
    assert_eq!(stdout.matches("would_poll").count(), 2, "{stdout}");
    assert!(
        api.received_requests().await.unwrap().is_empty(),
        "a dry run calls nothing"
    );

    let polled = run_cli(&["poll", "--provider", "spotify"], &env);
    let stdout = String::from_utf8_lossy(&polled.stdout).into_owned();
    assert_eq!(
        polled.status.code(),
        Some(1),
        "a failed poll fails the command: {polled:?}"
    );
    assert!(stdout.contains("1 ok, 1 failed"), "{stdout}");
    let ok_line = stdout.lines().find(|l| l.contains("recently_played")).unwrap();
    assert!(ok_line.contains(" ok ") && ok_line.contains("new"), "{ok_line}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("top_tracks") && l.contains("HTTP 500")),
        "{stdout}"
    );
    assert!(!stdout.contains("CANARY"));

    let client = telltale_e2e::api_client();
    let resp = client
        .post(server.url("/api/cron/platform-polling"))
        .bearer_auth("wrong-secret-wrong-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let refused: Value = resp.json().await.unwrap();
    assert_eq!(
        (refused["success"].as_bool(), refused["error"]["code"].as_str()),
        (Some(false), Some("unauthorized"))
    );
    let cron = || async {
        let resp = client
            .get(server.url("/api/cron/platform-polling"))
            .bearer_auth(CRON)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    assert_eq!(cron().await["polls"], 0, "what the CLI polled is not due again");
    add_spotify(&server, &api, "second").await;
    let report = cron().await;
    assert_eq!(
        (
            report["users"].as_i64(),
            report["connections"].as_i64(),
            report["succeeded"].as_i64(),
            report["failed"].as_i64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{report}"
    );
    assert!(report["timestamp"].is_string());
    // The original polling script's fields, for callers written against it.
    assert_eq!(report["cronType"], "platform-polling");
    assert_eq!(report["success"], false, "one poll failed: {report}");
    assert_eq!(
        (
            report["userCount"].as_i64(),
            report["platformCount"].as_i64(),
            report["pollsSuccessful"].as_i64(),
            report["pollsFailed"].as_i64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{report}"
    );
    let ok = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["outcome"] == "ok")
        .unwrap();
    assert_eq!(ok["items"], 2);
}
