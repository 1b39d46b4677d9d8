//! Test harness shared by the suites in `tests/tests/`.
//!
//! - `TestDb`: a fresh database per test, on SQLite (a temp file) or PostgreSQL (a database
//!   created on the server at `TELLTALE_TEST_DATABASE_URL` and dropped afterwards), so tests
//!   share nothing and run in parallel.
//! - `TestServer`: the real `telltale` binary, started on a free port with its logs captured.
//! - `TcpProxy`: a loopback proxy that can cut and restore a connection to the database.
//! - `load`: a closed-loop HTTP load generator for the benchmarks.
//! - `WebhookReceiver`: an alert webhook receiver that verifies Standard Webhooks signatures.
//! - `both_backends!`: turns one async test function into a SQLite test and a PostgreSQL test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub mod load;
pub mod webhook_receiver;

pub use webhook_receiver::{Received, WEBHOOK_SECRET, WebhookReceiver};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// A fixed key so tests can decrypt what the binary stored.
pub const TEST_SECRET_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
/// Every test server starts with this admin (configured as the first admin)…
pub const TEST_ADMIN_EMAIL: &str = "admin@example.com";
pub const TEST_ADMIN_PASSWORD: &str = "CANARY-admin-password";
/// …and this API token for it, which `get_json`, `post_with_headers` and `api_client` send.
pub const TEST_API_TOKEN: &str = "CANARY-api-token-0123456789abcdef";

/// Added to a test server's environment, unsets the configured admin and API token: a blank
/// install, as `cargo run` on a fresh machine starts.
pub const FRESH_INSTALL: &[(&str, &str)] = &[
    ("TELLTALE_ADMIN_EMAIL", ""),
    ("TELLTALE_ADMIN_PASSWORD", ""),
    ("TELLTALE_API_TOKEN", ""),
];

/// Every secret a test hands Telltale contains `CANARY` (or is `TEST_SECRET_KEY`), so one
/// check finds any of them where none may appear. The harness applies it to everything a user
/// could see: each test server's whole log (when the server is dropped), `/metrics`, every
/// response read through `get_json`/`post_with_headers`, and every email `SmtpSink` received.
pub fn assert_no_canary(place: &str, text: &str) {
    for canary in ["CANARY", TEST_SECRET_KEY] {
        if let Some(at) = text.find(canary) {
            let start = text[..at].char_indices().rev().nth(120).map_or(0, |(i, _)| i);
            let end = text[at..]
                .char_indices()
                .nth(120)
                .map_or(text.len(), |(i, _)| at + i);
            panic!("a secret leaked into {place}: …{}…", &text[start..end]);
        }
    }
}

/// A browser-like client: no redirects followed, no credentials unless it signs in.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Signs in through the JSON form of `POST /login`; returns the session cookie (`name=value`)
/// and the session's CSRF token.
pub async fn sign_in(server: &TestServer, email: &str, password: &str) -> (String, String) {
    let resp = browser()
        .post(server.url("/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /login: {e}"));
    assert_eq!(resp.status(), 200, "sign-in as {email}");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("sign-in as {email} set no cookie"))
        .to_owned();
    let body: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
    let csrf = body["csrf_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no csrf_token in {body}"))
        .to_owned();
    (cookie, csrf)
}

/// An HTTP client that calls the API as the test admin (through `TEST_API_TOKEN`).
pub fn api_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer CANARY-api-token-0123456789abcdef"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod NAME { sqlite, postgres }` tests from `async fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )+
    };
}

pub fn pg_admin_url() -> String {
    std::env::var("TELLTALE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// The service's state for one test, configured key by key rather than by hand-written TOML:
/// `TestApp::on(&db).set("tokens.max_attempts", 2).state().await`. Keys are the file's dotted
/// names (`alerts.recipients.device_offline` makes the nested table); a key set twice keeps the
/// last value, so a suite's defaults can be overridden by one test.
pub struct TestApp<'a> {
    db: &'a TestDb,
    settings: toml::Table,
}

impl<'a> TestApp<'a> {
    pub fn on(db: &'a TestDb) -> TestApp<'a> {
        TestApp {
            db,
            settings: toml::Table::new(),
        }
    }

    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> TestApp<'a> {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_else(|| panic!("empty key"));
        let mut table = &mut self.settings;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {part} is not a table"));
        }
        table.insert(last.to_owned(), value.into());
        self
    }

    /// The state on the (migrated) database, with these settings.
    pub async fn state(self) -> telltale::app::AppState {
        self.db.app_state(&self.settings.to_string()).await
    }
}

