//! Settings → Notifications through the API: an SMTP server (real aiosmtpd that asks for a
//! sign-in), sender, on-call and per-rule recipients, and alert webhooks, each answered by a
//! test that says what the server said; secrets sealed at rest and never shown; the config and
//! environment winning; and a change on one replica applied on another without a restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, SmtpSink, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TEST_SECRET_KEY, TestDb, TestServer,
    WebhookReceiver, api_send, assert_no_canary, both_backends, browser, free_port, metric_sample, run_cli,
    sign_in,
};

both_backends!(
    email_is_set_up_and_tested_from_the_ui,
    alert_webhooks_are_set_up_and_tested_from_the_ui,
    the_config_wins_over_the_ui,
);

const SMTP_PASSWORD: &str = "CANARY-smtp-password";
const HOOK_SECRET: &str = "whsec_Q0FOQVJZLXNpZ25pbmcta2V5LTEyMzQ1Njc4OTA=";

async fn put(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    api_send(reqwest::Method::PUT, server.url(path), Some(body)).await
}

async fn test_email(server: &TestServer) -> (u16, Value) {
    api_send(
        reqwest::Method::POST,
        server.url("/api/alerts/test-email"),
        Some(json!({})),
    )
    .await
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

async fn email_channel_gauge(server: &TestServer) -> Option<f64> {
    metric_sample(
        &server.metrics().await,
        "telltale_notification_channels",
        &[("channel", "email")],
    )
}

async fn email_is_set_up_and_tested_from_the_ui(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;

    // A blank install: nothing reaches anyone, and a test says what to set instead of queueing.
    let (code, view) = api_send(reqwest::Method::GET, server.url("/api/notifications"), None).await;
    assert_eq!(code, 200);
    assert_eq!(view["smtp"]["origin"], Value::Null, "{view}");
    assert_eq!(view["email_reaches_on_call"], false);
    let (code, body) = test_email(&server).await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("no_smtp")));
    assert!(message(&body).contains("Settings → Notifications"), "{body}");
    assert_eq!(email_channel_gauge(&server).await, Some(0.0));

    let smtp = SmtpSink::start_with_login("alerts@example.com", SMTP_PASSWORD).await;
    let server_form = |password: &str| {
        json!({"host": "127.0.0.1", "port": smtp.port.to_string(), "tls": "none",
               "user": "alerts@example.com", "password": password})
    };
    // A wrong password is saved (it is a valid setting) and the test answers with the server's refusal.
    let (code, view) = put(&server, "/api/notifications/smtp", server_form("CANARY-wrong")).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["smtp"]["origin"], "ui");
    assert_eq!(view["smtp"]["host"], "127.0.0.1");
    assert_eq!(view["smtp"]["password_set"], true);
    let (code, body) = test_email(&server).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("no_recipients")),
        "{body}"
    );
    let (code, view) = put(
        &server,
        "/api/notifications/recipients",
        json!({"from": "Telltale <telltale@example.com>", "on_call": "oncall@example.com, second@example.com",
               "recipients": {"device_offline": "field@example.com"}}),
    )
    .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["on_call"]["origin"], "ui");
    assert_eq!(
        view["on_call"]["value"],
        json!(["oncall@example.com", "second@example.com"])
    );
    let offline = view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "device_offline")
        .unwrap();
    assert_eq!(offline["addresses"], json!(["field@example.com"]));
    let (code, body) = test_email(&server).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("smtp_failed")),
        "{body}"
    );
    assert!(message(&body).contains("535"), "the server's refusal: {body}");
    assert!(smtp.messages().is_empty());

    // The right password: the test arrives, from the sender set here, to on-call.
    let (code, _) = put(&server, "/api/notifications/smtp", server_form(SMTP_PASSWORD)).await;
    assert_eq!(code, 200);
    let (code, body) = test_email(&server).await;
    assert_eq!((code, body["sent"].as_bool()), (200, Some(true)), "{body}");
    let received = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert!(
        received[0].contains("From: Telltale <telltale@example.com>"),
        "{}",
        received[0]
    );
    assert!(received[0].contains("oncall@example.com") && received[0].contains("second@example.com"));
    assert_eq!(email_channel_gauge(&server).await, Some(1.0));

    // Saved again without a password, the stored one is kept.
    let mut keep = server_form("");
    keep["password"] = Value::Null;
    let (code, _) = put(&server, "/api/notifications/smtp", keep).await;
    assert_eq!(code, 200);
    let (code, _) = test_email(&server).await;
    assert_eq!(code, 200, "the kept password still signs in");

    // The CLI uses what the UI set.
    let out = run_cli(
        &["send-test-email", "cli@example.com"],
        &[
            ("DATABASE_URL", db.url()),
            ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(smtp.wait_for(3, Duration::from_secs(10)).await[2].contains("To: cli@example.com"));

    // The password is sealed at rest.
    let stored = telltale::storage::app_settings::get(&db.open().await, "notification_channels")
        .await
        .unwrap()
        .unwrap();
    assert_no_canary("the stored notification settings", &stored);
    assert!(stored.contains("127.0.0.1"));

    // A server that is down: the answer says so within the request.
    let down = free_port();
    let (code, _) = put(
        &server,
        "/api/notifications/smtp",
        json!({"host": "127.0.0.1", "port": down, "tls": "none"}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = test_email(&server).await;
    assert_eq!(code, 502);
    assert!(
        message(&body).to_lowercase().contains("connection refused"),
        "{body}"
    );

    // Bad input is refused with what is wrong, and nothing changes.
    for (form, words) in [
        (json!({"host": ""}), "host"),
        (json!({"url": "http://mail.example.com"}), "SMTP URL"),
        (json!({"host": "mail.example.com", "user": "u"}), "password"),
        (json!({"host": "mail.example.com", "port": "seventy"}), "port"),
    ] {
        let (code, body) = put(&server, "/api/notifications/smtp", form.clone()).await;
        assert_eq!(code, 400, "{form} → {body}");
        assert!(body.to_string().contains(words), "{form} → {body}");
    }
    let (code, body) = put(
        &server,
        "/api/notifications/recipients",
        json!({"on_call": "not an address"}),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_settings"))
    );
    let (code, body) = put(
        &server,
        "/api/notifications/recipients",
        json!({"recipients": {"no_such_rule": "a@example.com"}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // Removed: email reaches nobody again.
    let (code, _) = api_send(
        reqwest::Method::DELETE,
        server.url("/api/notifications/smtp"),
        None,
    )
    .await;
    assert_eq!(code, 204);
    let (code, body) = test_email(&server).await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("no_smtp")));
    assert_eq!(email_channel_gauge(&server).await, Some(0.0));
    assert!(!server.log_text().contains("CANARY"), "a secret reached the log");
}

async fn alert_webhooks_are_set_up_and_tested_from_the_ui(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let receiver = WebhookReceiver::start(Some(HOOK_SECRET)).await;
    let test = |endpoint: &str| {
        let url = server.url("/api/alerts/test-notification");
        let body = json!({"endpoint": endpoint});
        async move { api_send(reqwest::Method::POST, url, Some(body)).await }
    };

    let (code, body) = test("ops").await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("no_webhooks")));
    let (code, view) = put(
        &server,
        "/api/notifications/webhooks",
        json!({"name": "ops", "url": receiver.url(), "secret": HOOK_SECRET, "rules": "device_offline, token_needs_reauth"}),
    )
    .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(
        view["webhooks"],
        json!([{"name": "ops", "signed": true, "rules": ["device_offline", "token_needs_reauth"], "origin": "ui"}])
    );
    let (code, body) = test("ops").await;
    assert_eq!((code, body["sent"].as_bool()), (200, Some(true)), "{body}");
    let accepted = receiver.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1, "signed with the secret entered in the UI");
    assert_eq!(
        metric_sample(
            &server.metrics().await,
            "telltale_notification_channels",
            &[("channel", "webhook")]
        ),
        Some(1.0)
    );

    // An endpoint that answers 404, and one that is down: the test says which, at once.
    let missing = wiremock::MockServer::start().await;
    let (code, _) = put(
        &server,
        "/api/notifications/webhooks",
        json!({"name": "wrong-path", "url": format!("{}/nothing-here", missing.uri())}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = test("wrong-path").await;
    assert_eq!(code, 502);
    assert!(message(&body).contains("HTTP 404 from the endpoint"), "{body}");
    let (code, _) = put(
        &server,
        "/api/notifications/webhooks",
        json!({"name": "wrong-path", "url": format!("http://127.0.0.1:{}/hook", free_port())}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = test("wrong-path").await;
    assert_eq!(code, 502);
    assert!(
        message(&body).to_lowercase().contains("connection refused"),
        "{body}"
    );

    // Changing a rule list keeps the URL and secret; bad values are refused.
    let (code, view) = put(
        &server,
        "/api/notifications/webhooks",
        json!({"name": "ops", "rules": ""}),
    )
    .await;
    assert_eq!(code, 200, "{view}");
    let ops = view["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "ops")
        .unwrap();
    assert_eq!(ops["rules"], json!([]));
    assert_eq!(ops["signed"], true);
    let (code, _) = test("ops").await;
    assert_eq!(code, 200);
    for (form, words) in [
        (json!({"name": "x", "url": "ftp://example.com"}), "http(s)"),
        (
            json!({"name": "x", "url": receiver.url(), "secret": "plain"}),
            "whsec_",
        ),
        (
            json!({"name": "x", "url": receiver.url(), "rules": "nope"}),
            "nope",
        ),
        (json!({"name": "has space", "url": receiver.url()}), "name"),
        (json!({"name": "new"}), "url"),
    ] {
        let (code, body) = put(&server, "/api/notifications/webhooks", form.clone()).await;
        assert_eq!(code, 400, "{form} → {body}");
        assert!(message(&body).contains(words), "{form} → {body}");
    }
    let stored = telltale::storage::app_settings::get(&db.open().await, "notification_channels")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.contains(&receiver.url()) && !stored.contains("whsec_"),
        "sealed: {stored}"
    );

    for name in ["ops", "wrong-path"] {
        let (code, _) = api_send(
            reqwest::Method::DELETE,
            server.url(&format!("/api/notifications/webhooks/{name}")),
            None,
        )
        .await;
        assert_eq!(code, 204);
    }
    let (code, _) = test("ops").await;
    assert_eq!(code, 400, "removed");
}

async fn the_config_wins_over_the_ui(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let receiver = WebhookReceiver::start(None).await;
    let server = TestServer::start_with_config(
        db.url(),
        "[alerts.recipients]\ndevice_offline = \"field@example.com\"\n",
        &[
            ("SMTP_URL", smtp.url().as_str()),
            ("TELLTALE_ONCALL_EMAILS", "config@example.com"),
            ("TELLTALE_ALERT_WEBHOOK_URL", receiver.url().as_str()),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (_, view) = api_send(reqwest::Method::GET, server.url("/api/notifications"), None).await;
    assert_eq!(view["smtp"]["origin"], "config");
    assert_eq!(view["smtp"]["env"], "SMTP_URL");
    assert_eq!(view["on_call"]["origin"], "config");
    assert_eq!(view["on_call"]["env"], "TELLTALE_ONCALL_EMAILS");
    assert_eq!(view["from"]["origin"], "default");
    assert_eq!(view["webhooks"][0]["origin"], "config");

    let (code, body) = put(
        &server,
        "/api/notifications/smtp",
        json!({"host": "mail.example.com"}),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("set_in_config"))
    );
    assert!(message(&body).contains("SMTP_URL"), "{body}");
    let (code, body) = put(
        &server,
        "/api/notifications/recipients",
        json!({"on_call": "ui@example.com"}),
    )
    .await;
    assert_eq!(code, 409);
    assert!(message(&body).contains("TELLTALE_ONCALL_EMAILS"), "{body}");
    let (code, _) = put(
        &server,
        "/api/notifications/recipients",
        json!({"recipients": {"device_offline": "ui@example.com"}}),
    )
    .await;
    assert_eq!(code, 409, "a rule the config sets");
    let (code, _) = put(
        &server,
        "/api/notifications/webhooks",
        json!({"name": "default", "url": receiver.url()}),
    )
    .await;
    assert_eq!(code, 409, "an endpoint the config sets");
    // What the config leaves open can still be set here: the sender.
    let (code, view) = put(
        &server,
        "/api/notifications/recipients",
        json!({"from": "Ops <ops@example.com>", "recipients": {"token_runway": "tokens@example.com"}}),
    )
    .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["from"]["origin"], "ui");
    let (code, _) = test_email(&server).await;
    assert_eq!(code, 200);
    let received = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        received[0].contains("From: Ops <ops@example.com>"),
        "{}",
        received[0]
    );
    assert!(received[0].contains("To: config@example.com"), "{}", received[0]);

    // Settings shows what the config sets read-only, with its variable, and never the URL.
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let page = browser()
        .get(server.url("/settings"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"id="smtp-from-config""#) && page.contains("<code>SMTP_URL</code>"),
        "{page}"
    );
    assert!(
        !page.contains(r#"id="smtp-server""#),
        "no SMTP form while the config sets it"
    );
    assert!(
        page.contains(r#"<input id="on-call" disabled"#)
            && page.contains("<code>TELLTALE_ONCALL_EMAILS</code>"),
        "{page}"
    );
    assert!(
        page.contains(r#"<input id="rcpt-device_offline" disabled"#),
        "{page}"
    );
    assert!(
        page.contains(r#"name="recipients.token_runway""#),
        "a rule the config leaves open"
    );
    assert!(
        !page.contains(&smtp.url()) && !page.contains(&receiver.url()),
        "URLs never shown"
    );
}

/// Two replicas on one PostgreSQL database: an SMTP server saved on one is used by the other
/// within seconds, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_applies_on_the_other() {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpSink::start().await;
    let one = TestServer::start(db.url(), &[("TELLTALE_ONCALL_EMAILS", "oncall@example.com")]).await;
    let two = TestServer::start(db.url(), &[("TELLTALE_ONCALL_EMAILS", "oncall@example.com")]).await;
    one.wait_ready(Duration::from_secs(30)).await;
    two.wait_ready(Duration::from_secs(30)).await;
    let (code, _) = test_email(&two).await;
    assert_eq!(code, 400, "no SMTP server yet");
    let (code, _) = put(
        &one,
        "/api/notifications/smtp",
        json!({"host": "127.0.0.1", "port": smtp.port, "tls": "none"}),
    )
    .await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = test_email(&two).await;
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica never used it: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(smtp.wait_for(1, Duration::from_secs(10)).await.len(), 1);
}
