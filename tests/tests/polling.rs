//! Platform polling against fake platform APIs on 127.0.0.1 (each platform's documented
//! request and pagination shapes). In process, so the clock is the test's; both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use serde_json::json;
use telltale::app::AppState;
use telltale::polling::PollRequest;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::polling as store;
use telltale::storage::{UtcTime, now, refresh_log};
use telltale_e2e::{Backend, TestApp, TestDb, both_backends};
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

both_backends!(
    pages_are_followed_stored_once_and_not_repeated_until_due,
    each_platform_shape_is_polled,
    a_401_refreshes_the_token_once_and_retries,
    a_429_pauses_the_platform_for_retry_after,
    a_failing_poll_keeps_the_last_good_data,
    a_slow_platform_times_out_and_is_retried,
    revoked_connections_are_skipped_and_reported,
    two_processes_poll_each_due_pair_once,
    retention_keeps_the_newest_payload,
);

/// The settings every test here starts from: no rate limit worth waiting for, few retries.
fn app(db: &TestDb) -> TestApp<'_> {
    TestApp::on(db)
        .set("polling.requests_per_second", 1000)
        .set("polling.max_attempts", 3)
        .set("tokens.max_attempts", 1)
}

/// A connection of `platform` whose API is the fake at `api`.
async fn connection(
    state: &AppState,
    account: &str,
    name: &str,
    provider: &str,
    settings: serde_json::Value,
    base_url: Option<String>,
    token: &str,
) -> i64 {
    let account = match connections::account_by_name(&state.db, account).await {
        Ok(a) => a,
        Err(_) => connections::create_account(&state.db, account, None)
            .await
            .unwrap(),
    };
    let new = NewConnection {
        account_id: account.id,
        provider: provider.into(),
        name: name.into(),
        base_url,
        settings,
        credentials: Some(json!({"client_id": "c", "client_secret": "CANARY-client"}).to_string()),
        access_token: Some(token.into()),
        refresh_token: Some("CANARY-refresh".into()),
        expires_at: Some((now().0 + Span::hours(1)).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

async fn spotify(state: &AppState, api: &MockServer, account: &str, name: &str) -> i64 {
    connection(
        state,
        account,
        name,
        "oauth2_refresh",
        json!({"preset": "spotify", "api_base_url": api.uri()}),
        Some(format!("{}/api/token", api.uri())),
        "CANARY-access",
    )
    .await
}

fn request(platform: Option<&str>) -> PollRequest {
    PollRequest {
        trigger: telltale::storage::PollTrigger::Scheduled,
        platform: platform.map(str::to_owned),
        ..Default::default()
    }
}

async fn sweep(state: &AppState, platform: Option<&str>, at: UtcTime) -> telltale::polling::PollReport {
    state.poll_engine.sweep(&request(platform), at).await.unwrap()
}

fn later(minutes: i64) -> UtcTime {
    (now().0 + Span::minutes(minutes)).into()
}

async fn pages_are_followed_stored_once_and_not_repeated_until_due(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db).set("polling.max_pages", 5).state().await;
    let api = MockServer::start().await;
    let next = format!(
        "{}/v1/me/player/recently-played?limit=50&before=1700000000000",
        api.uri()
    );
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .and(query_param_is_missing("before"))
        .and(header("authorization", "Bearer CANARY-access"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"track": {"name": "a"}}, {"track": {"name": "b"}}], "next": next, "limit": 50
        })))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .and(query_param("before", "1700000000000"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"items": [{"track": {"name": "c"}}], "next": null})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/top/tracks"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"items": [], "next": null, "total": 0})),
        )
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "spotify-main").await;

    let report = sweep(&state, None, now()).await;
    assert_eq!(
        (report.users, report.connections, report.polls),
        (1, 1, 2),
        "{report:?}"
    );
    assert_eq!(report.succeeded, 2);
    let recent = report
        .results
        .iter()
        .find(|r| r.endpoint == "recently_played")
        .unwrap();
    assert_eq!((recent.items, recent.pages, recent.stored), (3, 2, true));

    let stored = store::payloads(&state.db, Some(id), Some("recently_played"), 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].item_count, 3);
    let payload: serde_json::Value = serde_json::from_str(&stored[0].payload).unwrap();
    assert_eq!(payload[2]["track"]["name"], "c", "items of every page, in order");
    assert_eq!(stored[0].content_hash.len(), 64);
    let connection = connections::get_connection(&state.db, id).await.unwrap();
    assert!(connection.last_sync_at.is_some());

    // Not due again until its schedule (every 15 minutes) comes round.
    assert_eq!(sweep(&state, None, now()).await.polls, 0);
    let requests = api.received_requests().await.unwrap().len();
    // top_tracks (every 6 hours) is due too when the 16 minutes cross one of its hours.
    let at = later(16);
    let top_tracks_due = telltale::polling::next_due("0 0 */6 * * *", state.config.scheduler.timezone, now())
        .is_some_and(|due| due.0 <= at.0);
    let again = sweep(&state, Some("spotify"), at).await;
    assert_eq!(
        again.polls,
        1 + usize::from(top_tracks_due),
        "recently_played is due again: {again:?}"
    );
    assert!(api.received_requests().await.unwrap().len() > requests);
    let recent = again
        .results
        .iter()
        .find(|r| r.endpoint == "recently_played")
        .expect("recently_played polled");
    assert!(!recent.stored, "an identical payload is not stored twice");
    assert_eq!(
        store::payloads(&state.db, Some(id), Some("recently_played"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let runs = store::runs(&state.db, id, "recently_played", 10).await.unwrap();
    assert_eq!(runs.len(), 2, "every run is recorded");
    assert!(runs.iter().all(|r| r.success && r.items == 3 && r.pages == 2));
}

async fn each_platform_shape_is_polled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let api = MockServer::start().await;
    let uri = api.uri();
    // The ThingsBoard connection names no server: THINGSBOARD_URL's is polled.
    let state = app(&db).set("tokens.thingsboard_url", uri.clone()).state().await;
    // GitHub: Link header pagination.
    Mock::given(method("GET"))
        .and(path("/user/repos"))
        .and(query_param_is_missing("page"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    format!(r#"<{uri}/user/repos?per_page=100&page=2>; rel="next""#).as_str(),
                )
                .set_body_json(json!([{"id": 1}, {"id": 2}])),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/user/repos"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 3}])))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/octocat/events"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"type": "PushEvent"}])))
        .mount(&api)
        .await;
    // Discord: pages of `limit`, the next after the last id.
    let full: Vec<_> = (1..=200).map(|i| json!({"id": i.to_string()})).collect();
    Mock::given(method("GET"))
        .and(path("/api/v10/users/@me/guilds"))
        .and(query_param_is_missing("after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(full)))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v10/users/@me/guilds"))
        .and(query_param("after", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "201"}])))
        .mount(&api)
        .await;
    // Google: nextPageToken.
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/primary/events"))
        .and(query_param("singleEvents", "true"))
        .and(query_param_is_missing("pageToken"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"items": [{"id": "e1"}], "nextPageToken": "p2"})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/primary/events"))
        .and(query_param("pageToken", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [{"id": "e2"}]})))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/gmail/v1/users/me/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"messages": [{"id": "m1", "threadId": "t1"}], "resultSizeEstimate": 1}),
            ),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/gmail/v1/users/me/messages/m1"))
        .and(query_param("format", "metadata"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "m1", "snippet": "hello"})))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/youtube/v3/videos"))
        .and(query_param("myRating", "like"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"items": [{"id": "v1"}], "pageInfo": {"totalResults": 1}})),
        )
        .mount(&api)
        .await;
    // ThingsBoard: numbered pages with hasNext, X-Authorization, telemetry per device.
    Mock::given(method("GET"))
        .and(path("/api/customer/cust-1/devices"))
        .and(header("x-authorization", "Bearer tb-token"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": [{"id": {"id": "d2"}, "name": "B"}], "hasNext": false, "totalPages": 2}),
        ))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/customer/cust-1/devices"))
        .and(query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": [{"id": {"id": "d1"}, "name": "A"}], "hasNext": true, "totalPages": 2}),
        ))
        .mount(&api)
        .await;
    for device in ["d1", "d2"] {
        Mock::given(method("GET"))
            .and(path(format!(
                "/api/plugins/telemetry/DEVICE/{device}/values/timeseries"
            )))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"temperature": [{"ts": 1700000000000_i64, "value": "21.5"}]})),
            )
            .mount(&api)
            .await;
    }
    let github = connection(
        &state,
        "acme",
        "gh",
        "oauth2_refresh",
        json!({"preset": "github", "api_base_url": uri, "login": "octocat"}),
        None,
        "gh-token",
    )
    .await;
    let discord = connection(
        &state,
        "acme",
        "dc",
        "oauth2_refresh",
        json!({"preset": "discord", "api_base_url": uri}),
        None,
        "dc-token",
    )
    .await;
    let google = connection(
        &state,
        "bob",
        "g",
        "oauth2_refresh",
        json!({"preset": "google", "api_base_url": uri}),
        None,
        "g-token",
    )
    .await;
    let tb = connection(
        &state,
        "carol",
        "tb",
        "thingsboard",
        json!({"customer_id": "cust-1"}),
        None,
        "tb-token",
    )
    .await;

    let report = sweep(&state, None, now()).await;
    assert_eq!((report.users, report.connections), (3, 4));
    assert_eq!(report.failed, 0, "{:#?}", report.results);
    let found = |id: i64, endpoint: &str| {
        report
            .results
            .iter()
            .find(|r| r.connection_id == id && r.endpoint == endpoint)
            .map(|r| (r.items, r.pages))
            .unwrap()
    };
    assert_eq!(found(github, "repos"), (3, 2));
    assert_eq!(found(github, "user_events"), (1, 1));
    assert_eq!(found(discord, "guilds"), (201, 2));
    assert_eq!(found(google, "calendar_events"), (2, 2));
    assert_eq!(found(google, "gmail_messages"), (1, 1));
    assert_eq!(found(google, "youtube_liked"), (1, 1));
    assert_eq!(found(tb, "devices"), (2, 2));

    let gmail = store::payloads(&state.db, Some(google), Some("gmail_messages"), 1)
        .await
        .unwrap();
    let gmail: serde_json::Value = serde_json::from_str(&gmail[0].payload).unwrap();
    assert_eq!(
        gmail[0]["metadata"]["snippet"], "hello",
        "metadata attached per message"
    );
    let devices = store::payloads(&state.db, Some(tb), Some("devices"), 1)
        .await
        .unwrap();
    let devices: serde_json::Value = serde_json::from_str(&devices[0].payload).unwrap();
    assert_eq!(devices[1]["latest_telemetry"]["temperature"][0]["value"], "21.5");
}

