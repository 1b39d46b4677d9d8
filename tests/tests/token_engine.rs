//! The refresh engine with the `oauth2_refresh` provider against fake token endpoints on
//! 127.0.0.1 (RFC 6749 §6 shapes, apis.md §4). In process, both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::{now, refresh_log};
use telltale::tokens::SweepRequest;
use telltale_e2e::{Backend, TestApp, TestDb, both_backends};
use wiremock::matchers::{basic_auth, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    due_connections_refresh_and_rotated_tokens_are_kept,
    a_revoked_grant_needs_reauth_and_is_not_retried,
    transient_errors_are_retried_honouring_retry_after,
    rate_limits_never_add_attempts_and_long_waits_are_scheduled,
    a_connection_waiting_for_its_first_connect_is_left_alone,
    presets_authenticate_the_client_their_way,
    a_dry_run_changes_nothing,
    concurrent_manual_and_scheduled_refresh_make_one_call,
    two_engines_on_one_database_refresh_each_connection_once,
    a_slow_refresh_keeps_its_short_lease,
    a_failing_upstream_opens_its_circuit_and_spares_the_others,
    the_sweep_reads_what_is_due_and_notices_changed_tokens,
    token_requests_time_out_after_their_own_section_s_timeout,
);

async fn app(db: &TestDb) -> AppState {
    app_with_concurrency(db, 8).await
}

async fn app_with_concurrency(db: &TestDb, concurrency: usize) -> AppState {
    TestApp::on(db)
        .set("tokens.max_attempts", 3)
        .set("tokens.concurrency", concurrency as i64)
        .state()
        .await
}

/// A connection whose token expires in `expires_in_mins`, refreshed at `token_url`.
async fn connection(
    state: &AppState,
    name: &str,
    token_url: &str,
    preset: Option<&str>,
    expires_in_mins: i64,
) -> i64 {
    let account = telltale_e2e::acme_account(state).await;
    let new = NewConnection {
        account_id: account.id,
        provider: "oauth2_refresh".into(),
        name: name.into(),
        base_url: Some(token_url.into()),
        settings: json!({ "preset": preset }),
        credentials: Some(json!({"client_id": "client-1", "client_secret": "CANARY-secret"}).to_string()),
        access_token: Some(format!("at-{name}")),
        refresh_token: Some(format!("rt-{name}")),
        expires_at: Some((now().0 + Span::minutes(expires_in_mins)).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

fn sweep_request(dry_run: bool) -> SweepRequest {
    SweepRequest {
        trigger: telltale::storage::RefreshTrigger::Scheduled,
        actor: "test".into(),
        dry_run,
        provider: None,
        connection_id: None,
    }
}

fn issued(access: &str, refresh: Option<&str>) -> ResponseTemplate {
    let mut body =
        json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "scope": "user-read"});
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    ResponseTemplate::new(200).set_body_json(body)
}

async fn secrets_of(state: &AppState, id: i64) -> connections::ConnectionSecrets {
    let c = connections::get_connection(&state.db, id).await.unwrap();
    connections::secrets(&state.crypto, &c).unwrap()
}

async fn due_connections_refresh_and_rotated_tokens_are_kept(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    let url = format!("{}/token", server.uri());
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-soon&"))
        .respond_with(issued("at-soon-2", Some("rt-soon-2")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=rt-soon-2"))
        .respond_with(issued("at-soon-3", None))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let soon = connection(&state, "soon", &url, None, 5).await;
    let later = connection(&state, "later", &url, None, 120).await;

    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(
        (report.checked, report.refreshed, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(report.results[0].id, soon);
    let secrets = secrets_of(&state, soon).await;
    assert_eq!(secrets.access_token.as_deref(), Some("at-soon-2"));
    assert_eq!(
        secrets.refresh_token.as_deref(),
        Some("rt-soon-2"),
        "the rotated refresh token is stored"
    );
    let stored = connections::get_connection(&state.db, soon).await.unwrap();
    let runway = (stored.expires_at.unwrap().0 - now().0).num_seconds();
    assert!((3590..=3600).contains(&runway), "{runway}");
    assert_eq!(
        (stored.status.as_str(), stored.lease_owner),
        ("active", None),
        "lease released"
    );
    assert_eq!(
        secrets_of(&state, later).await.access_token.as_deref(),
        Some("at-later"),
        "not due, untouched"
    );

    let again = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(again.checked, 0, "nothing due right after");

    // Forced refresh where the server does not rotate: the refresh token is kept, never nulled.
    let result = state
        .token_engine
        .refresh_now(
            soon,
            telltale::storage::RefreshTrigger::Manual,
            "ops@example.test",
        )
        .await
        .unwrap();
    assert_eq!(result.outcome.as_str(), "refreshed");
    let secrets = secrets_of(&state, soon).await;
    assert_eq!(
        (secrets.access_token.as_deref(), secrets.refresh_token.as_deref()),
        (Some("at-soon-3"), Some("rt-soon-2"))
    );
    let log = refresh_log::recent(&state.db, Some("oauth2_refresh"), 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].trigger.as_str(), log[0].actor.as_deref()),
        ("manual", Some("ops@example.test"))
    );
    assert!(log.iter().all(|e| e.success && e.new_expires_at.is_some()));
}

async fn a_revoked_grant_needs_reauth_and_is_not_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "Refresh token revoked for rt-revoked"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let id = connection(&state, "revoked", &format!("{}/token", server.uri()), None, 1).await;
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(report.results[0].outcome.as_str(), "needs_reauth");
    let stored = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.consecutive_failures),
        ("needs_reauth", 1)
    );
    let error = stored.last_error.unwrap();
    assert!(
        error.contains("invalid_grant") && !error.contains("rt-revoked"),
        "sanitised: {error}"
    );
    let again = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(
        again.checked, 0,
        "a connection that needs re-authorisation is not retried"
    );
}

