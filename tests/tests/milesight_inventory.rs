//! Device inventory sync against a fake MDP whose device search pages (apis.md §1.4). Both backends.

use serde_json::json;
use telltale::app::AppState;
use telltale::milesight::inventory;
use telltale::storage::deliveries;
use telltale::storage::devices::{self, DeviceActivity, DeviceProfile};
use telltale::storage::ingest::{IncomingDevice, IncomingEvent, SourceEffect};
use telltale::storage::{DeviceStatus, now, usage};
use telltale_e2e::{Backend, TestApp, TestDb, both_backends};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    every_page_is_synced_and_fresher_webhook_state_wins,
    the_daily_request_budget_is_respected,
    a_refused_token_is_replaced_once,
    an_unexpired_token_serves_while_its_renewal_fails,
);

async fn app(db: &TestDb, mdp: &MockServer, budget: u32) -> AppState {
    TestApp::on(db)
        .set("milesight.base_url", mdp.uri())
        .set("milesight.client_id", "cid")
        .set("milesight.client_secret", "sec")
        .set("milesight.inventory_page_size", 2)
        .set("milesight.daily_request_budget", i64::from(budget))
        .state()
        .await
}

/// One inventory sync, as the scheduled job runs it.
async fn sync(state: &AppState) -> anyhow::Result<String> {
    inventory::sync(
        &state.db,
        &state.http,
        &state.config.milesight,
        &state.milesight_token,
    )
    .await
}

async fn mount_token(mdp: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"access_token": token, "refresh_token": "r", "expires_in": 3599, "refresh_token_expires_in": 2591999},
            "status": "Success", "requestId": "t"
        })))
        .mount(mdp)
        .await;
}

fn device(sn: &str, status: &str, battery: f64, last_update_ms: i64) -> serde_json::Value {
    json!({"deviceId": 1904371063669395457_u64, "sn": sn, "devEUI": format!("EUI-{sn}"), "name": format!("Sensor {sn}"),
           "model": "AM319", "connectStatus": status, "electricity": battery, "lastUpdateTime": last_update_ms,
           "application": {"applicationId": "1", "applicationName": "app"}})
}

async fn mount_page(mdp: &MockServer, page: i64, total: i64, content: Vec<serde_json::Value>) {
    Mock::given(method("POST"))
        .and(path("/device/openapi/v1/devices/search"))
        .and(header("authorization", "Bearer tok-1"))
        .and(body_partial_json(json!({"pageNumber": page, "pageSize": 2})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"pageSize": 2, "pageNumber": page, "total": total, "content": content},
            "status": "Success", "requestId": format!("p{page}")
        })))
        .mount(mdp)
        .await;
}

async fn every_page_is_synced_and_fresher_webhook_state_wins(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    mount_token(&mdp, "tok-1").await;
    let an_hour_ago = now().0.timestamp_millis() - 3_600_000;
    mount_page(
        &mdp,
        1,
        5,
        vec![
            device("SN-A", "OFFLINE", 50.0, an_hour_ago),
            device("SN-B", "ONLINE", 77.4, an_hour_ago),
        ],
    )
    .await;
    mount_page(
        &mdp,
        2,
        5,
        vec![
            device("SN-C", "DISCONNECT", 10.0, an_hour_ago),
            device("SN-D", "ONLINE", 99.0, an_hour_ago),
        ],
    )
    .await;
    mount_page(&mdp, 3, 5, vec![device("SN-E", "ONLINE", 60.0, an_hour_ago)]).await;
    let state = app(&db, &mdp, 1000).await;

    // SN-A reported by webhook a moment ago: MDP's hour-old OFFLINE must not override it.
    let source = deliveries::ensure_source(&state.db, "default", Default::default())
        .await
        .unwrap();
    let seen = now();
    let reading = IncomingEvent {
        event_id: "w1".into(),
        event_type: "DEVICE_DATA".into(),
        event_time: Some(seen),
        payload: "{}".into(),
        device: Some(IncomingDevice {
            sn: "SN-A".into(),
            profile: DeviceProfile::default(),
            activity: Some(DeviceActivity {
                status: DeviceStatus::Online,
                last_seen_at: seen,
                last_event_type: Some("PROPERTY".into()),
                last_payload: None,
                battery: Some(90),
                expected_interval_secs: None,
            }),
        }),
        effect: SourceEffect::None,
    };
    telltale_e2e::store_events(&state.db, source, seen, &[reading])
        .await
        .unwrap();

    let summary = sync(&state).await.unwrap();
    assert_eq!(summary, "5 device(s) synced from 3 page(s)");
    let all = devices::list(&state.db, 10, 0).await.unwrap();
    assert_eq!(all.len(), 5);
    let by_sn = |sn: &str| all.iter().find(|d| d.sn == sn).unwrap().clone();
    let a = by_sn("SN-A");
    assert_eq!(
        (a.status.as_str(), a.battery, a.last_seen_at),
        ("online", Some(90), Some(seen)),
        "webhook is fresher"
    );
    assert_eq!(
        a.name.as_deref(),
        Some("Sensor SN-A"),
        "names come from the inventory"
    );
    let b = by_sn("SN-B");
    assert_eq!((b.status.as_str(), b.battery), ("online", Some(77)));
    assert_eq!(b.mdp_device_id.as_deref(), Some("1904371063669395457"));
    assert_eq!(b.last_seen_at.map(|t| t.timestamp_millis()), Some(an_hour_ago));
    assert_eq!(
        by_sn("SN-C").status.as_str(),
        "offline",
        "DISCONNECT counts as offline"
    );
    assert_eq!(by_sn("SN-E").model.as_deref(), Some("AM319"));
    assert_eq!(
        usage::used(&state.db, "milesight", now()).await.unwrap(),
        4,
        "one token request and three pages"
    );
}

