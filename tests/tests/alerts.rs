//! Alert rules and their lifecycle, with the emails received by a real SMTP server (aiosmtpd).
//! In process, so evaluation times are the test's; both backends.

use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use serde_json::json;
use telltale::alerts::evaluate::evaluate;
use telltale::app::AppState;
use telltale::storage::connections;
use telltale::storage::deliveries::{self, SourceTiming};
use telltale::storage::devices;
use telltale::storage::polling::{self as poll_store, Finished};
use telltale::storage::{DeviceStatus, PollStatus, UtcTime, alerts, now};
use telltale_e2e::{
    Backend, SmtpSink, TestApp, TestDb, TestServer, both_backends, device_in, fail_refresh, get_json,
    post_with_headers, refresh_succeeded, silence_two_hours,
};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(
    a_failing_token_is_emailed_once_and_again_when_it_recovers,
    causes_mute_their_effects,
    two_evaluators_open_and_email_each_incident_once,
    the_service_alerts_on_call_end_to_end,
    reminders_slow_down_while_an_alert_stays_open,
    silences_hold_back_notifications,
    alerts_within_the_group_window_share_one_email,
    many_offline_devices_of_a_source_share_one_alert,
    three_replicas_alert_every_overdue_device_once,
);

/// More offline devices in one source than the threshold are one alert for the source, with
/// the count and the list; at or below it each device alerts on its own.
async fn many_offline_devices_of_a_source_share_one_alert(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = TestApp::on(&db)
        .set("email.on_call", "oncall@example.com")
        .set("alerts.device_offline_group_threshold", 2)
        .state()
        .await;
    let set_status = |sn: &'static str, source: i64, status: DeviceStatus| {
        let db = state.db.clone();
        async move { device_in(&db, sn, Some(source), status, now()).await }
    };
    let site_a = deliveries::ensure_source(&state.db, "site-a", SourceTiming::default())
        .await
        .unwrap();
    let site_b = deliveries::ensure_source(&state.db, "site-b", SourceTiming::default())
        .await
        .unwrap();
    for sn in ["A-3", "A-1", "A-2"] {
        set_status(sn, site_a, DeviceStatus::Offline).await;
    }
    set_status("B-1", site_b, DeviceStatus::Offline).await;
    set_status("B-2", site_b, DeviceStatus::Online).await;

    evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    let open = alerts::list(&state.db, &telltale::storage::AlertState::OPEN, 100)
        .await
        .unwrap();
    let mut subjects: Vec<(&str, &str)> = open
        .iter()
        .map(|a| (a.rule.as_str(), a.subject.as_str()))
        .collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [
            ("device_offline", "device:B-1"),
            ("devices_offline", "source:site-a")
        ],
        "three of site-a share one alert; site-b's one is its own"
    );
    let grouped = open.iter().find(|a| a.rule == "devices_offline").unwrap();
    assert_eq!(grouped.summary, "3 devices of source site-a are offline");
    assert!(
        grouped.details.contains("Offline: A-1, A-2, A-3"),
        "{}",
        grouped.details
    );

    // Two come back: one left is at the threshold, so it alerts on its own again.
    set_status("A-2", site_a, DeviceStatus::Online).await;
    set_status("A-3", site_a, DeviceStatus::Online).await;
    let change = evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!((change.opened, change.resolved), (1, 1), "{change:?}");
    let open = alerts::list(&state.db, &telltale::storage::AlertState::OPEN, 100)
        .await
        .unwrap();
    let mut subjects: Vec<&str> = open.iter().map(|a| a.subject.as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["device:A-1", "device:B-1"]);
}

