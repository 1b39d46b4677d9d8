//! Email through the outbox to a real SMTP server (aiosmtpd on 127.0.0.1): the received
//! messages are what is asserted. Both backends.

use std::time::Duration;

use serde_json::json;
use telltale::storage::now;
use telltale::storage::outbox::{self, NewEmail};
use telltale_e2e::{
    Backend, SmtpSink, TEST_SECRET_KEY, TestDb, TestServer, both_backends, free_port, get_json,
    post_with_headers, run_cli,
};

both_backends!(
    the_test_email_arrives_with_both_parts,
    a_failed_or_impossible_test_email_is_answered_not_queued,
    notifications_wait_out_an_outage_and_end_when_too_old,
    the_cli_sends_a_test_email,
);

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

async fn the_test_email_arrives_with_both_parts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let url = smtp.url();
    let server = TestServer::start(
        db.url(),
        &[
            ("SMTP_URL", url.as_str()),
            ("TELLTALE_ONCALL_EMAILS", "oncall@example.com, second@example.com"),
            ("TELLTALE_EMAIL_FROM", "Telltale <telltale@example.com>"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;

    let (code, body) = post_with_headers(&server.url("/api/alerts/test-email"), &json_headers(), "{}").await;
    assert_eq!((code, body["sent"].as_bool()), (200, Some(true)), "{body}");
    let messages = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "one email");
    let message = &messages[0];
    assert!(message.contains("Subject: [Telltale] Test email"), "{message}");
    assert!(
        message.contains("From: Telltale <telltale@example.com>"),
        "{message}"
    );
    assert!(
        message.contains("oncall@example.com") && message.contains("second@example.com"),
        "the on-call list: {message}"
    );
    assert!(message.contains("multipart/alternative"), "{message}");
    assert!(
        message.contains("text/plain") && message.contains("text/html"),
        "{message}"
    );
    assert!(message.contains("alert emails reach this address"));

    // Explicit recipients; a bad address is refused before anything is queued.
    let (code, _) = post_with_headers(
        &server.url("/api/alerts/test-email"),
        &json_headers(),
        json!({"to": ["ops@example.com"]}).to_string(),
    )
    .await;
    assert_eq!(code, 200);
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    assert!(messages[1].contains("To: ops@example.com"), "{}", messages[1]);
    let (code, body) = post_with_headers(
        &server.url("/api/alerts/test-email"),
        &json_headers(),
        json!({"to": ["not an address"]}).to_string(),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_recipient"))
    );

    let (code, outbox) = get_json(&server.url("/api/outbox")).await;
    assert_eq!(code, 200);
    assert_eq!(outbox["pending"], 0);
    assert_eq!(outbox["items"].as_array().unwrap().len(), 2);
    assert!(outbox["items"][0]["sent_at"].is_string());
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"telltale_emails_sent_total{kind="test"} 2"#),
        "{metrics}"
    );
}