/// A database that exists for one test.
pub struct TestDb {
    pub backend: Backend,
    url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

const PG_PREFIX: &str = "telltale_test_";

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("telltale.db").display());
                TestDb {
                    backend,
                    url,
                    pg_name: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let mut conn = pg_connect(&admin).await;
                sweep_stale_databases(&mut conn).await;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let name = format!("{PG_PREFIX}{stamp}_{:08x}", rand::random::<u32>());
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let url = with_database(&admin, &name, None);
                TestDb {
                    backend,
                    url,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same database reached through another host:port (a `TcpProxy`). PostgreSQL only.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let name = self
            .pg_name
            .as_deref()
            .unwrap_or_else(|| panic!("url_via is for PostgreSQL"));
        with_database(&pg_admin_url(), name, Some(addr))
    }

    /// The PostgreSQL server's address, for pointing a proxy at it.
    pub fn pg_server_addr(&self) -> SocketAddr {
        let parsed = url::Url::parse(&pg_admin_url()).unwrap_or_else(|e| panic!("bad admin URL: {e}"));
        let host = parsed.host_str().unwrap_or("127.0.0.1");
        let port = parsed.port().unwrap_or(5432);
        format!("{host}:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("PostgreSQL host must be an IP: {e}"))
    }

    /// The service's state on this database (migrated), in process, configured by
    /// `settings_toml` (TOML sections after `database_url`), with a fixed secret key.
    pub async fn app_state(&self, settings_toml: &str) -> telltale::app::AppState {
        self.open_migrated().await;
        let toml = format!("database_url = \"{}\"\n{settings_toml}\n", self.url);
        let config = telltale::config::Config::from_toml(&toml, &[("UNUSED", "")])
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        telltale::app::AppState::new(config, telltale::crypto::Crypto::new(&[0x42; 32], &[]))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A `telltale::storage::Db` on this database as it is (not migrated).
    pub async fn open(&self) -> telltale::storage::Db {
        let target = telltale::storage::DatabaseTarget::parse(&self.url).unwrap_or_else(|e| panic!("{e}"));
        telltale::storage::Db::open(&target, &Default::default()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A `telltale::storage::Db` on this database, migrated.
    pub async fn open_migrated(&self) -> telltale::storage::Db {
        let target = telltale::storage::DatabaseTarget::parse(&self.url).unwrap_or_else(|e| panic!("{e}"));
        telltale::storage::migrate::run(&target)
            .await
            .unwrap_or_else(|e| panic!("migrations failed: {e:#}"));
        telltale::storage::Db::open(&target, &Default::default()).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&pg_admin_url()).await {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn pg_connect(url: &str) -> AsyncPgConnection {
    match AsyncPgConnection::establish(url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url}: {e}\n\
             The suite needs a real PostgreSQL: run `scripts/test` (it starts one), or start one yourself \
             (e.g. `pg_ctlcluster 15 main start`) and/or set TELLTALE_TEST_DATABASE_URL."
        ),
    }
}

/// Drops test databases left behind by crashed runs (older than an hour).
async fn sweep_stale_databases(conn: &mut AsyncPgConnection) {
    static SWEPT: Once = Once::new();
    let mut first = false;
    SWEPT.call_once(|| first = true);
    if !first {
        return;
    }
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'"
    ))
    .load(conn)
    .await
    .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for Name { datname } in names {
        let stamp = datname
            .strip_prefix(PG_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|s| now.saturating_sub(s) > 3600) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {datname} WITH (FORCE)"))
                .execute(conn)
                .await;
        }
    }
}

fn with_database(admin: &str, name: &str, via: Option<SocketAddr>) -> String {
    let mut parsed = url::Url::parse(admin).unwrap_or_else(|e| panic!("bad admin URL {admin}: {e}"));
    parsed.set_path(&format!("/{name}"));
    if let Some(addr) = via {
        let _ = parsed.set_host(Some(&addr.ip().to_string()));
        let _ = parsed.set_port(Some(addr.port()));
    }
    parsed.to_string()
}

/// The binary under test: this package's `telltale-under-test` target (see its source for why),
/// which cargo builds before running this package's tests. `TELLTALE_BIN` overrides it.
pub fn telltale_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TELLTALE_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries sit one level up.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("odd test path"));
    let bin = profile_dir.join("telltale-under-test");
    assert!(
        bin.exists(),
        "{} is missing: run the suites with `cargo test -p telltale-e2e`",
        bin.display()
    );
    bin
}