/// Three replicas on one database run the offline check (two devices a chunk, so every
/// source spans several chunks) and then the evaluation, at the same moment: every overdue
/// device goes offline exactly once and ends up alerted on its own, in its source's grouped
/// alert or folded into its dead source's alert, each incident in exactly one email.
async fn three_replicas_alert_every_overdue_device_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let state = app_with(&db, &smtp)
            .set("alerts.group_wait_secs", 0)
            .set("alerts.device_offline_group_threshold", 3)
            .state()
            .await;
        replicas.push(Arc::new(state));
    }
    let db0 = &replicas[0].db;
    let steady = SourceTiming {
        period_secs: 86_400,
        grace_secs: 0,
    };
    let many = deliveries::ensure_source(db0, "site-many", steady).await.unwrap();
    let few = deliveries::ensure_source(db0, "site-few", steady).await.unwrap();
    // Default timing: quiet for half an hour, so this whole source is down.
    let dead = deliveries::ensure_source(db0, "site-dead", SourceTiming::default())
        .await
        .unwrap();
    let at: UtcTime = (now().0 + Span::minutes(30)).into();
    let long_ago: UtcTime = (now().0 - Span::hours(2)).into();
    let mut overdue = Vec::new();
    for (source, prefix, quiet, reporting) in [(many, "M", 7, 2), (few, "F", 2, 3), (dead, "D", 4, 0)] {
        for n in 0..quiet {
            let sn = format!("{prefix}-{n}");
            device_in(db0, &sn, Some(source), DeviceStatus::Online, long_ago).await;
            overdue.push(sn);
        }
        for n in 0..reporting {
            device_in(
                db0,
                &format!("{prefix}-fresh-{n}"),
                Some(source),
                DeviceStatus::Online,
                at,
            )
            .await;
        }
    }
    overdue.sort();

    let check = |r: &Arc<AppState>| {
        let r = r.clone();
        async move {
            devices::mark_silent_offline(&r.db, r.config.milesight.offline_policy(), at, 2)
                .await
                .unwrap()
        }
    };
    let (a, b, c) = tokio::join!(check(&replicas[0]), check(&replicas[1]), check(&replicas[2]));
    let mut went_offline = [a, b, c].concat();
    went_offline.sort();
    assert_eq!(
        went_offline, overdue,
        "every overdue device, by exactly one replica"
    );
    let (still_online, _) = devices::search(
        db0,
        &devices::DeviceFilter {
            status: Some(DeviceStatus::Online),
            ..Default::default()
        },
        100,
        0,
    )
    .await
    .unwrap();
    assert_eq!(still_online.len(), 5, "the reporting devices stay online");

    let run = |r: &Arc<AppState>| {
        let r = r.clone();
        async move { evaluate(&r.db, &r.config, &r.channels, at).await.unwrap() }
    };
    let (a, b, c) = tokio::join!(run(&replicas[0]), run(&replicas[1]), run(&replicas[2]));
    let opened = a.opened + b.opened + c.opened;
    let open = alerts::open_alerts(db0).await.unwrap();
    let mut keys: Vec<&str> = open.iter().map(|a| a.alert_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "device_offline:device:F-0",
            "device_offline:device:F-1",
            "devices_offline:source:site-many",
            "webhook_source_stale:source:site-dead",
        ],
        "few: one alert each; many: one for the source; dead source: folded"
    );
    assert_eq!(opened, 4, "each alert opened by one replica");
    let grouped = open.iter().find(|a| a.rule == "devices_offline").unwrap();
    assert_eq!(grouped.summary, "7 devices of source site-many are offline");
    assert!(
        grouped
            .details
            .contains("Offline: M-0, M-1, M-2, M-3, M-4, M-5, M-6\n"),
        "{}",
        grouped.details
    );
    let folded = open.iter().find(|a| a.rule == "webhook_source_stale").unwrap();
    assert!(
        folded
            .details
            .contains("4 offline device(s) of this source are folded"),
        "{}",
        folded.details
    );

    let deliver = |r: &Arc<AppState>| {
        let r = r.clone();
        async move { r.mailer.deliver_due().await.unwrap() }
    };
    let (a, b, c) = tokio::join!(
        deliver(&replicas[0]),
        deliver(&replicas[1]),
        deliver(&replicas[2])
    );
    let delivered = [a, b, c];
    let sent: usize = delivered.iter().map(|d| d.sent).sum();
    let messages: usize = delivered.iter().map(|d| d.messages).sum();
    assert_eq!(sent, 4);
    smtp.wait_for(messages, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = smtp.messages();
    assert_eq!(received.len(), messages);
    for needle in [
        "device F-0 (F-0) is offline",
        "device F-1 (F-1) is offline",
        "7 devices of source site-many are offline",
        "no Milesight webhook from source site-dead",
    ] {
        assert_eq!(
            received.iter().filter(|m| m.contains(needle)).count(),
            1,
            "{needle}: in exactly one email"
        );
    }
}

