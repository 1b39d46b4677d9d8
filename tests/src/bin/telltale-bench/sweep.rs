//! `telltale-bench sweep [--backend sqlite|postgres] [--connections N] [--due D]`: what the
//! token sweep costs with N connections of which D are due (a ThingsBoard install has one
//! connection per customer). The first sweep judges every connection once and writes when
//! each is due; after that a sweep selects `next_refresh_at <= now` through its index. Reports
//! the due-selection and a whole sweep with nothing due (median and worst of 20), the first
//! sweep, the D refreshes, and this process's memory across the sweeps.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::now;
use telltale::tokens::SweepRequest;
use telltale_e2e::{Backend, TestDb};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fleet::rss_mib;

pub struct SweepArgs {
    backend: Backend,
    connections: usize,
    due: usize,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<SweepArgs, String> {
    let mut parsed = SweepArgs {
        backend: Backend::Sqlite,
        connections: 100_000,
        due: 100,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => parsed.backend = value()?.parse()?,
            "--connections" => {
                parsed.connections = value()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--due" => parsed.due = value()?.parse().map_err(|e| format!("--due: {e}"))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(parsed)
}

const ROUNDS: usize = 20;

fn request() -> SweepRequest {
    SweepRequest {
        trigger: telltale::storage::RefreshTrigger::Scheduled,
        actor: "bench".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    }
}

/// Median and worst of `samples`, in milliseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(samples[samples.len() / 2]), ms(samples[samples.len() - 1]))
}

pub async fn run(args: SweepArgs) -> Result<(), String> {
    let db = TestDb::new(args.backend).await;
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "bench-access", "token_type": "Bearer", "expires_in": 3600}),
        ))
        .mount(&provider)
        .await;
    let state = db
        .app_state("[database]\nmax_connections = 16\n[tokens]\nconcurrency = 8\nmax_attempts = 1")
        .await;
    let account = connections::create_account(&state.db, "bench", None)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("{}/token", provider.uri());
    let setup = Instant::now();
    let total = args.connections.max(args.due);
    let created: Vec<Result<(), String>> = futures_util::stream::iter(0..total)
        .map(|i| {
            // The first `due` expire within the lead time; the rest in two hours.
            let expires_in = if i < args.due { 1 } else { 120 };
            let new = NewConnection {
                account_id: account.id,
                provider: "oauth2_refresh".into(),
                name: format!("customer-{i:07}"),
                base_url: Some(url.clone()),
                credentials: Some(json!({"client_id": "bench", "client_secret": "bench"}).to_string()),
                access_token: Some("old".into()),
                refresh_token: Some(format!("rt-{i}")),
                expires_at: Some((now().0 + chrono::Duration::minutes(expires_in)).into()),
                ..Default::default()
            };
            let state = &state;
            async move {
                connections::create_connection(&state.db, &state.crypto, &new)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>, String>>()?;
    eprintln!("set up {total} connections in {:.1?}", setup.elapsed());

    let (rss_before, _) = rss_mib();
    let started = Instant::now();
    let first = state
        .token_engine
        .sweep(&request(), now())
        .await
        .map_err(|e| e.to_string())?;
    let first_took = started.elapsed();
    if first.refreshed != args.due {
        return Err(format!(
            "the first sweep refreshed {} of {} due",
            first.refreshed, args.due
        ));
    }
    // The refreshed ones were cleared for judging again; one more sweep schedules them.
    state
        .token_engine
        .sweep(&request(), now())
        .await
        .map_err(|e| e.to_string())?;
    let (fresh_p50, _) = selection_times(&state, 5).await?;
    if args.backend == Backend::Postgres {
        // The schedule writes left a dead row version per connection; PostgreSQL's autovacuum
        // clears them soon after in production, the bench at once.
        vacuum(&state.db).await?;
    }
    let (rss_steady, _) = rss_mib();

    let (select_p50, select_max) = selection_times(&state, ROUNDS).await?;
    let mut sweeps = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let report = state
            .token_engine
            .sweep(&request(), now())
            .await
            .map_err(|e| e.to_string())?;
        sweeps.push(t.elapsed());
        if report.checked != 0 {
            return Err(format!("{} due with none due", report.checked));
        }
    }
    let (rss_after, peak) = rss_mib();
    // For comparison: reading every connection, as each sweep did before `next_refresh_at`.
    let t = Instant::now();
    let all = connections::list_connections(&state.db)
        .await
        .map_err(|e| e.to_string())?;
    let read_all = t.elapsed();
    if all.len() != total {
        return Err(format!("{} connections stored of {total}", all.len()));
    }
    let (sweep_p50, sweep_max) = summary(sweeps);
    println!(
        "sweep | {} | {total} connections, {} due | due-selection p50 {select_p50:.2} ms, max {select_max:.2} ms (right after the first sweep {fresh_p50:.2} ms) | sweep with none due p50 {sweep_p50:.2} ms, max {sweep_max:.2} ms | first sweep (judges all, refreshes {}) {:.2} s | reading every connection {:.0} ms | RSS before the first sweep {rss_before:.1} MiB, after it {rss_steady:.1}, after {ROUNDS} more {rss_after:.1} (peak {peak:.1})",
        args.backend.name(),
        args.due,
        args.due,
        first_took.as_secs_f64(),
        read_all.as_secs_f64() * 1000.0,
    );
    Ok(())
}

/// Median and worst time of `rounds` due-selections, each of which must find nothing due.
async fn selection_times(state: &telltale::app::AppState, rounds: usize) -> Result<(f64, f64), String> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let due = connections::refresh_candidate_ids(&state.db, None, None, now())
            .await
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        if !due.is_empty() {
            return Err(format!("{} connections selected with none due", due.len()));
        }
    }
    Ok(summary(times))
}

async fn vacuum(db: &telltale::storage::Db) -> Result<(), String> {
    use diesel_async::RunQueryDsl;
    let run = async {
        telltale::db_run!(db, |conn| {
            diesel::sql_query("VACUUM ANALYZE connections")
                .execute(conn)
                .await
                .map_err(telltale::storage::StorageError::from)
        })
    };
    run.await.map(|_| ()).map_err(|e| e.to_string())
}
