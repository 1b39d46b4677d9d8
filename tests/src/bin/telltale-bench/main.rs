//! Benchmarks (not tests), each against a fake server on 127.0.0.1 answering after MS
//! milliseconds, reported against the ceiling the concurrency bound allows (C ÷ latency):
//!
//! - `telltale-bench refresh [--backend sqlite|postgres] [--connections N] [--latency-ms MS]
//!   [--concurrency C]`: refreshes N due connections through the real refresh engine;
//! - `telltale-bench poll [same options]`: polls N (connection, endpoint) pairs (N/2 Spotify
//!   connections, two endpoints each) through the real poll engine, payload storage on.
//!
//! - `telltale-bench ingest [--backend sqlite|postgres|both] [--seconds S] [--connections C]`:
//!   signed Milesight webhooks against the real release server beside its bare-HTTP ceiling
//!   (see `ingest.rs`).
//! - `telltale-bench fleet [--backend sqlite|postgres] [--devices N] [--offline-percent P]`:
//!   what the jobs and reads that run whatever the traffic cost at N devices (see `fleet.rs`).
//!
//! - `telltale-bench sweep [--backend sqlite|postgres] [--connections N] [--due D]`: the token
//!   sweep's due-selection and memory with N connections, D due (see `sweep.rs`).
//!
//! Run with `scripts/bench` (builds the release binaries first).

mod cpu;
mod fleet;
mod ingest;
mod sweep;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::{now, refresh_log};
use telltale::tokens::SweepRequest;
use telltale_e2e::{Backend, TestDb};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Args {
    backend: Backend,
    connections: usize,
    latency: Duration,
    concurrency: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        backend: Backend::Sqlite,
        connections: 10_000,
        latency: Duration::from_millis(50),
        concurrency: 8,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => parsed.backend = value()?.parse()?,
            "--connections" => {
                parsed.connections = value()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--latency-ms" => {
                parsed.latency =
                    Duration::from_millis(value()?.parse().map_err(|e| format!("--latency-ms: {e}"))?)
            }
            "--concurrency" => {
                parsed.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let result = match argv.next().as_deref() {
        Some("refresh") => match parse(argv) {
            Ok(args) => refresh(args).await,
            Err(e) => Err(e),
        },
        Some("poll") => match parse(argv) {
            Ok(args) => poll(args).await,
            Err(e) => Err(e),
        },
        Some("fleet") => match fleet::parse(argv) {
            Ok(args) => fleet::run(args).await,
            Err(e) => Err(e),
        },
        Some("sweep") => match sweep::parse(argv) {
            Ok(args) => sweep::run(args).await,
            Err(e) => Err(e),
        },
        Some("ingest") => match ingest::parse(argv) {
            Ok(args) => ingest::run(args).await,
            Err(e) => Err(e),
        },
        _ => Err("usage: telltale-bench refresh|poll [--backend sqlite|postgres] [--connections N] [--latency-ms MS] [--concurrency C]\n       telltale-bench ingest [--backend sqlite|postgres|both] [--seconds S] [--connections C]\n       telltale-bench fleet [--backend sqlite|postgres] [--devices N] [--offline-percent P]\n       telltale-bench sweep [--backend sqlite|postgres] [--connections N] [--due D]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn refresh(args: Args) -> Result<(), String> {
    let db = TestDb::new(args.backend).await;
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"access_token": "bench-access", "token_type": "Bearer", "expires_in": 3600}),
                )
                .set_delay(args.latency),
        )
        .mount(&provider)
        .await;
    let state = db
        .app_state(&format!(
            "[database]\nmax_connections = {}\n[tokens]\nconcurrency = {}\nmax_attempts = 1",
            (args.concurrency + 4).min(64),
            args.concurrency
        ))
        .await;

    let setup = Instant::now();
    let account = connections::create_account(&state.db, "bench", None)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("{}/token", provider.uri());
    for i in 0..args.connections {
        let new = NewConnection {
            account_id: account.id,
            provider: "oauth2_refresh".into(),
            name: format!("c{i:06}"),
            base_url: Some(url.clone()),
            credentials: Some(json!({"client_id": "bench", "client_secret": "bench"}).to_string()),
            access_token: Some("old".into()),
            refresh_token: Some(format!("rt-{i}")),
            expires_at: Some((now().0 + chrono::Duration::minutes(1)).into()),
            ..Default::default()
        };
        connections::create_connection(&state.db, &state.crypto, &new)
            .await
            .map_err(|e| e.to_string())?;
    }
    eprintln!(
        "set up {} connections in {:.1?}",
        args.connections,
        setup.elapsed()
    );

    let request = SweepRequest {
        trigger: telltale::storage::RefreshTrigger::Scheduled,
        actor: "bench".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    };
    let started = Instant::now();
    let report = state
        .token_engine
        .sweep(&request, now())
        .await
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();

    let requests = provider.received_requests().await.map(|r| r.len()).unwrap_or(0);
    let logged = refresh_log::recent(&state.db, None, (args.connections + 10) as i64)
        .await
        .map_err(|e| e.to_string())?;
    if report.refreshed != args.connections
        || requests != args.connections
        || logged.iter().filter(|e| e.success).count() != args.connections
    {
        return Err(format!(
            "incomplete: {} refreshed, {} requests, {} logged successes, for {} connections",
            report.refreshed,
            requests,
            logged.len(),
            args.connections
        ));
    }
    report_rate("refresh", "connections", "refreshes", &args, took);
    Ok(())
}