/// Emails are due at once (no group window) unless a test says otherwise.
async fn app(db: &TestDb, smtp: &SmtpSink) -> AppState {
    app_with(db, smtp).set("alerts.group_wait_secs", 0).state().await
}

fn app_with<'a>(db: &'a TestDb, smtp: &SmtpSink) -> TestApp<'a> {
    TestApp::on(db)
        .set("email.smtp_url", smtp.url())
        .set("email.on_call", "oncall@example.com")
        .set("alerts.public_url", "https://telltale.example.com")
}

async fn connection(state: &AppState, name: &str) -> i64 {
    telltale_e2e::spotify_connection(state, name, Span::hours(1)).await
}

async fn a_failing_token_is_emailed_once_and_again_when_it_recovers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let state = app(&db, &smtp).await;
    let id = connection(&state, "spotify-main").await;

    fail_refresh(&state, id, 2).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .firing,
        0,
        "below the threshold of 3"
    );
    fail_refresh(&state, id, 1).await;
    let first = evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!((first.firing, first.opened), (1, 1));
    let again = evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!(
        (again.firing, again.opened),
        (1, 0),
        "still firing, not opened again"
    );

    let sent = state.mailer.deliver_due().await.unwrap();
    assert_eq!((sent.sent, sent.pending), (1, 0));
    let messages = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "one email per incident");
    let firing = &messages[0];
    assert!(
        firing.contains("Subject: [Telltale] WARNING: Spotify connection 'spotify-main' cannot refresh its token (3 failed refreshes in a row)"),
        "{firing}"
    );
    assert!(firing.contains("To: oncall@example.com"));
    assert!(
        firing.contains("What the platform last said: HTTP 503"),
        "what broke: {firing}"
    );
    assert!(
        firing.contains("Since ") && firing.contains(", for "),
        "since when, and for how long: {firing}"
    );
    assert!(
        !firing.contains("oauth2_refresh"),
        "product names, not codes: {firing}"
    );
    assert!(
        firing.contains("Failed refreshes in a row: 3") && firing.contains("Next attempt: "),
        "what was tried, and when next: {firing}"
    );
    let open = alerts::open_alerts(&state.db).await.unwrap();
    assert!(
        firing.contains(&format!("https://telltale.example.com/alerts/{}", open[0].id))
            && !firing.contains("/api/"),
        "the one link: {firing}"
    );
    assert!(firing.contains("text/plain") && firing.contains("text/html"));
    assert!(!firing.contains("CANARY"), "no secret in an email");

    // Recovery: one more email, and the alert's history tells the story.
    refresh_succeeded(&state, id).await;
    let recovered = evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!((recovered.firing, recovered.resolved), (0, 1));
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .resolved,
        0,
        "resolved once"
    );
    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 2);
    assert!(
        messages[1].contains(
            "Subject: [Telltale] RESOLVED: Spotify connection 'spotify-main' cannot refresh its token"
        ),
        "{}",
        messages[1]
    );
    assert!(messages[1].contains("Recovered at") && messages[1].contains(", after "));
    assert!(
        !messages[1].contains("What the platform last said"),
        "a recovery does not repeat the old error: {}",
        messages[1]
    );
    let (alert, history) = alerts::get(&state.db, open[0].id).await.unwrap();
    assert_eq!((alert.state.as_str(), alert.notify_count), ("resolved", 2));
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["fired", "notified", "resolved", "notified"]);

    // It breaks again: the same alert re-opens, counted as a second occurrence.
    fail_refresh(&state, id, 3).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        1
    );
    let (alert, _) = alerts::get(&state.db, open[0].id).await.unwrap();
    assert_eq!((alert.state.as_str(), alert.occurrences), ("firing", 2));
}

