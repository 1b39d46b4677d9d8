//! Milesight webhook intake end to end: the real binary, signed requests, both backends.

use std::time::Duration;

use serde_json::{Value, json};
use telltale::storage::{Db, deliveries, devices};
use telltale_e2e::mdp_reading as reading;
use telltale_e2e::{
    Backend, TcpProxy, TestDb, TestServer, both_backends, milesight_headers, nonce, post_with_headers,
};

both_backends!(
    signed_events_are_stored_once_with_device_state,
    every_event_type_is_stored_and_acted_on,
    bad_requests_are_refused_and_kept_for_inspection,
    sources_follow_path_and_webhook_uuid,
    acknowledged_events_survive_a_killed_process,
    a_concurrent_burst_is_stored_exactly_once,
    a_rotated_secret_accepts_the_previous_one_meanwhile,
    shutdown_under_webhook_load_stores_every_acknowledged_event,
);

const SITE_A_SECRET: &str = "site-a-secret";
const DEFAULT_SECRET: &str = "default-secret";

const CONFIG: &str = r#"
[milesight]
max_body_bytes = 4096
rejections_kept = 50

[[milesight.webhooks]]
uuid = "uuid-site-a"
secret = "site-a-secret"
source = "site-a"
"#;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn start(db: &TestDb) -> TestServer {
    let server =
        TestServer::start_with_config(db.url(), CONFIG, &[("MILESIGHT_WEBHOOK_SECRET", DEFAULT_SECRET)])
            .await;
    server.wait_ready(Duration::from_secs(30)).await;
    server
}

async fn post(
    server: &TestServer,
    path: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    post_with_headers(&server.url(path), headers, body).await
}

async fn post_signed(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let headers = milesight_headers(DEFAULT_SECRET, None, now_secs(), &nonce());
    post(server, path, &headers, body.to_string()).await
}

async fn open_db(db: &TestDb) -> Db {
    db.open_migrated().await
}

async fn signed_events_are_stored_once_with_device_state(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let server = start(&test_db).await;
    let t = now_secs() * 1000;

    // An array of two readings from one device, signed with the default secret.
    let batch = json!([
        reading(
            "ev-1",
            "SN-100",
            "PROPERTY",
            t - 60_000,
            json!({"temperature": 3.9, "battery": 88})
        ),
        reading(
            "ev-2",
            "SN-100",
            "PROPERTY",
            t,
            json!({"temperature": 4.1, "battery": 87})
        ),
    ]);
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["stored"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(0))
    );

    // MDP delivering the same events again (new signature, same event ids) is acknowledged, not stored twice.
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["stored"].as_u64(), body["duplicates"].as_u64()),
        (Some(0), Some(2))
    );

    // A single object (the documented shape) with the other field spellings and a numeric deviceId.
    let single = json!({
        "eventID": "ev-3", "eventCreatedTime": now_secs(), "eventType": "DEVICE_DATA",
        "data": {"deviceProfile": {"deviceId": 1904371063669395458_u64, "sn": "SN-200"}, "type": "ONLINE", "tslID": ""}
    });
    let (status, body) = post_signed(&server, "/webhooks/milesight", &single).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(1)), "{body}");

    let db = open_db(&test_db).await;
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    let events = deliveries::recent_events(&db, source.id, 10).await.unwrap();
    assert_eq!(events.len(), 3, "each event stored exactly once");
    let stored: Value = serde_json::from_str(&events[2].payload).unwrap();
    assert_eq!(
        stored["data"]["payload"]["temperature"], 3.9,
        "the event is stored as received"
    );
    assert!(source.last_event_at.is_some());

    let all = devices::list(&db, 10, 0).await.unwrap();
    let sn100 = all.iter().find(|d| d.sn == "SN-100").unwrap();
    assert_eq!(sn100.status.as_str(), "online");
    assert_eq!(sn100.model.as_deref(), Some("EM300-TH"));
    assert_eq!(sn100.dev_eui.as_deref(), Some("24D124707E04AAAA"));
    assert_eq!(sn100.mdp_device_id.as_deref(), Some("1904371063669395457"));
    assert_eq!(sn100.battery, Some(87), "latest reading wins");
    assert_eq!(sn100.last_seen_at.map(|t| t.timestamp_millis()), Some(t));
    let payload: Value = serde_json::from_str(sn100.last_payload.as_deref().unwrap()).unwrap();
    assert_eq!(payload["temperature"], 4.1);
    assert_eq!(sn100.source_id, Some(source.id));
    let sn200 = all.iter().find(|d| d.sn == "SN-200").unwrap();
    assert_eq!(
        sn200.mdp_device_id.as_deref(),
        Some("1904371063669395458"),
        "64-bit id kept exactly"
    );

    // An OFFLINE event marks the device offline.
    let offline = json!([reading("ev-4", "SN-100", "OFFLINE", t + 1000, Value::Null)]);
    assert_eq!(post_signed(&server, "/webhooks/milesight", &offline).await.0, 200);
    assert_eq!(
        devices::get(&db, sn100.id).await.unwrap().status.as_str(),
        "offline"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"telltale_webhook_events_total{outcome="stored",source="default"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"telltale_webhook_events_total{outcome="duplicate",source="default"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"telltale_webhook_requests_total{outcome="accepted",source="default"} 4"#),
        "{metrics}"
    );
}

