//! Alert emails read as on-call reads them, from a real SMTP server, about connections whose
//! fake platforms answer 500, 429, too late, or `invalid_grant`: what the platform said, how
//! many real requests failed and when the next is, a link to the UI page, times with their
//! zone, product names; the RESOLVED email states what holds now; the webhook's `text` says the
//! same. Both backends.

use std::time::Duration;

use chrono::Duration as Span;
use serde_json::json;
use telltale::app::AppState;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::now;
use telltale_e2e::{Backend, SmtpSink, TestApp, TestDb, WebhookReceiver, both_backends, sweep_all};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

both_backends!(on_call_reads_what_the_platform_said_and_what_holds_after_recovery);

/// A Spotify connection refreshed at `token_url`, due now (its token expires within the lead).
async fn spotify(state: &AppState, name: &str, token_url: String) -> i64 {
    let account = telltale_e2e::acme_account(state).await;
    let new = NewConnection {
        account_id: account.id,
        provider: "oauth2_refresh".into(),
        name: name.into(),
        base_url: Some(token_url),
        settings: json!({"preset": "spotify"}),
        credentials: Some(json!({"client_id": "client-1", "client_secret": "CANARY-secret"}).to_string()),
        access_token: Some("CANARY-at".into()),
        refresh_token: Some("CANARY-rt".into()),
        expires_at: Some((now().0 + Span::minutes(1)).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap()
        .id
}

/// Everything a person should never have to decode in an email.
fn assert_readable(email: &str) {
    // `2026-12-07T16:32`: a date joined to a time by `T`.
    let iso = email.as_bytes().windows(13).any(|w| {
        let digits = |r: std::ops::Range<usize>| w[r].iter().all(u8::is_ascii_digit);
        digits(0..4)
            && w[4] == b'-'
            && digits(5..7)
            && w[7] == b'-'
            && digits(8..10)
            && w[10] == b'T'
            && digits(11..13)
    });
    assert!(!iso, "a raw ISO time: {email}");
    for code in [
        "oauth2_refresh",
        "token_refresh_failing",
        "connection:",
        "/api/",
        "circuit",
    ] {
        assert!(!email.contains(code), "{code:?} in: {email}");
    }
    assert!(!email.contains("CANARY"), "a secret in: {email}");
}

/// The text part of a received message, quoted-printable soft breaks undone (a literal `=` is
/// `=3D`, so a bare one ends a line: `SmtpSink` unfolds those followed by a space into `= `).
fn text_part(message: &str) -> String {
    let body = message.replace("=\n", "").replace("= ", " ").replace("=3D", "=");
    let start = body.find("Content-Type: text/plain").expect("a text part");
    let end = body[start..]
        .find("Content-Type: text/html")
        .map_or(body.len(), |e| start + e);
    body[start..end].to_owned()
}

async fn on_call_reads_what_the_platform_said_and_what_holds_after_recovery(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpSink::start().await;
    let chat = WebhookReceiver::start(None).await;
    let platform = MockServer::start().await;
    let state = TestApp::on(&db)
        .set("email.smtp_url", smtp.url())
        .set("email.on_call", "oncall@example.com")
        .set("alerts.webhook_url", chat.url())
        .set("alerts.public_url", "https://telltale.example.com")
        .set("alerts.group_wait_secs", 0)
        .set("alerts.refresh_failures", 2)
        .set("tokens.max_attempts", 1)
        .set("tokens.request_timeout_secs", 1)
        .state()
        .await;
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"error": "server_error", "error_description": "token service unavailable"}),
        ))
        .up_to_n_times(2)
        .mount(&platform)
        .await;
    let down = spotify(&state, "marketing", format!("{}/down", platform.uri())).await;

    for _ in 0..2 {
        sweep_all(&state).await;
    }
    let opened = telltale::alerts::evaluate::evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!(opened.opened, 1);
    state.mailer.deliver_due().await.unwrap();
    let firing = smtp.wait_for(1, Duration::from_secs(10)).await;
    let firing = text_part(&firing[0]);
    for fact in [
        "Spotify connection 'marketing' cannot refresh its token (2 failed refreshes in a row)",
        "What the platform last said: HTTP 500",
        "token service unavailable",
        "Failed refreshes in a row: 2",
        "Next attempt: ",
        "Token expires: ",
        &format!("https://telltale.example.com/connections/{down}"),
        "Alert rule: a token cannot be refreshed",
    ] {
        assert!(
            firing.contains(fact),
            "{fact:?} missing from the firing email: {firing}"
        );
    }
    assert!(firing.contains(" UTC"), "times name their zone: {firing}");
    assert_readable(&firing);
    let html = smtp.messages()[0].clone();
    assert!(html.contains("text/html"));
    let posted = chat.wait_for_accepted(1, Duration::from_secs(10)).await;
    let text = posted[0].body["text"].as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("What the platform last said: HTTP 500") && text.contains("Next attempt: "),
        "the chat reads the same facts: {text}"
    );

    // The platform recovers: the RESOLVED email says what holds now, not the old error.
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "CANARY-new", "token_type": "Bearer", "expires_in": 3600}),
            ),
        )
        .mount(&platform)
        .await;
    sweep_all(&state).await;
    let resolved = telltale::alerts::evaluate::evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    assert_eq!(resolved.resolved, 1);
    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        messages[1].contains("Subject: [Telltale] RESOLVED: Spotify connection 'marketing'"),
        "{}",
        messages[1]
    );
    let recovered = text_part(&messages[1]);
    let valid_until = telltale::present::local(
        connections::get_connection(&state.db, down)
            .await
            .unwrap()
            .expires_at
            .unwrap(),
        telltale::present::zone(),
    );
    for fact in [
        "Recovered at ",
        "Status: active",
        "Last successful refresh: ",
        &format!("Token valid until: {valid_until}"),
        &format!("Look here: https://telltale.example.com/connections/{down}"),
    ] {
        assert!(
            recovered.contains(fact),
            "{fact:?} missing from the resolved email: {recovered}"
        );
    }
    assert!(
        !recovered.contains("HTTP 500"),
        "the old error is not repeated: {recovered}"
    );
    assert_readable(&recovered);
    let posted = chat.wait_for_accepted(2, Duration::from_secs(10)).await;
    let text = posted[1].body["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("Token valid until: {valid_until}")),
        "{text}"
    );

    // A busy platform, one that answers too late, and a revoked grant: each email says which.
    Mock::given(method("POST"))
        .and(path("/busy"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .mount(&platform)
        .await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&platform)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoked"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "Refresh token revoked"}),
            ),
        )
        .mount(&platform)
        .await;
    for name in ["busy", "slow", "revoked"] {
        spotify(&state, name, format!("{}/{name}", platform.uri())).await;
    }
    for _ in 0..2 {
        sweep_all(&state).await;
    }
    telltale::alerts::evaluate::evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    state.mailer.deliver_due().await.unwrap();
    let messages = smtp.wait_for(3, Duration::from_secs(10)).await;
    let digest = text_part(&messages[2]);
    for fact in [
        "Spotify connection 'busy' cannot refresh its token",
        "HTTP 429",
        "Spotify connection 'slow' cannot refresh its token",
        "timed out",
        "Spotify connection 'revoked' needs to be reconnected",
        "invalid_grant",
    ] {
        assert!(digest.contains(fact), "{fact:?} missing from: {digest}");
    }
    assert_readable(&digest);
}