async fn causes_mute_their_effects(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let state = app(&db, &smtp).await;

    // A revoked token, and polls of that connection failing because of it.
    let id = connection(&state, "spotify-main").await;
    connections::record_refresh_failure(
        &state.db,
        id,
        Some(telltale::storage::ConnectionStatus::NeedsReauth),
        "invalid_grant",
        now(),
    )
    .await
    .unwrap();
    poll_store::ensure_pairs(&state.db, &[(id, "recently_played")])
        .await
        .unwrap();
    let pair = poll_store::get_state(&state.db, id, "recently_played")
        .await
        .unwrap();
    for _ in 0..3 {
        let failed = Finished {
            state_id: pair.id,
            last_content_hash: None,
            connection_id: id,
            endpoint: "recently_played".into(),
            trigger: "scheduled".into(),
            status: PollStatus::Failed,
            items: 0,
            pages: 0,
            http_status: Some(401),
            error: Some("HTTP 401".into()),
            duration_ms: 5,
            started_at: now(),
            finished_at: now(),
            next_due_at: None,
            payload: None,
            record_run: true,
        };
        poll_store::finish(&state.db, &failed).await.unwrap();
    }

    // A webhook source gone quiet, with its two devices offline.
    let source = deliveries::ensure_source(&state.db, "site-a", SourceTiming::default())
        .await
        .unwrap();
    for sn in ["6136D000001", "6136D000002"] {
        device_in(&state.db, sn, Some(source), DeviceStatus::Offline, now()).await;
    }

    // Half an hour on, past the source's 15 + 5 minutes.
    let later: UtcTime = (now().0 + Span::minutes(30)).into();
    evaluate(&state.db, &state.config, &state.channels, later)
        .await
        .unwrap();
    let open = alerts::open_alerts(&state.db).await.unwrap();
    let mut rules: Vec<&str> = open.iter().map(|a| a.rule.as_str()).collect();
    rules.sort_unstable();
    assert_eq!(
        rules,
        ["token_needs_reauth", "webhook_source_stale"],
        "no poll alert behind the token, no device alerts behind the source: {open:#?}"
    );
    let token = open.iter().find(|a| a.rule == "token_needs_reauth").unwrap();
    assert!(
        token
            .details
            .contains("Held back (caused by this): failing polls of recently_played"),
        "{}",
        token.details
    );
    let source_alert = open.iter().find(|a| a.rule == "webhook_source_stale").unwrap();
    assert_eq!(source_alert.severity, "high");
    assert!(
        source_alert
            .details
            .contains("2 offline device(s) of this source are folded"),
        "{}",
        source_alert.details
    );

    // Both changed in one evaluation: one email carries both.
    let delivery = state.mailer.deliver_due().await.unwrap();
    assert_eq!((delivery.sent, delivery.messages), (2, 1));
    let messages = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].contains("Subject: [Telltale] 2 alerts: 2 firing"),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("Held back"));
    assert!(messages[0].contains("no Milesight webhook from source site-a"));
}

/// Two evaluators (as two replicas would run) on one database, at the same moment.
async fn two_evaluators_open_and_email_each_incident_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let first = Arc::new(app(&db, &smtp).await);
    let second = Arc::new(app(&db, &smtp).await);
    for i in 0..5 {
        let id = connection(&first, &format!("c{i}")).await;
        fail_refresh(&first, id, 3).await;
    }
    let at = now();
    let (a, b) = tokio::join!(
        {
            let s = first.clone();
            async move { evaluate(&s.db, &s.config, &s.channels, at).await.unwrap() }
        },
        {
            let s = second.clone();
            async move { evaluate(&s.db, &s.config, &s.channels, at).await.unwrap() }
        },
    );
    assert_eq!(a.opened + b.opened, 5, "{a:?} {b:?}");
    let (x, y) = tokio::join!(first.mailer.deliver_due(), second.mailer.deliver_due());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.sent + y.sent, 5);
    smtp.wait_for(x.messages + y.messages, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), x.messages + y.messages);
    for i in 0..5 {
        let needle = format!("'c{i}'");
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.replace("=\n", "").contains(&needle))
                .count(),
            1,
            "incident c{i} is in exactly one email"
        );
    }
}