async fn the_daily_request_budget_is_respected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    mount_token(&mdp, "tok-1").await;
    mount_page(
        &mdp,
        1,
        6,
        vec![device("SN-1", "ONLINE", 1.0, 0), device("SN-2", "ONLINE", 1.0, 0)],
    )
    .await;
    mount_page(
        &mdp,
        2,
        6,
        vec![device("SN-3", "ONLINE", 1.0, 0), device("SN-4", "ONLINE", 1.0, 0)],
    )
    .await;
    // A budget of 3: page 1 and the token request, then page 2; page 3 would exceed it.
    let state = app(&db, &mdp, 3).await;
    let summary = sync(&state).await.unwrap();
    assert_eq!(summary, "4 device(s) synced; stopped: daily request budget spent");
    let searches = mdp
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/search"))
        .count();
    assert_eq!(searches, 2);
    assert_eq!(usage::used(&state.db, "milesight", now()).await.unwrap(), 3);
    // The next run the same day makes no request at all.
    let summary = sync(&state).await.unwrap();
    assert!(summary.starts_with("0 device(s) synced; stopped"), "{summary}");
    assert_eq!(mdp.received_requests().await.unwrap().len(), 3);
}

async fn a_refused_token_is_replaced_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    mount_token(&mdp, "tok-1").await;
    Mock::given(method("POST"))
        .and(path("/device/openapi/v1/devices/search"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "Failed", "requestId": "x", "errCode": "token_not_found", "errMsg": "token invalid"
        })))
        .up_to_n_times(1)
        .mount(&mdp)
        .await;
    mount_page(&mdp, 1, 1, vec![device("SN-Z", "ONLINE", 5.0, 0)]).await;
    let state = app(&db, &mdp, 1000).await;
    assert_eq!(sync(&state).await.unwrap(), "1 device(s) synced from 1 page(s)");
    let tokens = mdp
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/oauth/token")
        .count();
    assert_eq!(tokens, 2, "the refused token was replaced once");
}

/// The token is due for renewal (within `milesight.token_lead_secs` of expiry) and MDP now
/// refuses the client credentials: the sync goes on with the token in hand, still valid for
/// minutes, while the connection reports the refusal.
async fn an_unexpired_token_serves_while_its_renewal_fails(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mdp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"access_token": "tok-1", "refresh_token": "r", "expires_in": 200, "refresh_token_expires_in": 2591999},
            "status": "Success", "requestId": "t"
        })))
        .up_to_n_times(1)
        .mount(&mdp)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "Failed", "requestId": "t2", "errCode": "authentication_failed", "errMsg": "client secret changed"
        })))
        .mount(&mdp)
        .await;
    mount_page(&mdp, 1, 1, vec![device("SN-Y", "ONLINE", 50.0, 0)]).await;
    let state = app(&db, &mdp, 1000).await;
    assert_eq!(sync(&state).await.unwrap(), "1 device(s) synced from 1 page(s)");
    // The second sync wants a new token (200 s left is inside the 300 s lead); MDP refuses.
    assert_eq!(sync(&state).await.unwrap(), "1 device(s) synced from 1 page(s)");
    let requests = mdp.received_requests().await.unwrap();
    let count = |p: &str| requests.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(count("/oauth/token"), 2, "one fetch, one refused renewal");
    assert_eq!(count("/device/openapi/v1/devices/search"), 2);
    let status = state.milesight_token.status(now()).await.unwrap();
    let shown = serde_json::to_string(&status).unwrap();
    assert!(
        shown.contains("needs_reauth") || shown.contains("invalid_credentials"),
        "{shown}"
    );
}