/// Runs `telltale ARGS` to completion with a clean environment plus `env`.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    run_cli_with_stdin(args, env, "")
}

/// `run_cli` with `stdin` piped to the command.
pub fn run_cli_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(telltale_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.env("TELLTALE_DATA_DIR", dir.path()).current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run telltale: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write to telltale's stdin: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot run telltale: {e}"));
    assert_no_canary(
        &format!("the output of telltale {}", args.join(" ")),
        &format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    );
    output
}

/// A running `telltale serve`, killed on drop if still running.
pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts the binary against `database_url` with `env` added, and waits until it listens
    /// (not until it is ready: tests of start-up decide that themselves).
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_with_config(database_url, "", env).await
    }

    /// As `start`, with `config_toml` written to a file and passed as `--config`.
    pub async fn start_with_config(
        database_url: &str,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> TestServer {
        TestServer::start_binary(&telltale_bin(), database_url, config_toml, env).await
    }

    /// As `start_with_config`, running the `telltale` binary at `bin` (the benchmark runs the
    /// release build this way).
    pub async fn start_binary(
        bin: &std::path::Path,
        database_url: &str,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.path().join("telltale.toml");
        std::fs::write(&config_path, config_toml).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TELLTALE_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", database_url)
            .env("TELLTALE_DATA_DIR", dir.path())
            .env("TELLTALE_SECRET_KEY", TEST_SECRET_KEY)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("TELLTALE_DB_STARTUP_RETRY_MAX_DELAY_SECS", "1")
            .env("TELLTALE_CONFIG", &config_path)
            .env("TELLTALE_ADMIN_EMAIL", TEST_ADMIN_EMAIL)
            .env("TELLTALE_ADMIN_PASSWORD", TEST_ADMIN_PASSWORD)
            .env("TELLTALE_API_TOKEN", TEST_API_TOKEN)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start telltale: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let found = logs.lock().ok().and_then(|lines| {
                lines.iter().find_map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    (v["message"] == "listening").then(|| v["address"].as_str()?.parse().ok())?
                })
            });
            if let Some(addr) = found {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "telltale exited with {status} before listening; output:\n{}",
                    join(&logs)
                );
            }
            assert!(
                Instant::now() < deadline,
                "telltale did not start listening; output:\n{}",
                join(&logs)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        TestServer {
            child,
            addr,
            logs,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first-run setup URL the server logged, waiting for it up to `within`.
    pub async fn setup_url(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let found = self.logs().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["level"] == "WARN").then(|| v["setup_url"].as_str().map(str::to_owned))?
            });
            if let Some(url) = found {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "no setup URL logged within {within:?}; output:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        join(&self.logs)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(self.url("/metrics"))
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics body: {e}"));
        assert_no_canary("/metrics", &text);
        text
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(resp) = client.get(self.url("/readyz")).send().await
                && resp.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}; output:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) and waits for the process to exit.
    pub async fn signal_and_wait(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -s {signal} failed");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?} after SIG{signal}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Only on a passing test: a failing one reports its own cause, not this.
        if !std::thread::panicking() {
            assert_no_canary("the server's log", &join(&self.logs));
        }
    }
}

fn join(logs: &Arc<Mutex<Vec<String>>>) -> String {
    logs.lock().map(|l| l.join("\n")).unwrap_or_default()
}

