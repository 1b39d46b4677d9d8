//! Alert notifications to webhook endpoints: signed as Standard Webhooks says, received by a
//! receiver on 127.0.0.1 that verifies them, through the same outbox as email (retries,
//! silences, grouping). In process for the alert lifecycle, and the built binary for the test
//! notification (API and CLI); both backends.

use std::time::Duration;

use chrono::Duration as Span;
use serde_json::{Value, json};
use telltale::alerts::evaluate::evaluate;
use telltale::app::AppState;
use telltale::storage::{DeviceStatus, alerts, now, outbox};
use telltale_e2e::{
    Backend, SmtpSink, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TEST_SECRET_KEY, TestApp, TestDb, TestServer,
    WEBHOOK_SECRET, WebhookReceiver, assert_no_canary, both_backends, browser, device_in, fail_refresh,
    get_json, metric_sample, post_with_headers, refresh_succeeded, run_cli, sign_in, silence_two_hours,
};

both_backends!(
    alert_notifications_reach_signed_webhooks_beside_email,
    a_refused_delivery_is_retried_with_the_same_id,
    silences_and_the_group_window_apply_to_webhooks,
    a_test_notification_checks_each_endpoint,
);

const PUBLIC_URL: &str = "https://telltale.example.com";

fn endpoint(name: &str, url: &str, secret: Option<&str>, rules: &[&str]) -> toml::Value {
    let mut table = toml::Table::new();
    table.insert("name".into(), name.into());
    table.insert("url".into(), url.into());
    if let Some(secret) = secret {
        table.insert("secret".into(), secret.into());
    }
    let rules: Vec<toml::Value> = rules.iter().map(|r| toml::Value::from(*r)).collect();
    table.insert("rules".into(), toml::Value::Array(rules));
    toml::Value::Table(table)
}

async fn failing_connection(state: &AppState, name: &str) -> i64 {
    let id = telltale_e2e::spotify_connection(state, name, Span::hours(1)).await;
    fail_refresh(state, id, 3).await;
    id
}

/// The one alert a request carries.
fn only_alert(body: &Value) -> &Value {
    let alerts = body["data"]["alerts"].as_array().expect("data.alerts");
    assert_eq!(alerts.len(), 1, "{body}");
    &alerts[0]
}

/// On-call is emailed and the `default` endpoint (signed) gets the same notifications as
/// JSON; an endpoint limited to device alerts (unsigned, like a chat's incoming webhook)
/// gets only those.
async fn alert_notifications_reach_signed_webhooks_beside_email(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let ops = WebhookReceiver::start(Some(WEBHOOK_SECRET)).await;
    let field = WebhookReceiver::start(None).await;
    let state = TestApp::on(&db)
        .set("email.smtp_url", smtp.url())
        .set("email.on_call", "oncall@example.com")
        .set("alerts.public_url", PUBLIC_URL)
        .set("alerts.group_wait_secs", 0)
        .set("alerts.webhook_url", ops.url())
        .set("alerts.webhook_secret", WEBHOOK_SECRET)
        .set(
            "alerts.webhooks",
            toml::Value::Array(vec![endpoint("field", &field.url(), None, &["device_offline"])]),
        )
        .state()
        .await;

    let id = failing_connection(&state, "spotify-main").await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        1
    );
    let delivery = state.mailer.deliver_due().await.unwrap();
    assert_eq!(
        (delivery.sent, delivery.messages, delivery.pending),
        (2, 2, 0),
        "one email and one webhook: {delivery:?}"
    );
    assert_eq!(smtp.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let got = ops.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let firing = &got[0];
    assert!(
        firing.signed && firing.accepted,
        "signed and verified: {firing:?}"
    );
    assert!(firing.id.starts_with("msg_"), "{firing:?}");
    assert!((now().0.timestamp() - firing.timestamp).abs() < 60);
    assert_eq!(firing.content_type, "application/json");
    let body = &firing.body;
    assert_eq!(body["type"], "alert.firing", "{body}");
    let open = alerts::open_alerts(&state.db).await.unwrap();
    let alert = only_alert(body);
    assert_eq!(alert["id"], open[0].id);
    assert_eq!(alert["rule"], "token_refresh_failing");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["notice"], "firing");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["subject"], format!("connection:{id}"));
    assert_eq!(
        alert["summary"],
        "Spotify connection 'spotify-main' cannot refresh its token (3 failed refreshes in a row)"
    );
    assert!(
        alert["details"]
            .as_str()
            .unwrap()
            .contains("What the platform last said: HTTP 503")
    );
    let link = format!("{PUBLIC_URL}/alerts/{}", open[0].id);
    assert_eq!(alert["url"], link.as_str());
    assert_eq!(
        alert["api_url"],
        format!("{PUBLIC_URL}/api/alerts/{}", open[0].id)
    );
    assert!(alert["first_seen_at"].is_string() && alert["resolved_at"].is_null());
    let text = body["text"].as_str().expect("a text for chat");
    assert!(
        text.starts_with("[Telltale] WARNING: Spotify connection 'spotify-main' cannot refresh its token")
            && text.contains(&link),
        "{text}"
    );
    assert!(
        field.received().is_empty(),
        "the field team's endpoint takes only device alerts"
    );

    // A device goes offline: both endpoints hear of it; the field team's unsigned.
    device_in(&state.db, "6136D000009", None, DeviceStatus::Offline, now()).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        1
    );
    state.mailer.deliver_due().await.unwrap();
    let device_alert = field.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(device_alert.len(), 1);
    assert!(!device_alert[0].signed, "no secret, no signature");
    assert_eq!(only_alert(&device_alert[0].body)["rule"], "device_offline");
    assert_eq!(ops.wait_for_accepted(2, Duration::from_secs(10)).await.len(), 2);

    // Recovery is told too, with when it resolved.
    refresh_succeeded(&state, id).await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .resolved,
        1
    );
    state.mailer.deliver_due().await.unwrap();
    let got = ops.wait_for_accepted(3, Duration::from_secs(10)).await;
    let resolved = &got[2].body;
    assert_eq!(resolved["type"], "alert.resolved", "{resolved}");
    let alert = only_alert(resolved);
    assert_eq!(
        (alert["state"].as_str(), alert["notice"].as_str()),
        (Some("resolved"), Some("resolved"))
    );
    assert!(alert["resolved_at"].is_string());
    assert!(
        resolved["text"]
            .as_str()
            .unwrap()
            .starts_with("[Telltale] RESOLVED: Spotify connection 'spotify-main'")
    );
    assert!(
        ops.received().iter().all(|r| r.accepted),
        "every signature verified"
    );
    assert_ne!(got[0].id, got[2].id, "each notification its own id");

    // The outbox shows where each went.
    let rows = outbox::list(&state.db, false, 50).await.unwrap();
    let channels = |channel: &str| rows.iter().filter(|r| r.channel == channel).count();
    assert_eq!((channels("email"), channels("webhook")), (3, 4), "{rows:?}");
    assert!(rows.iter().all(|r| r.sent_at.is_some()));
}

