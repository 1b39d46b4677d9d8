//! The gauges `/metrics` reads from the database at scrape time: what they say about tokens,
//! webhook sources, devices, polls, alerts and the outbox, that two replicas on one database
//! report the same, and that deleted subjects disappear. In process; both backends.

use chrono::Duration as Span;
use telltale::alerts::evaluate::evaluate;
use telltale::app::AppState;
use telltale::storage::connections;
use telltale::storage::deliveries::{self, SourceTiming};
use telltale::storage::devices::{self, DeviceActivity, DeviceProfile};
use telltale::storage::now;
use telltale::storage::polling::{self as poll_store, Finished};
use telltale_e2e::metric_sample as sample;
use telltale_e2e::{Backend, TestApp, TestDb, both_backends};

both_backends!(
    scrape_time_gauges_tell_the_database_truth,
    two_replicas_report_the_same_gauges,
    the_fleet_summary_is_kept_for_its_max_age,
    the_webhook_event_counts_are_kept_for_their_max_age,
    sources_past_the_limit_share_other,
    counts_are_never_older_than_the_max_age,
);

async fn connection(state: &AppState, name: &str, expires_in: Span) -> i64 {
    telltale_e2e::spotify_connection(state, name, expires_in).await
}

/// A small world: two connections (one failing, one revoked), a source with two devices (heard
/// from ten minutes and two hours ago), a poll that succeeded, open alerts and queued emails.
async fn populate(state: &AppState) -> (i64, i64) {
    let healthy = connection(state, "spotify-main", Span::hours(1)).await;
    let revoked = connection(state, "spotify-old", Span::minutes(-5)).await;
    for _ in 0..2 {
        connections::record_refresh_failure(&state.db, healthy, None, "HTTP 503", now())
            .await
            .unwrap();
    }
    connections::record_refresh_failure(
        &state.db,
        revoked,
        Some(telltale::storage::ConnectionStatus::NeedsReauth),
        "invalid_grant",
        now(),
    )
    .await
    .unwrap();

    let source = deliveries::ensure_source(&state.db, "site-a", SourceTiming::default())
        .await
        .unwrap();
    for (sn, status, seen_ago) in [
        (
            "6136D000001",
            telltale::storage::DeviceStatus::Online,
            Span::minutes(10),
        ),
        (
            "6136D000002",
            telltale::storage::DeviceStatus::Offline,
            Span::hours(2),
        ),
    ] {
        em300_heard_from(state, source, sn, status, seen_ago).await;
    }

    // A signed sender may write anything as the model: it must not become a label value.
    let forged = DeviceProfile {
        source_id: Some(source),
        model: Some("<script>alert('x')</script>-forged-model-name-long".into()),
        ..Default::default()
    };
    devices::upsert_by_sn(&state.db, "6136D000003", &forged)
        .await
        .unwrap();

    poll_store::ensure_pairs(&state.db, &[(healthy, "recently_played")])
        .await
        .unwrap();
    let pair = poll_store::get_state(&state.db, healthy, "recently_played")
        .await
        .unwrap();
    let finished = Finished {
        state_id: pair.id,
        last_content_hash: None,
        connection_id: healthy,
        endpoint: "recently_played".into(),
        trigger: "scheduled".into(),
        status: telltale::storage::PollStatus::Ok,
        items: 3,
        pages: 1,
        http_status: Some(200),
        error: None,
        duration_ms: 5,
        started_at: (now().0 - Span::minutes(2)).into(),
        finished_at: (now().0 - Span::minutes(2)).into(),
        next_due_at: None,
        payload: None,
        record_run: true,
    };
    poll_store::finish(&state.db, &finished).await.unwrap();

    // The revoked token and the offline device open alerts, whose emails wait in the outbox
    // (no SMTP here).
    evaluate(&state.db, &state.config, &state.channels, now())
        .await
        .unwrap();
    (healthy, revoked)
}