async fn every_event_type_is_stored_and_acted_on(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let server = start(&test_db).await;
    let created = now_secs().to_string();
    let batch = json!([
        {"eventId": "t-1", "eventCreatedTime": created, "eventType": "WEBHOOK_TEST", "data": "Test Milesight Webhook Successfully."},
        {"eventId": "k-1", "eventCreatedTime": created, "eventType": "TASK_DATA",
         "data": {"type": "CONFIG", "info": {"taskId": "42", "deviceId": "1", "status": "SUCCESS", "errCode": null, "subcommand": []}}},
        {"eventId": "s-1", "eventCreatedTime": created, "eventType": "SYSTEM_MESSAGES",
         "data": {"type": "SERVICE_NOTICE", "message": {"errCode": "push_limit", "info": "daily webhook push limit reached"}}},
        {"eventId": "x-1", "eventCreatedTime": created, "eventType": "BRAND_NEW_TYPE", "data": {"anything": [1, 2]}},
        reading("p-1", "SN-1", "EVENT", now_secs() * 1000, json!({"alarm": "line_crossing"})),
        reading("p-2", "SN-1", "SERVICE", now_secs() * 1000, json!({"result": "ok"})),
    ]);
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(6)), "{body}");

    let db = open_db(&test_db).await;
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    assert!(
        source.verified_at.is_some(),
        "WEBHOOK_TEST marks the source verified"
    );
    let notice = source
        .last_system_notice
        .expect("SYSTEM_MESSAGES is kept on the source");
    assert!(notice.contains("daily webhook push limit"), "{notice}");
    assert!(source.last_system_notice_at.is_some());
    let types: Vec<String> = deliveries::recent_events(&db, source.id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    for t in [
        "WEBHOOK_TEST",
        "TASK_DATA",
        "SYSTEM_MESSAGES",
        "BRAND_NEW_TYPE",
        "DEVICE_DATA",
    ] {
        assert!(types.iter().any(|s| s == t), "{t} stored: {types:?}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"telltale_milesight_system_notices_total{source="default"} 1"#),
        "{metrics}"
    );
    assert!(
        server.log_text().contains("Milesight system notice"),
        "raised loudly in the log"
    );
}

/// A refused request: name, headers, body, expected status and error code.
type Case = (
    &'static str,
    Vec<(String, String)>,
    reqwest::Body,
    u16,
    &'static str,
);

async fn bad_requests_are_refused_and_kept_for_inspection(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let server = start(&test_db).await;
    let body = json!([reading(
        "bad-1",
        "SN-9",
        "PROPERTY",
        now_secs() * 1000,
        json!({"t": 1})
    )])
    .to_string();
    let good = |ts: i64| milesight_headers(DEFAULT_SECRET, None, ts, &nonce());
    let mut wrong_content_type = good(now_secs());
    wrong_content_type[0].1 = "text/plain".into();
    let replay = good(now_secs());
    let mut with_credentials = good(now_secs());
    with_credentials[3].1 = "0".repeat(64); // [content-type, timestamp, nonce, signature]
    with_credentials.push(("authorization".into(), "Bearer CANARY-other-system-token".into()));

    assert_eq!(
        post(&server, "/webhooks/milesight", &replay, body.clone())
            .await
            .0,
        200
    );
    let cases: Vec<Case> = vec![
        (
            "unsigned",
            vec![("content-type".into(), "application/json".into())],
            body.clone().into(),
            401,
            "missing_signature",
        ),
        (
            "bad signature",
            with_credentials,
            body.clone().into(),
            401,
            "bad_signature",
        ),
        (
            "signed with another secret",
            milesight_headers("nope", None, now_secs(), &nonce()),
            body.clone().into(),
            401,
            "bad_signature",
        ),
        (
            "old timestamp",
            good(now_secs() - 330),
            body.clone().into(),
            400,
            "request_expired",
        ),
        (
            "future timestamp",
            good(now_secs() + 330),
            body.clone().into(),
            400,
            "request_expired",
        ),
        (
            "replayed nonce",
            replay,
            body.clone().into(),
            409,
            "replayed_nonce",
        ),
        (
            "oversize",
            good(now_secs()),
            format!("[{}]", " ".repeat(5000)).into(),
            413,
            "too_large",
        ),
        (
            "malformed",
            good(now_secs()),
            "[{\"eventId\": ".to_owned().into(),
            400,
            "malformed",
        ),
        (
            "truncated",
            good(now_secs()),
            body[..body.len() / 2].to_owned().into(),
            400,
            "malformed",
        ),
        (
            "non-UTF-8",
            good(now_secs()),
            vec![0x5b, 0xff, 0xfe, 0x5d].into(),
            400,
            "malformed",
        ),
        (
            "deeply nested",
            good(now_secs()),
            ("[".repeat(1000) + &"]".repeat(1000)).into(),
            400,
            "malformed",
        ),
        (
            "no event id",
            good(now_secs()),
            r#"[{"eventType":"DEVICE_DATA"}]"#.to_owned().into(),
            400,
            "invalid_event",
        ),
        (
            "wrong content type",
            wrong_content_type,
            body.clone().into(),
            415,
            "unsupported_media_type",
        ),
    ];
    let rejected_cases = cases.len();
    for (name, headers, request_body, status, code) in cases {
        let (got, response) = post(&server, "/webhooks/milesight", &headers, request_body).await;
        assert_eq!(got, status, "{name}: {response}");
        assert_eq!(response["error"]["code"], code, "{name}: {response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let (status, response) = post_signed(&server, "/webhooks/milesight/bad%20name", &json!([])).await;
    assert_eq!(
        (status, response["error"]["code"].as_str()),
        (400, Some("invalid_source"))
    );

    let db = open_db(&test_db).await;
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    assert_eq!(
        deliveries::recent_events(&db, source.id, 10).await.unwrap().len(),
        1,
        "nothing rejected was stored"
    );
    let rejections = deliveries::recent_rejections(&db, 100).await.unwrap();
    assert_eq!(rejections.len(), rejected_cases + 1, "every rejection is kept");
    let bad_signature = rejections
        .iter()
        .find(|r| r.reason.starts_with("bad_signature"))
        .unwrap();
    assert_eq!(bad_signature.status, 401);
    assert!(
        bad_signature.headers.contains("x-msc-request-nonce"),
        "{}",
        bad_signature.headers
    );
    assert!(
        !bad_signature.headers.contains("CANARY"),
        "credentials of other systems are not kept"
    );
    assert!(bad_signature.body_excerpt.contains("bad-1"));
    let oversize = rejections
        .iter()
        .find(|r| r.reason.starts_with("too_large"))
        .unwrap();
    assert_eq!(oversize.status, 413);
    assert!(oversize.body_size > 4096);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"telltale_webhook_requests_total{outcome="bad_signature",source="default"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"telltale_webhook_requests_total{outcome="too_large",source="default"} 1"#),
        "{metrics}"
    );
}

async fn sources_follow_path_and_webhook_uuid(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let server = start(&test_db).await;
    let batch = |id: &str| {
        json!([reading(
            id,
            "SN-S",
            "PROPERTY",
            now_secs() * 1000,
            json!({"t": 1})
        )])
        .to_string()
    };

    // A configured webhook's uuid selects its secret and its source.
    let site_a = milesight_headers(SITE_A_SECRET, Some("uuid-site-a"), now_secs(), &nonce());
    let (status, body) = post(&server, "/webhooks/milesight", &site_a, batch("a")).await;
    assert_eq!((status, body["source"].as_str()), (200, Some("site-a")), "{body}");
    let site_a = milesight_headers(SITE_A_SECRET, Some("uuid-site-a"), now_secs(), &nonce());
    assert_eq!(
        post(&server, "/webhooks/milesight/site-a", &site_a, batch("a2"))
            .await
            .0,
        200
    );
    // ...and refuses another source's path.
    let site_a = milesight_headers(SITE_A_SECRET, Some("uuid-site-a"), now_secs(), &nonce());
    let (status, body) = post(&server, "/webhooks/milesight/site-b", &site_a, batch("a3")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("wrong_source")),
        "{body}"
    );
    // The site-a secret under an unknown uuid falls back to the default secret, and fails.
    let wrong = milesight_headers(SITE_A_SECRET, Some("uuid-unknown"), now_secs(), &nonce());
    assert_eq!(
        post(&server, "/webhooks/milesight", &wrong, batch("a4")).await.0,
        401
    );

    // The default secret serves any path source, each its own source with its own event ids.
    let (status, body) = post_signed(
        &server,
        "/webhooks/milesight/site-b",
        &serde_json::from_str(&batch("a")).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["source"].as_str(), body["stored"].as_u64()),
        (200, Some("site-b"), Some(1)),
        "{body}"
    );

    let db = open_db(&test_db).await;
    let a = deliveries::source_by_name(&db, "site-a").await.unwrap();
    assert_eq!(
        a.webhook_uuid.as_deref(),
        Some("uuid-site-a"),
        "configured sources are recorded at start-up"
    );
    assert!(a.secret.is_some(), "with the secret sealed");
    assert_eq!(deliveries::recent_events(&db, a.id, 10).await.unwrap().len(), 2);
    let b = deliveries::source_by_name(&db, "site-b").await.unwrap();
    assert_eq!(deliveries::recent_events(&db, b.id, 10).await.unwrap().len(), 1);

    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = reqwest::Client::new()
            .request(method.clone(), server.url("/webhooks/milesight/site-a"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} probe");
    }
}

