//! The staff web UI in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, via fantoccini) against the built service on 127.0.0.1. Signs in, watches a
//! device appear after a signed webhook without reloading, refreshes the Milesight token,
//! stops and starts a job, acknowledges an alert, and checks that a viewer cannot press admin
//! buttons. Saves a screenshot of every page under `target/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use telltale::storage::now;
use telltale_e2e::{
    Backend, FRESH_INSTALL, FakeAuthorizationServer, SmtpSink, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD,
    TestApp, TestDb, TestServer, WebhookReceiver, fail_refresh, free_port, mdp_reading, milesight_headers,
    nonce, post_with_headers, refresh_succeeded, spotify_connection,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// chromedriver on a free loopback port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test installs it)");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--no-first-run", "--disable-quic", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .unwrap()
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the element's text satisfies `ok` (the page refreshes itself).
    async fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never matched; last text {text:?}\n{}",
                self.client.source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Clicks the element; found again when the page's live refresh replaced it between
    /// finding and clicking (a stale element), as `type_into` does.
    async fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let element = self
                .client
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match element.click().await {
                Ok(_) => return,
                Err(e) if tries < 3 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    async fn sign_in(&self, server: &TestServer, email: &str, password: &str) {
        self.client.goto(&server.url("/")).await.unwrap();
        let url = self.client.current_url().await.unwrap();
        assert_eq!(url.path(), "/login", "signed-out browsers are sent to sign in");
        self.client
            .find(Locator::Css("#email"))
            .await
            .unwrap()
            .send_keys(email)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("#password"))
            .await
            .unwrap()
            .send_keys(password)
            .await
            .unwrap();
        self.click("form.card button[type=submit]").await;
        self.wait_text("h1", Duration::from_secs(10), |t| t == "Overview")
            .await;
    }

    /// Adds a viewer through the API, signs the current user out and the viewer in.
    async fn switch_to_new_viewer(&self, server: &TestServer) {
        let (code, _) = post_with_headers(
            &server.url("/api/users"),
            &[("content-type".into(), "application/json".into())],
            json!({"email": "viewer@example.com", "password": "viewer-password-1", "role": "viewer"})
                .to_string(),
        )
        .await;
        assert_eq!(code, 201);
        self.click("form.signout button").await;
        self.wait_text("h2", Duration::from_secs(10), |t| t == "Sign in")
            .await;
        self.sign_in(server, "viewer@example.com", "viewer-password-1")
            .await;
    }

    /// Types into the element; found again when the page's live refresh replaced it meanwhile.
    async fn type_into(&self, css: &str, text: &str) {
        let mut tries = 0;
        loop {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match element.send_keys(text).await {
                Ok(()) => return,
                Err(e) if tries < 3 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => panic!("cannot type into {css}: {e}"),
            }
        }
    }

    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ui-screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const CONFIG: &str = r#"
[[milesight.webhooks]]
uuid = "uuid-site-a"
secret = "site-a-secret"
source = "site-a"
"#;

/// MDP's token endpoint, answering each request with a new token (apis.md §1.2).
async fn fake_mdp() -> MockServer {
    let mdp = MockServer::start().await;
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(move |_: &wiremock::Request| {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Each token lives a little longer, so a refresh visibly moves the expiry.
            ResponseTemplate::new(200).set_body_json(json!({
                "data": {"access_token": format!("CANARY-mdp-{n}"), "expires_in": 3600 + 600 * n},
                "status": "Success", "requestId": "r"
            }))
        })
        .mount(&mdp)
        .await;
    Mock::given(method("POST"))
        .and(path("/bad/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mdp)
        .await;
    mdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_use_the_ui_in_a_real_browser() {
    let db = TestDb::new(Backend::Postgres).await;
    let mdp = fake_mdp().await;
    let base = mdp.uri();
    let server = TestServer::start_with_config(
        db.url(),
        CONFIG,
        &[
            ("MILESIGHT_BASE_URL", base.as_str()),
            ("MILESIGHT_CLIENT_ID", "cid-1"),
            ("MILESIGHT_CLIENT_SECRET", "CANARY-client-secret"),
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *"),
            ("TELLTALE_TOKEN_MAX_ATTEMPTS", "1"),
            ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "* * * * * *"),
            ("TELLTALE_ALERT_REFRESH_FAILURES", "1"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let browser = Browser::start().await;

    // Sign in; the overview shows its tiles.
    browser
        .sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        .await;
    assert!(browser.text("#tile-devices").await.contains("Devices"));
    browser.screenshot("overview").await;

    // A device appears after a signed webhook, without reloading the page.
    browser.client.goto(&server.url("/devices")).await.unwrap();
    assert!(browser.text("#devices tbody").await.contains("No devices yet"));
    let ts = chrono::Utc::now().timestamp();
    let events = json!([mdp_reading(
        "ui-1",
        "6136D000042",
        "PROPERTY",
        ts * 1000,
        json!({"temperature": 3.5})
    )]);
    let (code, _) = post_with_headers(
        &server.url("/webhooks/milesight"),
        &milesight_headers("site-a-secret", Some("uuid-site-a"), ts, &nonce()),
        events.to_string(),
    )
    .await;
    assert_eq!(code, 200);
    let row = browser
        .wait_text("#devices tbody", Duration::from_secs(25), |t| {
            t.contains("6136D000042")
        })
        .await;
    assert!(row.contains("online") && row.contains("EM300-TH"), "{row}");
    browser.screenshot("devices").await;
    browser.click("#devices tbody a").await;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Cold room")
        .await;
    assert!(
        browser.text("main table").await.contains("ui-1"),
        "the event is listed"
    );
    // The uplink chart reads by its axes: 0 to the busiest hour (one uplink), hours to now.
    let chart = browser.text("#uplink-chart").await;
    for label in ["uplinks", "0", "1", "now", "hours in UTC"] {
        assert!(chart.contains(label), "no {label:?} on the chart: {chart:?}");
    }
    browser.screenshot("device").await;

    // "Refresh token" fetches a new Milesight token and shows its later expiry.
    browser.client.goto(&server.url("/tokens")).await.unwrap();
    let before = browser
        .wait_text("#milesight-expires", Duration::from_secs(10), |t| t.contains('T'))
        .await;
    browser.click("#milesight button[data-post]").await;
    let after = browser
        .wait_text("#milesight-expires", Duration::from_secs(10), |t| {
            t.contains('T') && t != before
        })
        .await;
    assert!(after > before, "the new token expires later: {before} → {after}");
    assert!(
        !browser.client.source().await.unwrap().contains("CANARY"),
        "no secret on the page"
    );
    browser.screenshot("tokens").await;

    // Stop a job, then start it again.
    browser.client.goto(&server.url("/scheduler")).await.unwrap();
    let job = "#job-milesight-inventory";
    browser
        .wait_text(&format!("{job} [data-state]"), Duration::from_secs(10), |t| {
            t == "running"
        })
        .await;
    browser.click(&format!("{job} button[data-body*='stop']")).await;
    browser
        .wait_text(&format!("{job} [data-state]"), Duration::from_secs(10), |t| {
            t == "paused"
        })
        .await;
    browser.screenshot("scheduler").await;
    browser.click(&format!("{job} button[data-body*='start']")).await;
    browser
        .wait_text(&format!("{job} [data-state]"), Duration::from_secs(10), |t| {
            t == "running"
        })
        .await;

    // A connection that cannot refresh opens an alert; acknowledge it from the alerts page.
    let (code, _) = post_with_headers(
        &server.url("/api/connections"),
        &[("content-type".into(), "application/json".into())],
        json!({
            "account": "acme", "provider": "oauth2_refresh", "name": "spotify-broken",
            "base_url": format!("{base}/bad/token"),
            "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
            "refresh_token": "CANARY-refresh",
        })
        .to_string(),
    )
    .await;
    assert_eq!(code, 201);
    browser.client.goto(&server.url("/alerts")).await.unwrap();
    browser
        .wait_text("#alerts tbody", Duration::from_secs(30), |t| {
            t.contains("spotify-broken")
        })
        .await;
    browser.screenshot("alerts").await;
    browser.click("#alerts button[data-post$='/ack']").await;
    browser
        .wait_text("#alerts tbody [data-state]", Duration::from_secs(10), |t| {
            t == "acknowledged"
        })
        .await;
    browser.click("#alerts tbody a").await;
    browser
        .wait_text("ol.history", Duration::from_secs(10), |t| {
            t.contains("acknowledged")
        })
        .await;
    browser.screenshot("alert").await;

    for (page, name) in [
        ("/webhooks", "webhooks"),
        ("/polling", "polling"),
        ("/settings", "settings"),
    ] {
        browser.client.goto(&server.url(page)).await.unwrap();
        browser
            .wait_text("h1", Duration::from_secs(10), |t| !t.is_empty())
            .await;
        if name == "webhooks" {
            assert!(browser.text("#sources").await.contains("site-a"));
        }
        browser.screenshot(name).await;
    }

    // At phone width the overview still fits.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.client.goto(&server.url("/")).await.unwrap();
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Overview")
        .await;
    browser.screenshot("overview-phone").await;
    browser.client.set_window_size(1280, 900).await.unwrap();

    // A viewer sees the same pages with every admin button disabled.
    browser.switch_to_new_viewer(&server).await;
    browser.client.goto(&server.url("/scheduler")).await.unwrap();
    let buttons = browser
        .client
        .find_all(Locator::Css("#jobs button"))
        .await
        .unwrap();
    assert!(!buttons.is_empty());
    for button in &buttons {
        assert!(
            !button.is_enabled().await.unwrap(),
            "a viewer's buttons are disabled"
        );
    }
    assert!(
        browser.text("header nav").await.find("Settings").is_none(),
        "no settings for viewers"
    );
    browser.screenshot("scheduler-viewer").await;
    browser.client.clone().close().await.unwrap();
}

/// A new user on a blank install: every page leads to /setup, which without the logged link
/// only says where to find it; the link's form creates the first admin, who lands on the
/// overview and finds on the Webhooks page the URL to paste into MDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_sets_up_a_blank_install_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(db.url(), FRESH_INSTALL).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let setup_url = server.setup_url(Duration::from_secs(10)).await;
    let browser = Browser::start().await;

    browser.client.goto(&server.url("/tokens")).await.unwrap();
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/setup", "a blank install leads to the setup");
    assert!(browser.text("#setup-refused").await.contains("setup link"));
    browser.screenshot("setup-without-link").await;

    browser.client.goto(&setup_url).await.unwrap();
    browser.type_into("#email", "owner@example.com").await;
    browser.type_into("#password", "long enough pw").await;
    browser.type_into("#confirm", "not the same pw").await;
    browser.click("#setup button[type=submit]").await;
    browser
        .wait_text("#setup .error", Duration::from_secs(10), |t| t.contains("differ"))
        .await;
    browser.screenshot("setup-mistake").await;
    browser.type_into("#password", "long enough pw").await;
    browser.type_into("#confirm", "long enough pw").await;
    browser.screenshot("setup-form").await;
    browser.click("#setup button[type=submit]").await;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Overview")
        .await;
    assert!(
        browser
            .text("header .who")
            .await
            .contains("owner@example.com (admin)")
    );
    // A blank install is not "All clear": it shows the steps to being watched and reachable.
    let checklist = browser.text("#checklist").await;
    assert!(
        checklist.contains("Set a Milesight webhook secret")
            && checklist.contains("Set up a notification channel"),
        "{checklist}"
    );
    assert!(!browser.text("main").await.contains("All clear"));
    browser.screenshot("setup-done-overview").await;

    browser.client.goto(&server.url("/webhooks")).await.unwrap();
    let help = browser.text("#connect-mdp").await;
    assert!(
        help.contains(&format!("http://{}/webhooks/milesight", server.addr)),
        "{help}"
    );
    assert!(help.contains("waiting for the first request"), "{help}");
    assert!(help.contains("no webhook secret yet"), "{help}");
    browser.screenshot("webhooks-connect-mdp").await;
    // Closed by hand, the panel stays closed across the page's live refresh.
    let is_open = "return document.getElementById('connect-mdp').open;";
    assert_eq!(
        browser.client.execute(is_open, vec![]).await.unwrap(),
        json!(true)
    );
    browser.click("#connect-mdp summary").await;
    browser
        .client
        .execute(
            "document.getElementById('sources').dataset.before = 'refresh';",
            vec![],
        )
        .await
        .unwrap();
    let refreshed = "return !document.getElementById('sources').dataset.before;";
    let deadline = Instant::now() + Duration::from_secs(25);
    while browser.client.execute(refreshed, vec![]).await.unwrap() != json!(true) {
        assert!(Instant::now() < deadline, "the page did not refresh itself");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        browser.client.execute(is_open, vec![]).await.unwrap(),
        json!(false),
        "the live refresh reopened the panel"
    );

    // The link is spent.
    browser.client.goto(&setup_url).await.unwrap();
    assert!(
        !browser
            .client
            .source()
            .await
            .unwrap()
            .contains("Create the first admin")
    );
}

/// An alert email's HTML part as a mail client shows it: the firing email of a Spotify
/// connection whose refreshes fail, then its RESOLVED email; screenshots of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_emails_read_well_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start().await;
    let state = TestApp::on(&db)
        .set("email.smtp_url", smtp.url())
        .set("email.on_call", "oncall@example.com")
        .set("alerts.public_url", "https://telltale.example.com")
        .set("alerts.group_wait_secs", 0)
        .state()
        .await;
    let id = spotify_connection(&state, "marketing", chrono::Duration::hours(1)).await;
    fail_refresh(&state, id, 3).await;
    let evaluate = || telltale::alerts::evaluate::evaluate(&state.db, &state.config, &state.channels, now());
    assert_eq!(evaluate().await.unwrap().opened, 1);
    state.mailer.deliver_due().await.unwrap();
    smtp.wait_for(1, Duration::from_secs(10)).await;
    refresh_succeeded(&state, id).await;
    assert_eq!(evaluate().await.unwrap().resolved, 1);
    state.mailer.deliver_due().await.unwrap();
    smtp.wait_for(2, Duration::from_secs(10)).await;
    let parts = smtp.html_parts();
    assert_eq!(parts.len(), 2);

    let browser = Browser::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (html, name, facts) in [
        (
            &parts[0],
            "email-firing",
            &[
                "Spotify connection 'marketing' cannot refresh its token (3 failed refreshes in a row)",
                "What the platform last said HTTP 503",
                "Failed refreshes in a row 3",
                "Next attempt ",
            ][..],
        ),
        (
            &parts[1],
            "email-resolved",
            &[
                "Recovered at",
                "The condition no longer holds.",
                "Token valid until ",
            ][..],
        ),
    ] {
        let file = dir.path().join(format!("{name}.html"));
        std::fs::write(&file, html).unwrap();
        browser
            .client
            .goto(&format!("file://{}", file.display()))
            .await
            .unwrap();
        // A label and its value sit in two cells of one row.
        let shown = browser.text("body").await.replace('\t', " ");
        for fact in facts {
            assert!(shown.contains(fact), "{fact:?} not shown in {name}: {shown}");
        }
        assert!(!shown.contains("/api/") && !shown.contains("oauth2_"), "{shown}");
        for link in browser.client.find_all(Locator::Css("a[href]")).await.unwrap() {
            let href = link.attr("href").await.unwrap().unwrap_or_default();
            assert!(href.starts_with("https://telltale.example.com/"), "{href}");
        }
        let page = browser
            .client
            .find(Locator::Css(&format!(
                "a[href='https://telltale.example.com/connections/{id}']"
            )))
            .await;
        assert!(page.is_ok(), "{name} links the connection's page");
        browser.screenshot(name).await;
    }
}

/// An admin makes a fresh install reach on-call from Settings → Notifications alone: an SMTP
/// server that asks for a sign-in (real aiosmtpd), first with a wrong password (Send test shows
/// the server's 535), then the right one (the test arrives and the overview's checklist ticks
/// the step), and an alert webhook with its own Send test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_up_notifications_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let smtp = SmtpSink::start_with_login("alerts@example.com", "CANARY-smtp-pw").await;
    let receiver = WebhookReceiver::start(None).await;
    let browser = Browser::start().await;
    browser
        .sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        .await;
    assert!(
        browser
            .text("#checklist")
            .await
            .contains("Set up a notification channel")
    );
    browser
        .client
        .goto(&server.url("/settings#notifications"))
        .await
        .unwrap();
    assert!(
        browser
            .text("#notifications-reach")
            .await
            .contains("reach nobody"),
        "{}",
        browser.text("#notifications-reach").await
    );
    let flash = |expect: &'static str| {
        let browser = &browser;
        async move {
            browser
                .wait_text(".flash", Duration::from_secs(15), |t| t.contains(expect))
                .await
        }
    };

    browser.type_into("#smtp-host", "127.0.0.1").await;
    browser
        .client
        .find(Locator::Css("#smtp-tls"))
        .await
        .unwrap()
        .select_by_value("none")
        .await
        .unwrap();
    browser.type_into("#smtp-port", &smtp.port.to_string()).await;
    browser.type_into("#smtp-user", "alerts@example.com").await;
    browser.type_into("#smtp-password", "CANARY-wrong-pw").await;
    browser.click("#smtp-server button[type=submit]").await;
    flash("Done.").await;
    browser.type_into("#on-call", "oncall@example.com").await;
    browser.click("#recipients button[type=submit]").await;
    browser
        .wait_text("#notifications-reach", Duration::from_secs(15), |t| {
            t.contains("reach on-call")
        })
        .await;
    browser.click("#test-email button[type=submit]").await;
    let refused = flash("535").await;
    assert!(refused.contains("(502)"), "{refused}");
    // The answer also stands beside the button that asked, across the page's live refresh.
    let beside = browser
        .wait_text("#test-email-answer", Duration::from_secs(5), |t| {
            t.contains("535")
        })
        .await;
    assert_eq!(beside, refused);
    browser
        .client
        .execute("document.getElementById('test-email').scrollIntoView();", vec![])
        .await
        .unwrap();
    browser.screenshot("settings-notifications-refused").await;
    assert!(smtp.messages().is_empty());

    // The form shows what is stored (never the password); the right password, then the test.
    assert_eq!(
        browser
            .client
            .find(Locator::Css("#smtp-user"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("alerts@example.com")
    );
    browser.type_into("#smtp-password", "CANARY-smtp-pw").await;
    browser.click("#smtp-server button[type=submit]").await;
    flash("Done.").await;
    browser.click("#test-email button[type=submit]").await;
    browser
        .wait_text(".flash", Duration::from_secs(15), |t| t == "Done.")
        .await;
    let received = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert!(received[0].contains("To: oncall@example.com"), "{}", received[0]);

    browser.type_into("#awh-name", "ops-chat").await;
    browser.type_into("#awh-url", &receiver.url()).await;
    browser.click("#alert-webhook button[type=submit]").await;
    browser
        .wait_text("#alert-webhook-list", Duration::from_secs(15), |t| {
            t.contains("ops-chat") && t.contains("this page")
        })
        .await;
    browser.click("#alert-webhook-list button[data-post]").await;
    flash("Send test: Done.").await;
    assert_eq!(
        receiver.wait_for_accepted(1, Duration::from_secs(10)).await.len(),
        1
    );
    browser.screenshot("settings-notifications").await;
    assert!(!browser.client.source().await.unwrap().contains("CANARY"));

    browser.client.goto(&server.url("/")).await.unwrap();
    let mut done = Vec::new();
    for step in browser
        .client
        .find_all(Locator::Css("#checklist li.done"))
        .await
        .unwrap()
    {
        done.push(step.text().await.unwrap());
    }
    assert!(
        done.iter().any(|s| s.contains("Set up a notification channel")),
        "the step is ticked: {done:?}"
    );
}

/// An admin sets everything up in the UI alone: the Milesight OpenAPI application (saved and
/// tested against a fake MDP) and a webhook secret; a Spotify connection through the form and
/// its consent screen (a fake authorization server), refreshed; a forged callback refused; the
/// connection revoked and reconnected; its polls switched off; then a viewer finds every one
/// of these actions disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_up_milesight_and_connects_a_platform_in_a_real_browser() {
    let db = TestDb::new(Backend::Postgres).await;
    let mdp = fake_mdp().await;
    Mock::given(method("POST"))
        .and(path("/device/openapi/v1/devices/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": {"pageSize": 1, "pageNumber": 1, "total": 3, "content": []}, "status": "Success", "requestId": "s"
        })))
        .mount(&mdp)
        .await;
    let auth = FakeAuthorizationServer::start().await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let browser = Browser::start().await;
    browser
        .sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        .await;

    // Settings → Milesight: the application, saved, then tested.
    browser.client.goto(&server.url("/settings")).await.unwrap();
    browser.type_into("#ms-base", &mdp.uri()).await;
    browser.type_into("#ms-client", "cid-1").await;
    browser.type_into("#ms-secret", "CANARY-client-secret").await;
    browser.click("#milesight-api button[type=submit]").await;
    browser
        .wait_text(".flash", Duration::from_secs(10), |t| t.contains("Done"))
        .await;
    browser.click("#milesight-test button[type=submit]").await;
    let flash = browser
        .wait_text(".flash", Duration::from_secs(15), |t| t.contains("device(s)"))
        .await;
    assert!(flash.contains("3 device(s) in the inventory"), "{flash}");
    assert!(
        browser.client.source().await.unwrap().contains("value=\"cid-1\""),
        "the saved client id is shown"
    );
    // A webhook secret.
    browser
        .client
        .find(Locator::Css("#wh-source"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    browser.type_into("#wh-source", "site-a").await;
    browser.type_into("#wh-uuid", "uuid-site-a").await;
    browser.type_into("#wh-secret", "CANARY-site-a-secret").await;
    browser.click("#milesight-webhook button[type=submit]").await;
    browser
        .wait_text("#milesight-webhooks", Duration::from_secs(10), |t| {
            t.contains("uuid-site-a")
        })
        .await;
    browser.screenshot("settings-milesight").await;

    // Tokens → Add a connection → Spotify → the form → the connection's page.
    browser.client.goto(&server.url("/tokens")).await.unwrap();
    browser.click("#add-connection").await;
    browser.screenshot("connection-choices").await;
    browser.click("#choice-spotify").await;
    browser
        .type_into("input[name='credentials.client_id']", auth.client_id)
        .await;
    browser
        .type_into("input[name='credentials.client_secret']", auth.client_secret)
        .await;
    browser
        .type_into("input[name='settings.authorize_url']", &auth.authorize_url())
        .await;
    browser
        .type_into("input[name='base_url']", &auth.token_url())
        .await;
    browser.screenshot("connection-form").await;
    browser.click("#connection-form button[type=submit]").await;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Connection spotify")
        .await;
    assert!(browser.text("#connection-facts").await.contains("missing"));
    assert!(
        browser
            .text("#connection-facts")
            .await
            .contains(&format!("http://{}/oauth/callback", server.addr)),
        "the redirect URI to register"
    );
    browser.screenshot("connection-new").await;
    let connection_page = browser.client.current_url().await.unwrap().path().to_owned();
    let connection_id = connection_page.trim_start_matches("/connections/").to_owned();

    // Connect: the consent screen (which consents at once) sends the browser back.
    browser.click("#connect").await;
    let result = browser
        .wait_text("#connected", Duration::from_secs(15), |t| !t.is_empty())
        .await;
    assert!(result.contains("Connected spotify"), "{result}");
    let landed = browser.client.current_url().await.unwrap();
    assert_eq!(landed.path(), connection_page, "sent on to the connection's page");
    assert!(
        !landed.as_str().contains("code="),
        "the code left the address bar: {landed}"
    );
    browser.screenshot("connection-connected").await;
    browser
        .wait_text("#connection-facts", Duration::from_secs(10), |t| {
            t.contains("active")
        })
        .await;
    assert!(browser.text("#connection-log").await.contains("connect"));
    assert!(browser.text("#connect").await.contains("Reconnect"));

    // The stored refresh token works.
    browser.click("#refresh").await;
    browser
        .wait_text(".flash", Duration::from_secs(10), |t| {
            t.contains("Refresh now: Done")
        })
        .await;

    // A callback whose state was tampered with is refused and stores nothing.
    let mut forged = url::Url::parse(&server.url("/oauth/callback")).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", "CANARY-stolen-code")
        .append_pair("state", "forged-state");
    browser.client.goto(forged.as_str()).await.unwrap();
    let refused = browser.text("#connect-result").await;
    assert!(refused.contains("not valid"), "{refused}");
    browser.screenshot("connection-wrong-state").await;

    // Revoked at the platform: the page offers Reconnect, which mends it.
    let (code, _) = post_with_headers(
        &server.url(&format!("/api/tokens/{connection_id}/refresh")),
        &[],
        "",
    )
    .await;
    assert_eq!(code, 200);
    let revoke = telltale_e2e::api_client()
        .patch(server.url(&format!("/api/connections/{connection_id}")))
        .json(&json!({"refresh_token": "revoked-at-the-platform"}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    post_with_headers(
        &server.url(&format!("/api/tokens/{connection_id}/refresh")),
        &[],
        "",
    )
    .await;
    browser.client.goto(&server.url(&connection_page)).await.unwrap();
    browser
        .wait_text("#connection-facts", Duration::from_secs(10), |t| {
            t.contains("needs re-authorisation")
        })
        .await;
    browser.screenshot("connection-needs-reauth").await;
    browser.click("#connect").await;
    let result = browser
        .wait_text("#connected", Duration::from_secs(15), |t| !t.is_empty())
        .await;
    assert!(result.contains("Connected spotify"), "{result}");
    browser
        .wait_text("#connection-facts", Duration::from_secs(10), |t| {
            t.contains("active")
        })
        .await;

    // Its polls, switched off from the polling page.
    browser.client.goto(&server.url("/polling")).await.unwrap();
    let row = format!("#poll-{connection_id}-recently_played");
    let row = row.as_str();
    browser
        .wait_text(row, Duration::from_secs(10), |t| t.contains("Switch off"))
        .await;
    browser.click(&format!("{row} button.toggle")).await;
    browser
        .wait_text(row, Duration::from_secs(10), |t| {
            t.contains("(off)") && t.contains("Switch on")
        })
        .await;
    browser.screenshot("polling-switched-off").await;

    // A viewer: the same pages, every action disabled.
    browser.switch_to_new_viewer(&server).await;
    for (page, buttons) in [
        (
            "/connections/1",
            "#connection-facts button:not([data-copy]), #connection-edit button",
        ),
        (
            "/connections/new?kind=github",
            "#connection-form button[type=submit]",
        ),
        ("/polling", "#polls button"),
    ] {
        browser.client.goto(&server.url(page)).await.unwrap();
        let found = browser.client.find_all(Locator::Css(buttons)).await.unwrap();
        assert!(!found.is_empty(), "{page}");
        for button in &found {
            assert!(
                !button.is_enabled().await.unwrap(),
                "{page}: a viewer's button is enabled"
            );
        }
    }
    browser.screenshot("connection-viewer").await;
    browser.client.goto(&server.url("/tokens")).await.unwrap();
    assert!(
        browser
            .client
            .find(Locator::Css("a#add-connection"))
            .await
            .is_err(),
        "no Add link for a viewer"
    );
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_staff_accounts_and_reads_the_audit_log_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let browser = Browser::start().await;
    browser
        .sign_in(&server, TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD)
        .await;
    browser.client.goto(&server.url("/settings/staff")).await.unwrap();
    // The buttons ask before removing or disabling; this person says yes.
    let say_yes = "window.confirm = () => true;";
    browser.client.execute(say_yes, vec![]).await.unwrap();

    browser.type_into("#new-email", "vera@example.com").await;
    browser.type_into("#new-password", "vera-password-1").await;
    browser.click("#add-user button[type=submit]").await;
    browser
        .wait_text("#add-user-answer", Duration::from_secs(10), |t| t == "Done.")
        .await;
    let vera_row = "#users tbody tr:nth-child(2)";
    browser
        .wait_text(vera_row, Duration::from_secs(15), |t| {
            t.contains("vera@example.com") && t.contains("active") && t.contains("never")
        })
        .await;

    // Promote her from her row, then make her a reset link: no SMTP server, so the log.
    browser
        .client
        .find(Locator::Css(&format!("{vera_row} select[name=role]")))
        .await
        .unwrap()
        .select_by_value("admin")
        .await
        .unwrap();
    browser
        .click(&format!("{vera_row} form button[type=submit]"))
        .await;
    browser
        .wait_text(&format!("{vera_row} output"), Duration::from_secs(10), |t| {
            t == "Done."
        })
        .await;
    browser.click(&format!("{vera_row} button[data-post]")).await;
    let answer = browser
        .wait_text(&format!("{vera_row} output"), Duration::from_secs(10), |t| {
            t.contains("server log")
        })
        .await;
    assert!(answer.contains("vera@example.com"), "{answer}");
    browser.click(&format!("{vera_row} button[data-patch]")).await;
    browser
        .wait_text(vera_row, Duration::from_secs(15), |t| t.contains("disabled"))
        .await;
    browser.click(&format!("{vera_row} button[data-patch]")).await;
    browser
        .wait_text(vera_row, Duration::from_secs(15), |t| t.contains("active"))
        .await;

    // A token that acts as her: shown once, works, then revoked.
    browser.type_into("#token-name", "backup script").await;
    browser
        .client
        .find(Locator::Css("#token-user"))
        .await
        .unwrap()
        .select_by_label("vera@example.com (admin)")
        .await
        .unwrap();
    browser.click("#add-token button[type=submit]").await;
    let shown = browser
        .wait_text("#token-answer", Duration::from_secs(10), |t| {
            t.contains("token: ")
        })
        .await;
    assert!(shown.contains("copy it now"), "{shown}");
    let token = shown
        .split("token: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned();
    let as_token = || {
        reqwest::Client::new()
            .get(server.url("/api/me"))
            .bearer_auth(&token)
            .send()
    };
    let me: serde_json::Value = as_token().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["email"], "vera@example.com");
    browser
        .wait_text("#api-tokens", Duration::from_secs(15), |t| {
            t.contains("backup script") && t.contains("vera@example.com")
        })
        .await;
    browser.screenshot("settings-staff").await;
    browser.click("#api-tokens tbody tr:nth-child(2) button").await;
    browser
        .wait_text("#api-tokens", Duration::from_secs(15), |t| {
            !t.contains("backup script")
        })
        .await;
    assert_eq!(as_token().await.unwrap().status(), 401, "revoked");

    // The audit log has each of those, under the admin, in words.
    browser.click("nav.subnav a[href='/settings/audit']").await;
    let log = browser
        .wait_text("#audit-log", Duration::from_secs(10), |t| t.contains("Revoked"))
        .await;
    for line in [
        "Added a staff user: staff user vera@example.com (viewer)",
        "Changed a staff user: staff user vera@example.com",
        "role: viewer → admin",
        "disabled: false → true",
        "Made a password reset link: staff user vera@example.com",
        "written to the server log",
        "Created an API token: API token 'backup script' of vera@example.com",
        "Revoked an API token: API token 'backup script' of vera@example.com",
        "Signed in",
    ] {
        assert!(log.contains(line), "no {line:?} in the audit log:\n{log}");
    }
    assert!(log.contains(TEST_ADMIN_EMAIL) && !log.contains("vera-password"));
    browser.screenshot("settings-audit").await;

    // Demoted again, she signs in: admin pages tell her which role they need; her own
    // password is hers to change.
    let (status, _) = telltale_e2e::api_send(
        reqwest::Method::PATCH,
        server.url("/api/users/2"),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(status, 200);
    browser.click("form.signout button").await;
    browser
        .wait_text("h2", Duration::from_secs(10), |t| t == "Sign in")
        .await;
    browser
        .sign_in(&server, "vera@example.com", "vera-password-1")
        .await;
    browser.client.goto(&server.url("/settings/staff")).await.unwrap();
    let refused = browser.text("#forbidden").await;
    assert!(
        refused.contains("This page needs the admin role")
            && refused.contains("viewer role")
            && refused.contains(TEST_ADMIN_EMAIL),
        "{refused}"
    );
    browser.screenshot("forbidden").await;
    browser.click("a.who").await;
    browser.type_into("#current-password", "vera-password-1").await;
    browser.type_into("#new-own-password", "vera-password-2").await;
    browser.click("#own-password button[type=submit]").await;
    browser
        .wait_text("#own-password-answer", Duration::from_secs(10), |t| {
            t.contains("Your password is changed")
        })
        .await;
}
