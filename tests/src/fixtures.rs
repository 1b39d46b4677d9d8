//! Stored state the suites share: connections, refresh outcomes, silences, devices, sweeps.

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
        trigger: telltale::storage::RefreshTrigger::Scheduled,
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

/// The account "acme" the suites' connections belong to, created when missing.
pub async fn acme_account(state: &telltale::app::AppState) -> telltale::storage::connections::Account {
    use telltale::storage::connections;
    match connections::account_by_name(&state.db, "acme").await {
        Ok(a) => a,
        Err(_) => connections::create_account(&state.db, "acme", None)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
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
    let account = acme_account(state).await;
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
/// Stores one request's events as webhook intake does, with the default offline policy.
pub async fn store_events(
    db: &telltale::storage::Db,
    source_id: i64,
    received_at: telltale::storage::UtcTime,
    events: &[telltale::storage::ingest::IncomingEvent],
) -> telltale::storage::StorageResult<telltale::storage::ingest::InsertOutcome> {
    use telltale::storage::ingest::{IngestRequest, ingest};
    let policy = telltale::milesight::offline::OfflinePolicy::default();
    let request = IngestRequest::new(source_id, received_at, events.to_vec());
    Ok(ingest(db, policy, &[request]).await?.pop().unwrap_or_default())
}

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
    // The `[milesight]` defaults' policy, which every test server runs with.
    let policy = telltale::milesight::offline::OfflinePolicy::default();
    devices::record_activity(db, policy, device.id, &activity)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