/// A ready server on a fresh PostgreSQL database reached through a proxy the test can cut;
/// `acquire_timeout_secs` bounds how long a request waits for a connection before its 503.
async fn start_behind_proxy(acquire_timeout_secs: &str) -> (TestDb, TcpProxy, TestServer) {
    let test_db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start(test_db.pg_server_addr()).await;
    let server = TestServer::start_with_config(
        &test_db.url_via(proxy.addr),
        CONFIG,
        &[
            ("MILESIGHT_WEBHOOK_SECRET", DEFAULT_SECRET),
            ("TELLTALE_DB_ACQUIRE_TIMEOUT_SECS", acquire_timeout_secs),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    (test_db, proxy, server)
}

/// PostgreSQL: the database drops out under the intake. Requests get 503 (so MDP retries),
/// nothing is half-stored, and a retry after recovery stores everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_loses_nothing_postgres() {
    let (test_db, proxy, server) = start_behind_proxy("2").await;
    let t = now_secs() * 1000;
    let batch = json!([
        reading("o-1", "SN-O", "PROPERTY", t, json!({"t": 1})),
        reading("o-2", "SN-O", "PROPERTY", t + 1, json!({"t": 2})),
    ]);
    assert_eq!(
        post_signed(
            &server,
            "/webhooks/milesight",
            &json!([reading("o-0", "SN-O", "PROPERTY", t - 1, json!({}))])
        )
        .await
        .0,
        200
    );

    proxy.cut();
    let headers = milesight_headers(DEFAULT_SECRET, None, now_secs(), &nonce());
    let mut request = reqwest::Client::new()
        .post(server.url("/webhooks/milesight"))
        .body(batch.to_string());
    for (k, v) in &headers {
        request = request.header(k, v);
    }
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().contains_key("retry-after"),
        "tells the sender when to retry"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");

    proxy.restore();
    server.wait_ready(Duration::from_secs(30)).await;
    let direct = test_db.open_migrated().await;
    let source = deliveries::source_by_name(&direct, "default").await.unwrap();
    assert_eq!(
        deliveries::recent_events(&direct, source.id, 10)
            .await
            .unwrap()
            .len(),
        1,
        "nothing from the failed request"
    );

    // MDP retries; every event arrives exactly once.
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(
        deliveries::recent_events(&direct, source.id, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"telltale_webhook_requests_total{outcome="unavailable",source="default"} 1"#),
        "{metrics}"
    );
}

/// SQLite: another process (a backup, the sqlite3 shell) holds the write lock past the busy
/// timeout. Requests get 503 (so MDP retries) and nothing is half-stored; once the lock is
/// released, the webhook writer carries on and the retry is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_503_and_loses_nothing_sqlite() {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;

    let test_db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start_with_config(
        test_db.url(),
        CONFIG,
        &[
            ("MILESIGHT_WEBHOOK_SECRET", DEFAULT_SECRET),
            ("TELLTALE_SQLITE_BUSY_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let t = now_secs() * 1000;
    let first = json!([reading("l-0", "SN-L", "PROPERTY", t - 1, json!({}))]);
    assert_eq!(post_signed(&server, "/webhooks/milesight", &first).await.0, 200);

    let path = test_db.url().trim_start_matches("sqlite://").to_owned();
    let mut holder = diesel::SqliteConnection::establish(&path).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let batch = json!([
        reading("l-1", "SN-L", "PROPERTY", t, json!({"t": 1})),
        reading("l-2", "SN-L", "PROPERTY", t + 1, json!({"t": 2})),
    ]);
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("database_unavailable")),
        "{body}"
    );
    holder.batch_execute("ROLLBACK").unwrap();
    drop(holder);

    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(2)), "{body}");
    let direct = test_db.open_migrated().await;
    let source = deliveries::source_by_name(&direct, "default").await.unwrap();
    let mut ids: Vec<String> = deliveries::recent_events(&direct, source.id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["l-0", "l-1", "l-2"], "each once");
}

