//! Milesight set up from the web UI's API: the OpenAPI application (secret write-only, sealed
//! at rest, tested at once) and webhook secrets (applied without a restart, on every replica),
//! with the config or environment winning where it sets them. Both backends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, TestDb, TestServer, api_send, both_backends, get_json, milesight_headers, nonce,
    post_with_headers,
};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(milesight_is_set_up_from_the_ui, the_config_wins_over_the_ui);

/// MDP: a token for client `cid-ui` with the right secret, and a device list of 7.
async fn fake_mdp() -> MockServer {
    let mdp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("client_id=cid-ui"))
        .and(body_string_contains("client_secret=CANARY-ui-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"access_token": "CANARY-ui-token", "expires_in": 3600}, "status": "Success", "requestId": "r"
        })))
        .mount(&mdp)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "Failed", "requestId": "r", "errCode": "invalid_client", "errMsg": "bad client"
        })))
        .mount(&mdp)
        .await;
    Mock::given(method("POST"))
        .and(path("/device/openapi/v1/devices/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"pageSize": 1, "pageNumber": 1, "total": 7, "content": []}, "status": "Success", "requestId": "s"
        })))
        .mount(&mdp)
        .await;
    mdp
}

/// Presses Test: `POST /api/milesight/settings/test`.
async fn test_settings(server: &TestServer) -> (u16, Value) {
    api_send(
        reqwest::Method::POST,
        server.url("/api/milesight/settings/test"),
        None,
    )
    .await
}

async fn webhook(server: &TestServer, secret: &str, uuid: &str, event_id: &str) -> u16 {
    let event = json!([{"eventId": event_id, "eventCreatedTime": chrono::Utc::now().timestamp().to_string(),
        "eventType": "WEBHOOK_TEST", "data": "Test Milesight Webhook Successfully."}]);
    let headers = milesight_headers(secret, Some(uuid), chrono::Utc::now().timestamp(), &nonce());
    post_with_headers(
        &server.url("/webhooks/milesight/site-a"),
        &headers,
        event.to_string(),
    )
    .await
    .0
}