async fn transient_errors_are_retried_honouring_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(issued("at-ok", None))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let state = app(&db).await;
    let flaky = connection(&state, "flaky", &format!("{}/flaky", server.uri()), None, 1).await;
    let down = connection(&state, "down", &format!("{}/down", server.uri()), None, 1).await;
    let started = Instant::now();
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let outcome = |id: i64| {
        report
            .results
            .iter()
            .find(|r| r.id == id)
            .unwrap()
            .outcome
            .as_str()
    };
    assert_eq!((outcome(flaky), outcome(down)), ("refreshed", "failed"));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.iter().filter(|r| r.url.path() == "/flaky").count(), 2);
    assert_eq!(
        requests.iter().filter(|r| r.url.path() == "/down").count(),
        3,
        "max_attempts"
    );
    let down_row = connections::get_connection(&state.db, down).await.unwrap();
    assert_eq!(
        (down_row.status.as_str(), down_row.consecutive_failures),
        ("active", 1),
        "transient: status kept"
    );
    assert!(down_row.last_error.unwrap().contains("502"));
}

/// A platform that keeps answering 429 gets `max_attempts` requests, never more, however short
/// its `Retry-After`; one asking for longer than `tokens.max_retry_wait_secs` gets one request,
/// the refresh ends at once and the connection is next due when the platform said.
async fn rate_limits_never_add_attempts_and_long_waits_are_scheduled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/busy"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/closed-for-an-hour"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .mount(&server)
        .await;
    let state = app(&db).await;
    let busy = connection(&state, "busy", &format!("{}/busy", server.uri()), None, 1).await;
    let closed = connection(
        &state,
        "closed",
        &format!("{}/closed-for-an-hour", server.uri()),
        None,
        1,
    )
    .await;
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(report.failed, 2, "{:?}", report.results);
    let requests = server.received_requests().await.unwrap();
    let to = |p: &str| requests.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(to("/busy"), 3, "tokens.max_attempts, Retry-After or not");
    assert_eq!(
        to("/closed-for-an-hour"),
        1,
        "an hour is past the wait a refresh allows"
    );
    let closed_row = connections::get_connection(&state.db, closed).await.unwrap();
    let next = closed_row.next_refresh_at.expect("due when the platform said");
    let in_an_hour = now().0 + Span::seconds(3600);
    assert!(
        next.0 > in_an_hour - Span::seconds(60) && next.0 <= in_an_hour,
        "{next:?}"
    );
    assert!(closed_row.last_error.unwrap().contains("429"));
    // The next sweep leaves it alone; the busy one is asked again.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(issued("at-ok", None))
        .mount(&server)
        .await;
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    let ids: Vec<i64> = report.results.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![busy], "{:?}", report.results);
}