/// A test email is a question answered within the request: with the SMTP server down it
/// answers 502 with what went wrong and is given up at once, never retried; without an SMTP
/// server it is refused before anything is queued.
async fn a_failed_or_impossible_test_email_is_answered_not_queued(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let server = TestServer::start(
        db.url(),
        &[
            ("SMTP_URL", url.as_str()),
            ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
            ("TELLTALE_OUTBOX_SCHEDULE", "* * * * * *"),
            ("TELLTALE_EMAIL_RETRY_BASE_SECS", "1"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, body) = post_with_headers(&server.url("/api/alerts/test-email"), &json_headers(), "{}").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("smtp_failed")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("refused"),
        "what the connection said: {body}"
    );
    assert!(body["email"]["failed_at"].is_string(), "{body}");
    // Outbox runs every second meanwhile: the test is not tried again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, outbox) = get_json(&server.url("/api/outbox")).await;
    assert_eq!(outbox["pending"], 0, "{outbox}");
    assert_eq!(outbox["items"][0]["attempts"], 1, "{outbox}");
    drop(server);

    let blank = TestDb::new(backend).await;
    let server = TestServer::start(blank.url(), &[("TELLTALE_ONCALL_EMAILS", "oncall@example.com")]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (code, body) = post_with_headers(&server.url("/api/alerts/test-email"), &json_headers(), "{}").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("no_smtp")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SMTP_URL"),
        "names what to set: {body}"
    );
    let (_, outbox) = get_json(&server.url("/api/outbox")).await;
    assert!(
        outbox["items"].as_array().unwrap().is_empty(),
        "nothing queued: {outbox}"
    );
}

/// An SMTP outage delays an alert notification but never loses it; a notification that cannot
/// be delivered within `alerts.notification_max_age_secs` is given up: marked failed with its
/// last error, counted, and announced through the channel that works.
async fn notifications_wait_out_an_outage_and_end_when_too_old(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let receiver = telltale_e2e::WebhookReceiver::start(None).await;
    let state = telltale_e2e::TestApp::on(&db)
        .set("email.smtp_url", format!("smtp://127.0.0.1:{port}"))
        .set("email.on_call", "oncall@example.com")
        .set("email.retry_base_secs", 1)
        .set("alerts.notification_max_age_secs", 3)
        .set("alerts.webhook_url", receiver.url())
        .state()
        .await;
    let queue = |channel: &'static str, to: &'static str| {
        let db = state.db.clone();
        async move {
            let row = NewEmail {
                alert_id: None,
                channel,
                kind: "alert_firing",
                recipients: &[to.to_owned()],
                subject: "[Telltale] Spotify connection 'acme' cannot refresh its token",
                body_text: "HTTP 503 from the platform",
                body_html: "<p>HTTP 503 from the platform</p>",
            };
            outbox::enqueue(&db, &row, now()).await.unwrap()
        }
    };
    let mail = queue(outbox::EMAIL, "oncall@example.com").await;
    let run = state.mailer.deliver_due().await.unwrap();
    assert_eq!((run.sent, run.failed, run.pending), (0, 1, 1), "{run:?}");
    let smtp = SmtpSink::start_on(port).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = state.mailer.deliver_due().await.unwrap();
    assert_eq!((run.sent, run.pending), (1, 0), "{run:?}");
    assert_eq!(
        smtp.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "delivered once"
    );
    assert!(outbox::get(&state.db, mail.id).await.unwrap().sent_at.is_some());

    // The webhook endpoint now refuses everything; the notification is given up when too old.
    receiver.refuse_next(1000);
    let hook = queue(outbox::WEBHOOK, "default").await;
    let run = state.mailer.deliver_due().await.unwrap();
    assert_eq!(run.failed, 1, "{run:?}");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let run = state.mailer.deliver_due().await.unwrap();
    assert_eq!(run.expired, 1, "{run:?}");
    let given_up = outbox::get(&state.db, hook.id).await.unwrap();
    assert!(
        given_up.failed_at.is_some() && given_up.sent_at.is_none(),
        "{given_up:?}"
    );
    assert!(given_up.last_error.unwrap_or_default().contains("503"));
    let metrics = state.metrics.render(&state.db).await;
    assert_eq!(
        telltale_e2e::metric_sample(
            &metrics,
            "telltale_notifications_expired_total",
            &[("channel", "webhook")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // Announced by email, the channel that works, saying what was given up and why.
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    let notice = &messages[1];
    assert!(
        notice.contains("Subject: [Telltale] A notification could not be delivered"),
        "{notice}"
    );
    assert!(
        notice.contains("cannot refresh its token") && notice.contains("503"),
        "{notice}"
    );
    let run = state.mailer.deliver_due().await.unwrap();
    assert_eq!((run.pending, run.expired), (0, 0), "given up once: {run:?}");
}

async fn the_cli_sends_a_test_email(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let url = smtp.url();
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ("SMTP_URL", url.as_str()),
    ];
    let out = run_cli(&["send-test-email", "ops@example.com"], &env);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent test email"));
    let messages = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert!(messages[0].contains("To: ops@example.com"));

    let nobody = run_cli(&["send-test-email"], &env);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("on-call list"));

    let down = format!("smtp://u:CANARY-pw@127.0.0.1:{}", free_port());
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
        ("SMTP_URL", down.as_str()),
    ];
    let failed = run_cli(&["send-test-email", "ops@example.com"], &env);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("not sent"), "{stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
    ];
    let no_smtp = run_cli(&["send-test-email", "ops@example.com"], &env);
    assert_eq!(no_smtp.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_smtp.stderr).contains("no SMTP server is set"));
}
