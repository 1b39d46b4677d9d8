//! `POST /api/scheduler`: stop, start and run jobs; the switch survives a restart.

use std::time::Duration;

use serde_json::{Value, json};
use telltale_e2e::{Backend, TestDb, TestServer, both_backends, post_with_headers};

both_backends!(
    jobs_are_stopped_started_and_run_on_request,
    an_exclusive_job_runs_on_one_replica_per_tick,
);

const JOB: &str = "milesight-device-check";

async fn command(server: &TestServer, body: Value) -> (u16, Value) {
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    post_with_headers(&server.url("/api/scheduler"), &headers, body.to_string()).await
}

fn job<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == name)
        .unwrap()
}

async fn start(db: &TestDb) -> TestServer {
    let server = TestServer::start(
        db.url(),
        &[
            ("MILESIGHT_DEVICE_CHECK_SCHEDULE", "* * * * * *"),
            // Standard crontab syntax, as the original Milesight job's schedule was written.
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "*/30 * * * *"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    server
}

async fn jobs_are_stopped_started_and_run_on_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let (code, status) = command(&server, json!({"action": "status"})).await;
    assert_eq!(code, 200);
    for name in [JOB, "milesight-retention", "token-refresh-sweep"] {
        assert_eq!(job(&status, name)["state"], "running", "{status}");
    }
    assert_eq!(job(&status, JOB)["schedule"], "* * * * * *");
    assert_eq!(job(&status, JOB)["timezone"], "UTC");
    let sweep = job(&status, "token-refresh-sweep");
    assert_eq!(sweep["schedule"], "0 */30 * * * *", "{sweep}");
    let next = sweep["next_run_at"].as_str().unwrap_or_else(|| panic!("{sweep}"));
    let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
    assert!(
        next.format("%M:%S").to_string() == "00:00" || next.format("%M:%S").to_string() == "30:00",
        "runs on the half hour: {next}"
    );

    let (code, stopped) = command(&server, json!({"action": "stop", "job": JOB})).await;
    assert_eq!(
        (code, job(&stopped, JOB)["state"].as_str()),
        (200, Some("paused")),
        "{stopped}"
    );
    assert!(job(&stopped, JOB)["next_run_at"].is_null());
    // A tick may have been under way at the switch; after that, nothing runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, before) = command(&server, json!({"action": "status", "job": JOB})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, after) = command(&server, json!({"action": "status", "job": JOB})).await;
    assert_eq!(
        job(&before, JOB)["last_run_at"],
        job(&after, JOB)["last_run_at"],
        "a stopped job does not run"
    );

    // The switch is stored: a restarted service keeps the job stopped.
    drop(server);
    let server = start(&db).await;
    let (_, status) = command(&server, json!({"action": "status", "job": JOB})).await;
    assert_eq!(job(&status, JOB)["state"], "paused");

    let (code, ran) = command(&server, json!({"action": "run", "job": JOB})).await;
    assert_eq!(code, 200);
    assert_eq!(ran["run"]["ok"], true, "{ran}");
    assert!(
        ran["run"]["summary"].as_str().unwrap().contains("marked offline"),
        "{ran}"
    );
    assert!(job(&ran, JOB)["last_result"].as_str().unwrap().starts_with("ok:"));

    let (_, started) = command(&server, json!({"action": "start", "job": JOB})).await;
    assert_eq!(job(&started, JOB)["state"], "running");
    assert!(job(&started, JOB)["next_run_at"].is_string());

    for (body, code, error) in [
        (json!({"action": "stop", "job": "nope"}), 404, "not_found"),
        (json!({"action": "explode", "job": JOB}), 400, "invalid_command"),
        (json!({"action": "stop"}), 400, "invalid_command"),
        (
            json!({"action": "stop", "job": JOB, "extra": 1}),
            400,
            "invalid_json",
        ),
    ] {
        let (got, response) = command(&server, body.clone()).await;
        assert_eq!(
            (got, response["error"]["code"].as_str()),
            (code, Some(error)),
            "{body}: {response}"
        );
    }
}

/// Two replicas (two service states on one database) whose timers fire together: an
/// exclusive job runs on exactly one of them per tick, the next tick is open to either, a
/// manual run is never held back, and a sweep-style (non-exclusive) job runs on both.
async fn an_exclusive_job_runs_on_one_replica_per_tick(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use telltale::scheduler::{JobSpec, parse_timezone};
    use telltale::storage::{jobs, now};

    let db = TestDb::new(backend).await;
    let (first, second) = (db.app_state("").await, db.app_state("").await);
    assert_ne!(first.instance, second.instance);
    let runs = Arc::new(AtomicUsize::new(0));
    let spec = |exclusive: bool| {
        let runs = runs.clone();
        JobSpec {
            name: "test-job",
            schedule: "* * * * * *".into(),
            timezone: parse_timezone("UTC").unwrap(),
            exclusive,
            run: Arc::new(move || {
                let runs = runs.clone();
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Long enough that the two runs would overlap if both started.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok("ran".into())
                })
            }),
        }
    };
    jobs::register(&first.db, "test-job", "* * * * * *", "UTC", None)
        .await
        .unwrap();

    // Both timers fire just after a whole second, as cron ticks do.
    let until_next_second = |extra: u64| {
        let into_second = chrono::Utc::now().timestamp_subsec_millis();
        Duration::from_millis(u64::from(1000 - into_second.min(999)) + extra)
    };
    tokio::time::sleep(until_next_second(20)).await;
    let exclusive = spec(true);
    let (a, b) = tokio::join!(
        first.job_runner.run_once(&exclusive),
        second.job_runner.run_once(&exclusive)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one replica ran this tick");
    assert_eq!(
        u8::from(a.is_some()) + u8::from(b.is_some()),
        1,
        "the other skipped it"
    );
    let state = jobs::list(&first.db).await.unwrap();
    assert_eq!(
        state[0].last_result.as_deref(),
        Some("ok: ran"),
        "the run is recorded once"
    );

    // A replica whose timer fires a moment late does not run the same tick again…
    let late = if a.is_some() { &second } else { &first };
    assert!(late.job_runner.run_once(&exclusive).await.is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // …but a manual run is not held back by the lease…
    late.job_runner.run_now(&exclusive).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // …and the next tick goes to whichever replica comes first.
    tokio::time::sleep(until_next_second(50)).await;
    assert!(
        late.job_runner.run_once(&exclusive).await.is_some(),
        "the next tick is free at {:?}",
        now()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Sweeps that claim their own units run everywhere.
    let sweep = spec(false);
    let (a, b) = tokio::join!(
        first.job_runner.run_once(&sweep),
        second.job_runner.run_once(&sweep)
    );
    assert!(a.is_some() && b.is_some());
    assert_eq!(runs.load(Ordering::SeqCst), 5);
}