/// A consent-screen connection created but not yet connected has nothing to refresh with: the
/// sweep leaves it waiting for a person (no request, no failure, no needs-reauth), while a
/// client-credentials connection without a token logs in at once.
async fn a_connection_waiting_for_its_first_connect_is_left_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(issued("at-new", None))
        .mount(&server)
        .await;
    let state = app(&db).await;
    let account = connections::create_account(&state.db, "acme", None)
        .await
        .unwrap();
    let credentials = Some(json!({"client_id": "c", "client_secret": "CANARY-secret"}).to_string());
    let waiting = NewConnection {
        account_id: account.id,
        provider: "oauth2_refresh".into(),
        name: "not-connected-yet".into(),
        base_url: Some(format!("{}/token", server.uri())),
        settings: json!({"preset": "spotify"}),
        credentials: credentials.clone(),
        ..Default::default()
    };
    let waiting = connections::create_connection(&state.db, &state.crypto, &waiting)
        .await
        .unwrap();
    let machine = NewConnection {
        provider: "oauth2_client_credentials".into(),
        name: "machine".into(),
        account_id: account.id,
        base_url: Some(format!("{}/token", server.uri())),
        settings: json!({}),
        credentials,
        ..Default::default()
    };
    let machine = connections::create_connection(&state.db, &state.crypto, &machine)
        .await
        .unwrap();
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    let ids: Vec<i64> = report.results.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![machine.id], "{:?}", report.results);
    let row = connections::get_connection(&state.db, waiting.id).await.unwrap();
    assert_eq!(
        (
            row.status.as_str(),
            row.consecutive_failures,
            row.last_error.as_deref()
        ),
        ("missing", 0, None)
    );
}

async fn presets_authenticate_the_client_their_way(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    // Spotify and Discord: HTTP Basic. GitHub: client id and secret in the body, JSON asked
    // for, and some errors come back as 200.
    Mock::given(method("POST"))
        .and(path("/spotify"))
        .and(basic_auth("client-1", "CANARY-secret"))
        .respond_with(issued("at-s2", None))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path("/github")).and(header("accept", "application/json"))
        .and(body_string_contains("client_id=client-1")).and(body_string_contains("client_secret=CANARY-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."})))
        .expect(1).mount(&server).await;
    let state = app(&db).await;
    let spotify = connection(
        &state,
        "spotify",
        &format!("{}/spotify", server.uri()),
        Some("spotify"),
        1,
    )
    .await;
    let github = connection(
        &state,
        "github",
        &format!("{}/github", server.uri()),
        Some("github"),
        1,
    )
    .await;
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    let outcome = |id: i64| {
        report
            .results
            .iter()
            .find(|r| r.id == id)
            .unwrap()
            .outcome
            .as_str()
    };
    assert_eq!(
        (outcome(spotify), outcome(github)),
        ("refreshed", "needs_reauth"),
        "{report:?}"
    );
}

async fn a_dry_run_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(issued("never", None))
        .expect(0)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let id = connection(&state, "due", &format!("{}/token", server.uri()), None, 1).await;
    let before = connections::get_connection(&state.db, id).await.unwrap();
    let report = state
        .token_engine
        .sweep(&sweep_request(true), now())
        .await
        .unwrap();
    assert_eq!(
        (report.checked, report.dry_run, report.results[0].outcome.as_str()),
        (1, true, "would_refresh")
    );
    let after = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(
        (after.access_token, after.expires_at, after.updated_at),
        (before.access_token, before.expires_at, before.updated_at)
    );
    let log = refresh_log::recent(&state.db, None, 10).await.unwrap();
    assert!(log.len() == 1 && log[0].dry_run, "a dry run is logged as one");
}