async fn a_401_refreshes_the_token_once_and_retries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db).state().await;
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "fresh-token", "token_type": "Bearer", "expires_in": 3600}),
        ))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .and(header("authorization", "Bearer CANARY-access"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"error": {"status": 401, "message": "The access token expired"}})),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .and(header("authorization", "Bearer fresh-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [{"n": 1}], "next": null})))
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "sp").await;
    let result = state
        .poll_engine
        .poll_now(id, "recently_played", telltale::storage::PollTrigger::Manual)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((result.outcome.as_str(), result.items), ("ok", 1), "{result:?}");
    let log = refresh_log::recent(&state.db, None, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].trigger.as_str(), log[0].success), ("poll_401", true));
    // An unknown endpoint is not polled.
    assert!(
        state
            .poll_engine
            .poll_now(id, "nope", telltale::storage::PollTrigger::Manual)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_429_pauses_the_platform_for_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db).state().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/me/top/tracks"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [], "next": null})))
        .mount(&api)
        .await;
    spotify(&state, &api, "acme", "sp").await;
    let started = Instant::now();
    let report = sweep(&state, None, now()).await;
    assert_eq!(report.succeeded, 2, "{:?}", report.results);
    let requests = api.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3, "429, then the retry, plus the other endpoint");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for Retry-After"
    );

    // A Retry-After beyond max_retry_wait fails the poll at once instead of blocking the sweep.
    let db = TestDb::new(backend).await;
    let state = app(&db).set("polling.max_retry_wait_secs", 1).state().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "600"))
        .mount(&api)
        .await;
    spotify(&state, &api, "acme", "sp").await;
    let started = Instant::now();
    let report = sweep(&state, Some("spotify"), now()).await;
    assert_eq!(report.failed, 2, "{:?}", report.results);
    assert!(
        report
            .results
            .iter()
            .any(|r| r.detail.as_deref().unwrap_or("").contains("paused for 600s"))
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

async fn a_failing_poll_keeps_the_last_good_data(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db).state().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [{"n": 1}], "next": null})))
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops</html>"))
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "sp").await;
    let poll = || async {
        state
            .poll_engine
            .poll_now(id, "recently_played", telltale::storage::PollTrigger::Manual)
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(poll().await.outcome.as_str(), "ok");
    let failed = poll().await;
    assert_eq!(
        (failed.outcome.as_str(), failed.http_status),
        ("failed", Some(503)),
        "5xx retried, then given up"
    );
    let garbled = poll().await;
    assert_eq!(garbled.outcome.as_str(), "failed");
    assert!(garbled.detail.unwrap().contains("not JSON"));

    let pair = store::get_state(&state.db, id, "recently_played").await.unwrap();
    assert_eq!(
        (pair.consecutive_failures, pair.last_status.map(|s| s.as_str())),
        (2, Some("failed"))
    );
    assert_eq!(pair.last_items, Some(1), "the last good result is still shown");
    let stored = store::payloads(&state.db, Some(id), None, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].item_count, 1);
    let runs = store::runs(&state.db, id, "recently_played", 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.success).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(
        runs.iter()
            .all(|r| !r.error.clone().unwrap_or_default().contains("CANARY"))
    );
}