/// Acknowledged means committed: after a 200, even SIGKILL loses nothing, and a restarted
/// service knows every device's state.
async fn acknowledged_events_survive_a_killed_process(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let mut server = start(&test_db).await;
    let t = now_secs() * 1000;
    let batch = json!([reading(
        "k1",
        "SN-K",
        "PROPERTY",
        t,
        json!({"temperature": 7.5, "battery": 64})
    )]);
    assert_eq!(post_signed(&server, "/webhooks/milesight", &batch).await.0, 200);
    let status = server.signal_and_wait("KILL", Duration::from_secs(10)).await;
    assert!(!status.success(), "killed, not shut down");
    drop(server);

    let server = start(&test_db).await;
    let (_, listed) = telltale_e2e::get_json(&server.url("/api/devices?search=SN-K")).await;
    let device = &listed["items"][0];
    assert_eq!(
        (device["status"].as_str(), device["battery"].as_i64()),
        (Some("online"), Some(64)),
        "{listed}"
    );
    assert_eq!(device["last_payload"]["temperature"], 7.5);
    // The event id is remembered too: a redelivery after the restart is a duplicate.
    let (status, body) = post_signed(&server, "/webhooks/milesight", &batch).await;
    assert_eq!((status, body["duplicates"].as_u64()), (200, Some(1)), "{body}");
}

