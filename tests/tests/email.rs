//! Email through the outbox to a real SMTP server (aiosmtpd on 127.0.0.1): the received
//! messages are what is asserted. Both backends.

use std::time::Duration;

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, SmtpSink, TEST_SECRET_KEY, TestDb, TestServer, both_backends, free_port, get_json,
    post_with_headers, run_cli,
};

both_backends!(
    the_test_email_arrives_with_both_parts,
    an_smtp_outage_delays_mail_but_never_loses_it,
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

async fn an_smtp_outage_delays_mail_but_never_loses_it(backend: Backend) {
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

    // The server is down: the email is kept and the failure reported.
    let (code, body) = post_with_headers(&server.url("/api/alerts/test-email"), &json_headers(), "{}").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("smtp_failed")),
        "{body}"
    );
    let (_, outbox) = get_json(&server.url("/api/outbox?pending=true")).await;
    assert_eq!(outbox["pending"], 1, "{outbox}");
    let queued: &Value = &outbox["items"][0];
    assert!(queued["sent_at"].is_null() && queued["attempts"].as_i64() >= Some(1));
    assert!(queued["last_error"].is_string());

    // A few more failed attempts while it is down, then it comes up: delivered exactly once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let smtp = SmtpSink::start_on(port).await;
    let messages = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        messages.len(),
        1,
        "the queued email arrives once the server is back"
    );
    assert!(messages[0].contains("Subject: [Telltale] Test email"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, outbox) = get_json(&server.url("/api/outbox")).await;
        if outbox["pending"] == 0 {
            assert!(outbox["items"][0]["attempts"].as_i64() >= Some(2), "{outbox}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still pending: {outbox}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.messages().len(), 1, "not sent twice");
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
    assert!(stderr.contains("stays in the outbox"), "{stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
}