/// A loopback TCP proxy to a target. `cut` closes every open connection and refuses new
/// ones (as a network partition or a stopped database would); `restore` lets them through again.
pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept_task = {
            let open = open.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !AtomicBool::load(&open, Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut list) = connections.lock() {
                        list.push(task.abort_handle());
                    }
                }
            })
        };
        TcpProxy {
            addr,
            open,
            connections,
            accept_task,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.connections.lock() {
            for task in list.drain(..) {
                task.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}

/// Milesight webhook headers for `secret`, computed here with the test's own HMAC (not the
/// product's), as MDP does: lower-hex HMAC-SHA256 over `timestamp + nonce`.
pub fn milesight_headers(
    secret: &str,
    uuid: Option<&str>,
    timestamp: i64,
    nonce: &str,
) -> Vec<(String, String)> {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{timestamp}{nonce}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-msc-request-timestamp".to_owned(), timestamp.to_string()),
        ("x-msc-request-nonce".to_owned(), nonce.to_owned()),
        ("x-msc-request-signature".to_owned(), signature),
    ];
    if let Some(uuid) = uuid {
        headers.push(("x-msc-webhook-uuid".to_owned(), uuid.to_owned()));
    }
    headers
}

/// POSTs `body` with `headers` (as the test admin unless they carry their own
/// `Authorization`); returns the status and the JSON body (panics if not JSON).
pub async fn post_with_headers(
    url: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut request = api_client().post(url).body(body);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let resp = request.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_no_canary(&format!("the answer to POST {url}"), &text);
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("POST {url}: not JSON ({status}): {text}"));
    (status, json)
}

/// GETs `url` as the test admin; returns the status and the JSON body (panics if not JSON).
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let resp = api_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_no_canary(&format!("the answer to GET {url}"), &text);
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("GET {url}: not JSON ({status}): {text}"));
    (status, json)
}

/// A DEVICE_DATA event as MDP sends it (apis.md §1.5).
pub fn mdp_reading(
    event_id: &str,
    sn: &str,
    kind: &str,
    ts_ms: i64,
    payload: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "eventId": event_id,
        "eventCreatedTime": (ts_ms / 1000).to_string(),
        "eventVersion": "1.0",
        "eventType": "DEVICE_DATA",
        "data": {
            "deviceProfile": {"deviceId": "1904371063669395457", "sn": sn, "devEUI": "24D124707E04AAAA",
                              "name": "Cold room", "model": "EM300-TH"},
            "type": kind, "tslId": "", "ts": ts_ms, "payload": payload
        }
    })
}

/// A fresh random nonce for a signed request.
pub fn nonce() -> String {
    format!("n-{:016x}", rand::random::<u64>())
}

/// One scheduled-style refresh sweep over every due connection, in process.
pub async fn sweep_all(state: &telltale::app::AppState) -> telltale::tokens::SweepReport {
    sweep_at(state, telltale::storage::now()).await
}

/// A scheduled sweep judged at `at` (so tests can look ahead without waiting).
pub async fn sweep_at(
    state: &telltale::app::AppState,
    at: telltale::storage::UtcTime,
) -> telltale::tokens::SweepReport {
    let request = telltale::tokens::SweepRequest {
        trigger: "scheduled",
        actor: "test".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    };
    state
        .token_engine
        .sweep(&request, at)
        .await
        .unwrap_or_else(|e| panic!("sweep: {e}"))
}

/// A real SMTP server on 127.0.0.1: Python's aiosmtpd (installed by `scripts/test`) storing
/// every message it accepts in a maildir. Killed on drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    _root: tempfile::TempDir,
}

