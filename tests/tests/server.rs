//! End-to-end: the built `telltale` binary over real HTTP, on SQLite and PostgreSQL.

use std::time::Duration;

use serde_json::Value;
use telltale_e2e::{Backend, TcpProxy, TestDb, TestServer, both_backends, run_cli};

both_backends!(
    serves_health_readiness_and_metrics,
    errors_share_one_json_shape,
    shuts_down_gracefully_on_sigterm_under_load,
    shuts_down_on_sigint,
    secrets_never_reach_logs_or_metrics,
    migrate_command_is_idempotent,
    rotate_key_command_reseals_stored_secrets,
    pages_answer_starting_until_the_admin_exists,
);

async fn get_json(url: &str) -> (u16, Value) {
    let resp = telltale_e2e::api_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"));
    (status, body)
}

async fn serves_health_readiness_and_metrics(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;

    let (status, body) = get_json(&server.url("/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body) = get_json(&server.url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);

    let resp = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(&format!("telltale_build_info{{backend=\"{expected}\",version=")),
        "{text}"
    );
    assert!(text.contains("telltale_ready 1"), "{text}");
    assert!(
        text.contains("process_resident_memory_bytes"),
        "process metrics: {text}"
    );
    assert!(
        text.contains(r#"telltale_http_requests_total{endpoint="/healthz",method="GET",status="200"} 1"#),
        "request counter by route and status: {text}"
    );
    assert!(
        text.contains("telltale_http_requests_duration_seconds_bucket{endpoint=\"/readyz\""),
        "{text}"
    );
    assert!(
        text.contains("telltale_db_pool_connections{state=\"max\"} 16"),
        "{text}"
    );

    let page = telltale_e2e::api_client()
        .get(server.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<title>Overview · Telltale</title>")
    );
    let css = reqwest::get(server.url("/static/telltale.css")).await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css");
}

async fn errors_share_one_json_shape(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let client = telltale_e2e::api_client();
    for (method, path, status, code) in [
        ("GET", "/no/such/route", 404, "not_found"),
        // A known path with a method it does not serve: 405, whatever else the path serves.
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("PUT", "/webhooks/milesight/site-a", 405, "method_not_allowed"),
        ("DELETE", "/api/devices", 405, "method_not_allowed"),
        ("GET", "/static/../../etc/passwd", 404, "not_found"),
        ("GET", "/static/missing.js", 404, "not_found"),
    ] {
        let resp = client
            .request(method.parse().unwrap(), server.url(path))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

async fn shuts_down_gracefully_on_sigterm_under_load(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;

    // Clients keep requests in flight (each a database round trip) while SIGTERM arrives.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = server.url("/readyz");
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answered = 0u32;
            loop {
                // A refused or reset connection means the server stopped accepting: expected.
                let Ok(resp) = client.get(&url).send().await else {
                    return Ok(answered);
                };
                // But a response that started must arrive complete, well-formed and successful.
                let status = resp.status().as_u16();
                let body = resp
                    .text()
                    .await
                    .map_err(|e| format!("in-flight response cut short: {e}"))?;
                if status != 200 || serde_json::from_str::<Value>(&body).is_err() {
                    return Err(format!("in-flight request answered {status}: {body}"));
                }
                answered += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.signal_and_wait("TERM", Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        server.log_text()
    );
    let mut answered = 0;
    for client in clients {
        match client.await.expect("client task") {
            Ok(n) => answered += n,
            Err(failure) => panic!("{failure}\nserver output:\n{}", server.log_text()),
        }
    }
    assert!(answered > 0, "requests were served before shutdown");

    let logs = server.log_text();
    for step in [
        "SIGTERM",
        "finishing in-flight requests",
        "background jobs stopped",
        "shutdown complete",
    ] {
        assert!(
            logs.contains(step),
            "shutdown log should mention {step:?}:\n{logs}"
        );
    }
    assert!(
        reqwest::get(server.url("/healthz")).await.is_err(),
        "no longer accepting connections"
    );
}

async fn shuts_down_on_sigint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut server = TestServer::start(db.url(), &[]).await;
    server.wait_ready(Duration::from_secs(30)).await;
    let status = server.signal_and_wait("INT", Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}");
    assert!(server.log_text().contains("shutdown complete"));
}

async fn secrets_never_reach_logs_or_metrics(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = "ca11ab1e".repeat(8);
    let previous = "0badc0de".repeat(8);
    let password = "CANARY-db-password";
    // PostgreSQL here trusts local connections, so a password in the URL is accepted and ignored;
    // for SQLite the canaries ride in the key settings only.
    let url = match backend {
        Backend::Postgres => db
            .url()
            .replacen("postgres@", &format!("postgres:{password}@"), 1),
        Backend::Sqlite => db.url().to_owned(),
    };
    let server = TestServer::start(
        &url,
        &[
            ("TELLTALE_SECRET_KEY", &key),
            ("TELLTALE_SECRET_KEY_PREVIOUS", &previous),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    for path in ["/healthz", "/readyz", "/nope", "/"] {
        let _ = reqwest::get(server.url(path)).await.unwrap();
    }
    let metrics = server.metrics().await;
    let logs = server.log_text();
    assert!(logs.lines().count() > 5, "debug logging produced output:\n{logs}");
    for secret in [key.as_str(), previous.as_str(), password] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!metrics.contains(secret), "a secret reached /metrics");
    }
    if backend == Backend::Postgres {
        assert!(
            logs.contains("postgres:****@"),
            "the database URL is logged masked:\n{logs}"
        );
    }
}

/// From the first moment the server listens, `/`, `/setup` and `/login` answer either 503
/// `starting` or what a ready service answers: never a 500, and never the first-run page while
/// the configured admin is being created.
async fn pages_answer_starting_until_the_admin_exists(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(db.url(), &[]).await;
    let client = telltale_e2e::browser();
    let mut starting = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(server.url("/readyz")).send().await.unwrap().status() == 200;
        for path in ["/", "/setup", "/login"] {
            let resp = client.get(server.url(path)).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            match status {
                503 => {
                    assert!(text.contains("\"starting\""), "{path}: {text}");
                    starting += 1;
                }
                200 | 303 | 404 => assert!(
                    !text.contains("no staff account"),
                    "{path} while the admin is configured: {text}"
                ),
                other => panic!("{path} answered {other}: {text}"),
            }
        }
        if ready {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
    }
    // Once ready: the setup page is gone (an admin exists) and sign-in is served.
    assert_eq!(
        client.get(server.url("/setup")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        client.get(server.url("/login")).send().await.unwrap().status(),
        200
    );
    eprintln!("{starting} answer(s) were 503 starting");
}

async fn migrate_command_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [("DATABASE_URL", db.url())];
    let status = run_cli(&["migrate", "--status"], &env);
    let folder = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let shipped = std::fs::read_dir(format!("{}/../migrations/{folder}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .count();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("{shipped} pending migration")),
        "{shipped} shipped: {status:?}"
    );
    let first = run_cli(&["migrate"], &env);
    assert!(first.status.success(), "{first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains(&format!("applied {shipped} migration")),
        "{first:?}"
    );
    let second = run_cli(&["migrate"], &env);
    assert!(second.status.success(), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("nothing to apply"),
        "{second:?}"
    );
    let status = run_cli(&["migrate", "--status"], &env);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("schema up to date"),
        "{status:?}"
    );
}

async fn rotate_key_command_reseals_stored_secrets(backend: Backend) {
    use telltale::crypto::Crypto;
    use telltale::storage::connections::{self, NewConnection};
    let db_handle = TestDb::new(backend).await;
    let db = db_handle.open_migrated().await;
    let (old_key, new_key) = ("11".repeat(32), "22".repeat(32));
    let old = Crypto::new(&telltale::crypto::parse_key(&old_key).unwrap(), &[]);
    let account = connections::create_account(&db, "acme", None).await.unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "discord".into(),
        name: "bot".into(),
        access_token: Some("discord-token".into()),
        ..Default::default()
    };
    let id = connections::create_connection(&db, &old, &new).await.unwrap().id;
    // Secrets entered in the UI live sealed inside `app_settings`: an SMTP URL and a webhook secret.
    let sealed = |column: &str, value: &str| hex::encode(old.encrypt_str(column, value));
    let smtp_column = "app_settings.notification_channels";
    let hooks_column = "app_settings.milesight_webhooks";
    telltale::storage::app_settings::put(
        &db,
        "notification_channels",
        &serde_json::json!({"smtp": {"form": "url", "url": sealed(smtp_column, "smtp://u:pw@mail.example.com:25")}})
            .to_string(),
    )
    .await
    .unwrap();
    telltale::storage::app_settings::put(
        &db,
        "milesight_webhooks",
        &serde_json::json!([{"source": "site-a", "uuid": null, "secret": sealed(hooks_column, "mdp-secret"), "previous_secret": null}])
            .to_string(),
    )
    .await
    .unwrap();

    let out = run_cli(
        &["rotate-key"],
        &[
            ("DATABASE_URL", db_handle.url()),
            ("TELLTALE_SECRET_KEY", &new_key),
            ("TELLTALE_SECRET_KEY_PREVIOUS", &old_key),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 connection secret(s) and 1 notification secret(s)"),
        "{out:?}"
    );

    let only_new = Crypto::new(&telltale::crypto::parse_key(&new_key).unwrap(), &[]);
    let stored = connections::get_connection(&db, id).await.unwrap();
    let secrets = connections::secrets(&only_new, &stored).unwrap();
    assert_eq!(secrets.access_token.as_deref(), Some("discord-token"));
    let opened = |key: &'static str, column: &'static str, pointer: &'static str| {
        let db = &db;
        let only_new = &only_new;
        async move {
            let text = telltale::storage::app_settings::get(db, key)
                .await
                .unwrap()
                .unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            let sealed = hex::decode(value.pointer(pointer).unwrap().as_str().unwrap()).unwrap();
            only_new.decrypt_string(column, &sealed).unwrap()
        }
    };
    assert_eq!(
        opened("notification_channels", smtp_column, "/smtp/url").await,
        "smtp://u:pw@mail.example.com:25"
    );
    assert_eq!(
        opened("milesight_webhooks", hooks_column, "/0/secret").await,
        "mdp-secret"
    );
}

/// PostgreSQL only: the database goes away under a running service and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start(db.pg_server_addr()).await;
    let server = TestServer::start(
        &db.url_via(proxy.addr),
        &[("TELLTALE_DB_ACQUIRE_TIMEOUT_SECS", "2")],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;

    proxy.cut();
    let resp = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert_eq!(
        body["error"]["message"], "database unreachable; the cause is in the service log",
        "an anonymous caller learns no driver text or host: {body}"
    );
    let (status, _) = get_json(&server.url("/healthz")).await;
    assert_eq!(status, 200, "liveness does not depend on the database");
    let metrics = server.metrics().await;
    assert!(metrics.contains("telltale_ready 0"), "{metrics}");
    assert!(
        metrics.contains("telltale_metrics_database_scrape_ok 0"),
        "/metrics still answers, saying its database gauges are missing: {metrics}"
    );

    proxy.restore();
    server.wait_ready(Duration::from_secs(30)).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("telltale_metrics_database_scrape_ok 1"),
        "{metrics}"
    );
}

/// PostgreSQL only: the service starts while the database is down, says why it is not
/// ready, keeps retrying, and becomes ready (migrated) once the database appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_down_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start(db.pg_server_addr()).await;
    proxy.cut();
    let server = TestServer::start(&db.url_via(proxy.addr), &[]).await;

    let (status, _) = get_json(&server.url("/healthz")).await;
    assert_eq!(status, 200);
    // Let at least one attempt fail and be logged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = get_json(&server.url("/readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "starting", "{body}");
    assert_eq!(
        body["error"]["message"], "database unreachable or not migrated; the cause is in the service log",
        "an anonymous caller learns no driver text or host: {body}"
    );
    assert!(
        server.log_text().contains("database not ready; retrying"),
        "{}",
        server.log_text()
    );

    // Until then every route but the probes answers 503 `starting`, never a half-made page.
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/setup"),
        ("GET", "/login"),
        ("GET", "/api/devices"),
        ("POST", "/webhooks/milesight"),
    ] {
        let resp = reqwest::Client::new()
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{method} {path}");
        assert_eq!(resp.headers()["retry-after"], "1", "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "starting", "{method} {path}: {body}");
    }
    assert!(
        !server.log_text().contains("ERROR"),
        "a normal start is not an error: {}",
        server.log_text()
    );

    proxy.restore();
    server.wait_ready(Duration::from_secs(30)).await;
    assert!(
        server.log_text().contains("migrations applied"),
        "{}",
        server.log_text()
    );
    let metrics = server.metrics().await;
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telltale_startup_database_failures_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "failed start-up attempts are counted: {metrics}");
}