async fn milesight_is_set_up_from_the_ui(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = fake_mdp().await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let settings_url = server.url("/api/milesight/settings");

    let (status, body) = get_json(&settings_url).await;
    assert_eq!(status, 200);
    assert_eq!(body["origin"], Value::Null, "{body}");
    assert_eq!(body["webhooks"], json!([]));
    let (status, body) = test_settings(&server).await;
    assert_eq!(status, 409, "nothing to test yet: {body}");

    // Refused: no secret yet, a base URL that is not one.
    let (status, body) = api_send(
        reqwest::Method::PUT,
        settings_url.clone(),
        Some(json!({"base_url": mdp.uri(), "client_id": "cid-ui"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client_secret")
    );
    let (status, _) = api_send(
        reqwest::Method::PUT,
        settings_url.clone(),
        Some(json!({"base_url": "eu-openapi", "client_id": "cid-ui", "client_secret": "CANARY-ui-secret"})),
    )
    .await;
    assert_eq!(status, 400);

    // A wrong secret is saved, and the Test says MDP refused it.
    let (status, body) = api_send(
        reqwest::Method::PUT,
        settings_url.clone(),
        Some(json!({"base_url": mdp.uri(), "client_id": "cid-ui", "client_secret": "CANARY-wrong"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["origin"], "ui");
    assert_eq!(body["client_id"], "cid-ui");
    assert_eq!(body["client_secret_set"], true);
    let (status, body) = test_settings(&server).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");

    // The right secret: the Test fetches a token and counts MDP's devices.
    let (status, _) = api_send(
        reqwest::Method::PUT,
        settings_url.clone(),
        Some(json!({"base_url": format!("{}/", mdp.uri()), "client_id": "cid-ui", "client_secret": "CANARY-ui-secret"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = test_settings(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["devices"], 7);
    assert!(
        body["summary"].as_str().unwrap().contains("7 device(s)"),
        "{body}"
    );
    let (_, token) = get_json(&server.url("/api/milesight/token")).await;
    assert_eq!(token["status"], "valid", "{token}");
    assert_eq!(token["origin"], "ui");
    assert_eq!(token["base_url"], mdp.uri(), "kept without the trailing slash");

    // Saved again without the secret: the stored one is kept (the Test still works).
    let (status, _) = api_send(
        reqwest::Method::PUT,
        settings_url.clone(),
        Some(json!({"base_url": mdp.uri(), "client_id": "cid-ui", "client_secret": ""})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = test_settings(&server).await;
    assert_eq!(status, 200, "{body}");

    // The secret is sealed in the database, never in plain text.
    let store = db.open().await;
    let rows = telltale::storage::connections::list_connections(&store)
        .await
        .unwrap();
    let row = rows
        .iter()
        .find(|c| c.name == "milesight")
        .expect("the Milesight connection");
    let sealed = row.credentials.clone().unwrap_or_default();
    assert!(!sealed.is_empty());
    assert!(
        !String::from_utf8_lossy(&sealed).contains("CANARY-ui-secret"),
        "sealed at rest"
    );

    // A webhook secret entered here is used at once: MDP's Test is accepted, a forged one not.
    assert_eq!(
        webhook(&server, "CANARY-wh-1", "uuid-a", "t-1").await,
        401,
        "no secret yet"
    );
    let (status, body) = api_send(
        reqwest::Method::PUT,
        server.url("/api/milesight/webhooks"),
        Some(json!({"source": "site-a", "uuid": "uuid-a", "secret": "CANARY-wh-1"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["webhooks"],
        json!([{"source": "site-a", "uuid": "uuid-a", "origin": "ui", "previous_secret": false}])
    );
    assert_eq!(webhook(&server, "CANARY-wh-1", "uuid-a", "t-2").await, 200);
    assert_eq!(webhook(&server, "CANARY-forged", "uuid-a", "t-3").await, 401);
    let (_, sources) = get_json(&server.url("/api/webhooks/sources")).await;
    assert!(sources["items"][0]["verified_at"].is_string(), "{sources}");

    // Another replica (PostgreSQL), or this one after a restart (SQLite), takes a changed
    // secret without being restarted; the old one is still accepted for MDP's retries.
    let (server, replica) = match backend {
        Backend::Postgres => {
            let replica = TestServer::start(db.url(), &[]).await;
            replica.wait_ready(Duration::from_secs(30)).await;
            assert_eq!(webhook(&replica, "CANARY-wh-1", "uuid-a", "t-4").await, 200);
            (server, Some(replica))
        }
        Backend::Sqlite => (server, None),
    };
    let (status, body) = api_send(
        reqwest::Method::PUT,
        server.url("/api/milesight/webhooks"),
        Some(json!({"source": "site-a", "uuid": "uuid-a", "secret": "CANARY-wh-2"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhooks"][0]["previous_secret"], true);
    let target = replica.as_ref().unwrap_or(&server);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        if webhook(target, "CANARY-wh-2", "uuid-a", &format!("t-new-{n}")).await == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new secret never applied");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        webhook(target, "CANARY-wh-1", "uuid-a", "t-old").await,
        200,
        "previous secret"
    );

    // Removed: refused again (here at once).
    let (status, _) = api_send(
        reqwest::Method::DELETE,
        server.url("/api/milesight/webhooks/site-a"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(webhook(&server, "CANARY-wh-2", "uuid-a", "t-gone").await, 401);
    let (_, sources) = get_json(&server.url("/api/webhooks/sources")).await;
    assert_eq!(sources["items"][0]["secret_configured"], false, "{sources}");
    assert!(
        sources["items"][0]["verified_at"].is_string(),
        "its history stays"
    );
    let (status, _) = api_send(
        reqwest::Method::DELETE,
        server.url("/api/milesight/webhooks/site-a"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The OpenAPI settings forgotten: not configured any more.
    let (status, _) = api_send(reqwest::Method::DELETE, settings_url.clone(), None).await;
    assert_eq!(status, 204);
    let (_, token) = get_json(&server.url("/api/milesight/token")).await;
    assert_eq!(token["status"], "missing");
    drop(replica);
}

async fn the_config_wins_over_the_ui(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = fake_mdp().await;
    let base = mdp.uri();
    let server = TestServer::start_with_config(
        db.url(),
        "[[milesight.webhooks]]\nuuid = \"uuid-c\"\nsecret = \"CANARY-config-wh\"\nsource = \"site-c\"\n",
        &[
            ("MILESIGHT_BASE_URL", base.as_str()),
            ("MILESIGHT_CLIENT_ID", "cid-ui"),
            ("MILESIGHT_CLIENT_SECRET", "CANARY-ui-secret"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (_, body) = get_json(&server.url("/api/milesight/settings")).await;
    assert_eq!(body["origin"], "config", "{body}");
    assert_eq!(body["client_id"], "cid-ui");
    assert_eq!(
        body["env"],
        json!([
            "MILESIGHT_BASE_URL",
            "MILESIGHT_CLIENT_ID",
            "MILESIGHT_CLIENT_SECRET"
        ])
    );
    assert_eq!(body["webhooks"][0]["origin"], "config");

    let (status, body) = api_send(
        reqwest::Method::PUT,
        server.url("/api/milesight/settings"),
        Some(json!({"base_url": base, "client_id": "other", "client_secret": "CANARY-x"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "set_in_config");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MILESIGHT_CLIENT_SECRET")
    );
    let (status, _) = api_send(
        reqwest::Method::PUT,
        server.url("/api/milesight/webhooks"),
        Some(json!({"source": "site-x", "uuid": "uuid-c", "secret": "CANARY-x"})),
    )
    .await;
    assert_eq!(status, 409, "a configured webhook cannot be shadowed");
    // The Test works on configured settings too.
    let (status, body) = test_settings(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"], 7);
}