/// A port nothing listens on now (for an SMTP server that is down, or started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> SmtpSink {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // aiosmtpd's Mailbox creates the maildir itself; it must not exist beforehand.
        let dir = root.path().join("maildir");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start aiosmtpd (python3 -m pip install aiosmtpd): {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpSink {
            child,
            port,
            dir,
            _root: root,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as RFC 5322 text with folded header lines unfolded
    /// (long subjects arrive split over lines).
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        let mut messages: Vec<(std::time::SystemTime, String)> = entries
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        messages.sort_by_key(|(t, _)| *t);
        let messages: Vec<String> = messages
            .into_iter()
            .map(|(_, m)| m.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " "))
            .collect();
        for message in &messages {
            assert_no_canary("an email", message);
        }
        messages
    }

    /// Waits until `n` messages have arrived, and returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= n || std::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Spotify connection of account "acme" (created when missing) holding canary tokens that
/// expire in `expires_in`; returns its id. Written straight to storage, for in-process tests.
pub async fn spotify_connection(
    state: &telltale::app::AppState,
    name: &str,
    expires_in: chrono::Duration,
) -> i64 {
    use telltale::storage::connections::{self, NewConnection};
    let account = match connections::account_by_name(&state.db, "acme").await {
        Ok(a) => a,
        Err(_) => connections::create_account(&state.db, "acme", None)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    };
    let new = NewConnection {
        account_id: account.id,
        provider: "oauth2_refresh".into(),
        name: name.into(),
        settings: serde_json::json!({"preset": "spotify"}),
        access_token: Some("CANARY-token".into()),
        refresh_token: Some("CANARY-refresh".into()),
        expires_at: Some((telltale::storage::now().0 + expires_in).into()),
        ..Default::default()
    };
    connections::create_connection(&state.db, &state.crypto, &new)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id
}

