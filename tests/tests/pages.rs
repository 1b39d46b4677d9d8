//! Every page renders with a row in every one of its tables. The templates refuse undefined
//! values, so a field a template reads that its view model lacks (a rename, a typo) fails here
//! with a 500 instead of blanking a cell for staff.

use std::time::Duration;

use serde_json::json;
use telltale::storage::alerts::{self, Firing};
use telltale::storage::{AlertRule, Severity, now};
use telltale_e2e::{
    Backend, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TestDb, TestServer, api_client, both_backends, browser,
    mdp_reading, milesight_headers, nonce, post_with_headers, sign_in,
};

both_backends!(
    every_page_renders_a_row_of_everything,
    the_overview_says_all_clear_only_when_watching_and_reachable,
    ordinary_page_views_log_no_warning,
);

const SECRET: &str = "CANARY-pages-secret";
/// Nothing listens here: refreshes and polls fail fast, which fills the error columns.
const NOWHERE: &str = "http://127.0.0.1:9";

async fn every_page_renders_a_row_of_everything(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(
        db.url(),
        &[
            ("MILESIGHT_WEBHOOK_SECRET", SECRET),
            // Configured, so the tokens page shows the Milesight section's facts.
            ("MILESIGHT_BASE_URL", NOWHERE),
            ("MILESIGHT_CLIENT_ID", "pages-client"),
            ("MILESIGHT_CLIENT_SECRET", "CANARY-pages-client-secret"),
            // The alerts below are made by hand; an evaluation at a minute's turn would resolve them.
            ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "0 0 3 1 1 *"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let api = api_client();

    // A device with an event, and a refused request.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let reading = mdp_reading(
        "ev-pages-1",
        "6136PAGES01",
        "PROPERTY",
        now_ms,
        json!({"temperature": 4.5}),
    );
    let headers = milesight_headers(SECRET, None, chrono::Utc::now().timestamp(), &nonce());
    let (status, body) = post_with_headers(
        &server.url("/webhooks/milesight/site-a"),
        &headers,
        json!([reading]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let forged = milesight_headers("not-the-secret", None, chrono::Utc::now().timestamp(), &nonce());
    let (status, _) = post_with_headers(&server.url("/webhooks/milesight/site-a"), &forged, "[]").await;
    assert_eq!(status, 401);

    // A connection whose refresh and poll fail, so the log, the pair and their errors exist.
    let created: serde_json::Value = api
        .post(server.url("/api/connections"))
        .json(&json!({
            "account": "acme", "provider": "oauth2_refresh", "name": "spotify-pages",
            "base_url": format!("{NOWHERE}/token"),
            "settings": {"preset": "spotify", "api_base_url": NOWHERE, "max_attempts": 1},
            "access_token": "CANARY-pages-access", "refresh_token": "CANARY-pages-refresh",
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap_or_else(|| panic!("{created}"));
    let refreshed = api
        .post(server.url(&format!("/api/tokens/{id}/refresh")))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 502, "nothing answers at {NOWHERE}");
    let polled = api
        .post(server.url(&format!("/api/polling/{id}/recently_played/run")))
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), 502);

    // A firing alert, an acknowledged one (with history), and a silence.
    let store = db.open().await;
    let fire = |device: &str, summary: &str| Firing {
        rule: AlertRule::DeviceOffline,
        subject: format!("device:{device}"),
        severity: Severity::Warning,
        summary: summary.into(),
        details: "last seen 2 hours ago".into(),
    };
    alerts::fire(
        &store,
        &fire("pages-a", "Cold room is offline"),
        now(),
        None,
        |_| None,
    )
    .await
    .unwrap();
    let (acked, _) = alerts::fire(
        &store,
        &fire("pages-b", "Freezer is offline"),
        now(),
        None,
        |_| None,
    )
    .await
    .unwrap();
    alerts::acknowledge(&store, acked.id, "ops@example.com", now())
        .await
        .unwrap()
        .unwrap();
    // A grouped alert lists serial numbers: each known one links to its device's page.
    let grouped = Firing {
        rule: AlertRule::DevicesOffline,
        subject: "source:site-a".into(),
        severity: Severity::Warning,
        summary: "12 devices of source site-a are offline".into(),
        details: "Offline: 6136PAGES01, 6136GONE0001 and 10 more\nMore than 10 at once.".into(),
    };
    let (grouped, _) = alerts::fire(&store, &grouped, now(), None, |_| None)
        .await
        .unwrap();
    let silence = api
        .post(server.url("/api/silences"))
        .json(
            &json!({"matcher": "source:site-b", "reason": "site-b maintenance",
                      "ends_at": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(silence.status(), 201);

    let devices: serde_json::Value = api
        .get(server.url("/api/devices"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_id = devices["items"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{devices}"));

    let grouped_line =
        format!("Offline: <a href=\"/devices/{device_id}\">6136PAGES01</a>, 6136GONE0001 and 10 more");
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let pages = [
        (
            "/".to_owned(),
            vec![
                "Cold room is offline",
                "tile-devices",
                // No SMTP server and no alert webhook here.
                "These alerts reach nobody",
                "Set up Telltale",
            ],
        ),
        (
            "/devices".to_owned(),
            vec!["6136PAGES01", "24D124707E04AAAA", "temperature"],
        ),
        (
            format!("/devices/{device_id}"),
            vec!["6136PAGES01", "ev-pages-1", "uplink(s)"],
        ),
        (
            "/webhooks".to_owned(),
            // The event names its device as people know it, linked to its page.
            vec!["site-a", "ev-pages-1", "bad signature", "\">Cold room</a>"],
        ),
        (
            "/tokens".to_owned(),
            vec!["pages-client", "spotify-pages", "manual"],
        ),
        (
            "/polling".to_owned(),
            vec!["spotify-pages", "recently_played", "failed"],
        ),
        (
            "/alerts".to_owned(),
            vec![
                "Cold room is offline",
                "Freezer is offline",
                "site-b maintenance",
                "These alerts reach nobody",
            ],
        ),
        (
            format!("/alerts/{}", acked.id),
            vec!["Freezer is offline", "acknowledged", "ops@example.com"],
        ),
        (format!("/alerts/{}", grouped.id), vec![grouped_line.as_str()]),
        (
            "/scheduler".to_owned(),
            vec!["token-refresh-sweep", "milesight-device-check"],
        ),
        ("/settings".to_owned(), vec!["Milesight", "Notifications"]),
        ("/settings/staff".to_owned(), vec![TEST_ADMIN_EMAIL, "configured"]),
        ("/settings/audit".to_owned(), vec!["Audit log", "Signed in"]),
        (
            "/account".to_owned(),
            vec![TEST_ADMIN_EMAIL, "Change your password"],
        ),
    ];
    let mut raw = Vec::new();
    for (path, expected) in pages {
        let response = browser()
            .get(server.url(&path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let html = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {html}\n{}", server.log_text());
        for text in expected {
            assert!(html.contains(text), "{path} does not show {text:?}:\n{html}");
        }
        raw.extend(machine_words(&html).into_iter().map(|w| format!("{path}: {w}")));
    }
    assert!(raw.is_empty(), "visible machine text:\n{}", raw.join("\n"));
}

/// Codes people should never have to read: state, rule, trigger and provider identifiers.
const IDENTIFIERS: &[&str] = &[
    "needs_reauth",
    "expiring_soon",
    "invalid_credentials",
    "oauth2_refresh",
    "oauth2_client_credentials",
    "meta_long_lived",
    "meta_page",
    "password_login",
    "thingsboard_login",
    "token_refresh_failing",
    "token_needs_reauth",
    "token_runway",
    "poll_failing",
    "webhook_source_stale",
    "milesight_system_notice",
    "device_offline",
    "devices_offline",
    "held_back",
    "poll_unauthorized",
    "bad_signature",
    "missing_signature",
    "unknown_webhook",
];

/// What a person reads on a page that is a machine's: an ISO timestamp (`2026-12-07T17:32:19Z`)
/// or a code identifier, in the visible text (tags, attributes, scripts and `<code>` examples
/// of configuration left out).
fn machine_words(html: &str) -> Vec<String> {
    // Drop what is not read as prose: scripts, styles, and `<code>` (configuration names).
    let mut rest = html.to_owned();
    for (open, close) in [
        ("<script", "</script>"),
        ("<style", "</style>"),
        ("<code", "</code>"),
    ] {
        let mut kept = String::new();
        let mut from = rest.as_str();
        while let Some(start) = from.find(open) {
            kept.push_str(&from[..start]);
            from = from[start..]
                .find(close)
                .map_or("", |end| &from[start + end + close.len()..]);
        }
        kept.push_str(from);
        rest = kept;
    }
    let mut visible = String::new();
    let mut in_tag = false;
    for c in rest.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                visible.push(' ');
            }
            c if !in_tag => visible.push(c),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for word in visible.split_whitespace() {
        let bytes = word.as_bytes();
        let iso = bytes.windows(13).any(|w| {
            w[..4].iter().all(u8::is_ascii_digit)
                && w[4] == b'-'
                && w[7] == b'-'
                && w[10] == b'T'
                && w[11..13].iter().all(u8::is_ascii_digit)
        });
        let trimmed = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        if iso || IDENTIFIERS.contains(&trimmed) {
            found.push(word.to_owned());
        }
    }
    found
}

both_backends!(the_webhooks_page_says_what_to_paste_into_mdp);

/// A new user's Webhooks page: the URL for MDP with a copy button, whether a secret is set, and
/// "waiting for the first request" until MDP's Test arrives, then "verified". Empty pages say
/// what to do next.
async fn the_webhooks_page_says_what_to_paste_into_mdp(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start_with_config(
        db.url(),
        "[[milesight.webhooks]]\nuuid = \"uuid-a\"\nsecret = \"CANARY-site-a\"\nsource = \"site-a\"\n",
        &[],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let page = |path: &'static str, host: Option<&'static str>| {
        let (server, cookie) = (&server, cookie.clone());
        async move {
            let mut request = browser().get(server.url(path)).header("cookie", cookie);
            if let Some(host) = host {
                request = request.header("host", host);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            // Templates escape `/` in values; compare with what a reader sees.
            resp.text().await.unwrap().replace("&#x2f;", "/")
        }
    };

    let html = page("/webhooks", None).await;
    let url = format!("http://{}/webhooks/milesight/site-a", server.addr);
    assert!(
        html.contains(&format!("<code id=\"url-1\">{url}</code>")),
        "{html}"
    );
    assert!(html.contains("data-copy=\"#url-1\""), "a copy button");
    assert!(html.contains("waiting for the first request"), "{html}");
    assert!(html.contains("a webhook secret is configured"));
    assert!(
        html.contains("MDP delivers only to HTTPS"),
        "plain http is flagged"
    );
    assert!(
        html.contains("id=\"connect-mdp\" open"),
        "open until MDP is heard from"
    );
    // A source set up moments ago that has not delivered yet waits, in neutral words.
    assert!(
        html.contains("<span class=\"status waiting\">waiting for the first event</span>"),
        "{html}"
    );
    assert!(
        !html.contains("status stale"),
        "not stale before its period and grace"
    );
    // The URL follows the host the browser used (behind a proxy, without a public URL set).
    let html = page("/webhooks", Some("telltale.example.com")).await;
    assert!(
        html.contains("http://telltale.example.com/webhooks/milesight/site-a"),
        "{html}"
    );

    // MDP's Test button: the source is verified, and the help folds away.
    let created = chrono::Utc::now().timestamp().to_string();
    let test = json!([{"eventId": "t-pages", "eventCreatedTime": created, "eventType": "WEBHOOK_TEST",
        "data": "Test Milesight Webhook Successfully."}]);
    let headers = milesight_headers(
        "CANARY-site-a",
        Some("uuid-a"),
        chrono::Utc::now().timestamp(),
        &nonce(),
    );
    let (status, body) = post_with_headers(
        &server.url("/webhooks/milesight/site-a"),
        &headers,
        test.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let html = page("/webhooks", None).await;
    assert!(html.contains(">verified</span>"), "{html}");
    assert!(!html.contains("waiting for the first request"));
    assert!(html.contains("id=\"connect-mdp\">"), "folded once heard from");

    // Settings shows the configured webhook read-only, naming where it is set.
    let settings = page("/settings", None).await;
    assert!(
        settings.contains("<code>uuid-a</code>")
            && settings.contains("<code>[[milesight.webhooks]]</code> (read-only)"),
        "{settings}"
    );

    // Empty pages point at the next step.
    assert!(
        page("/devices", None)
            .await
            .contains("connect the Milesight Development Platform")
    );
    assert!(page("/tokens", None).await.contains("No connected platforms yet"));
    assert!(page("/polling", None).await.contains("Nothing to poll yet"));
    assert!(page("/alerts", None).await.contains("Send test email"));
}

/// A blank install shows a checklist that ticks itself, never "All clear"; once an event has
/// arrived and a notification channel has delivered a test, the overview says "All clear".
async fn the_overview_says_all_clear_only_when_watching_and_reachable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = telltale_e2e::SmtpSink::start().await;
    let url = smtp.url();
    let server = TestServer::start(
        db.url(),
        &[
            ("MILESIGHT_WEBHOOK_SECRET", SECRET),
            ("SMTP_URL", url.as_str()),
            ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let overview = || async {
        let html = browser()
            .get(server.url("/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        html.replace("&#x2f;", "/")
    };
    let step = |html: &str, text: &str| {
        let at = html
            .find(text)
            .unwrap_or_else(|| panic!("no step {text:?}: {html}"));
        let item = &html[html[..at].rfind("<li").unwrap()..at];
        item.contains("class=\"done\"")
    };
    let html = overview().await;
    assert!(
        html.contains("Set up Telltale") && !html.contains("All clear"),
        "{html}"
    );
    assert!(
        step(&html, "Set a Milesight webhook secret"),
        "the secret is configured"
    );
    assert!(!step(&html, "Receive the first webhook event"));
    assert!(!step(&html, "Set up a notification channel"), "not tested yet");
    assert!(html.contains("href=\"/settings#notifications\""), "{html}");

    let reading = mdp_reading(
        "ev-clear-1",
        "6136CLEAR01",
        "PROPERTY",
        chrono::Utc::now().timestamp_millis(),
        json!({"temperature": 4.5}),
    );
    let headers = milesight_headers(SECRET, None, chrono::Utc::now().timestamp(), &nonce());
    let (status, body) = post_with_headers(
        &server.url("/webhooks/milesight"),
        &headers,
        json!([reading]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (code, body) = post_with_headers(
        &server.url("/api/alerts/test-email"),
        &[("content-type".into(), "application/json".into())],
        "{}",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let html = overview().await;
    assert!(
        html.contains("All clear") && !html.contains("Set up Telltale"),
        "{html}"
    );
}

/// A signed-in person browsing every page, its assets and the favicon a browser asks for
/// writes no WARN or ERROR line: the log keeps those for what needs a look. A system notice's
/// alert links to the Webhooks page of this UI.
async fn ordinary_page_views_log_no_warning(backend: Backend) {
    let db = TestDb::new(backend).await;
    let public_url = "https://telltale.example.com";
    let server = TestServer::start(db.url(), &[("TELLTALE_PUBLIC_URL", public_url)]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let store = db.open().await;
    let notice = Firing {
        rule: AlertRule::MilesightSystemNotice,
        subject: "source:site-a".into(),
        severity: Severity::High,
        summary: "Milesight sent a system notice for source site-a".into(),
        details: format!("Notice at 10:00: push stopped\nLook here: {public_url}/webhooks"),
    };
    let (alert, _) = alerts::fire(&store, &notice, now(), None, |_| None)
        .await
        .unwrap();
    let (cookie, _) = sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD).await;
    let before = server.logs().len();
    let alert_page = format!("/alerts/{}", alert.id);
    let paths = [
        "/",
        "/devices",
        "/webhooks",
        "/tokens",
        "/polling",
        "/alerts",
        alert_page.as_str(),
        "/scheduler",
        "/settings",
        "/settings/staff",
        "/settings/audit",
        "/account",
        "/connections/new",
        "/static/telltale.css",
        "/static/telltale.js",
        "/static/favicon.svg",
        "/favicon.ico",
    ];
    for round in 0..3 {
        for path in paths {
            let resp = browser()
                .get(server.url(path))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path} (round {round})");
            let body = resp.text().await.unwrap();
            if path == alert_page {
                assert!(
                    body.contains(r#"<a href="/webhooks">the Webhooks page</a>"#),
                    "{body}"
                );
                assert!(!body.contains(public_url), "the link stays on this UI's host");
            }
            if path == "/favicon.ico" {
                assert!(body.starts_with("<svg"), "{body:.80}");
            }
        }
    }
    // Output is read from the server's pipe as it comes: give the last lines a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let noisy: Vec<String> = server.logs()[before..]
        .iter()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map_or(line.contains("WARN") || line.contains("ERROR"), |v| {
                    matches!(v["level"].as_str(), Some("WARN" | "ERROR"))
                })
        })
        .cloned()
        .collect();
    assert!(
        noisy.is_empty(),
        "{} WARN/ERROR lines from page views:\n{}",
        noisy.len(),
        noisy.join("\n")
    );
}

#[test]
fn machine_words_are_found_in_visible_text_only() {
    let html = r#"<p title="2026-12-07T17:32:19Z">Expires 2026-12-07T17:32:19.718700Z, status needs_reauth.</p>
        <span class="status needs_reauth">needs re-authorisation</span><code>oauth2_refresh</code>
        <script>const x = "device_offline";</script>"#;
    assert_eq!(
        machine_words(html),
        ["2026-12-07T17:32:19.718700Z,", "needs_reauth."]
    );
}
