//! `telltale-bench ingest`: signed Milesight webhooks against the real release server,
//! measured beside that server's bare-HTTP ceiling, on SQLite and PostgreSQL, then checked:
//! the events stored must be exactly the events acknowledged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use telltale::db_run;
use telltale::storage::deliveries;
use telltale::storage::schema::webhook_events;
use telltale_e2e::load::{self, LoadReport, Request, Workload};
use telltale_e2e::{Backend, TestDb, TestServer};

use crate::cpu;

const SECRET: &str = "bench-webhook-secret";
/// Sensors the events are spread over (a large site).
const DEVICES: u64 = 2000;

pub struct IngestArgs {
    pub backends: Vec<Backend>,
    pub seconds: u64,
    pub connections: usize,
    /// Run only these scenarios (the ceiling ratio needs its ceiling run too).
    pub only: Option<Vec<String>>,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<IngestArgs, String> {
    let mut parsed = IngestArgs {
        backends: vec![Backend::Sqlite, Backend::Postgres],
        seconds: 10,
        connections: 64,
        only: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                parsed.backends = match value()?.as_str() {
                    "sqlite" => vec![Backend::Sqlite],
                    "postgres" => vec![Backend::Postgres],
                    "both" => vec![Backend::Sqlite, Backend::Postgres],
                    other => return Err(format!("unknown backend {other}")),
                }
            }
            "--seconds" => parsed.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--connections" => {
                parsed.connections = value()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--only" => parsed.only = Some(value()?.split(',').map(str::to_owned).collect()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(parsed)
}

/// What one scenario sends.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    events_per_request: usize,
    /// Posts to `/bench/discard` instead: the ceiling, with the same bodies.
    ceiling: bool,
    /// Whether 10 % of requests repeat an earlier request's events and 1 % are badly signed.
    mixed: bool,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "ceiling-1",
        events_per_request: 1,
        ceiling: true,
        mixed: false,
    },
    Scenario {
        name: "ingest-1",
        events_per_request: 1,
        ceiling: false,
        mixed: false,
    },
    Scenario {
        name: "mixed-1",
        events_per_request: 1,
        ceiling: false,
        mixed: true,
    },
    Scenario {
        name: "ceiling-50",
        events_per_request: 50,
        ceiling: true,
        mixed: false,
    },
    Scenario {
        name: "ingest-50",
        events_per_request: 50,
        ceiling: false,
        mixed: false,
    },
    Scenario {
        name: "mixed-50",
        events_per_request: 50,
        ceiling: false,
        mixed: true,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fresh,
    /// New signature and nonce, events of an earlier request (MDP retrying).
    Repeat,
    BadSignature,
}

struct Ingest {
    scenario: Scenario,
    /// Milliseconds since the epoch at the start, for event times.
    base_ms: i64,
}

impl Ingest {
    fn kind(&self, seq: u64) -> Kind {
        if !self.scenario.mixed {
            return Kind::Fresh;
        }
        match seq % 100 {
            0 => Kind::BadSignature,
            1..=10 => Kind::Repeat,
            _ => Kind::Fresh,
        }
    }

    /// The request whose events `seq` carries: itself, or for a repeat the one 50 before
    /// (followed back to a fresh or badly signed one).
    fn origin(&self, mut seq: u64) -> u64 {
        while self.kind(seq) == Kind::Repeat && seq >= 50 {
            seq -= 50;
        }
        seq
    }

    fn body(&self, origin: u64) -> String {
        let n = self.scenario.events_per_request as u64;
        let mut body = String::with_capacity(450 * n as usize + 2);
        body.push('[');
        for i in 0..n {
            let number = origin * n + i;
            let device = number % DEVICES;
            let ts = self.base_ms + number as i64;
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"eventId":"{name}-{origin}-{i}","eventCreatedTime":"{secs}","eventVersion":"1.0","eventType":"DEVICE_DATA","data":{{"deviceProfile":{{"deviceId":"19043710636{device:08}","sn":"BENCH{device:07}","devEUI":"24E124{device:010X}","name":"Bench sensor {device}","model":"EM300-TH"}},"type":"PROPERTY","tslId":"","ts":{ts},"payload":{{"temperature":21.5,"humidity":48.5,"battery":90}}}}}}"#,
                name = self.scenario.name,
                secs = ts / 1000,
            ));
        }
        body.push(']');
        body
    }
}

#[derive(Default)]
struct Tally {
    /// Origins of the requests answered 200 (their events must all be stored).
    acknowledged_origins: Vec<u64>,
    events_acknowledged: u64,
    stored: u64,
    duplicates: u64,
    refused_bad_signatures: u64,
    /// Answers that were neither expected success nor an expected refusal.
    unexpected: Vec<String>,
}

impl Workload for Ingest {
    type Tally = Tally;