/// A receiver that is down gets the notification again later, with the same `webhook-id` so
/// it can drop a repeat; a receiver with another secret refuses it, and the failure is kept.
async fn a_refused_delivery_is_retried_with_the_same_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let down = WebhookReceiver::start(Some(WEBHOOK_SECRET)).await;
    let other_secret = WebhookReceiver::start(Some("whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==")).await;
    let state = TestApp::on(&db)
        .set("alerts.public_url", PUBLIC_URL)
        .set("alerts.group_wait_secs", 0)
        .set("email.retry_base_secs", 1)
        .set(
            "alerts.webhooks",
            toml::Value::Array(vec![
                endpoint("ops", &down.url(), Some(WEBHOOK_SECRET), &[]),
                endpoint("mismatched", &other_secret.url(), Some(WEBHOOK_SECRET), &[]),
            ]),
        )
        .state()
        .await;
    down.refuse_next(1);
    failing_connection(&state, "spotify-main").await;
    evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();

    let first = state.mailer.deliver_due().await.unwrap();
    assert_eq!((first.sent, first.failed, first.pending), (0, 2, 2), "{first:?}");
    let rows = outbox::list(&state.db, true, 10).await.unwrap();
    let error_of = |name: &str| {
        let row = rows.iter().find(|r| r.recipients == name).unwrap();
        (row.attempts, row.last_error.clone().unwrap_or_default())
    };
    assert_eq!(
        error_of("ops"),
        (1, "HTTP 503 from the endpoint: try later".to_owned())
    );
    assert_eq!(
        error_of("mismatched"),
        (
            1,
            "HTTP 401 from the endpoint: signature does not verify".to_owned()
        )
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = state.mailer.deliver_due().await.unwrap();
    assert_eq!((second.sent, second.failed), (1, 1), "{second:?}");
    let attempts = down.received();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(!attempts[0].accepted && attempts[1].accepted);
    assert_eq!(attempts[0].id, attempts[1].id, "a retry keeps its webhook-id");
    assert_eq!(attempts[0].body["data"], attempts[1].body["data"]);
    assert!(other_secret.received().iter().all(|r| !r.accepted));
    let left = outbox::list(&state.db, true, 10).await.unwrap();
    assert_eq!(left.len(), 1, "the refused one waits for its next retry");
    assert_eq!((left[0].recipients.as_str(), left[0].attempts), ("mismatched", 2));
}