/// A signed sender can name any source in the URL: past `milesight.metric_sources` they share
/// `other` in every series (counts summed, the longest silence taken), in the scrape-time
/// gauges and in the intake's counters alike.
async fn sources_past_the_limit_share_other(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = TestApp::on(&db).set("milesight.metric_sources", 2).state().await;
    for (n, silent_for) in [(1, 1), (2, 2), (3, 30), (4, 90), (5, 5)] {
        let source = deliveries::ensure_source(&state.db, &format!("site-{n}"), SourceTiming::default())
            .await
            .unwrap();
        let sn = format!("6136S00000{n}");
        let online = telltale::storage::DeviceStatus::Online;
        em300_heard_from(&state, source, &sn, online, Span::minutes(silent_for)).await;
    }
    let text = state.metrics.render(&state.db).await;
    let online = |source| {
        sample(
            &text,
            "telltale_devices",
            &[("source", source), ("model", "EM300-TH"), ("status", "online")],
        )
    };
    assert_eq!(
        (online("site-1"), online("site-2"), online("other")),
        (Some(1.0), Some(1.0), Some(3.0)),
        "{text}"
    );
    for hidden in ["site-3", "site-4", "site-5"] {
        assert!(
            !text.contains(&format!("\"{hidden}\"")),
            "{hidden} has a series:\n{text}"
        );
    }
    let oldest: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("telltale_devices_oldest_last_seen_age_seconds{") && l.contains("\"other\"")
        })
        .collect();
    assert_eq!(oldest.len(), 1, "one oldest device for all of other: {oldest:?}");
    assert!(oldest[0].contains("6136S000004"), "{oldest:?}");
    assert!(sample(&text, "telltale_webhook_source_stale", &[("source", "other")]).is_some());
    // The intake's counters use the same names: a new source now is `other`.
    let intake = state.metrics.intake();
    assert_eq!(intake.sources.label("site-9"), "other");
    assert_eq!(intake.sources.label("site-2"), "site-2");
}

/// An EM300-TH of `source` last heard from `seen_ago` ago, now `status`.
async fn em300_heard_from(
    state: &AppState,
    source: i64,
    sn: &str,
    status: telltale::storage::DeviceStatus,
    seen_ago: Span,
) {
    let profile = DeviceProfile {
        source_id: Some(source),
        model: Some("EM300-TH".into()),
        ..Default::default()
    };
    let device = devices::upsert_by_sn(&state.db, sn, &profile).await.unwrap();
    let activity = DeviceActivity {
        status,
        last_seen_at: (now().0 - seen_ago).into(),
        last_event_type: None,
        last_payload: None,
        battery: None,
        expected_interval_secs: None,
    };
    let policy = state.config.milesight.offline_policy();
    devices::record_activity(&state.db, policy, device.id, &activity)
        .await
        .unwrap();
}

