//! The read API over what the webhooks delivered: devices, sources, events, rejections.

use std::time::Duration;

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, TestDb, TestServer, both_backends, get_json, mdp_reading, milesight_headers, nonce,
    post_with_headers,
};

both_backends!(
    devices_are_listed_filtered_and_paged,
    webhook_health_events_and_rejections,
    bad_queries_get_clear_errors,
    bad_bodies_get_clear_errors,
    silent_devices_go_offline_on_schedule,
);

const CONFIG: &str = r#"
[[milesight.webhooks]]
uuid = "uuid-quiet"
secret = "CANARY-quiet-secret"
source = "quiet-site"
"#;
const SECRET: &str = "CANARY-default-secret";

async fn start(db: &TestDb) -> TestServer {
    let server =
        TestServer::start_with_config(db.url(), CONFIG, &[("MILESIGHT_WEBHOOK_SECRET", SECRET)]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    server
}

async fn deliver(server: &TestServer, path: &str, events: Value) {
    let headers = milesight_headers(SECRET, None, chrono::Utc::now().timestamp(), &nonce());
    let (status, body) = post_with_headers(&server.url(path), &headers, events.to_string()).await;
    assert_eq!(status, 200, "{body}");
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn devices_are_listed_filtered_and_paged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let t = now_ms();
    deliver(
        &server,
        "/webhooks/milesight/site-a",
        json!([
            mdp_reading("a1", "AA-001", "PROPERTY", t, json!({"temperature": 5.0})),
            mdp_reading("a2", "AA-002", "PROPERTY", t, json!({"temperature": 6.0})),
            mdp_reading("a3", "AB_100%", "OFFLINE", t, Value::Null),
        ]),
    )
    .await;
    deliver(
        &server,
        "/webhooks/milesight/site-b",
        json!([mdp_reading("b1", "BB-001", "PROPERTY", t, json!({"co2": 410}))]),
    )
    .await;

    let (status, all) = get_json(&server.url("/api/devices")).await;
    assert_eq!(status, 200);
    assert_eq!(all["total"], 4);
    let sns: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["sn"].as_str().unwrap())
        .collect();
    assert_eq!(
        sns,
        ["AA-001", "AA-002", "AB_100%", "BB-001"],
        "ordered by serial number"
    );
    let first = &all["items"][0];
    assert_eq!(
        first["last_payload"]["temperature"], 5.0,
        "payload as JSON, not text"
    );
    assert_eq!(first["status"], "online");

    let (_, offline) = get_json(&server.url("/api/devices?status=offline")).await;
    assert_eq!(
        (offline["total"].as_i64(), offline["items"][0]["sn"].as_str()),
        (Some(1), Some("AB_100%"))
    );
    let (_, site_b) = get_json(&server.url("/api/devices?source=site-b")).await;
    assert_eq!(site_b["total"], 1);
    let (_, nowhere) = get_json(&server.url("/api/devices?source=nowhere")).await;
    assert_eq!(nowhere["total"], 0);
    // Search matches the start of the serial number, devEUI or name, case-insensitively.
    let (_, search) = get_json(&server.url("/api/devices?search=aa-00")).await;
    assert_eq!(search["total"], 2, "case-insensitive serial prefix: {search}");
    let (_, literal) = get_json(&server.url("/api/devices?search=ab_100%25")).await;
    assert_eq!(literal["total"], 1, "% and _ are literal characters: {literal}");
    let (_, wildcard) = get_json(&server.url("/api/devices?search=a_")).await;
    assert_eq!(wildcard["total"], 0, "_ is no wildcard: {wildcard}");
    let (_, inside) = get_json(&server.url("/api/devices?search=-00")).await;
    assert_eq!(inside["total"], 0, "the start, not anywhere inside: {inside}");
    let (_, by_eui) = get_json(&server.url("/api/devices?search=24d1247")).await;
    assert_eq!(by_eui["total"], 4, "devEUI prefix");
    let (_, by_name) = get_json(&server.url("/api/devices?search=COLD%20R")).await;
    assert_eq!(by_name["total"], 4, "name prefix");

    let (_, page) = get_json(&server.url("/api/devices?limit=2&offset=2")).await;
    let sns: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["sn"].as_str().unwrap())
        .collect();
    assert_eq!(
        (page["total"].as_i64(), sns),
        (Some(4), vec!["AB_100%", "BB-001"])
    );

    // Keyset pages: each full page names the serial number to continue after; together they
    // hold every device once, and the last one says there is no more.
    let mut walked = Vec::new();
    let mut url = server.url("/api/devices?limit=3");
    loop {
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 4, "the total counts the whole filter: {page}");
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["sn"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                url = server.url(&format!(
                    "/api/devices?limit=3&after={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                ))
            }
            None => break,
        }
    }
    assert_eq!(walked, ["AA-001", "AA-002", "AB_100%", "BB-001"]);
    let (status, both) = get_json(&server.url("/api/devices?offset=2&after=AA-001")).await;
    assert_eq!(status, 400, "{both}");

    let id = first["id"].as_i64().unwrap();
    let (status, detail) = get_json(&server.url(&format!("/api/devices/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(detail["device"]["sn"], "AA-001");
    let events = detail["recent_events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_id"], "a1");
    assert_eq!(events[0]["event"]["data"]["payload"]["temperature"], 5.0);

    let (status, missing) = get_json(&server.url("/api/devices/999999")).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

async fn webhook_health_events_and_rejections(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let t = now_ms();
    deliver(
        &server,
        "/webhooks/milesight/site-a",
        json!([mdp_reading("e1", "S1", "PROPERTY", t, json!({}))]),
    )
    .await;
    deliver(
        &server,
        "/webhooks/milesight/site-a",
        json!([mdp_reading("e2", "S1", "PROPERTY", t + 1, json!({}))]),
    )
    .await;
    deliver(
        &server,
        "/webhooks/milesight/site-a",
        json!([{"eventId": "t1", "eventCreatedTime": (t / 1000).to_string(), "eventType": "WEBHOOK_TEST", "data": "Test"}]),
    )
    .await;
    let bad = milesight_headers("wrong", None, t / 1000, &nonce());
    let (status, _) = post_with_headers(&server.url("/webhooks/milesight/site-a"), &bad, "[]").await;
    assert_eq!(status, 401);

    let (status, sources) = get_json(&server.url("/api/webhooks/sources")).await;
    assert_eq!(status, 200);
    let text = sources.to_string();
    assert!(!text.contains("CANARY"), "no secret in the API: {text}");
    let by_name = |name: &str| {
        sources["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    let site_a = by_name("site-a");
    assert_eq!(site_a["status"], "ACTIVE");
    assert_eq!(site_a["events_last_hour"], 3);
    assert_eq!(site_a["events_last_day"], 3);
    assert!(site_a["verified_at"].is_string(), "{site_a}");
    assert!(site_a["last_event_at"].is_string());
    let quiet = by_name("quiet-site");
    assert_eq!(
        (quiet["status"].as_str(), quiet["events_last_day"].as_i64()),
        (Some("WAITING"), Some(0)),
        "set up moments ago and never heard from: waiting for its first event, not stale"
    );
    assert_eq!(quiet["webhook_uuid"], "uuid-quiet");
    assert_eq!(
        (quiet["period_secs"].as_i64(), quiet["grace_secs"].as_i64()),
        (Some(900), Some(300))
    );

    let (_, events) = get_json(&server.url("/api/webhooks/events?source=site-a&limit=2")).await;
    let ids: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1", "e2"], "newest first, limited");
    assert_eq!(events["items"][1]["event"]["eventId"], "e2");
    let (status, _) = get_json(&server.url("/api/webhooks/events?source=nowhere")).await;
    assert_eq!(status, 404);

    let (_, rejections) = get_json(&server.url("/api/webhooks/rejections")).await;
    let items = rejections["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], 401);
    assert!(items[0]["reason"].as_str().unwrap().starts_with("bad_signature"));
    assert_eq!(
        items[0]["headers"]["x-msc-request-nonce"]
            .as_str()
            .map(|n| n.starts_with("n-")),
        Some(true)
    );
}

async fn bad_queries_get_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    for path in [
        "/api/devices?limit=0",
        "/api/devices?limit=100000",
        "/api/devices?limit=abc",
        "/api/devices?offset=-1",
        "/api/devices?offset=99999999999999999999",
        "/api/devices?status=sleeping",
        "/api/devices?colour=red",
        "/api/devices/not-a-number",
        "/api/webhooks/events?limit=-5",
        "/api/webhooks/rejections?limit=1e9",
    ] {
        let (status, body) = get_json(&server.url(path)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("invalid_")),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
}

/// The device check runs on its cron schedule inside the service (every second here) and
/// marks a device offline once it has been silent for interval × factor (1 s × 2).
async fn silent_devices_go_offline_on_schedule(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start_with_config(
        db.url(),
        CONFIG,
        &[
            ("MILESIGHT_WEBHOOK_SECRET", SECRET),
            ("MILESIGHT_DEVICE_CHECK_SCHEDULE", "* * * * * *"),
            ("MILESIGHT_DEVICE_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    deliver(
        &server,
        "/webhooks/milesight",
        json!([mdp_reading("r1", "QUIET-1", "PROPERTY", now_ms(), json!({}))]),
    )
    .await;
    let (_, listed) = get_json(&server.url("/api/devices?search=QUIET")).await;
    assert_eq!(listed["items"][0]["status"], "online");

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, listed) = get_json(&server.url("/api/devices?search=QUIET")).await;
        if listed["items"][0]["status"] == "offline" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device never went offline:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.log_text().contains("marked offline"),
        "{}",
        server.log_text()
    );

    let direct = db.open_migrated().await;
    let states = telltale::storage::jobs::list(&direct).await.unwrap();
    let check = states
        .iter()
        .find(|j| j.name == "milesight-device-check")
        .expect("job state recorded");
    assert_eq!(check.schedule, "* * * * * *");
    assert!(
        check.last_result.as_deref().is_some_and(|r| r.starts_with("ok:")),
        "{check:?}"
    );
    assert!(
        check.next_run_at.is_some() && check.last_run_at.is_some(),
        "{check:?}"
    );
    let retention = states
        .iter()
        .find(|j| j.name == "milesight-retention")
        .expect("retention job registered");
    assert_eq!(retention.schedule, "0 30 3 * * *");
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains(r#"telltale_scheduler_job_runs_total{job="milesight-device-check",outcome="success"}"#),
        "{metrics}"
    );
}

/// Every endpoint that takes a JSON body, fed what a broken client or an attacker sends:
/// not JSON, the wrong shape, wrong types, unknown fields, absurd numbers, a very long string.
/// Each gets a 4xx in the one error shape, never a 5xx, and nothing is created.
async fn bad_bodies_get_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let long = "x".repeat(300_000);
    let bodies = [
        "{".to_owned(),
        "[]".to_owned(),
        "\"just a string\"".to_owned(),
        r#"{"unexpected_field": 1}"#.to_owned(),
        r#"{"account": 12, "provider": ["oauth2_refresh"], "name": {"a": 1}}"#.to_owned(),
        r#"{"email": 5, "password": false, "role": "root"}"#.to_owned(),
        r#"{"matchers": "all", "ends_at": "tomorrow", "duration_secs": 1e309}"#.to_owned(),
        r#"{"job": "token-refresh-sweep", "action": "explode", "enabled": "yes"}"#.to_owned(),
        format!(r#"{{"account": "acme", "provider": "oauth2_refresh", "name": "{long}"}}"#),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
    ];
    let endpoints = [
        ("POST", "/api/connections"),
        ("PATCH", "/api/connections/1"),
        ("POST", "/api/users"),
        ("POST", "/api/api-tokens"),
        ("POST", "/api/silences"),
        ("POST", "/api/scheduler"),
        ("PATCH", "/api/polling/1/repos"),
        ("POST", "/api/alerts/test-email"),
    ];
    for (method, path) in endpoints {
        for body in &bodies {
            let resp = telltale_e2e::api_client()
                .request(method.parse().unwrap(), server.url(path))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let shown = &body[..body.len().min(60)];
            // test-email takes no body: it may ignore one, but must not fail on it.
            if path == "/api/alerts/test-email" && status < 300 {
                continue;
            }
            assert!(
                (400..500).contains(&status),
                "{method} {path} {shown}: {status} {text}"
            );
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path} {shown}: not JSON: {text}"));
            assert!(
                json["error"]["code"].is_string() && json["error"]["message"].is_string(),
                "{method} {path} {shown}: {json}"
            );
            assert!(!text.contains(&long[..1000]), "the long value is not echoed back");
        }
    }
    let (_, connections) = get_json(&server.url("/api/connections")).await;
    assert_eq!(
        connections["items"].as_array().map(Vec::len),
        Some(0),
        "{connections}"
    );
    let (_, silences) = get_json(&server.url("/api/silences")).await;
    assert_eq!(silences["items"].as_array().map(Vec::len), Some(0), "{silences}");
}
