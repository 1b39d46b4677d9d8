//! Three `telltale serve` processes on one PostgreSQL, as a load-balanced deployment runs
//! them: webhooks go to all of them, every one sweeps tokens, evaluates alerts and drains the
//! outbox every second, and one is killed with SIGKILL in the middle of a token refresh.
//! PostgreSQL only (SQLite is one process; `server.rs` shows a second server on one SQLite file refused).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale::storage::{Db, connections, deliveries, outbox, refresh_log};
use telltale_e2e::{
    Backend, SmtpSink, TestDb, TestServer, mdp_reading, milesight_headers, nonce, post_with_headers,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const WEBHOOK_SECRET: &str = "replica-webhook-secret";
const LEASE_SECS: u64 = 5;
/// Issued tokens live 4 s and are refreshed 1 s ahead: every connection is due again about
/// every 3 s, so the run covers several refresh cycles.
const EXPIRES_IN: i64 = 4;
const LEAD_SECS: i64 = 1;
const STEADY: [&str; 3] = ["steady-a", "steady-b", "steady-c"];
const BROKEN: [&str; 2] = ["broken-a", "broken-b"];
const VICTIM: &str = "victim";

/// An OAuth2 token endpoint that rotates refresh tokens (`name-n` buys `name-(n+1)`), so a
/// refresh token presented twice means the same cycle was refreshed twice. The victim's
/// first request is held open until its caller dies.
struct RotatingTokenEndpoint {
    presented: Arc<Mutex<Vec<String>>>,
    hold_victim: AtomicBool,
}

impl Respond for RotatingTokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let token = url::form_urlencoded::parse(&request.body)
            .find(|(k, _)| k == "refresh_token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if let Ok(mut presented) = self.presented.lock() {
            presented.push(token.clone());
        }
        let Some((name, n)) = token
            .rsplit_once('-')
            .and_then(|(name, n)| Some((name, n.parse::<u32>().ok()?)))
        else {
            return ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_request"}));
        };
        let next = format!("{name}-{}", n + 1);
        let answer = ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("access-{next}"),
            "token_type": "Bearer",
            "refresh_token": next,
            "expires_in": EXPIRES_IN,
        }));
        if token == format!("{VICTIM}-0") && self.hold_victim.swap(false, Ordering::SeqCst) {
            answer.set_delay(Duration::from_secs(300))
        } else {
            answer
        }
    }
}