/// The whole chain in the built service: a provider keeps failing, the sweep counts failures,
/// the evaluation opens an alert, the outbox emails on-call; the API shows and acknowledges it.
async fn the_service_alerts_on_call_end_to_end(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&provider)
        .await;
    let url = smtp.url();
    let server = TestServer::start(
        db.url(),
        &[
            ("SMTP_URL", url.as_str()),
            ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *"),
            ("TELLTALE_TOKEN_MAX_ATTEMPTS", "1"),
            ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "* * * * * *"),
            ("TELLTALE_OUTBOX_SCHEDULE", "* * * * * *"),
            ("TELLTALE_ALERT_GROUP_WAIT_SECS", "2"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let body = json!({
        "account": "acme", "provider": "oauth2_refresh", "name": "spotify-main",
        "base_url": format!("{}/api/token", provider.uri()),
        "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
        "refresh_token": "CANARY-refresh",
    });
    let (code, _) = post_with_headers(
        &server.url("/api/connections"),
        &[("content-type".into(), "application/json".into())],
        body.to_string(),
    )
    .await;
    assert_eq!(code, 201);

    let messages = smtp.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 1, "on-call emailed:\n{}", server.log_text());
    assert!(
        messages[0].contains("WARNING: other OAuth 2.0 connection 'spotify-main' cannot refresh its token"),
        "no preset: the protocol, in words: {}",
        messages[0]
    );
    assert!(messages[0].contains("HTTP 503"));
    assert!(!messages[0].contains("CANARY"));

    let (code, open) = get_json(&server.url("/api/alerts?state=open")).await;
    assert_eq!(code, 200);
    let items = open["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{open}");
    let id = items[0]["id"].as_i64().unwrap();
    assert_eq!(items[0]["rule"], "token_refresh_failing");
    let (code, detail) = get_json(&server.url(&format!("/api/alerts/{id}"))).await;
    assert_eq!(code, 200);
    let kinds: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(&kinds[..2], ["fired", "notified"]);

    let (code, acked) = post_with_headers(&server.url(&format!("/api/alerts/{id}/ack")), &[], "").await;
    assert_eq!(
        (code, acked["alert"]["state"].as_str()),
        (200, Some("acknowledged"))
    );
    let (code, again) = post_with_headers(&server.url(&format!("/api/alerts/{id}/ack")), &[], "").await;
    assert_eq!((code, again["error"]["code"].as_str()), (409, Some("not_firing")));
    let (code, _) = post_with_headers(&server.url("/api/alerts/424242/ack"), &[], "").await;
    assert_eq!(code, 404);
    let (code, _) = get_json(&server.url("/api/alerts?state=bogus")).await;
    assert_eq!(code, 400);

    // Still failing, still one email: no repeats while it stays open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.messages().len(), 1);

    // Silences through the API: a maintenance window for a source, listed, then ended.
    let json_headers = [("content-type".to_owned(), "application/json".to_owned())];
    let ends = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, created) = post_with_headers(
        &server.url("/api/silences"),
        &json_headers,
        json!({"matcher": "source:site-a", "reason": "gateway replacement", "ends_at": ends}).to_string(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let (code, listed) = get_json(&server.url("/api/silences")).await;
    assert_eq!(
        (code, listed["items"][0]["reason"].as_str()),
        (200, Some("gateway replacement"))
    );
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (code, refused) = post_with_headers(
        &server.url("/api/silences"),
        &json_headers,
        json!({"matcher": "source:site-a", "reason": "x", "ends_at": past}).to_string(),
    )
    .await;
    assert_eq!(
        (code, refused["error"]["code"].as_str()),
        (400, Some("invalid_silence"))
    );
    let resp = telltale_e2e::api_client()
        .delete(server.url(&format!("/api/silences/{}", created["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, listed) = get_json(&server.url("/api/silences")).await;
    assert!(listed["items"].as_array().unwrap().is_empty());
}

async fn reminders_slow_down_while_an_alert_stays_open(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let state = app(&db, &smtp).await;
    let id = connection(&state, "spotify-main").await;
    fail_refresh(&state, id, 3).await;
    let t0 = now();
    let at = |minutes: i64| -> UtcTime { (t0.0 + Span::minutes(minutes)).into() };
    // The default cadence: 1 h, 4 h, then daily.
    // Delivered as they happen, as the outbox job would hours apart.
    let reminded = |minutes: i64| {
        let state = &state;
        async move {
            let reminded = evaluate(&state.db, &state.config, &state.channels, at(minutes))
                .await
                .unwrap()
                .reminded;
            state.mailer.deliver_due().await.unwrap();
            reminded
        }
    };
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, at(0))
            .await
            .unwrap()
            .opened,
        1
    );
    assert_eq!(reminded(30).await, 0);
    assert_eq!(reminded(61).await, 1, "first reminder after an hour");
    assert_eq!(reminded(62).await, 0);
    assert_eq!(reminded(61 + 3 * 60).await, 0);
    assert_eq!(reminded(61 + 4 * 60 + 1).await, 1, "then after four hours");
    assert_eq!(reminded(302 + 23 * 60).await, 0);
    assert_eq!(reminded(302 + 24 * 60 + 1).await, 1, "then daily");
    assert_eq!(reminded(302 + 48 * 60 + 2).await, 1);

    // Acknowledged: no more reminders.
    let open = alerts::open_alerts(&state.db).await.unwrap();
    alerts::acknowledge(&state.db, open[0].id, "ops", now())
        .await
        .unwrap();
    assert_eq!(reminded(302 + 96 * 60).await, 0);

    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 5, "one firing email and four reminders");
    assert!(messages[0].contains("Subject: [Telltale] WARNING: "));
    for reminder in &messages[1..] {
        assert!(
            reminder.contains("Subject: [Telltale] WARNING, STILL FIRING:"),
            "{reminder}"
        );
    }
}

async fn silences_hold_back_notifications(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let state = app(&db, &smtp).await;
    let quiet = connection(&state, "under-maintenance").await;
    let loud = connection(&state, "production").await;
    silence_two_hours(&state, &format!("connection:{quiet}"), "provider maintenance").await;
    fail_refresh(&state, quiet, 3).await;
    fail_refresh(&state, loud, 3).await;
    let evaluation = evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!(
        (evaluation.firing, evaluation.opened),
        (2, 2),
        "silenced alerts still open and show"
    );
    let silenced_now = alerts::list(&state.db, &[telltale::storage::AlertState::Silenced], 10)
        .await
        .unwrap();
    assert_eq!(silenced_now.len(), 1, "shown as silenced");
    assert_eq!(silenced_now[0].subject, format!("connection:{quiet}"));
    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 1, "only the unsilenced alert is emailed");
    assert!(messages[0].contains("production"));
    let silenced = alerts::open_alerts(&state.db)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.subject == format!("connection:{quiet}"))
        .unwrap();
    let (_, history) = alerts::get(&state.db, silenced.id).await.unwrap();
    let held = history.iter().find(|e| e.kind.as_str() == "held_back").unwrap();
    assert!(
        held.detail.as_deref().unwrap().contains("provider maintenance"),
        "{history:?}"
    );

    // The maintenance ends early and the token still fails: now on-call hears of it, once.
    let silence = alerts::silences(&state.db, now()).await.unwrap();
    alerts::delete_silence(&state.db, silence[0].id).await.unwrap();
    evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    let (alert, _) = alerts::get(&state.db, silenced.id).await.unwrap();
    assert_eq!(alert.state.as_str(), "firing");
    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 2);
    assert!(
        messages[1].contains("WARNING: Spotify connection 'under-maintenance' cannot refresh its token"),
        "{}",
        messages[1]
    );
}