async fn scrape_time_gauges_tell_the_database_truth(backend: Backend) {
    let db = TestDb::new(backend).await;
    let state = TestApp::on(&db)
        .set("email.on_call", "oncall@example.com")
        .set("alerts.group_wait_secs", 0)
        .state()
        .await;
    let (healthy, revoked) = populate(&state).await;
    let text = state.metrics.render(&state.db).await;
    let (healthy_id, revoked_id) = (healthy.to_string(), revoked.to_string());
    let main = [
        ("connection", "spotify-main"),
        ("connection_id", healthy_id.as_str()),
        ("provider", "oauth2_refresh"),
    ];
    let old = [
        ("connection", "spotify-old"),
        ("connection_id", revoked_id.as_str()),
    ];

    let runway = sample(&text, "telltale_token_expiry_seconds", &main).expect("runway");
    assert!(
        (3500.0..=3600.0).contains(&runway),
        "about an hour left: {runway}"
    );
    let expired = sample(&text, "telltale_token_expiry_seconds", &old).unwrap();
    assert!(expired < -250.0, "expired five minutes ago: {expired}");
    assert_eq!(
        sample(&text, "telltale_token_consecutive_failures", &main),
        Some(2.0)
    );
    assert_eq!(sample(&text, "telltale_token_needs_reauth", &main), Some(0.0));
    assert_eq!(sample(&text, "telltale_token_needs_reauth", &old), Some(1.0));
    assert!(!text.contains("CANARY"), "no secret in the metrics");

    let age = sample(
        &text,
        "telltale_webhook_last_event_age_seconds",
        &[("source", "site-a")],
    )
    .unwrap();
    assert!(
        (0.0..60.0).contains(&age),
        "set up just now, never delivered: {age}"
    );
    assert_eq!(
        sample(
            &text,
            "telltale_webhook_stale_after_seconds",
            &[("source", "site-a")]
        ),
        Some(1200.0),
        "15 min + 5 min grace"
    );
    assert_eq!(
        sample(&text, "telltale_webhook_source_stale", &[("source", "site-a")]),
        Some(0.0)
    );

    let devices = |status| {
        sample(
            &text,
            "telltale_devices",
            &[("source", "site-a"), ("model", "EM300-TH"), ("status", status)],
        )
    };
    assert_eq!((devices("online"), devices("offline")), (Some(1.0), Some(1.0)));
    assert!(
        !text.contains("<script>"),
        "a model from a webhook is no label value"
    );
    assert_eq!(
        sample(
            &text,
            "telltale_devices",
            &[("source", "site-a"), ("model", "other"), ("status", "unknown")]
        ),
        Some(1.0)
    );
    // No series per device by default: the fleet is counts, a last-seen histogram and the
    // device heard from longest ago, per source.
    assert_eq!(sample(&text, "telltale_device_last_seen_age_seconds", &[]), None);
    let within = |le| {
        sample(
            &text,
            "telltale_devices_seen_within",
            &[("source", "site-a"), ("le", le)],
        )
    };
    assert_eq!(
        [within("900"), within("3600"), within("21600"), within("+Inf")],
        [Some(1.0), Some(1.0), Some(2.0), Some(2.0)],
        "one heard from ten minutes ago, one two hours ago"
    );
    let oldest = sample(
        &text,
        "telltale_devices_oldest_last_seen_age_seconds",
        &[("source", "site-a"), ("device", "6136D000002")],
    )
    .unwrap();
    assert!((7190.0..7300.0).contains(&oldest), "two hours: {oldest}");

    // Switched on, per-device series come for that many devices, those heard from longest ago.
    let one_series = TestApp::on(&db)
        .set("milesight.per_device_metrics", 1)
        .state()
        .await;
    let detailed = one_series.metrics.render(&one_series.db).await;
    let series: Vec<&str> = detailed
        .lines()
        .filter(|l| l.starts_with("telltale_device_last_seen_age_seconds{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    let seen = sample(
        &detailed,
        "telltale_device_last_seen_age_seconds",
        &[("device", "6136D000002"), ("source", "site-a")],
    )
    .unwrap();
    assert!((7190.0..7300.0).contains(&seen), "two hours: {seen}");

    let poll = [
        ("platform", "spotify"),
        ("endpoint", "recently_played"),
        ("connection_id", healthy_id.as_str()),
    ];
    let since = sample(&text, "telltale_poll_last_success_age_seconds", &poll).unwrap();
    assert!((110.0..200.0).contains(&since), "two minutes: {since}");
    assert_eq!(
        sample(&text, "telltale_poll_consecutive_failures", &poll),
        Some(0.0)
    );

    assert_eq!(
        sample(
            &text,
            "telltale_alerts_open",
            &[
                ("rule", "token_needs_reauth"),
                ("state", "firing"),
                ("severity", "warning")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "telltale_alerts_open", &[("rule", "device_offline")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "telltale_outbox_pending", &[]),
        Some(2.0),
        "one email per alert"
    );
    assert!(sample(&text, "telltale_outbox_oldest_pending_age_seconds", &[]).unwrap() >= 0.0);
    assert_eq!(
        sample(&text, "telltale_metrics_database_scrape_ok", &[]),
        Some(1.0)
    );

    // A deleted connection leaves the gauges at the next scrape.
    connections::delete_connection(&state.db, revoked).await.unwrap();
    let text = state.metrics.render(&state.db).await;
    assert_eq!(sample(&text, "telltale_token_needs_reauth", &old), None);
    assert_eq!(sample(&text, "telltale_token_needs_reauth", &main), Some(0.0));
}

async fn two_replicas_report_the_same_gauges(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = db.app_state("").await;
    let second = db.app_state("").await;
    populate(&first).await;
    let gauges = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                [
                    "telltale_token_needs_reauth",
                    "telltale_token_consecutive_failures",
                    "telltale_devices{",
                    "telltale_alerts_open",
                    "telltale_outbox_pending",
                    "telltale_webhook_source_stale",
                ]
                .iter()
                .any(|n| l.starts_with(n))
            })
            .map(str::to_owned)
            .collect()
    };
    let a = gauges(&first.metrics.render(&first.db).await);
    let b = gauges(&second.metrics.render(&second.db).await);
    assert!(a.len() >= 8, "{a:#?}");
    assert_eq!(a, b, "a replica that did none of the work reports the same");
}