/// A silence holds webhook notifications back as it does emails, and alerts changing within
/// the group window arrive in one request.
async fn silences_and_the_group_window_apply_to_webhooks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ops = WebhookReceiver::start(Some(WEBHOOK_SECRET)).await;
    let state = TestApp::on(&db)
        .set("alerts.public_url", PUBLIC_URL)
        .set("alerts.group_wait_secs", 2)
        .set("alerts.webhook_url", ops.url())
        .set("alerts.webhook_secret", WEBHOOK_SECRET)
        .state()
        .await;
    let quiet = telltale_e2e::spotify_connection(&state, "under-maintenance", Span::hours(1)).await;
    silence_two_hours(&state, &format!("connection:{quiet}"), "provider maintenance").await;
    fail_refresh(&state, quiet, 3).await;
    failing_connection(&state, "spotify-main").await;
    failing_connection(&state, "spotify-backup").await;
    assert_eq!(
        evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .unwrap()
            .opened,
        3
    );

    let early = state.mailer.deliver_due().await.unwrap();
    assert_eq!(
        (early.sent, early.pending),
        (0, 2),
        "waiting out the group window"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let delivery = state.mailer.deliver_due().await.unwrap();
    assert_eq!((delivery.sent, delivery.messages), (2, 1), "{delivery:?}");
    let got = ops.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let digest = &got[0].body;
    assert_eq!(digest["type"], "alert.digest", "{digest}");
    let mut summaries: Vec<&str> = digest["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["summary"].as_str().unwrap())
        .collect();
    summaries.sort_unstable();
    assert_eq!(
        summaries,
        [
            "Spotify connection 'spotify-backup' cannot refresh its token (3 failed refreshes in a row)",
            "Spotify connection 'spotify-main' cannot refresh its token (3 failed refreshes in a row)",
        ],
        "the silenced one is held back"
    );
    let text = digest["text"].as_str().unwrap();
    assert!(text.starts_with("[Telltale] 2 alerts: 2 firing"), "{text}");
    assert!(text.contains("spotify-main") && text.contains("spotify-backup"));
    assert!(!text.contains("under-maintenance"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ops.received().len(), 1, "one request for the group");
}

/// `POST /api/alerts/test-notification` and `telltale send-test-notification` reach every
/// endpoint (or the one named), say which did not take it, and never show the URL or secret.
async fn a_test_notification_checks_each_endpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ops = WebhookReceiver::start(Some(WEBHOOK_SECRET)).await;
    let url = ops.url();
    let server = TestServer::start(
        db.url(),
        &[
            ("TELLTALE_ALERT_WEBHOOK_URL", url.as_str()),
            ("TELLTALE_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    let (code, body) = post_with_headers(&server.url("/api/alerts/test-notification"), &headers, "{}").await;
    assert_eq!((code, body["sent"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(body["endpoints"][0]["endpoint"], "default");
    let got = ops.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].signed);
    assert_eq!(got[0].body["type"], "test");
    assert_eq!(got[0].body["data"]["alerts"], json!([]));
    assert!(
        got[0].body["text"]
            .as_str()
            .unwrap()
            .contains("reaches this endpoint"),
        "{}",
        got[0].body
    );
    let (code, body) = post_with_headers(
        &server.url("/api/alerts/test-notification"),
        &headers,
        r#"{"endpoint": "nope"}"#,
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("default"));

    ops.refuse_next(1);
    let (code, body) = post_with_headers(&server.url("/api/alerts/test-notification"), &headers, "{}").await;
    assert_eq!((code, body["sent"].as_bool()), (502, Some(false)), "{body}");
    assert_eq!(
        body["endpoints"][0]["error"],
        "HTTP 503 from the endpoint: try later"
    );
    assert_eq!(body["error"]["code"], "webhook_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("default: HTTP 503 from the endpoint: try later"),
        "{body}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric_sample(
            &metrics,
            "telltale_alert_webhooks_sent_total",
            &[("endpoint", "default")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            "telltale_alert_webhook_failures_total",
            &[("endpoint", "default")]
        ),
        Some(1.0)
    );
    // A failed test is answered, not retried: nothing pending, the row given up.
    let (_, pending) = get_json(&server.url("/api/outbox?pending=true")).await;
    assert_eq!(pending["pending"], 0, "{pending}");
    let (_, all) = get_json(&server.url("/api/outbox")).await;
    assert_eq!(all["items"][0]["channel"], "webhook", "{all}");
    assert_eq!(all["items"][0]["recipients"], "default");
    assert!(all["items"][0]["failed_at"].is_string(), "{all}");

    // Settings lists the endpoint (never its URL or secret) with the same test button.
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let settings = browser()
        .get(server.url("/settings"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        settings.contains("<tr><td>default</td><td>yes</td><td>every alert</td>")
            && settings.contains("config or environment (read-only)")
            && settings.contains(r#"data-body='{"endpoint":"default"}'>Send test</button>"#),
        "{settings}"
    );
    assert_no_canary("the Settings page", &settings);

    // The CLI, as an operator checks a new endpoint from a shell.
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ("TELLTALE_ALERT_WEBHOOK_URL", url.as_str()),
        ("TELLTALE_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let out = run_cli(&["send-test-notification"], &env);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("to endpoint default"));
    ops.refuse_next(1);
    let failed = run_cli(&["send-test-notification", "--endpoint", "default"], &env);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("not delivered: HTTP 503 from the endpoint: try later"),
        "{stderr}"
    );
    let unknown = run_cli(&["send-test-notification", "--endpoint", "nope"], &env);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("configured: default"));
    let none = run_cli(
        &["send-test-notification"],
        &[
            ("DATABASE_URL", db.url()),
            ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ],
    );
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("TELLTALE_ALERT_WEBHOOK_URL"));
    // The server's log is checked for the URL and secret (both hold CANARY) when it drops.
}