fn report_rate(bench: &str, units: &str, done: &str, args: &Args, took: Duration) {
    let rate = args.connections as f64 / took.as_secs_f64();
    let ceiling = args.concurrency as f64 / args.latency.as_secs_f64();
    println!(
        "{bench} | {} | {} {units} | latency {} ms | concurrency {} | {:.1} s | {:.1} {done}/s | ceiling {:.1}/s | {:.0} % of ceiling",
        args.backend.name(),
        args.connections,
        args.latency.as_millis(),
        args.concurrency,
        took.as_secs_f64(),
        rate,
        ceiling,
        100.0 * rate / ceiling
    );
}

/// `--connections` counts (connection, endpoint) pairs here.
async fn poll(args: Args) -> Result<(), String> {
    let db = TestDb::new(args.backend).await;
    let api = MockServer::start().await;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |_: &wiremock::Request| {
            // A distinct small payload per request, so every poll stores one.
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ResponseTemplate::new(200)
                .set_body_json(json!({"items": [{"played_at": n, "track": {"name": "bench"}}], "next": null}))
                .set_delay(args.latency)
        })
        .mount(&api)
        .await;
    let state = db
        .app_state(&format!(
            "[database]\nmax_connections = {}\n[polling]\nconcurrency = {}\nper_platform_concurrency = {}\nrequests_per_second = 10000\nmax_attempts = 1",
            (args.concurrency + 4).min(64),
            args.concurrency,
            args.concurrency
        ))
        .await;
    let setup = Instant::now();
    let account = connections::create_account(&state.db, "bench", None)
        .await
        .map_err(|e| e.to_string())?;
    let connection_count = args.connections.div_ceil(2);
    for i in 0..connection_count {
        let new = NewConnection {
            account_id: account.id,
            provider: "oauth2_refresh".into(),
            name: format!("c{i:06}"),
            settings: json!({"preset": "spotify", "api_base_url": api.uri()}),
            access_token: Some("bench-access".into()),
            expires_at: Some((now().0 + chrono::Duration::hours(2)).into()),
            ..Default::default()
        };
        connections::create_connection(&state.db, &state.crypto, &new)
            .await
            .map_err(|e| e.to_string())?;
    }
    // The first sweep creates the pairs' state rows; time that too, as a real first sweep would.
    eprintln!("set up {connection_count} connections in {:.1?}", setup.elapsed());
    let request = telltale::polling::PollRequest {
        trigger: telltale::storage::PollTrigger::Scheduled,
        ..Default::default()
    };
    let started = Instant::now();
    let report = state
        .poll_engine
        .sweep(&request, now())
        .await
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let pairs = connection_count * 2;
    let stored = telltale::storage::polling::payloads(&state.db, None, None, (pairs + 10) as i64)
        .await
        .map_err(|e| e.to_string())?
        .len();
    let requests = served.load(std::sync::atomic::Ordering::Relaxed);
    if report.succeeded != pairs || stored != pairs || requests != pairs {
        return Err(format!(
            "incomplete: {} polls ok, {stored} payloads stored, {requests} requests, for {pairs} pairs",
            report.succeeded
        ));
    }
    let args = Args {
        connections: pairs,
        ..args
    };
    report_rate("poll", "pairs", "polls", &args, took);
    Ok(())
}