/// The device gauges come from a fleet summary kept for `fleet_summary_max_age_secs`: within
/// it, a new device shows at the next read of the summary, not at every scrape; with 0, at once.
async fn the_fleet_summary_is_kept_for_its_max_age(backend: Backend) {
    use telltale::storage::{DeviceStatus, now};
    let db = TestDb::new(backend).await;
    let online = |text: &str| {
        telltale_e2e::metric_sample(text, "telltale_devices", &[("status", "online")]).unwrap_or(0.0)
    };
    let (kept, every_read) = kept_and_every_read(&db).await;
    telltale_e2e::device_in(&kept.db, "6136D0000001", None, DeviceStatus::Online, now()).await;
    assert_eq!(online(&kept.metrics.render(&kept.db).await), 1.0);
    assert_eq!(online(&every_read.metrics.render(&every_read.db).await), 1.0);

    telltale_e2e::device_in(&kept.db, "6136D0000002", None, DeviceStatus::Online, now()).await;
    assert_eq!(
        online(&kept.metrics.render(&kept.db).await),
        1.0,
        "within the max age the summary read before is served"
    );
    assert_eq!(
        online(&every_read.metrics.render(&every_read.db).await),
        2.0,
        "max age 0 reads the fleet at every scrape"
    );
    let cached = kept.metrics.fleet.get(&kept.db).await.unwrap();
    assert_eq!(cached.groups.iter().map(|g| g.devices).sum::<i64>(), 1);
}

/// A blank install's first look (an empty fleet) is not what the overview keeps showing: once
/// the max age has passed, the devices that arrived meanwhile are counted at the next look,
/// never a copy older than the max age.
async fn counts_are_never_older_than_the_max_age(backend: Backend) {
    use telltale::storage::{DeviceStatus, now};
    let db = TestDb::new(backend).await;
    let state = TestApp::on(&db)
        .set("milesight.fleet_summary_max_age_secs", 2)
        .state()
        .await;
    let online = |summary: &telltale::storage::devices::FleetSummary| {
        summary
            .groups
            .iter()
            .filter(|g| g.status == DeviceStatus::Online)
            .map(|g| g.devices)
            .sum::<i64>()
    };
    assert_eq!(online(&state.metrics.fleet.get(&state.db).await.unwrap()), 0);
    for n in 0..3 {
        telltale_e2e::device_in(
            &state.db,
            &format!("6136F000000{n}"),
            None,
            DeviceStatus::Online,
            now(),
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        online(&state.metrics.fleet.get(&state.db).await.unwrap()),
        3,
        "the first look after the max age counts them"
    );
    // Looked at often (a page's live refresh), the copy is renewed ahead of the max age.
    telltale_e2e::device_in(&state.db, "6136F0000009", None, DeviceStatus::Online, now()).await;
    let started = std::time::Instant::now();
    let mut seen = 3;
    while started.elapsed() < std::time::Duration::from_millis(2500) && seen != 4 {
        seen = online(&state.metrics.fleet.get(&state.db).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 4, "counted within the max age");
}

/// The webhooks page's events per source over the last hour and day are kept the same way:
/// an event stored within the max age shows at the next read, and with 0 at once.
async fn the_webhook_event_counts_are_kept_for_their_max_age(backend: Backend) {
    use telltale::storage::ingest::{IncomingEvent, SourceEffect};
    let db = TestDb::new(backend).await;
    let (kept, every_read) = kept_and_every_read(&db).await;
    let source = deliveries::ensure_source(&kept.db, "site-a", SourceTiming::default())
        .await
        .unwrap();
    let receive = |id: &'static str, received: Span| {
        let db = kept.db.clone();
        async move {
            let event = IncomingEvent {
                event_id: id.into(),
                event_type: "DEVICE_DATA".into(),
                event_time: None,
                payload: "{}".into(),
                device: None,
                effect: SourceEffect::None,
            };
            telltale_e2e::store_events(&db, source, (now().0 - received).into(), &[event])
                .await
                .unwrap();
        }
    };
    receive("e1", Span::minutes(1)).await;
    receive("e2", Span::hours(3)).await;
    let counts = |state: &AppState| {
        let state = state.clone();
        async move {
            let counts = state.metrics.source_events.get(&state.db).await.unwrap();
            (
                counts.last_hour.get(&source).copied(),
                counts.last_day.get(&source).copied(),
            )
        }
    };
    assert_eq!(
        counts(&kept).await,
        (Some(1), Some(2)),
        "one in the hour, both in the day"
    );
    assert_eq!(counts(&every_read).await, (Some(1), Some(2)));

    receive("e3", Span::minutes(2)).await;
    assert_eq!(
        counts(&kept).await,
        (Some(1), Some(2)),
        "within the max age the counts read before are served"
    );
    assert_eq!(counts(&every_read).await, (Some(2), Some(3)));
}

/// Two services on one database: one keeping its summaries for an hour, one reading them on
/// every call.
async fn kept_and_every_read(db: &TestDb) -> (AppState, AppState) {
    let kept = TestApp::on(db)
        .set("milesight.fleet_summary_max_age_secs", 3600)
        .state()
        .await;
    let every_read = TestApp::on(db)
        .set("milesight.fleet_summary_max_age_secs", 0)
        .state()
        .await;
    (kept, every_read)
}