async fn concurrent_manual_and_scheduled_refresh_make_one_call(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(issued("at-2", None).set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    let state = Arc::new(app(&db).await);
    let id = connection(&state, "busy", &format!("{}/token", server.uri()), None, 1).await;
    let (s1, s2) = (state.clone(), state.clone());
    let scheduled =
        tokio::spawn(async move { s1.token_engine.sweep(&sweep_request(false), now()).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let manual = tokio::spawn(async move {
        s2.token_engine
            .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "ops")
            .await
            .unwrap()
    });
    let (scheduled, manual) = (scheduled.await.unwrap(), manual.await.unwrap());
    assert_eq!(scheduled.results[0].outcome.as_str(), "refreshed");
    assert_eq!(manual.outcome.as_str(), "refreshed");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

/// Two engines (as two replicas would be) sweep the same database at once: every due
/// connection is refreshed exactly once. The second works one connection at a time, so it
/// lists every connection before the first refreshes them and reaches most of them after:
/// the case where a replica must re-check what it claimed.
async fn two_engines_on_one_database_refresh_each_connection_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(issued("fresh", None).set_delay(Duration::from_millis(50)))
        .mount(&server)
        .await;
    let first = Arc::new(app(&db).await);
    let second = Arc::new(app_with_concurrency(&db, 1).await);
    let url = format!("{}/token", server.uri());
    for i in 0..20 {
        connection(&first, &format!("c{i:02}"), &url, None, 1).await;
    }
    let (a, b) = (first.clone(), second.clone());
    let one = tokio::spawn(async move { a.token_engine.sweep(&sweep_request(false), now()).await.unwrap() });
    let two = tokio::spawn(async move { b.token_engine.sweep(&sweep_request(false), now()).await.unwrap() });
    let (one, two) = (one.await.unwrap(), two.await.unwrap());
    assert_eq!(one.refreshed + two.refreshed, 20, "one: {one:?}\ntwo: {two:?}");
    let requests = server.received_requests().await.unwrap();
    let mut refreshed: Vec<String> = requests
        .iter()
        .filter_map(|r| {
            String::from_utf8_lossy(&r.body)
                .split('&')
                .find_map(|kv| kv.strip_prefix("refresh_token=").map(str::to_owned))
        })
        .collect();
    refreshed.sort();
    refreshed.dedup();
    assert_eq!(
        (requests.len(), refreshed.len()),
        (20, 20),
        "each connection refreshed exactly once"
    );
    let successes = refresh_log::recent(&first.db, None, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.success)
        .count();
    assert_eq!(successes, 20);
}

/// A refresh slower than its lease keeps the connection: the holder renews the lease while
/// it works, so another replica asking after the first lease period is told it is busy, and
/// the platform sees one request (a killed holder's lease is taken over: replicas.rs).
async fn a_slow_refresh_keeps_its_short_lease(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(issued("slow", None).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let engine = async || {
        Arc::new(
            TestApp::on(&db)
                .set("tokens.lease_secs", 3)
                .set("tokens.max_attempts", 1)
                .state()
                .await,
        )
    };
    let (first, second) = (engine().await, engine().await);
    let id = connection(&first, "slow", &format!("{}/token", server.uri()), None, 1).await;
    let holder = first.clone();
    let slow = tokio::spawn(async move {
        holder
            .token_engine
            .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "a")
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let meanwhile = second
        .token_engine
        .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "b")
        .await
        .unwrap();
    assert_eq!(meanwhile.outcome.as_str(), "skipped", "{meanwhile:?}");
    assert_eq!(slow.await.unwrap().outcome.as_str(), "refreshed");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

/// A platform that keeps failing gets `circuit_failures` requests, not one per connection
/// per sweep; another platform in the same sweep is unaffected; once the pause is over and
/// the platform answers again, every connection refreshes and the circuit closes.
async fn a_failing_upstream_opens_its_circuit_and_spares_the_others(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (down, healthy) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&down)
        .await;
    Mock::given(method("POST"))
        .respond_with(issued("at-healthy", None))
        .mount(&healthy)
        .await;
    let state = TestApp::on(&db)
        .set("tokens.max_attempts", 2)
        .set("tokens.concurrency", 1)
        .set("tokens.circuit_failures", 3)
        .set("tokens.circuit_open_secs", 1)
        .state()
        .await;
    let mut on_down = Vec::new();
    for i in 0..6 {
        on_down.push(
            connection(
                &state,
                &format!("down-{i}"),
                &format!("{}/token", down.uri()),
                None,
                1,
            )
            .await,
        );
    }
    let fine = connection(&state, "fine", &format!("{}/token", healthy.uri()), None, 1).await;

    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(report.failed, 6, "{:?}", report.results);
    assert_eq!(report.refreshed, 1);
    assert_eq!(
        down.received_requests().await.unwrap().len(),
        3,
        "requests stop once the circuit is open"
    );
    // The connections that reached the platform keep what it said; those the open circuit
    // spared keep their facts (no failure in a row, no error of Telltale's own), and the
    // sweep's result says why and what the platform last said.
    for reached in &on_down[..2] {
        let row = connections::get_connection(&state.db, *reached).await.unwrap();
        assert_eq!(row.consecutive_failures, 1, "{row:?}");
        assert!(
            row.last_error.as_deref().unwrap_or("").contains("HTTP 503"),
            "{row:?}"
        );
    }
    let spared = connections::get_connection(&state.db, on_down[5]).await.unwrap();
    assert_eq!(
        (spared.consecutive_failures, spared.last_error.as_deref()),
        (0, None),
        "not attempted is not a failure of the platform's"
    );
    let detail = report
        .results
        .iter()
        .find(|r| r.id == on_down[5])
        .and_then(|r| r.detail.clone())
        .unwrap();
    assert!(
        detail.starts_with("not attempted: OAuth 2.0 failed repeatedly; its circuit is open since ")
            && detail.ends_with("; the platform last said: nothing yet"),
        "{detail}"
    );
    // The refresh log and the attempts metric count the requests made, the same three.
    let failures = refresh_log::recent(&state.db, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.success)
        .count();
    assert_eq!(failures, 3);
    let upstream = format!("oauth2_refresh {}", down.address());
    let metrics = state.metrics.render(&state.db).await;
    let sample =
        |name: &str, upstream: &str| telltale_e2e::metric_sample(&metrics, name, &[("upstream", upstream)]);
    assert_eq!(
        sample("telltale_upstream_circuit_open", &upstream),
        Some(1.0),
        "{metrics}"
    );
    assert!(sample("telltale_upstream_calls_refused_total", &upstream).unwrap_or(0.0) >= 3.0);
    let healthy_upstream = format!("oauth2_refresh {}", healthy.address());
    assert_eq!(
        sample("telltale_upstream_circuit_open", &healthy_upstream),
        Some(0.0)
    );
    assert_eq!(
        connections::get_connection(&state.db, fine)
            .await
            .unwrap()
            .consecutive_failures,
        0
    );

    // The platform recovers; after the pause the next sweep goes through and closes it.
    down.reset().await;
    Mock::given(method("POST"))
        .respond_with(issued("at-back", None))
        .mount(&down)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(report.refreshed, 6, "{:?}", report.results);
    let metrics = state.metrics.render(&state.db).await;
    assert_eq!(
        telltale_e2e::metric_sample(
            &metrics,
            "telltale_upstream_circuit_open",
            &[("upstream", &upstream)]
        ),
        Some(0.0)
    );
}

/// The sweep writes when a connection not yet due will be, reads only due or changed
/// connections afterwards, and a token changed by hand (due sooner) is refreshed on time.
async fn the_sweep_reads_what_is_due_and_notices_changed_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    let url = format!("{}/token", server.uri());
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(issued("at-new", None))
        .expect(1)
        .mount(&server)
        .await;
    let state = app(&db).await;
    let id = connection(&state, "later", &url, None, 120).await;
    let stored = connections::get_connection(&state.db, id).await.unwrap();
    assert_eq!(stored.next_refresh_at, None, "not judged yet");

    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!(report.checked, 0, "two hours of runway: not due");
    let judged = connections::get_connection(&state.db, id).await.unwrap();
    let next = judged.next_refresh_at.expect("the sweep wrote when it is due");
    let expires = judged.expires_at.unwrap();
    assert!(
        next < expires && next.0 > now().0 + Span::minutes(60),
        "{next:?} before {expires:?}"
    );
    let candidates = connections::refresh_candidate_ids(&state.db, None, None, now())
        .await
        .unwrap();
    assert!(candidates.is_empty(), "later sweeps do not read it until then");
    // Due at that time, and not a moment before.
    let at = |t: telltale::storage::UtcTime| connections::refresh_candidate_ids(&state.db, None, None, t);
    assert_eq!(at(next).await.unwrap().len(), 1);
    let just_before = telltale::storage::UtcTime::new(next.0 - Span::seconds(1));
    assert!(at(just_before).await.unwrap().is_empty());

    // Someone pastes a token that expires in two minutes: the next sweep refreshes it.
    let update = connections::ConnectionUpdate {
        access_token: Some("at-pasted".into()),
        expires_at: Some(Some((now().0 + Span::minutes(2)).into())),
        ..Default::default()
    };
    connections::update_connection(&state.db, &state.crypto, id, &update)
        .await
        .unwrap();
    let report = state
        .token_engine
        .sweep(&sweep_request(false), now())
        .await
        .unwrap();
    assert_eq!((report.checked, report.refreshed), (1, 1), "{report:?}");
}

/// A token endpoint slower than `tokens.request_timeout_secs` fails the refresh as a timeout,
/// bounded by that setting and not by the other sections' (Milesight's stays at 10 s).
async fn token_requests_time_out_after_their_own_section_s_timeout(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(issued("late", None).set_delay(Duration::from_secs(4)))
        .mount(&server)
        .await;
    let state = TestApp::on(&db)
        .set("tokens.request_timeout_secs", 1)
        .set("tokens.max_attempts", 1)
        .state()
        .await;
    let id = connection(&state, "slow", &format!("{}/token", server.uri()), None, 1).await;
    let started = Instant::now();
    let result = state
        .token_engine
        .refresh_now(id, telltale::storage::RefreshTrigger::Manual, "test")
        .await
        .unwrap();
    assert_eq!(
        result.outcome,
        telltale::storage::RefreshOutcome::Failed,
        "{result:?}"
    );
    assert!(
        result.detail.as_deref().unwrap_or_default().contains("timed out"),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the tokens timeout"
    );
}