/// Alerts changing within the group window share one email, and each rule can have its
/// own recipients (who never get someone else's digest).
async fn alerts_within_the_group_window_share_one_email(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let state = app_with(&db, &smtp)
        .set("alerts.group_wait_secs", 2)
        .set(
            "alerts.recipients.device_offline",
            "field-team@example.com, lead@example.com",
        )
        .state()
        .await;
    let first = connection(&state, "spotify-main").await;
    let second = connection(&state, "spotify-backup").await;
    fail_refresh(&state, first, 3).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        1
    );
    device_in(&state.db, "6136D000009", None, DeviceStatus::Offline, now()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fail_refresh(&state, second, 3).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        2
    );

    let early = state.mailer.deliver_due().await.unwrap();
    assert_eq!(
        (early.sent, early.pending),
        (0, 3),
        "waiting out the group window"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let delivery = state.mailer.deliver_due().await.unwrap();
    assert_eq!((delivery.sent, delivery.messages), (3, 2), "{delivery:?}");
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    let digest = messages
        .iter()
        .find(|m| m.contains("To: oncall@example.com"))
        .expect("on-call email");
    assert!(
        digest.contains("Subject: [Telltale] 2 alerts: 2 firing"),
        "{digest}"
    );
    assert!(digest.contains("spotify-main") && digest.contains("spotify-backup"));
    assert!(
        !digest.contains("6136D000009"),
        "the device alert goes to its own recipients"
    );
    let field = messages
        .iter()
        .find(|m| m.contains("field-team@example.com"))
        .expect("field team email");
    assert!(field.contains("lead@example.com"), "{field}");
    assert!(
        field.contains("Subject: [Telltale] WARNING: device 6136D000009 (6136D000009) is offline"),
        "{field}"
    );
    assert!(!field.contains("spotify"));
}