/// A revoked grant polls on with its token while that is unexpired (the refresh engine and its
/// alert report the grant); once the token has expired, its polls are skipped and reported.
async fn revoked_connections_are_skipped_and_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db).state().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"items": [], "next": null, "total": 0})),
        )
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "sp").await;
    // The platform revokes the grant: the refresh engine records it as needing re-authorisation.
    let revoke = || async {
        connections::record_refresh_failure(
            &state.db,
            id,
            Some(telltale::storage::ConnectionStatus::NeedsReauth),
            "invalid_grant",
            now(),
        )
        .await
        .unwrap();
    };
    revoke().await;
    let report = sweep(&state, None, now()).await;
    assert_eq!(
        (report.polls, report.skipped, report.failed),
        (2, 0, 0),
        "the token in hand still works: {:?}",
        report.results
    );
    assert_eq!(api.received_requests().await.unwrap().len(), 2);

    // The token expires; the next due polls are skipped without a request.
    api.reset().await;
    let expired = connections::ConnectionUpdate {
        expires_at: Some(Some((now().0 - Span::minutes(1)).into())),
        ..Default::default()
    };
    connections::update_connection(&state.db, &state.crypto, id, &expired)
        .await
        .unwrap();
    revoke().await;
    let report = sweep(&state, None, later(24 * 60)).await;
    assert_eq!((report.polls, report.skipped, report.failed), (2, 2, 0));
    assert!(
        report
            .results
            .iter()
            .all(|r| r.detail.as_deref().unwrap().contains("needs_reauth"))
    );
    assert!(api.received_requests().await.unwrap().is_empty());
    let pair = store::get_state(&state.db, id, "top_tracks").await.unwrap();
    assert_eq!(pair.last_status.map(|s| s.as_str()), Some("needs_reauth"));
    assert_eq!(pair.consecutive_failures, 0, "a skip is not a platform failure");
}