/// Silences `subject` (`connection:5`, `source:site-a`, …) from now for two hours.
pub async fn silence_two_hours(state: &telltale::app::AppState, subject: &str, reason: &str) {
    let now = telltale::storage::now();
    telltale::storage::alerts::add_silence(
        &state.db,
        subject,
        reason,
        Some("ops"),
        now,
        (now.0 + chrono::Duration::hours(2)).into(),
        now,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Records `times` failed refreshes ("HTTP 503") of connection `id`, as sweeps would.
pub async fn fail_refresh(state: &telltale::app::AppState, id: i64, times: usize) {
    for _ in 0..times {
        telltale::storage::connections::record_refresh_failure(
            &state.db,
            id,
            None,
            "HTTP 503",
            telltale::storage::now(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Stores a fresh token for connection `id` (valid for an hour), as a successful refresh would.
pub async fn refresh_succeeded(state: &telltale::app::AppState, id: i64) {
    use telltale::storage::connections::{self, RefreshedToken};
    let now = telltale::storage::now();
    connections::store_refreshed_token(
        &state.db,
        &state.crypto,
        id,
        &RefreshedToken {
            access_token: "fresh".into(),
            refresh_token: None,
            expires_at: Some((now.0 + chrono::Duration::hours(1)).into()),
            refresh_expires_at: None,
        },
        now,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A device (created when new, in `source_id`) left in `status`, last heard from at `seen`, as
/// its reading would leave it: the fixture the alert and storage suites share.
pub async fn device_in(
    db: &telltale::storage::Db,
    sn: &str,
    source_id: Option<i64>,
    status: telltale::storage::DeviceStatus,
    seen: telltale::storage::UtcTime,
) -> telltale::storage::devices::Device {
    use telltale::storage::devices::{self, DeviceActivity, DeviceProfile};
    let profile = DeviceProfile {
        source_id,
        ..Default::default()
    };
    let device = devices::upsert_by_sn(db, sn, &profile)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let activity = DeviceActivity {
        status,
        last_seen_at: seen,
        last_event_type: None,
        last_payload: None,
        battery: None,
        expected_interval_secs: None,
    };
    devices::record_activity(db, device.id, &activity)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The value of the one sample of `name` carrying all `labels`; `None` when there is none.
pub fn metric_sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            (series == &name || series.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse().ok())
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} is ambiguous");
    matching.into_iter().next()
}

/// An OAuth 2.0 authorization server on 127.0.0.1 (apis.md §6) for the consent-screen tests:
/// `GET /authorize` consents at once, sending the browser back to the `redirect_uri` with a
/// code (`?deny=1` in the authorize URL refuses instead); `POST /token` exchanges the code only
/// with the PKCE verifier whose S256 challenge came with it and the same redirect URI, once,
/// and refreshes with the refresh token it issued.
pub struct FakeAuthorizationServer {
    pub server: wiremock::MockServer,
    pub client_id: &'static str,
    pub client_secret: &'static str,
}

impl FakeAuthorizationServer {
    pub async fn start() -> FakeAuthorizationServer {
        use base64::Engine;
        use sha2::Digest;
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, ResponseTemplate};

        #[derive(Default)]
        struct Grants {
            /// code → (challenge, redirect_uri)
            codes: std::collections::HashMap<String, (String, String)>,
            issued: usize,
        }
        let grants = Arc::new(Mutex::new(Grants::default()));
        let server = wiremock::MockServer::start().await;
        let client_id = "fake-client";
        let client_secret = "CANARY-fake-client-secret";

        let at_authorize = grants.clone();
        Mock::given(method("GET"))
            .and(path("/authorize"))
            .respond_with(move |request: &wiremock::Request| {
                let query: std::collections::HashMap<String, String> =
                    request.url.query_pairs().into_owned().collect();
                let redirect = query.get("redirect_uri").cloned().unwrap_or_default();
                let state = query.get("state").cloned().unwrap_or_default();
                let ok = query.get("response_type").map(String::as_str) == Some("code")
                    && query.get("client_id").map(String::as_str) == Some(client_id)
                    && query.get("code_challenge_method").map(String::as_str) == Some("S256");
                if !ok {
                    return ResponseTemplate::new(400).set_body_string("bad authorization request");
                }
                let mut target =
                    url::Url::parse(&redirect).unwrap_or_else(|e| panic!("redirect_uri {redirect}: {e}"));
                if query.contains_key("deny") {
                    target
                        .query_pairs_mut()
                        .append_pair("error", "access_denied")
                        .append_pair("error_description", "The user denied access")
                        .append_pair("state", &state);
                } else {
                    let code = format!("CANARY-code-{}", nonce());
                    if let Ok(mut g) = at_authorize.lock() {
                        let challenge = query.get("code_challenge").cloned().unwrap_or_default();
                        g.codes.insert(code.clone(), (challenge, redirect.clone()));
                    }
                    target
                        .query_pairs_mut()
                        .append_pair("code", &code)
                        .append_pair("state", &state);
                }
                ResponseTemplate::new(302).insert_header("location", target.as_str())
            })
            .mount(&server)
            .await;

        let at_token = grants.clone();
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(move |request: &wiremock::Request| {
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(&request.body).into_owned().collect();
                let refused = |error: &str| {
                    ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": error}))
                };
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"));
                let authenticated = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v == format!("Basic {basic}"))
                    || (form.get("client_id").map(String::as_str) == Some(client_id)
                        && form.get("client_secret").map(String::as_str) == Some(client_secret));
                if !authenticated {
                    return ResponseTemplate::new(401)
                        .set_body_json(serde_json::json!({"error": "invalid_client"}));
                }
                let Ok(mut g) = at_token.lock() else {
                    return ResponseTemplate::new(500);
                };
                match form.get("grant_type").map(String::as_str) {
                    Some("authorization_code") => {
                        let code = form.get("code").cloned().unwrap_or_default();
                        let Some((challenge, redirect)) = g.codes.remove(&code) else {
                            return refused("invalid_grant");
                        };
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(sha2::Sha256::digest(verifier.as_bytes()));
                        if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
                            return refused("invalid_grant");
                        }
                    }
                    Some("refresh_token") => {
                        if !form
                            .get("refresh_token")
                            .is_some_and(|t| t.starts_with("CANARY-fake-refresh-"))
                        {
                            return refused("invalid_grant");
                        }
                    }
                    _ => return refused("unsupported_grant_type"),
                }
                g.issued += 1;
                let n = g.issued;
                ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "access_token": format!("CANARY-fake-access-{n}"),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": format!("CANARY-fake-refresh-{n}"),
                }))
            })
            .mount(&server)
            .await;
        FakeAuthorizationServer {
            server,
            client_id,
            client_secret,
        }
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.server.uri())
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.server.uri())
    }
}
