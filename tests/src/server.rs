//! The binary under test: `TestServer` (a running `telltale serve` with its log captured),
//! one-shot CLI runs, and the HTTP clients and helpers the suites call it with.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, TEST_API_TOKEN, TEST_SECRET_KEY, assert_no_canary};

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

/// Sends `method url` (with a JSON body when given) as the test admin; the status and the JSON
/// answer, which is checked for secrets.
pub async fn api_send(
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = api_client().request(method.clone(), &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_else(|e| panic!("{e}"));
    crate::assert_no_canary(&format!("{method} {url}"), &text);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
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

    /// The log lines that match, once there are at least `count` of them (output is read from
    /// the server's pipe as it comes, so a line may land just after the request it follows);
    /// waits up to `within`, then returns what there is for the caller's assertion to show.
    pub async fn logs_matching(
        &self,
        count: usize,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<String> = self.logs().into_iter().filter(|l| matches(l)).collect();
            if found.len() >= count || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