/// Two engines (as two replicas would be) sharing one database.
async fn two_processes_poll_each_due_pair_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = Arc::new(
        app(&db)
            .set("polling.concurrency", 8)
            .set("polling.per_platform_concurrency", 8)
            .state()
            .await,
    );
    let second = Arc::new(
        app(&db)
            .set("polling.concurrency", 8)
            .set("polling.per_platform_concurrency", 8)
            .state()
            .await,
    );
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"items": [{"n": 1}], "next": null}))
                .set_delay(Duration::from_millis(30)),
        )
        .mount(&api)
        .await;
    for i in 0..15 {
        spotify(&first, &api, &format!("user-{i}"), "sp").await;
    }
    let at = now();
    let (a, b) = tokio::join!(
        {
            let s = first.clone();
            async move { sweep(&s, None, at).await }
        },
        {
            let s = second.clone();
            async move { sweep(&s, None, at).await }
        },
    );
    let polled = a.succeeded + b.succeeded;
    assert_eq!(polled, 30, "15 connections × 2 endpoints, each once: {a:?} {b:?}");
    let requests: Vec<Request> = api.received_requests().await.unwrap();
    assert_eq!(requests.len(), 30, "no pair polled twice");
}

async fn retention_keeps_the_newest_payload(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = app(&db)
        .set("polling.retention_days", 30)
        .set("polling.keep_payloads", 2)
        .state()
        .await;
    let api = MockServer::start().await;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = counter.clone();
    Mock::given(method("GET"))
        .respond_with(move |_: &Request| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(200).set_body_json(json!({"items": [{"n": n}], "next": null}))
        })
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "sp").await;
    for _ in 0..4 {
        state
            .poll_engine
            .poll_now(id, "top_tracks", telltale::storage::PollTrigger::Manual)
            .await
            .unwrap();
    }
    assert_eq!(
        store::payloads(&state.db, Some(id), Some("top_tracks"), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    // keep_payloads = 2 keeps the newest two; 31 days on, age removes all but the newest.
    let (deleted, _) = telltale::polling::prune(&state.db, &state.config.polling, now())
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let (deleted, runs) = telltale::polling::prune(&state.db, &state.config.polling, later(31 * 24 * 60))
        .await
        .unwrap();
    assert_eq!((deleted, runs), (1, 4));
    let left = store::payloads(&state.db, Some(id), Some("top_tracks"), 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    let newest: serde_json::Value = serde_json::from_str(&left[0].payload).unwrap();
    assert_eq!(newest[0]["n"], 3, "the newest payload survives any age");
}

async fn a_slow_platform_times_out_and_is_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The poll engine's HTTP timeout is `polling.request_timeout_secs`.
    let state = app(&db)
        .set("polling.request_timeout_secs", 1)
        .set("polling.max_attempts", 2)
        .state()
        .await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"items": [], "next": null}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&api)
        .await;
    let id = spotify(&state, &api, "acme", "sp").await;
    let started = Instant::now();
    let result = state
        .poll_engine
        .poll_now(id, "top_tracks", telltale::storage::PollTrigger::Manual)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome.as_str(), "failed");
    assert!(
        result.detail.as_deref().unwrap().contains("timed out"),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout, not the server"
    );
    assert_eq!(api.received_requests().await.unwrap().len(), 2, "retried once");
}