    fn request(&self, seq: u64) -> Request {
        let kind = self.kind(seq);
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let nonce = format!("{}-{seq}", self.scenario.name);
        let secret = if kind == Kind::BadSignature {
            "not-the-secret"
        } else {
            SECRET
        };
        let signature = sign(secret, &timestamp, &nonce);
        let path = if self.scenario.ceiling {
            "/bench/discard".to_owned()
        } else {
            format!("/webhooks/milesight/{}", self.scenario.name)
        };
        Request {
            path,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("x-msc-request-timestamp", timestamp),
                ("x-msc-request-nonce", nonce),
                ("x-msc-request-signature", signature),
            ],
            body: Bytes::from(self.body(self.origin(seq))),
        }
    }

    fn answer(&self, seq: u64, status: u16, body: &[u8], tally: &mut Tally) {
        let expected_refusal = self.kind(seq) == Kind::BadSignature && !self.scenario.ceiling;
        match (status, expected_refusal) {
            (200, false) if self.scenario.ceiling => {
                tally.events_acknowledged += self.scenario.events_per_request as u64
            }
            (200, false) => {
                let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let stored = answer["stored"].as_u64().unwrap_or_default();
                let duplicates = answer["duplicates"].as_u64().unwrap_or_default();
                tally.stored += stored;
                tally.duplicates += duplicates;
                tally.events_acknowledged += stored + duplicates;
                tally.acknowledged_origins.push(self.origin(seq));
                if stored + duplicates != self.scenario.events_per_request as u64 {
                    tally
                        .unexpected
                        .push(format!("200 for {} events: {answer}", stored + duplicates));
                }
            }
            (401, true) => tally.refused_bad_signatures += 1,
            _ => {
                if tally.unexpected.len() < 5 {
                    tally
                        .unexpected
                        .push(format!("{status}: {}", String::from_utf8_lossy(body)));
                }
            }
        }
    }
}

