//! Storage round-trips on SQLite and PostgreSQL: every test runs once per backend against a
//! freshly created, migrated database.

use chrono::{Duration, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use telltale::crypto::Crypto;
use telltale::db_run;
use telltale::milesight::offline::OfflinePolicy;
use telltale::storage::connections::{self, NewConnection};
use telltale::storage::deliveries::{self, NewWebhookRejection, SourceTiming};
use telltale::storage::devices::{self, DeviceActivity, DeviceProfile};
use telltale::storage::ingest::{IncomingDevice, IncomingEvent, IngestRequest, SourceEffect, ingest};
use telltale::storage::refresh_log::{self, NewRefreshLogEntry};
use telltale::storage::schema;
use telltale::storage::{DatabaseTarget, DeviceStatus, StorageError, StorageResult, UtcTime, migrate, now};
use telltale_e2e::{Backend, TestDb, both_backends};

both_backends!(
    a_group_of_requests_is_stored_as_if_one_by_one,
    migrations_run_twice_without_change,
    devices_upsert_by_serial_and_keep_activity,
    webhook_events_are_stored_exactly_once,
    secret_columns_hold_ciphertext_only,
    key_rotation_reseals_every_secret,
    refresh_log_round_trips_and_filters,
    rejection_log_keeps_only_the_newest,
    uniqueness_and_foreign_keys_are_enforced,
    quiet_devices_go_offline_and_old_events_expire,
    expired_staff_sessions_are_dropped_at_the_next_sign_in,
    offline_devices_are_counted_and_read_by_source,
    alert_evaluation_reads_only_the_connections_and_polls_that_may_alert,
    the_deadline_migration_computes_what_ingest_writes,
);

/// Devices stored before the offline deadline existed get it from the migration's SQL; that
/// SQL must give, to the microsecond and in the stored form, the exact deadline Rust computes,
/// or the first offline check after an upgrade would judge them by a wrong deadline. (Ingest
/// stores it rounded up to the next 10 s; an exact one is at most that much earlier.)
async fn the_deadline_migration_computes_what_ingest_writes(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let seen: UtcTime = Utc.with_ymd_and_hms(2026, 12, 3, 23, 55, 1).unwrap().into();
    let seen = UtcTime::new(seen.0 + Duration::microseconds(123_456));
    let learned = telltale_e2e::device_in(&db, "learned", None, DeviceStatus::Online, seen).await;
    let fresh = telltale_e2e::device_in(&db, "fresh", None, DeviceStatus::Online, seen).await;
    forget_deadlines(&db, learned.id).await.unwrap();
    let up = match backend {
        Backend::Postgres => {
            include_str!("../../migrations/postgres/2026-12-03-000010_device_offline_deadline/up.sql")
        }
        Backend::Sqlite => {
            include_str!("../../migrations/sqlite/2026-12-03-000010_device_offline_deadline/up.sql")
        }
    };
    let start = up
        .find("UPDATE devices")
        .expect("the migration fills the deadlines");
    let fill = &up[start..start + up[start..].find(';').unwrap()];
    run_sql(&db, fill).await.unwrap();
    let policy = OfflinePolicy::default();
    assert_eq!(
        devices::get(&db, learned.id).await.unwrap().offline_after,
        policy.exact_deadline(Some(seen), Some(400)),
        "a learned interval: seen + 400 s × 2, across midnight"
    );
    assert_eq!(
        devices::get(&db, fresh.id).await.unwrap().offline_after,
        policy.exact_deadline(Some(seen), None),
        "none learned: seen + 600 s × 2"
    );
    assert_eq!(
        devices::apply_offline_policy(&db, OfflinePolicy::default(), 100)
            .await
            .unwrap(),
        0,
        "the migration remembers the default policy, so a default service rewrites nothing"
    );
}

/// Alert evaluation reads offline devices per source: the counts, and a source's first ones
/// by serial number up to a limit, devices without a source included; online ones never.
async fn offline_devices_are_counted_and_read_by_source(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let site = deliveries::ensure_source(&db, "site-a", SourceTiming::default())
        .await
        .unwrap();
    for n in [4, 0, 3, 1, 2] {
        telltale_e2e::device_in(&db, &format!("A-{n}"), Some(site), DeviceStatus::Offline, now()).await;
    }
    telltale_e2e::device_in(&db, "A-online", Some(site), DeviceStatus::Online, now()).await;
    telltale_e2e::device_in(&db, "loose", None, DeviceStatus::Offline, now()).await;
    telltale_e2e::device_in(&db, "loose-online", None, DeviceStatus::Online, now()).await;

    let mut counts = devices::offline_counts(&db).await.unwrap();
    counts.sort();
    assert_eq!(counts, [(None, 1), (Some(site), 5)]);
    let sns = |found: Vec<devices::Device>| found.into_iter().map(|d| d.sn).collect::<Vec<_>>();
    assert_eq!(
        sns(devices::offline_of_source(&db, Some(site), 3).await.unwrap()),
        ["A-0", "A-1", "A-2"],
        "the first three by serial number"
    );
    assert_eq!(
        sns(devices::offline_of_source(&db, Some(site), 100).await.unwrap()),
        ["A-0", "A-1", "A-2", "A-3", "A-4"]
    );
    assert_eq!(
        sns(devices::offline_of_source(&db, None, 100).await.unwrap()),
        ["loose"]
    );
}

/// Alert evaluation reads only the connections that can alert (re-authorisation, repeated
/// refresh failures, a token inside the runway, or a failing poll to name) and the failing
/// enabled poll pairs; healthy ones, and pairs below the threshold or disabled, stay unread.
async fn alert_evaluation_reads_only_the_connections_and_polls_that_may_alert(backend: Backend) {
    use telltale::storage::{ConnectionStatus, polling};
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let crypto = Crypto::new(&key(5), &[]);
    let account = connections::create_account(&db, "acme", None).await.unwrap();
    let at = now();
    let mut ids = std::collections::HashMap::new();
    for (name, expires_in) in [
        ("healthy", 3600),
        ("revoked", 3600),
        ("failing", 3600),
        ("expiring", 60),
        ("polls-failing", 3600),
        ("polls-disabled", 3600),
        ("polls-once", 3600),
    ] {
        let new = NewConnection {
            account_id: account.id,
            provider: "spotify".into(),
            name: name.into(),
            access_token: Some("token".into()),
            refresh_token: Some("refresh".into()),
            expires_at: Some(UtcTime::new(at.0 + Duration::seconds(expires_in))),
            ..Default::default()
        };
        let id = connections::create_connection(&db, &crypto, &new)
            .await
            .unwrap()
            .id;
        polling::ensure_pairs(&db, &[(id, "recently-played")])
            .await
            .unwrap();
        ids.insert(name, id);
    }
    connections::record_refresh_failure(
        &db,
        ids["revoked"],
        Some(ConnectionStatus::NeedsReauth),
        "revoked",
        at,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        connections::record_refresh_failure(&db, ids["failing"], None, "timeout", at)
            .await
            .unwrap();
    }
    for (name, failures, enabled) in [
        ("polls-failing", 3, true),
        ("polls-disabled", 5, false),
        ("polls-once", 1, true),
    ] {
        run_sql(
            &db,
            &format!(
                "UPDATE poll_endpoint_state SET consecutive_failures = {failures}, enabled = {enabled} \
                 WHERE connection_id = {}",
                ids[name]
            ),
        )
        .await
        .unwrap();
    }

    let runway_until = UtcTime::new(at.0 + Duration::seconds(120));
    let names: Vec<String> = connections::alert_candidates(&db, 3, runway_until, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["revoked", "failing", "expiring", "polls-failing"]);
    let failing: Vec<i64> = polling::failing_states(&db, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.connection_id)
        .collect();
    assert_eq!(failing, [ids["polls-failing"]]);
}

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

async fn migrations_run_twice_without_change(backend: Backend) {
    let db = TestDb::new(backend).await;
    let target = DatabaseTarget::parse(db.url()).unwrap();
    assert_eq!(
        migrate::pending(&target).await.unwrap().len(),
        15,
        "a new database has every migration pending"
    );
    let first = migrate::run(&target).await.unwrap();
    assert_eq!(
        first,
        vec![
            "20261123000001".to_owned(),
            "20261123000002".to_owned(),
            "20261123000003".to_owned(),
            "20261123000004".to_owned(),
            "20261123000005".to_owned(),
            "20261123000006".to_owned(),
            "20261123000007".to_owned(),
            "20261123000008".to_owned(),
            "20261203000009".to_owned(),
            "20261203000010".to_owned(),
            "20261203000011".to_owned(),
            "20261204000012".to_owned(),
            "20261207000013".to_owned(),
            "20261208000014".to_owned(),
            "20261209000015".to_owned()
        ]
    );
    let second = migrate::run(&target).await.unwrap();
    assert!(second.is_empty(), "second run applied {second:?}");
    assert!(migrate::pending(&target).await.unwrap().is_empty());
}

async fn devices_upsert_by_serial_and_keep_activity(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let profile = DeviceProfile {
        dev_eui: Some("24E124136B316153".into()),
        mdp_device_id: Some("1780029145376743426".into()),
        name: Some("Cold room".into()),
        model: Some("EM300-TH".into()),
        ..Default::default()
    };
    let created = devices::upsert_by_sn(&db, "6136D19078290009", &profile)
        .await
        .unwrap();
    assert_eq!(created.status.as_str(), "unknown");
    assert_eq!(created.name.as_deref(), Some("Cold room"));

    let renamed = DeviceProfile {
        name: Some("Cold room 2".into()),
        ..Default::default()
    };
    let updated = devices::upsert_by_sn(&db, "6136D19078290009", &renamed)
        .await
        .unwrap();
    assert_eq!(updated.id, created.id, "same serial, same device");
    assert_eq!(updated.name.as_deref(), Some("Cold room 2"));
    assert_eq!(
        updated.model.as_deref(),
        Some("EM300-TH"),
        "fields not given are kept"
    );

    let seen_at: UtcTime = Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 15).unwrap().into();
    let activity = DeviceActivity {
        status: DeviceStatus::Online,
        last_seen_at: seen_at,
        last_event_type: Some("PROPERTY".into()),
        last_payload: Some(r#"{"temperature":4.5}"#.into()),
        battery: Some(87),
        expected_interval_secs: None,
    };
    devices::record_activity(&db, OfflinePolicy::default(), created.id, &activity)
        .await
        .unwrap();
    let stored = devices::get(&db, created.id).await.unwrap();
    assert_eq!(stored.status.as_str(), "online");
    assert_eq!(
        stored.last_seen_at,
        Some(seen_at),
        "timestamps round-trip exactly"
    );
    assert_eq!(stored.battery, Some(87));
    assert_eq!(stored.last_payload.as_deref(), Some(r#"{"temperature":4.5}"#));

    devices::upsert_by_sn(&db, "0001", &DeviceProfile::default())
        .await
        .unwrap();
    let listed: Vec<String> = devices::list(&db, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.sn)
        .collect();
    assert_eq!(listed, vec!["0001", "6136D19078290009"]);
    assert!(matches!(
        devices::get(&db, 999_999).await,
        Err(StorageError::NotFound)
    ));
}

fn event(event_id: &str, at: UtcTime, device: Option<IncomingDevice>) -> IncomingEvent {
    IncomingEvent {
        event_id: event_id.into(),
        event_type: "DEVICE_DATA".into(),
        event_time: Some(at),
        payload: format!(r#"{{"eventId":"{event_id}"}}"#),
        device,
        effect: SourceEffect::None,
    }
}

fn reading(sn: &str, at: UtcTime, status: DeviceStatus) -> Option<IncomingDevice> {
    Some(IncomingDevice {
        sn: sn.into(),
        profile: DeviceProfile {
            model: Some("EM300-TH".into()),
            ..Default::default()
        },
        activity: Some(DeviceActivity {
            status,
            last_seen_at: at,
            last_event_type: Some("PROPERTY".into()),
            last_payload: Some(format!(r#"{{"at":"{at}"}}"#)),
            battery: None,
            expected_interval_secs: None,
        }),
    })
}

async fn webhook_events_are_stored_exactly_once(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let crypto = Crypto::new(&key(1), &[]);
    let source = deliveries::upsert_source(
        &db,
        &crypto,
        "site-a",
        Some("uuid-1"),
        Some("whsec"),
        Default::default(),
    )
    .await
    .unwrap();
    assert!(source.last_event_at.is_none());

    let t0 = now();
    let later: UtcTime = (t0.0 + Duration::seconds(5)).into();
    let batch = [
        event("e1", t0, reading("SN1", t0, DeviceStatus::Online)),
        event("e2", t0, None),
        event("e1", t0, None),
    ];
    let outcome = telltale_e2e::store_events(&db, source.id, t0, &batch)
        .await
        .unwrap();
    assert_eq!(
        (outcome.stored, outcome.duplicates),
        (2, 1),
        "a repeat inside one batch is a duplicate"
    );

    let outcome = telltale_e2e::store_events(
        &db,
        source.id,
        later,
        &[event("e2", later, None), event("e3", later, None)],
    )
    .await
    .unwrap();
    assert_eq!(
        (outcome.stored, outcome.duplicates),
        (1, 1),
        "a repeat across batches is a duplicate"
    );

    let stored = deliveries::recent_events(&db, source.id, 10).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["e3", "e2", "e1"], "newest first, each once");
    assert_eq!(stored[2].event_time, Some(t0));
    let device = devices::list(&db, 10, 0).await.unwrap().remove(0);
    assert_eq!(
        stored[2].device_id,
        Some(device.id),
        "the event links to its device"
    );
    assert_eq!((device.sn.as_str(), device.status.as_str()), ("SN1", "online"));
    assert_eq!(device.source_id, None, "the profile here named no source");

    let source = deliveries::source_by_name(&db, "site-a").await.unwrap();
    assert_eq!(source.last_event_at, Some(later));

    // An older reading arriving late is stored, but does not roll the device state back.
    let earlier: UtcTime = (t0.0 - Duration::minutes(10)).into();
    telltale_e2e::store_events(
        &db,
        source.id,
        later,
        &[event(
            "old",
            earlier,
            reading("SN1", earlier, DeviceStatus::Offline),
        )],
    )
    .await
    .unwrap();
    let device = devices::get(&db, device.id).await.unwrap();
    assert_eq!(
        (device.status.as_str(), device.last_seen_at),
        ("online", Some(t0))
    );

    // A duplicate does not change device state either.
    telltale_e2e::store_events(
        &db,
        source.id,
        later,
        &[event("e1", later, reading("SN1", later, DeviceStatus::Offline))],
    )
    .await
    .unwrap();
    assert_eq!(
        devices::get(&db, device.id).await.unwrap().status.as_str(),
        "online"
    );

    // The same event id from another source is a different event.
    let other_id = deliveries::ensure_source(&db, "site-b", Default::default())
        .await
        .unwrap();
    assert_eq!(
        deliveries::ensure_source(&db, "site-b", Default::default())
            .await
            .unwrap(),
        other_id,
        "ensure_source is idempotent"
    );
    let outcome = telltale_e2e::store_events(&db, other_id, t0, &[event("e1", t0, None)])
        .await
        .unwrap();
    assert_eq!(outcome.stored, 1);
}

/// Group commit: several requests in one transaction give each request the outcome, and each
/// device and source the state, that storing them one after another would.
async fn a_group_of_requests_is_stored_as_if_one_by_one(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let site = deliveries::ensure_source(&db, "site", Default::default())
        .await
        .unwrap();
    let other = deliveries::ensure_source(&db, "other", Default::default())
        .await
        .unwrap();
    let t0 = now();
    let at = |secs: i64| -> UtcTime { (t0.0 + Duration::seconds(secs)).into() };
    telltale_e2e::store_events(
        &db,
        site,
        at(0),
        &[event("before", at(0), reading("X", at(0), DeviceStatus::Online))],
    )
    .await
    .unwrap();

    let mut notice = event("notice", at(5), None);
    notice.effect = SourceEffect::SystemNotice(r#"{"type":"DAILY_LIMIT"}"#.into());
    let mut test_delivery = event("test", at(5), None);
    test_delivery.effect = SourceEffect::Verified;
    let mut renamed = reading("Y", at(5), DeviceStatus::Online);
    if let Some(device) = renamed.as_mut() {
        device.profile.name = Some("Cold room".into());
    }
    let first = [
        event("a1", at(300), reading("X", at(300), DeviceStatus::Online)),
        event("a2", at(5), renamed),
    ];
    // Repeats one of the first request's events and one stored before; brings X's next reading.
    let second = [
        event("a1", at(300), reading("X", at(300), DeviceStatus::Online)),
        event("before", at(0), None),
        event("b1", at(900), reading("X", at(900), DeviceStatus::Offline)),
    ];
    // An older reading of X (stored, but must not roll X back) and a notice.
    let third = [
        event("c1", at(200), reading("X", at(200), DeviceStatus::Online)),
        notice,
    ];
    // Same event ids in another source are other events.
    let fourth = [event("a1", at(300), None), test_delivery];
    let requests = [
        IngestRequest::new(site, at(1000), first.to_vec()),
        IngestRequest::new(site, at(1001), second.to_vec()),
        IngestRequest::new(site, at(1002), third.to_vec()),
        IngestRequest::new(other, at(1003), fourth.to_vec()),
    ];
    let outcomes = ingest(&db, OfflinePolicy::default(), &requests).await.unwrap();
    let counts: Vec<(usize, usize)> = outcomes.iter().map(|o| (o.stored, o.duplicates)).collect();
    assert_eq!(counts, vec![(2, 0), (1, 2), (2, 0), (2, 0)]);

    let site_events = deliveries::recent_events(&db, site, 20).await.unwrap();
    let mut ids: Vec<&str> = site_events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a1", "a2", "b1", "before", "c1", "notice"], "each once");
    let a1 = site_events.iter().find(|e| e.event_id == "a1").unwrap();
    assert_eq!(
        a1.received_at,
        at(1000),
        "the first request's copy is the one stored"
    );

    let all = devices::list(&db, 10, 0).await.unwrap();
    let x = all.iter().find(|d| d.sn == "X").unwrap();
    assert_eq!(
        (x.status.as_str(), x.last_seen_at),
        ("offline", Some(at(900))),
        "the newest reading wins; the older one in the group does not roll it back"
    );
    assert_eq!(
        x.expected_interval_secs,
        Some(375),
        "learned from the gaps 0→300 (300) then 300→900 (600): 300, then (3×300 + 600) / 4"
    );
    let y = all.iter().find(|d| d.sn == "Y").unwrap();
    assert_eq!(
        (y.name.as_deref(), y.status.as_str()),
        (Some("Cold room"), "online")
    );
    assert!(a1.device_id == Some(x.id), "events link to their devices");

    let site_row = deliveries::source_by_name(&db, "site").await.unwrap();
    assert_eq!(site_row.last_event_at, Some(at(1002)));
    assert_eq!(site_row.last_system_notice_at, Some(at(1002)));
    assert!(site_row.verified_at.is_none());
    let other_row = deliveries::source_by_name(&db, "other").await.unwrap();
    assert_eq!(
        (other_row.verified_at, other_row.last_event_at),
        (Some(at(1003)), Some(at(1003)))
    );

    // A group of nothing but repeats changes nothing and stores nothing.
    let outcomes = ingest(&db, OfflinePolicy::default(), &requests[..2])
        .await
        .unwrap();
    assert_eq!(outcomes.iter().map(|o| o.stored).sum::<usize>(), 0);
    let without_touch_time = |list: Vec<devices::Device>| {
        list.into_iter()
            .map(|d| devices::Device { updated_at: t0, ..d })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_touch_time(devices::list(&db, 10, 0).await.unwrap()),
        without_touch_time(all)
    );

    // Later groups write only what changed (a rename, a status, a reading): every index
    // still finds the devices by their new values, none by the old.
    let mut renamed_x = reading("X", at(1200), DeviceStatus::Offline);
    if let Some(device) = renamed_x.as_mut() {
        device.profile.name = Some("Freezer".into());
    }
    let later = [
        event("d1", at(1200), renamed_x),
        event("d2", at(1200), reading("Y", at(1200), DeviceStatus::Online)),
    ];
    telltale_e2e::store_events(&db, site, at(1200), &later)
        .await
        .unwrap();
    let find = |search: &str, status: Option<DeviceStatus>| {
        let filter = devices::DeviceFilter {
            search: Some(search.into()),
            status,
            ..Default::default()
        };
        let db = &db;
        async move {
            let (found, _) = devices::search(db, &filter, 10, 0).await.unwrap();
            found
                .into_iter()
                .map(|d| (d.sn, d.name, d.status.as_str().to_owned(), d.last_seen_at))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find("freez", Some(DeviceStatus::Offline)).await,
        vec![(
            "X".to_owned(),
            Some("Freezer".to_owned()),
            "offline".to_owned(),
            Some(at(1200))
        )]
    );
    assert!(find("cold", Some(DeviceStatus::Offline)).await.is_empty());
    assert_eq!(
        find("cold", Some(DeviceStatus::Online)).await,
        vec![(
            "Y".to_owned(),
            Some("Cold room".to_owned()),
            "online".to_owned(),
            Some(at(1200))
        )]
    );
    let y = devices::list(&db, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.sn == "Y")
        .unwrap();
    assert_eq!(
        y.offline_after,
        OfflinePolicy::default().deadline(Some(at(1200)), y.expected_interval_secs),
        "a reading alone moves the deadline"
    );
}

async fn secret_columns_hold_ciphertext_only(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let crypto = Crypto::new(&key(2), &[]);
    let account = connections::create_account(&db, "acme", Some("ops@acme.test"))
        .await
        .unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "spotify".into(),
        name: "main".into(),
        settings: serde_json::json!({ "scopes": ["user-read-recently-played"] }),
        credentials: Some(r#"{"client_secret":"CANARY-client-secret"}"#.into()),
        access_token: Some("CANARY-access-token-WXYZ".into()),
        refresh_token: Some("CANARY-refresh-token".into()),
        expires_at: Some((Utc::now() + Duration::hours(1)).into()),
        ..Default::default()
    };
    let created = connections::create_connection(&db, &crypto, &new).await.unwrap();
    assert_eq!(created.status.as_str(), "active");
    assert_eq!(created.token_fingerprint.as_deref(), Some("…WXYZ"));
    deliveries::upsert_source(
        &db,
        &crypto,
        "site-a",
        Some("u"),
        Some("CANARY-webhook-secret"),
        Default::default(),
    )
    .await
    .unwrap();

    let raw = read_raw_secrets(&db).await;
    for value in raw.unwrap() {
        let bytes = value.expect("every secret column was set");
        assert!(
            !bytes.windows(6).any(|w| w == b"CANARY"),
            "plaintext found in a secret column"
        );
        assert!(bytes.len() > 40, "stored value carries nonce and tag");
    }

    let fetched = connections::get_connection(&db, created.id).await.unwrap();
    let secrets = connections::secrets(&crypto, &fetched).unwrap();
    assert_eq!(secrets.access_token.as_deref(), Some("CANARY-access-token-WXYZ"));
    assert_eq!(secrets.refresh_token.as_deref(), Some("CANARY-refresh-token"));
    assert_eq!(
        secrets.credentials.as_deref(),
        Some(r#"{"client_secret":"CANARY-client-secret"}"#)
    );
    assert!(
        !format!("{secrets:?}").contains("CANARY"),
        "Debug output hides secrets"
    );
    let json = serde_json::to_string(&fetched).unwrap();
    assert!(
        !json.contains("CANARY") && !json.contains("access_token\""),
        "serialised rows carry no secrets: {json}"
    );

    let wrong_key = Crypto::new(&key(3), &[]);
    assert!(matches!(
        connections::secrets(&wrong_key, &fetched),
        Err(StorageError::Decrypt { .. })
    ));
}

type Sealed = Option<Vec<u8>>;

/// Gives `learned` a learned interval of 400 s and every device no deadline (as before the
/// column existed).
async fn forget_deadlines(db: &telltale::storage::Db, learned: i64) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::update(schema::devices::table.find(learned))
            .set(schema::devices::expected_interval_secs.eq(Some(400)))
            .execute(conn)
            .await?;
        diesel::update(schema::devices::table)
            .set(schema::devices::offline_after.eq(None::<UtcTime>))
            .execute(conn)
            .await?;
        Ok(())
    })
}

async fn run_sql(db: &telltale::storage::Db, sql: &str) -> StorageResult<()> {
    db_run!(db, |conn| {
        diesel::sql_query(sql).execute(conn).await?;
        Ok(())
    })
}

/// The stored bytes of every secret column, as anyone with database access would see them.
async fn read_raw_secrets(db: &telltale::storage::Db) -> StorageResult<Vec<Sealed>> {
    db_run!(db, |conn| {
        use schema::connections::dsl as c;
        let row: (Sealed, Sealed, Sealed) = c::connections
            .select((c::credentials, c::access_token, c::refresh_token))
            .first(conn)
            .await?;
        let secret: Option<Vec<u8>> = schema::webhook_sources::table
            .select(schema::webhook_sources::secret)
            .first(conn)
            .await?;
        Ok(vec![row.0, row.1, row.2, secret])
    })
}

async fn key_rotation_reseals_every_secret(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let old = Crypto::new(&key(4), &[]);
    let account = connections::create_account(&db, "acme", None).await.unwrap();
    let new = NewConnection {
        account_id: account.id,
        provider: "github".into(),
        name: "org".into(),
        access_token: Some("gho_token".into()),
        refresh_token: Some("ghr_token".into()),
        ..Default::default()
    };
    let id = connections::create_connection(&db, &old, &new).await.unwrap().id;
    deliveries::upsert_source(&db, &old, "site-a", None, Some("whsec"), Default::default())
        .await
        .unwrap();

    let rotating = Crypto::new(&key(5), &[key(4)]);
    assert_eq!(deliveries::reencrypt_secrets(&db, &rotating).await.unwrap(), 1);
    assert_eq!(connections::reencrypt_secrets(&db, &rotating).await.unwrap(), 2);
    assert_eq!(
        connections::reencrypt_secrets(&db, &rotating).await.unwrap(),
        0,
        "second pass has nothing to do"
    );

    let new_only = Crypto::new(&key(5), &[]);
    let stored = connections::get_connection(&db, id).await.unwrap();
    assert_eq!(
        connections::secrets(&new_only, &stored)
            .unwrap()
            .access_token
            .as_deref(),
        Some("gho_token")
    );
    let source = deliveries::source_by_name(&db, "site-a").await.unwrap();
    assert_eq!(
        deliveries::source_secret(&new_only, &source).unwrap().as_deref(),
        Some("whsec")
    );
}

async fn refresh_log_round_trips_and_filters(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let at = now();
    let entry = |provider: &str, success: bool| NewRefreshLogEntry {
        connection_id: None,
        provider: provider.into(),
        trigger: "scheduled".into(),
        actor: Some("scheduler".into()),
        dry_run: false,
        success,
        error: (!success).then(|| "HTTP 503 from token endpoint".to_owned()),
        old_expires_at: Some(at),
        new_expires_at: success.then(|| (at.0 + Duration::hours(2)).into()),
        duration_ms: 120,
        attempted_at: at,
    };
    let written = refresh_log::append(&db, &entry("milesight", true)).await.unwrap();
    refresh_log::append(&db, &entry("spotify", false)).await.unwrap();
    refresh_log::append(&db, &entry("milesight", false))
        .await
        .unwrap();

    let all = refresh_log::recent(&db, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let milesight = refresh_log::recent(&db, Some("milesight"), 10).await.unwrap();
    assert_eq!(milesight.len(), 2);
    assert!(!milesight[0].success && milesight[1].success, "newest first");
    assert_eq!(milesight[1], written);
    assert_eq!(
        milesight[1].new_expires_at,
        Some((at.0 + Duration::hours(2)).into())
    );
}

async fn rejection_log_keeps_only_the_newest(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    for i in 0..5 {
        let rejection = NewWebhookRejection {
            source_name: Some("site-a".into()),
            reason: format!("bad_signature #{i}"),
            status: 401,
            remote_addr: Some("127.0.0.1".into()),
            headers: "{}".into(),
            body_excerpt: "[]".into(),
            body_size: 2,
            received_at: now(),
        };
        deliveries::record_rejection(&db, &rejection, 3).await.unwrap();
    }
    let kept: Vec<String> = deliveries::recent_rejections(&db, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(
        kept,
        vec!["bad_signature #4", "bad_signature #3", "bad_signature #2"]
    );
}

async fn uniqueness_and_foreign_keys_are_enforced(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let crypto = Crypto::new(&key(6), &[]);
    connections::create_account(&db, "acme", None).await.unwrap();
    assert!(matches!(
        connections::create_account(&db, "acme", None).await,
        Err(StorageError::Conflict(_))
    ));

    let orphan = NewConnection {
        account_id: 424_242,
        provider: "discord".into(),
        name: "x".into(),
        ..Default::default()
    };
    let result = connections::create_connection(&db, &crypto, &orphan).await;
    assert!(
        result.is_err(),
        "a connection needs an existing account on every backend (SQLite foreign_keys is on)"
    );
}

async fn quiet_devices_go_offline_and_old_events_expire(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let source = deliveries::ensure_source(&db, "site", Default::default())
        .await
        .unwrap();
    let t0 = now();
    let mins = |m: i64| -> UtcTime { (t0.0 + Duration::minutes(m)).into() };
    // "steady" reports every 5 minutes (learned); "fresh" and "quiet" have no learned interval yet.
    for (i, m) in [0, 5, 10].iter().enumerate() {
        let e = event(
            &format!("s{i}"),
            mins(*m),
            reading("steady", mins(*m), DeviceStatus::Online),
        );
        telltale_e2e::store_events(&db, source, mins(*m), &[e])
            .await
            .unwrap();
    }
    telltale_e2e::store_events(
        &db,
        source,
        mins(10),
        &[event(
            "f",
            mins(10),
            reading("fresh", mins(10), DeviceStatus::Online),
        )],
    )
    .await
    .unwrap();
    telltale_e2e::store_events(
        &db,
        source,
        mins(0),
        &[event(
            "q",
            mins(0),
            reading("quiet", mins(0), DeviceStatus::Online),
        )],
    )
    .await
    .unwrap();
    let steady = devices::list(&db, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.sn == "steady")
        .unwrap();
    assert_eq!(
        steady.expected_interval_secs,
        Some(300),
        "interval learned from the gaps"
    );

    // At +21 min with default 10 min × 2: "quiet" (21 min silent) is offline; "fresh" (11 min) is not;
    // "steady" (11 min silent, learned 5 min × 2 = 10) is offline too. One device per chunk:
    // every chunk boundary is crossed.
    let changed = devices::mark_silent_offline(&db, OfflinePolicy::default(), mins(21), 1)
        .await
        .unwrap();
    let mut changed_sorted = changed.clone();
    changed_sorted.sort();
    assert_eq!(changed_sorted, vec!["quiet", "steady"]);
    assert!(
        devices::mark_silent_offline(&db, OfflinePolicy::default(), mins(21), 2)
            .await
            .unwrap()
            .is_empty(),
        "only once"
    );
    let status = |sn: &'static str| {
        let db = db.clone();
        async move {
            devices::list(&db, 10, 0)
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.sn == sn)
                .unwrap()
                .status
        }
    };
    assert_eq!(status("fresh").await.as_str(), "online");
    assert_eq!(status("quiet").await.as_str(), "offline");

    // A reading brings a device back online.
    telltale_e2e::store_events(
        &db,
        source,
        mins(22),
        &[event(
            "q2",
            mins(22),
            reading("quiet", mins(22), DeviceStatus::Online),
        )],
    )
    .await
    .unwrap();
    assert_eq!(status("quiet").await.as_str(), "online");

    // A changed policy applies to the devices already stored: under 1 min × 1, "fresh" (last
    // heard from at +10, nothing learned) is overdue at +12, where 10 min × 2 gave it until +30;
    // "quiet" learned 22 min from its gap and stays.
    let strict = OfflinePolicy {
        default_interval_secs: 60,
        factor: 1,
    };
    assert_eq!(
        devices::mark_silent_offline(&db, strict, mins(12), 1)
            .await
            .unwrap(),
        vec!["fresh"]
    );
    assert_eq!(status("quiet").await.as_str(), "online");

    // Retention removes old events only.
    // Two per statement: three old events take two statements.
    let deleted = deliveries::delete_events_before(&db, mins(6), 2).await.unwrap();
    assert_eq!(deleted, 3, "s0, s1 (at +5) and q (at +0)");
    let left = deliveries::recent_events(&db, source, 20).await.unwrap().len();
    assert_eq!(left, 3, "s2, f and q2 remain");
}

async fn expired_staff_sessions_are_dropped_at_the_next_sign_in(backend: Backend) {
    use telltale::storage::{Role, UtcTime, now, staff};
    let test_db = TestDb::new(backend).await;
    let db = test_db.open_migrated().await;
    let user = staff::create_user(&db, "a@example.com", "hash", Role::Admin, now())
        .await
        .unwrap();
    let then = UtcTime::new(now().0 - chrono::Duration::days(30));
    let lapsed = UtcTime::new(now().0 - chrono::Duration::days(16));
    for i in 0..3 {
        staff::create_session(&db, user.id, &format!("old-{i}"), "csrf", then, lapsed)
            .await
            .unwrap();
    }
    let live_until = UtcTime::new(now().0 + chrono::Duration::days(1));
    staff::create_session(&db, user.id, "live", "csrf", then, live_until)
        .await
        .unwrap();
    assert_eq!(
        staff::session_count(&db).await.unwrap(),
        4,
        "lapsed ones stay until a sign-in"
    );

    staff::create_session(&db, user.id, "new", "csrf", now(), live_until)
        .await
        .unwrap();
    assert_eq!(
        staff::session_count(&db).await.unwrap(),
        2,
        "only live sessions left"
    );
    assert!(staff::session(&db, "live", now()).await.unwrap().is_some());
    assert!(
        staff::session(&db, "old-0", then).await.unwrap().is_none(),
        "deleted, not just expired"
    );
}

/// PostgreSQL runs a group as pipelined statements inside a transaction it opens itself; a
/// statement that fails must leave nothing stored and no transaction open on the pooled
/// connection the next group gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_leaves_nothing_and_the_connection_clean_postgres() {
    let test_db = TestDb::new(Backend::Postgres).await;
    test_db.open_migrated().await;
    let target = DatabaseTarget::parse(test_db.url()).unwrap();
    let one_connection = telltale::storage::PoolSettings {
        max_connections: 1,
        ..Default::default()
    };
    let db = telltale::storage::Db::open(&target, &one_connection).unwrap();
    let crypto = Crypto::new(&key(1), &[]);
    let site = deliveries::upsert_source(&db, &crypto, "site", None, None, Default::default())
        .await
        .unwrap()
        .id;
    let at = |s: i64| UtcTime::new(Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap());

    // PostgreSQL refuses a NUL in text: the event insert fails after the device lock ran.
    let refused = [event(
        "bad\0id",
        at(0),
        reading("NEW-1", at(0), DeviceStatus::Online),
    )];
    let result = telltale_e2e::store_events(&db, site, at(0), &refused).await;
    assert!(result.is_err(), "the group fails: {result:?}");

    let good = [event(
        "good",
        at(1),
        reading("NEW-2", at(1), DeviceStatus::Online),
    )];
    let outcome = telltale_e2e::store_events(&db, site, at(1), &good).await.unwrap();
    assert_eq!(outcome.stored, 1);

    // Read through another pool: only a committed group is visible there.
    let other = test_db.open_migrated().await;
    let serials: Vec<String> = devices::list(&other, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.sn)
        .collect();
    assert_eq!(
        serials,
        vec!["NEW-2".to_owned()],
        "the failed group's device was rolled back"
    );
    let ids: Vec<String> = deliveries::recent_events(&other, site, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, vec!["good".to_owned()]);
}

/// SQLite: new data reaches the database file while the service runs, copied there by the
/// checkpoint thread, not inside a commit: 2 MB of events stays far below the commits' own
/// checkpoint (a backstop at 10,000 pages, 40 MB), so without the thread the file would not
/// grow until the last connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_reaches_the_database_file_in_the_background() {
    let test_db = TestDb::new(Backend::Sqlite).await;
    let db = test_db.open_migrated().await;
    let path = test_db.url().trim_start_matches("sqlite://").to_owned();
    let file_size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let source = deliveries::ensure_source(&db, "site", Default::default())
        .await
        .unwrap();
    let before = file_size();
    let at = now();
    for request in 0..20 {
        let events: Vec<IncomingEvent> = (0..100)
            .map(|i| IncomingEvent {
                payload: format!(
                    r#"{{"eventId":"{request}-{i}","padding":"{}"}}"#,
                    "x".repeat(1000)
                ),
                ..event(&format!("{request}-{i}"), at, None)
            })
            .collect();
        telltale_e2e::store_events(&db, source, at, &events)
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while file_size() < before + 2_000_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        file_size() >= before + 2_000_000,
        "the database file grew from {before} to only {} bytes in 10 s",
        file_size()
    );
    assert_eq!(
        deliveries::recent_events(&db, source, 5000).await.unwrap().len(),
        2000
    );
}