/// Many senders at once (so the writer commits them in groups), with events repeated across
/// requests: every acknowledged event is stored, once, and the acknowledgements add up.
async fn a_concurrent_burst_is_stored_exactly_once(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let server = start(&test_db).await;
    let t = now_secs() * 1000;
    let requests: u32 = 300;
    let distinct_ids = std::collections::HashSet::<String>::from_iter(
        (0..requests).flat_map(|r| (0..(r % 4 + 1)).map(move |i| format!("burst-{}-{i}", r - r % 10))),
    );
    let sends = (0..requests).map(|r| {
        // Every tenth request is new; the nine after it repeat its ids (some with more events).
        let events: Vec<Value> = (0..(r % 4 + 1))
            .map(|i| {
                reading(
                    &format!("burst-{}-{i}", r - r % 10),
                    &format!("SN-{}", r % 7),
                    "PROPERTY",
                    t + r as i64,
                    json!({"temperature": r}),
                )
            })
            .collect();
        let url = server.url("/webhooks/milesight");
        async move {
            let headers = milesight_headers(DEFAULT_SECRET, None, now_secs(), &nonce());
            post_with_headers(&url, &headers, Value::Array(events).to_string()).await
        }
    });
    let mut stored = 0;
    let mut acknowledged = 0;
    let mut sends = sends.peekable();
    while sends.peek().is_some() {
        let mut wave = tokio::task::JoinSet::new();
        for send in sends.by_ref().take(50) {
            wave.spawn(send);
        }
        for (status, body) in wave.join_all().await {
            assert_eq!(status, 200, "{body}");
            let (new, repeated) = (body["stored"].as_u64(), body["duplicates"].as_u64());
            stored += new.unwrap_or_default();
            acknowledged += new.unwrap_or_default() + repeated.unwrap_or_default();
        }
    }
    let total_events: u64 = (0..requests).map(|r| (r % 4 + 1) as u64).sum();
    assert_eq!(acknowledged, total_events, "every event is answered for");
    assert_eq!(
        stored as usize,
        distinct_ids.len(),
        "each distinct event stored once"
    );
    let db = open_db(&test_db).await;
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    let events = deliveries::recent_events(&db, source.id, 10_000).await.unwrap();
    let in_db: std::collections::HashSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(events.len(), distinct_ids.len(), "no duplicates in the database");
    assert_eq!(in_db, distinct_ids, "nothing acknowledged is missing");
    assert_eq!(devices::list(&db, 100, 0).await.unwrap().len(), 7);

    // The writer did share commits between requests (it is what makes bursts cheap).
    let metrics = server.metrics().await;
    let sample = |name: &str| {
        telltale_e2e::metric_sample(&metrics, name, &[])
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let (requests_committed, commits) = (
        sample("telltale_webhook_commit_requests_sum"),
        sample("telltale_webhook_commit_requests_count"),
    );
    assert_eq!(requests_committed, f64::from(requests));
    assert!(
        commits < requests_committed,
        "{commits} commits for {requests_committed} requests"
    );
}

/// Rotating a webhook's secret without losing deliveries: while `previous_secret` is set,
/// requests signed with either secret are accepted (and those with the old one counted, so
/// the operator sees when it is no longer used); any other secret is still refused.
async fn a_rotated_secret_accepts_the_previous_one_meanwhile(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let config = r#"
[[milesight.webhooks]]
uuid = "uuid-site-a"
secret = "new-secret"
previous_secret = "old-secret"
source = "site-a"
"#;
    let server = TestServer::start_with_config(test_db.url(), config, &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let t = now_secs() * 1000;
    let send = |secret: &'static str, id: &'static str| {
        let headers = milesight_headers(secret, Some("uuid-site-a"), now_secs(), &nonce());
        let body = json!([reading(id, "SN-R", "PROPERTY", t, json!({}))]).to_string();
        let url = server.url("/webhooks/milesight");
        async move { post_with_headers(&url, &headers, body).await }
    };
    let (status, body) = send("new-secret", "r-1").await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = send("old-secret", "r-2").await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = send("other-secret", "r-3").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );

    let metrics = server.metrics().await;
    assert_eq!(
        telltale_e2e::metric_sample(
            &metrics,
            "telltale_webhook_previous_secret_total",
            &[("source", "site-a")]
        ),
        Some(1.0),
        "{metrics}"
    );
    for secret in ["new-secret", "old-secret", "other-secret"] {
        assert!(!server.log_text().contains(secret), "{secret} in the logs");
        assert!(!metrics.contains(secret), "{secret} in the metrics");
    }
}

/// PostgreSQL stops answering while webhooks keep arriving from eight senders, then comes
/// back. Every request gets 200 or 503 (never a hang or another error), `/readyz` goes red
/// during the outage, every acknowledged event is stored exactly once, and the service
/// recovers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_under_load_loses_nothing_postgres() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (test_db, proxy, server) = start_behind_proxy("1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let url = server.url("/webhooks/milesight");
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..8 {
        let (stop, url) = (stop.clone(), url.clone());
        senders.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("load-{sender}-{n}");
                let body = json!([reading(
                    &id,
                    &format!("SN-L{sender}"),
                    "PROPERTY",
                    now_secs() * 1000,
                    json!({"n": n})
                )]);
                let mut request = client.post(&url).body(body.to_string());
                for (k, v) in milesight_headers(DEFAULT_SECRET, None, now_secs(), &nonce()) {
                    request = request.header(k, v);
                }
                let status = match request.send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(e) => panic!("{id}: no answer: {e}"),
                };
                answers.push((id, status));
                if status == 503 {
                    // As MDP would: back off a little before the next delivery.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            answers
        });
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.cut();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = reqwest::get(server.url("/readyz")).await.unwrap().status();
        if status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {status} during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    server.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let answers: Vec<(String, u16)> = senders.join_all().await.into_iter().flatten().collect();
    let unexpected: Vec<_> = answers.iter().filter(|(_, s)| *s != 200 && *s != 503).collect();
    assert!(unexpected.is_empty(), "only 200 or 503: {unexpected:?}");
    let acknowledged: std::collections::HashSet<&str> = answers
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(id, _)| id.as_str())
        .collect();
    let refused = answers.iter().filter(|(_, s)| *s == 503).count();
    assert!(refused > 0, "the outage was felt: {} answers", answers.len());
    let last_of_each: Vec<u16> = (0..8)
        .filter_map(|sender| {
            let prefix = format!("load-{sender}-");
            answers
                .iter()
                .rev()
                .find(|(id, _)| id.starts_with(&prefix))
                .map(|(_, s)| *s)
        })
        .collect();
    assert!(
        last_of_each.iter().all(|s| *s == 200),
        "recovered: {last_of_each:?}"
    );

    let direct = test_db.open_migrated().await;
    let source = deliveries::source_by_name(&direct, "default").await.unwrap();
    let events = deliveries::recent_events(&direct, source.id, 100_000)
        .await
        .unwrap();
    let stored: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(stored.len(), events.len(), "nothing stored twice");
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let sent: std::collections::HashSet<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    assert!(stored.is_subset(&sent), "nothing stored that was not sent");
    let metrics = server.metrics().await;
    let unavailable = telltale_e2e::metric_sample(
        &metrics,
        "telltale_webhook_requests_total",
        &[("outcome", "unavailable"), ("source", "default")],
    );
    assert_eq!(unavailable, Some(refused as f64), "every 503 counted");
}

