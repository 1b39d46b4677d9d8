//! `telltale-bench fleet --devices N [--backend sqlite|postgres] [--offline-percent P]`: what a
//! fleet of N devices costs the jobs and reads that run whatever the traffic.
//!
//! The fleet is seeded through `deliveries::ingest`, the statements webhook intake commits (one
//! signed-webhook-free fast path that writes exactly the rows intake writes): one `DEVICE_DATA`
//! event per device, 1,000 per call, 10,000 devices per webhook source, last seen spread over
//! the past 15 minutes (so the offline check finds none newly silent), P % of them offline.
//! Then, in process on the release build, it times
//! alert evaluation (the first run opens the alerts, the second is the steady state), the
//! offline check, a `/metrics` render (and its size), device counts, the first and a deep page
//! of the devices list and a prefix search, then p50/p99 of each page and API over HTTP, and reports the database's
//! size and the process's RSS after each.

use std::time::Instant;

use telltale::milesight::offline::OfflinePolicy;
use telltale::storage::deliveries::{self, SourceTiming};
use telltale::storage::devices::{self, DeviceActivity, DeviceFilter, DeviceProfile};
use telltale::storage::ingest::{IncomingDevice, IncomingEvent, SourceEffect};
use telltale::storage::{DeviceStatus, UtcTime, now};
use telltale_e2e::{Backend, TestDb};

pub struct Args {
    backend: Backend,
    devices: usize,
    offline_percent: usize,
}

pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        backend: Backend::Sqlite,
        devices: 10_000,
        offline_percent: 1,
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => args.backend = value()?.parse()?,
            "--devices" => args.devices = value()?.parse().map_err(|e| format!("--devices: {e}"))?,
            "--offline-percent" => {
                args.offline_percent = value()?.parse().map_err(|e| format!("--offline-percent: {e}"))?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

/// Resident and peak resident memory of this process, in MiB (Linux `/proc/self/status`).
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let read = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (read("VmRSS:"), read("VmHWM:"))
}