/// Two Telltale processes share one PostgreSQL, both sweeping tokens, evaluating alerts and
/// draining the outbox every second: each incident still reaches on-call exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_email_each_incident_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpSink::start().await;
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&provider)
        .await;
    let url = smtp.url();
    let env = [
        ("SMTP_URL", url.as_str()),
        ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
        ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *"),
        ("TELLTALE_TOKEN_MAX_ATTEMPTS", "1"),
        ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "* * * * * *"),
        ("TELLTALE_OUTBOX_SCHEDULE", "* * * * * *"),
        ("TELLTALE_ALERT_GROUP_WAIT_SECS", "0"),
    ];
    let first = TestServer::start(db.url(), &env).await;
    let second = TestServer::start(db.url(), &env).await;
    first.wait_ready(Duration::from_secs(30)).await;
    second.wait_ready(Duration::from_secs(30)).await;
    for i in 0..3 {
        let body = json!({
            "account": "acme", "provider": "oauth2_refresh", "name": format!("shared-{i}"),
            "base_url": format!("{}/api/token", provider.uri()),
            "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
            "refresh_token": "CANARY-refresh",
        });
        let (code, _) = post_with_headers(
            &first.url("/api/connections"),
            &[("content-type".into(), "application/json".into())],
            body.to_string(),
        )
        .await;
        assert_eq!(code, 201);
    }
    // Every incident is emailed; then both processes keep running for a while to show that
    // nobody sends one twice.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mentions = |messages: &[String], i: usize| {
        let needle = format!("'shared-{i}'");
        messages
            .iter()
            .filter(|m| m.replace("=\n", "").contains(&needle))
            .count()
    };
    loop {
        let messages = smtp.messages();
        if (0..3).all(|i| mentions(&messages, i) > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every incident emailed: {messages:#?}\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let messages = smtp.messages();
    for i in 0..3 {
        assert_eq!(
            mentions(&messages, i),
            1,
            "shared-{i} emailed once: {messages:#?}"
        );
    }
    let (_, open) = get_json(&second.url("/api/alerts?state=open")).await;
    assert_eq!(open["items"].as_array().unwrap().len(), 3, "{open}");
}