/// SIGTERM while senders keep webhooks in flight: the server stops taking requests, the
/// writers commit what was queued before ending, and every event answered 200 is stored.
async fn shutdown_under_webhook_load_stores_every_acknowledged_event(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let mut server = start(&test_db).await;
    let url = server.url("/webhooks/milesight");
    let mut senders = Vec::new();
    for sender in 0..8 {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let id = format!("drain-{sender}-{n}");
                let event = reading(
                    &id,
                    &format!("SN-D{sender}"),
                    "PROPERTY",
                    now_secs() * 1000,
                    json!({"n": n}),
                );
                let headers = milesight_headers(DEFAULT_SECRET, None, now_secs(), &nonce());
                let client = reqwest::Client::new();
                let mut request = client.post(&url).body(json!([event]).to_string());
                for (k, v) in &headers {
                    request = request.header(k, v);
                }
                // Refused or reset: the server stopped taking requests. Not acknowledged.
                match request.send().await {
                    Ok(resp) if resp.status() == 200 => acknowledged.push(id),
                    _ => return acknowledged,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = server.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("webhook writers drained"),
        "{}",
        server.log_text()
    );
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    assert!(
        acknowledged.len() > 8,
        "requests were answered before the shutdown"
    );
    drop(server);

    let db = open_db(&test_db).await;
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    let stored: std::collections::HashSet<String> = deliveries::recent_events(&db, source.id, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}