/// SQLite: a fresh machine needs nothing; the database file and key file are created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_default_creates_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("nested/dir/telltale.db");
    let server = TestServer::start(
        &format!("sqlite://{}", db_path.display()),
        &[("TELLTALE_SECRET_KEY", "")],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    assert!(
        db_path.exists(),
        "database file created with its parent directories"
    );
    assert!(
        server.log_text().contains("generated a new key file"),
        "{}",
        server.log_text()
    );
}

/// SQLite is one process: a second `serve` on the same file is refused with a message naming
/// the holder, while the first keeps serving; once the first is gone (even by SIGKILL) a new
/// server starts on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut first = TestServer::start(db.url(), &[]).await;
    first.wait_ready(Duration::from_secs(30)).await;

    let refused = run_cli(
        &["serve"],
        &[
            ("DATABASE_URL", db.url()),
            ("TELLTALE_LISTEN", "127.0.0.1:0"),
            ("TELLTALE_SECRET_KEY", telltale_e2e::TEST_SECRET_KEY),
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "second server refused: {stderr}");
    assert!(
        stderr.contains(&format!("already served by process {}", first.pid())),
        "names the holder: {stderr}"
    );
    assert!(
        stderr.contains("PostgreSQL"),
        "says how to run replicas: {stderr}"
    );
    let (status, _) = get_json(&first.url("/readyz")).await;
    assert_eq!(status, 200, "the first server is unaffected");

    first.signal_and_wait("KILL", Duration::from_secs(10)).await;
    let second = TestServer::start(db.url(), &[]).await;
    second.wait_ready(Duration::from_secs(30)).await;
}