fn sign(secret: &str, timestamp: &str, nonce: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    mac.update(timestamp.as_bytes());
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The release `telltale` binary beside this one (`scripts/bench` builds both).
fn server_binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("TELLTALE_BIN") {
        // Absolute: the server runs in a directory of its own.
        return std::fs::canonicalize(&path).map_err(|e| format!("TELLTALE_BIN={path}: {e}"));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("telltale");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p telltale` (scripts/bench does)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// `VmRSS` or `VmHWM` of a process, in MiB.
fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Starts peak-RSS accounting afresh (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub async fn run(args: IngestArgs) -> Result<(), String> {
    let bin = server_binary()?;
    let mut failures = Vec::new();
    println!(
        "| backend | scenario | events/request | requests/s | events/s | p50 ms | p99 ms | max ms | of ceiling | requests/commit | CPU µs/request: HTTP + rest + PostgreSQL + load = total | peak RSS MiB | check |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in &args.backends {
        let db = TestDb::new(*backend).await;
        // Settings under test (say TELLTALE_DB_INGEST_WRITERS) pass through to the server.
        let passed: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TELLTALE_DB_"))
            .collect();
        let mut env: Vec<(&str, &str)> = passed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("MILESIGHT_WEBHOOK_SECRET", SECRET));
        env.push(("TELLTALE_BENCH_DISCARD_ROUTE", "true"));
        let server = TestServer::start_binary(&bin, db.url(), "", &env).await;
        server.wait_ready(Duration::from_secs(60)).await;
        let pid = server.pid();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = memory_mib(pid, "VmRSS").unwrap_or(f64::NAN);
        eprintln!("{}: idle RSS {idle:.1} MiB after start-up", backend.name());
        let store = db.open_migrated().await;
        // Warm up connections, allocator and the database's caches.
        let warm = Scenario {
            name: "warm-up",
            events_per_request: 1,
            ceiling: false,
            mixed: false,
        };
        drive(&server, warm, args.connections, Duration::from_secs(1)).await?;

        let mut ceiling_rate = f64::NAN;
        for scenario in SCENARIOS {
            if args
                .only
                .as_ref()
                .is_some_and(|only| !only.iter().any(|o| o == scenario.name))
            {
                continue;
            }
            let commits_before = commit_counts(&server).await;
            let peak_tracked = reset_peak(pid);
            let cpu_before = cpu::sample(pid);
            let report = drive(
                &server,
                scenario,
                args.connections,
                Duration::from_secs(args.seconds),
            )
            .await?;
            let cpu = cpu::PerRequest::between(cpu_before, cpu::sample(pid), report.answered);
            let peak = if peak_tracked {
                memory_mib(pid, "VmHWM")
            } else {
                None
            };
            let (requests_committed, commits) = commit_counts(&server).await;
            let per_commit = (requests_committed - commits_before.0) / (commits - commits_before.1).max(1.0);
            let check = if scenario.ceiling {
                ceiling_rate = report.requests_per_second();
                check_ceiling(&report)
            } else {
                verify(&store, scenario, &report).await
            };
            let events: u64 = report.tallies.iter().map(|t| t.events_acknowledged).sum();
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} |",
                backend.name(),
                scenario.name,
                scenario.events_per_request,
                report.requests_per_second(),
                events as f64 / report.elapsed.as_secs_f64(),
                report.latency_ms(0.5),
                report.latency_ms(0.99),
                report.max_latency_ms(),
                if scenario.ceiling {
                    "1.00".to_owned()
                } else {
                    format!("{:.2}", report.requests_per_second() / ceiling_rate)
                },
                if scenario.ceiling {
                    String::new()
                } else {
                    format!("{per_commit:.1}")
                },
                cpu.show(*backend == Backend::Postgres),
                peak.map_or("n/a".to_owned(), |p| format!("{p:.1}")),
                match &check {
                    Ok(summary) => summary.clone(),
                    Err(problem) => format!("FAILED: {problem}"),
                }
            );
            if let Err(problem) = check {
                failures.push(format!("{} {}: {problem}", backend.name(), scenario.name));
            }
        }
        println!(
            "| {} | idle | | | | | | | | | | {idle:.1} (RSS after start) | |",
            backend.name()
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn drive(
    server: &TestServer,
    scenario: Scenario,
    connections: usize,
    duration: Duration,
) -> Result<LoadReport<Tally>, String> {
    let workload = Arc::new(Ingest {
        scenario,
        base_ms: chrono::Utc::now().timestamp_millis(),
    });
    load::run(server.addr, connections, duration, workload).await
}

/// Requests stored and commits made so far, from the group-commit histogram.
async fn commit_counts(server: &TestServer) -> (f64, f64) {
    let metrics = server.metrics().await;
    let sample = |name: &str| telltale_e2e::metric_sample(&metrics, name, &[]).unwrap_or_default();
    (
        sample("telltale_webhook_commit_requests_sum"),
        sample("telltale_webhook_commit_requests_count"),
    )
}

fn check_ceiling(report: &LoadReport<Tally>) -> Result<String, String> {
    let unexpected: Vec<&String> = report.tallies.iter().flat_map(|t| &t.unexpected).collect();
    if report.unanswered > 0 || !unexpected.is_empty() {
        return Err(format!(
            "{} unanswered, unexpected answers: {unexpected:?}",
            report.unanswered
        ));
    }
    Ok(format!("{} requests, all 200", report.answered))
}

/// Stored events must be exactly the acknowledged ones: every event of every request answered
/// 200 is in the database, nothing else is, and no event is there twice.
async fn verify(
    db: &telltale::storage::Db,
    scenario: Scenario,
    report: &LoadReport<Tally>,
) -> Result<String, String> {
    let unexpected: Vec<&String> = report.tallies.iter().flat_map(|t| &t.unexpected).collect();
    if !unexpected.is_empty() {
        return Err(format!("unexpected answers: {unexpected:?}"));
    }
    if report.unanswered > 0 {
        return Err(format!("{} requests got no answer", report.unanswered));
    }
    let origins: HashSet<u64> = report
        .tallies
        .iter()
        .flat_map(|t| t.acknowledged_origins.iter().copied())
        .collect();
    let expected = origins.len() as i64 * scenario.events_per_request as i64;
    let answered_stored: u64 = report.tallies.iter().map(|t| t.stored).sum();
    let duplicates: u64 = report.tallies.iter().map(|t| t.duplicates).sum();
    let refused: u64 = report.tallies.iter().map(|t| t.refused_bad_signatures).sum();
    let source = deliveries::source_by_name(db, scenario.name)
        .await
        .map_err(|e| format!("source {}: {e}", scenario.name))?;
    let counted = async {
        db_run!(db, |conn| {
            Ok::<_, telltale::storage::StorageError>(
                webhook_events::table
                    .filter(webhook_events::source_id.eq(source.id))
                    .select((
                        diesel::dsl::count_star(),
                        diesel::dsl::count(webhook_events::event_id).aggregate_distinct(),
                    ))
                    .get_result::<(i64, i64)>(conn)
                    .await?,
            )
        })
    };
    let (rows, distinct) = counted.await.map_err(|e| format!("counting events: {e}"))?;
    if rows != expected || distinct != rows || answered_stored as i64 != rows {
        return Err(format!(
            "{rows} rows ({distinct} distinct) stored; {expected} acknowledged events expected; answers said {answered_stored} stored"
        ));
    }
    let mut summary = format!("{rows} stored = acknowledged");
    if scenario.mixed {
        summary.push_str(&format!(
            ", {duplicates} duplicates, {refused} bad signatures refused"
        ));
    }
    Ok(summary)
}