pub async fn run(args: Args) -> Result<(), String> {
    let backend = args.backend.name();
    let db = TestDb::new(args.backend).await;
    let state = db.app_state("").await;
    let at = now();

    let seeding = Instant::now();
    let mut source = 0;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..args.devices {
        if i % 10_000 == 0 {
            source = deliveries::ensure_source(
                &state.db,
                &format!("site-{:03}", i / 10_000),
                SourceTiming::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        let seen = UtcTime::new(at.0 - chrono::Duration::seconds((i % 900) as i64));
        let offline = i % 100 < args.offline_percent;
        batch.push(IncomingEvent {
            event_id: format!("fleet-{i}"),
            event_type: "DEVICE_DATA".into(),
            event_time: Some(seen),
            payload: format!(
                r#"{{"data":{{"ts":{},"payload":{{"temperature":21.5}}}}}}"#,
                seen.timestamp()
            ),
            device: Some(IncomingDevice {
                sn: format!("6136D{i:07}"),
                profile: DeviceProfile {
                    source_id: Some(source),
                    model: Some(if i % 2 == 0 { "EM300-TH" } else { "AM307" }.into()),
                    name: Some(format!("Sensor {i}")),
                    ..Default::default()
                },
                activity: Some(DeviceActivity {
                    status: if offline {
                        DeviceStatus::Offline
                    } else {
                        DeviceStatus::Online
                    },
                    last_seen_at: seen,
                    last_event_type: Some("PROPERTY".into()),
                    last_payload: Some(r#"{"temperature":21.5}"#.into()),
                    battery: Some(90),
                    expected_interval_secs: None,
                }),
            }),
            effect: SourceEffect::None,
        });
        if batch.len() == 1000 || i + 1 == args.devices || (i + 1) % 10_000 == 0 {
            telltale_e2e::store_events(&state.db, source, at, &batch)
                .await
                .map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    eprintln!("seeded {} devices in {:.1?}", args.devices, seeding.elapsed());
    if args.backend == Backend::Postgres {
        // What autovacuum does soon after a bulk load: without statistics the planner guesses.
        run_sql(&state.db, "ANALYZE").await?;
    }
    let (bytes, tables) = database_bytes(&state.db).await?;
    let per_row: Vec<String> = tables
        .iter()
        .map(|(table, bytes)| format!("{table} {:.0} bytes a row", *bytes as f64 / args.devices as f64))
        .collect();
    println!(
        "fleet | {backend} | {} devices | database size | {:.0} MiB | {} (one event per device, with indexes)",
        args.devices,
        bytes as f64 / 1_048_576.0,
        per_row.join(", ")
    );

    let report = |step: &str, took: std::time::Duration, detail: String| {
        let (rss, peak) = rss_mib();
        println!(
            "fleet | {backend} | {} devices | {step} | {:.1} ms | {detail} | RSS {rss:.0} MiB, peak {peak:.0} MiB",
            args.devices,
            took.as_secs_f64() * 1000.0
        );
    };

    for run in ["alert evaluation (first: opens)", "alert evaluation (steady)"] {
        let started = Instant::now();
        let e = telltale::alerts::evaluate::evaluate(&state.db, &state.config, &state.channels, now())
            .await
            .map_err(|e| e.to_string())?;
        report(
            run,
            started.elapsed(),
            format!("{} firing, {} opened", e.firing, e.opened),
        );
    }

    // The first check after start-up finds no remembered offline policy and writes every
    // device's deadline once; the steady check reads only the devices past theirs.
    for run in [
        "offline check (first: applies the policy)",
        "offline check (steady)",
    ] {
        let started = Instant::now();
        let summary = telltale::milesight::housekeeping::check_devices(&state.db, &state.config.milesight)
            .await
            .map_err(|e| e.to_string())?;
        report(run, started.elapsed(), summary);
    }

    let started = Instant::now();
    let text = state.metrics.render(&state.db).await;
    report(
        "/metrics render",
        started.elapsed(),
        format!("{} bytes", text.len()),
    );

    let started = Instant::now();
    let summary = devices::fleet_summary(&state.db, now())
        .await
        .map_err(|e| e.to_string())?;
    let counted: i64 = summary.groups.iter().map(|g| g.devices).sum();
    report(
        "fleet summary (counts, last-seen windows, oldest)",
        started.elapsed(),
        format!("{counted} devices"),
    );

    let started = Instant::now();
    let (first, total) = devices::search(&state.db, &DeviceFilter::default(), 50, 0)
        .await
        .map_err(|e| e.to_string())?;
    report(
        "devices page 1 (with total)",
        started.elapsed(),
        format!("{} of {total}", first.len()),
    );

    let deep = DeviceFilter {
        after_sn: Some(format!("6136D{:07}", args.devices * 9 / 10)),
        ..Default::default()
    };
    let started = Instant::now();
    let (page, _) = devices::search(&state.db, &deep, 50, 0)
        .await
        .map_err(|e| e.to_string())?;
    report(
        "devices page at 90 % (after=)",
        started.elapsed(),
        format!("{} items", page.len()),
    );

    let search = DeviceFilter {
        search: Some(format!("sensor {}", args.devices / 2)),
        ..Default::default()
    };
    let started = Instant::now();
    let (found, matched) = devices::search(&state.db, &search, 50, 0)
        .await
        .map_err(|e| e.to_string())?;
    report(
        "prefix search (name)",
        started.elapsed(),
        format!("{} shown of {matched}", found.len()),
    );

    http_latencies(&state, &args, backend).await?;

    // Last, as it changes the fleet: the check at the moment 1 % of the devices (those last
    // seen 891-899 s before `at`, with the default 600 s × 2) have passed their deadline, as
    // when a gateway with that many devices goes quiet.
    let later = UtcTime::new(at.0 + chrono::Duration::seconds(309));
    let started = Instant::now();
    let went = devices::mark_silent_offline(
        &state.db,
        OfflinePolicy::default(),
        later,
        telltale::milesight::housekeeping::DEVICE_CHUNK,
    )
    .await
    .map_err(|e| e.to_string())?;
    report(
        "offline check (1 % newly silent)",
        started.elapsed(),
        format!("{} device(s) marked offline", went.len()),
    );

    if counted != args.devices as i64 {
        return Err(format!("{counted} devices counted, {} seeded", args.devices));
    }
    Ok(())
}

/// Requests each page and API a staff member opens on a fleet this size, over HTTP from the
/// service's own server in this process, and reports p50/p99 of `REQUESTS` sequential calls.
async fn http_latencies(state: &telltale::app::AppState, args: &Args, backend: &str) -> Result<(), String> {
    const REQUESTS: usize = 40;
    let admin = telltale::auth::add_user(&state.db, "bench@example.com", "bench-password-123", "admin")
        .await
        .map_err(|e| e.to_string())?;
    let (token, _) = telltale::auth::add_api_token(&state.db, admin.id, "bench")
        .await
        .map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    // The database was migrated above, not by `app::serve`: without this every route answers
    // 503 `starting`.
    state.readiness.set(telltale::app::ReadyState::Ready);
    let server = telltale::web::http_server(state.clone(), listener).map_err(|e| e.to_string())?;
    let handle = server.handle();
    tokio::spawn(server);
    let client = reqwest::Client::new();
    let device = devices::search(
        &state.db,
        &DeviceFilter {
            after_sn: Some(format!("6136D{:07}", args.devices / 2)),
            ..Default::default()
        },
        1,
        0,
    )
    .await
    .map_err(|e| e.to_string())?
    .0
    .pop()
    .ok_or("no device to open")?;
    let prefix = format!("6136D{:05}", args.devices / 200);
    let paths = [
        "/".to_owned(),
        "/devices".to_owned(),
        format!("/devices?search={prefix}"),
        format!("/devices/{}", device.id),
        "/alerts".to_owned(),
        "/webhooks".to_owned(),
        "/api/devices".to_owned(),
        format!("/api/devices?search={prefix}"),
        format!("/api/devices/{}", device.id),
        "/api/alerts".to_owned(),
        "/api/webhooks/sources".to_owned(),
        "/metrics".to_owned(),
    ];
    for path in paths {
        let mut took = Vec::with_capacity(REQUESTS);
        let mut bytes = 0;
        for _ in 0..REQUESTS {
            let started = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            took.push(started.elapsed());
            if !status.is_success() {
                return Err(format!("GET {path}: {status}"));
            }
            bytes = body.len();
        }
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        let (rss, peak) = rss_mib();
        println!(
            "fleet | {backend} | {} devices | GET {path} | p50 {:.1} ms, p99 {:.1} ms | {bytes} bytes | RSS {rss:.0} MiB, peak {peak:.0} MiB",
            args.devices,
            at(0.5),
            at(0.99),
        );
    }
    handle.stop(true).await;
    Ok(())
}

/// The database's size on disk (pages in use on SQLite, `pg_database_size` on PostgreSQL), and
/// that of the devices and events tables, each with its indexes.
async fn database_bytes(db: &telltale::storage::Db) -> Result<(i64, Vec<(String, i64)>), String> {
    #[derive(diesel::QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
    }
    async fn read(db: &telltale::storage::Db) -> telltale::storage::StorageResult<Vec<Size>> {
        use diesel_async::RunQueryDsl;
        let sql = match db.pools() {
            telltale::storage::Pools::Postgres(_) => {
                "SELECT 'database' AS name, pg_database_size(current_database()) AS bytes \
                 UNION ALL SELECT relname::text, pg_total_relation_size(oid) FROM pg_class \
                 WHERE relname IN ('devices', 'webhook_events') AND relkind = 'r'"
            }
            // dbstat (compiled into the bundled SQLite) sizes each table and index b-tree.
            telltale::storage::Pools::Sqlite(..) => {
                "SELECT 'database' AS name, page_count * page_size AS bytes \
                 FROM pragma_page_count(), pragma_page_size() \
                 UNION ALL SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d \
                 JOIN sqlite_master m ON m.name = d.name \
                 WHERE m.tbl_name IN ('devices', 'webhook_events') GROUP BY m.tbl_name"
            }
        };
        telltale::db_run!(db, |conn| Ok(diesel::sql_query(sql).load(conn).await?))
    }
    let sizes = read(db).await.map_err(|e| e.to_string())?;
    let total = sizes.iter().find(|s| s.name == "database").map_or(0, |s| s.bytes);
    let tables = sizes
        .into_iter()
        .filter(|s| s.name != "database")
        .map(|s| (s.name, s.bytes))
        .collect();
    Ok((total, tables))
}

async fn run_sql(db: &telltale::storage::Db, sql: &str) -> Result<(), String> {
    async fn run(db: &telltale::storage::Db, sql: &str) -> telltale::storage::StorageResult<()> {
        use diesel_async::RunQueryDsl;
        telltale::db_run!(db, |conn| {
            diesel::sql_query(sql).execute(conn).await?;
            Ok(())
        })
    }
    run(db, sql).await.map_err(|e| e.to_string())
}