fn presented(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Sends each event once to one replica and again (a retry) to the next one; returns the ids
/// acknowledged with 200.
async fn send_webhooks(replicas: &[&TestServer], prefix: &str, count: usize) -> HashSet<String> {
    let t = chrono::Utc::now().timestamp_millis();
    let mut sends = tokio::task::JoinSet::new();
    for k in 0..count {
        let event_id = format!("{prefix}-{k}");
        let body = Value::Array(vec![mdp_reading(
            &event_id,
            &format!("SN-{}", k % 5),
            "PROPERTY",
            t + k as i64,
            json!({"temperature": k}),
        )])
        .to_string();
        for attempt in 0..2 {
            let url = replicas[(k + attempt) % replicas.len()].url("/webhooks/milesight");
            let (body, event_id) = (body.clone(), event_id.clone());
            sends.spawn(async move {
                let now = chrono::Utc::now().timestamp();
                let headers = milesight_headers(WEBHOOK_SECRET, None, now, &nonce());
                let (status, answer) = post_with_headers(&url, &headers, body).await;
                assert_eq!(status, 200, "{answer}");
                event_id
            });
        }
    }
    sends.join_all().await.into_iter().collect()
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut done: F) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A live process's thread count and resident memory, from /proc.
fn threads_and_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

async fn connection_named(db: &Db, name: &str) -> connections::Connection {
    connections::list_connections(db)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no connection {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_and_survive_a_killed_one() {
    let test_db = TestDb::new(Backend::Postgres).await;
    let db = test_db.open_migrated().await;
    let smtp = SmtpSink::start().await;
    let provider = MockServer::start().await;
    // The broken connections' platform is down altogether (another host, so its circuit
    // opening does not pause the working platform).
    let broken_platform = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&broken_platform)
        .await;
    let presented_tokens = Arc::new(Mutex::new(Vec::new()));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(RotatingTokenEndpoint {
            presented: presented_tokens.clone(),
            hold_victim: AtomicBool::new(true),
        })
        .mount(&provider)
        .await;

    let smtp_url = smtp.url();
    let lease = LEASE_SECS.to_string();
    let env = [
        ("MILESIGHT_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("SMTP_URL", smtp_url.as_str()),
        ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
        ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *"),
        ("TELLTALE_TOKEN_MAX_ATTEMPTS", "1"),
        ("TELLTALE_TOKEN_LEASE_SECS", lease.as_str()),
        ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "* * * * * *"),
        ("TELLTALE_OUTBOX_SCHEDULE", "* * * * * *"),
        ("TELLTALE_ALERT_GROUP_WAIT_SECS", "0"),
    ];
    let started = Instant::now();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestServer::start(test_db.url(), &env).await);
    }
    for replica in &replicas {
        replica.wait_ready(Duration::from_secs(30)).await;
    }

    let names = STEADY.iter().chain(&BROKEN).chain([&VICTIM]);
    for name in names {
        let body = json!({
            "account": "acme", "provider": "oauth2_refresh", "name": name,
            "base_url": format!(
                "{}/api/token",
                if BROKEN.contains(name) { broken_platform.uri() } else { provider.uri() }
            ),
            "settings": {"lead_secs": LEAD_SECS},
            "credentials": {"client_id": "c", "client_secret": "s"},
            "refresh_token": format!("{name}-0"),
        });
        let (code, answer) = post_with_headers(
            &replicas[0].url("/api/connections"),
            &[("content-type".into(), "application/json".into())],
            body.to_string(),
        )
        .await;
        assert_eq!(code, 201, "{answer}");
    }

    // Webhooks to all three while the sweeps run.
    let all: Vec<&TestServer> = replicas.iter().collect();
    let mut acknowledged = send_webhooks(&all, "before", 60).await;

    // Kill whichever replica holds the victim's lease while its refresh request is in flight.
    let victim_first = format!("{VICTIM}-0");
    wait_until(
        "the victim's refresh request",
        Duration::from_secs(30),
        async || presented(&presented_tokens).contains(&victim_first),
    )
    .await;
    let holder = connection_named(&db, VICTIM)
        .await
        .lease_owner
        .unwrap_or_else(|| panic!("the victim's refresh holds no lease"));
    let killed = replicas
        .iter()
        .position(|r| holder.starts_with(&format!("{}-", r.pid())))
        .unwrap_or_else(|| panic!("lease owner {holder} is none of the replicas"));
    let status = replicas[killed]
        .signal_and_wait("KILL", Duration::from_secs(10))
        .await;
    assert!(!status.success());
    let killed_at = Instant::now();
    let survivors: Vec<&TestServer> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, r)| r)
        .collect();

    // Another replica finishes the victim's refresh once the dead one's lease runs out.
    wait_until(
        "another replica to refresh the victim",
        Duration::from_secs(30),
        async || {
            connection_named(&db, VICTIM)
                .await
                .last_refresh_success_at
                .is_some()
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover <= Duration::from_secs(LEASE_SECS + 3),
        "taken over after {takeover:?}, lease {LEASE_SECS}s"
    );

    // Milesight retries what it sent to the dead replica at the survivors, and keeps sending.
    acknowledged.extend(send_webhooks(&survivors, "before", 60).await);
    acknowledged.extend(send_webhooks(&survivors, "after", 60).await);

    // Each broken connection's incident reaches on-call; then several more cycles run.
    let mentions = |messages: &[String], name: &str| {
        let needle = format!("connection '{name}' cannot refresh its token");
        // Bodies are quoted-printable: undo its soft line breaks before reading them.
        messages
            .iter()
            .filter(|m| m.replace("=\n", "").contains(&needle))
            .count()
    };
    wait_until(
        "an email per broken connection",
        Duration::from_secs(60),
        async || {
            let messages = smtp.messages();
            BROKEN.iter().all(|name| mentions(&messages, name) > 0)
        },
    )
    .await;
    // The dead platform keeps failing every sweep: the survivors must not pile up threads or
    // memory over it (a stuck request, a task per attempt, a growing map would).
    let before: Vec<(u64, u64)> = survivors.iter().map(|r| threads_and_rss_kib(r.pid())).collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    for (replica, (threads, rss)) in survivors.iter().zip(before) {
        let (threads_now, rss_now) = threads_and_rss_kib(replica.pid());
        assert!(threads_now <= threads + 2, "threads {threads} → {threads_now}");
        assert!(rss_now <= rss + 16 * 1024, "RSS {rss} KiB → {rss_now} KiB");
    }

    // Alert evaluation (every second, one piece of work) ran on one replica per tick: the
    // survivors together ran it at most once a second, not once each.
    let mut evaluations = 0.0;
    for replica in &survivors {
        let metrics = replica.metrics().await;
        for outcome in ["success", "failure"] {
            let labels = [("job", "alert-evaluation"), ("outcome", outcome)];
            evaluations +=
                telltale_e2e::metric_sample(&metrics, "telltale_scheduler_job_runs_total", &labels)
                    .unwrap_or(0.0);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        evaluations >= 3.0 && evaluations <= seconds + 2.0,
        "{evaluations} evaluations by the survivors in {seconds:.0} s"
    );

    // SIGTERM the survivors: running sweeps finish and give their leases back.
    for (i, replica) in replicas.iter_mut().enumerate() {
        if i != killed {
            let status = replica.signal_and_wait("TERM", Duration::from_secs(30)).await;
            assert!(status.success(), "clean exit: {}", replica.log_text());
        }
    }

    // Tokens: no refresh token was ever presented twice (each cycle refreshed once), except
    // the victim's first, whose caller died before the answer.
    let presented = presented(&presented_tokens);
    let mut times: HashMap<&str, usize> = HashMap::new();
    for token in &presented {
        *times.entry(token).or_default() += 1;
    }
    for (token, n) in &times {
        let expected = if *token == victim_first { 2 } else { 1 };
        assert_eq!(*n, expected, "{token} presented {n} times: {presented:?}");
    }
    for name in STEADY.iter().chain([&VICTIM]) {
        let connection = connection_named(&db, name).await;
        let cycles = times
            .keys()
            .filter(|t| t.starts_with(&format!("{name}-")))
            .count();
        assert!(cycles >= 3, "{name} refreshed in {cycles} cycles: {presented:?}");
        // Every answered refresh was logged once; the unanswered one never was (the victim's
        // first token was presented twice and answered once).
        let answered = cycles;
        let filter = refresh_log::LogFilter {
            provider: None,
            success: Some(true),
            connection_id: Some(connection.id),
            since: None,
        };
        let logged = refresh_log::query(&db, &filter, 1000).await.unwrap().len();
        assert_eq!(logged, answered, "{name}: logged successes vs answered requests");
        assert!(connection.lease_owner.is_none(), "{name} lease given back");
        let secrets = connection.refresh_token.is_some();
        assert!(secrets, "{name} keeps a refresh token");
    }

    // Alerts: each incident emailed exactly once by the three replicas together.
    let messages = smtp.messages();
    for name in BROKEN {
        assert_eq!(mentions(&messages, name), 1, "{name}: {messages:#?}");
    }
    // The survivors gave back what they held when stopped; the killed one could not, and an
    // email it had just claimed waits for that lease to run out (another replica sends it then).
    let dead = format!("{}-", replicas[killed].pid());
    for email in outbox::list(&db, true, 100).await.unwrap() {
        assert!(
            email
                .lease_owner
                .as_deref()
                .is_none_or(|owner| owner.starts_with(&dead)),
            "outbox lease given back: {email:?}"
        );
    }

    // Webhooks: every acknowledged event stored exactly once, wherever it was sent.
    let source = deliveries::source_by_name(&db, "default").await.unwrap();
    let events = deliveries::recent_events(&db, source.id, 10_000).await.unwrap();
    let stored: HashSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(events.len(), stored.len(), "no event stored twice");
    assert_eq!(stored, acknowledged, "every acknowledged event stored");
    assert_eq!(stored.len(), 120);
}
