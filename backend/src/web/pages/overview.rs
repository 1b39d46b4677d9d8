//! `GET /`: one tile per area, and what needs attention first.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::alerts::Alert;
use crate::storage::{AlertState, DeviceStatus, SourceStatus, TokenHealth, alerts};
use crate::tokens::manage::ConnectionView;
use crate::web::ApiError;
use crate::web::api::{self, connections::TokenSummary, connections::TokensStatus};

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    base: Base,
    tiles: Vec<Tile>,
    problems: Vec<Problem>,
    /// Until Telltale watches something and can reach someone, the steps that get it there.
    checklist: Vec<Step>,
    /// Alerts are open and no channel can deliver them.
    reaching_nobody: bool,
}

/// One step of setting up a blank install, ticked once done.
struct Step {
    text: &'static str,
    href: &'static str,
    done: bool,
    optional: bool,
}

/// One area's health on the overview.
struct Tile {
    id: &'static str,
    label: &'static str,
    href: &'static str,
    /// `bad`, `warn` or `good`.
    tone: &'static str,
    counts: Vec<TileCount>,
}

struct TileCount {
    n: i64,
    label: &'static str,
    /// The count's tone when it is not zero (a zero is never highlighted).
    tone: &'static str,
}

struct Problem {
    href: String,
    text: String,
}

/// What the overview is built from, gathered once.
struct Health {
    tokens: TokenSummary,
    connections: Vec<ConnectionView>,
    sources: Vec<(String, SourceStatus)>,
    devices: BTreeMap<DeviceStatus, i64>,
    polls: i64,
    failing_polls: i64,
    open_alerts: Vec<Alert>,
    setup: Setup,
}

/// How far a blank install has come.
struct Setup {
    webhook_secret: bool,
    first_event: bool,
    /// Email (an SMTP server and on-call addresses) or an alert webhook endpoint.
    can_notify: bool,
    channel_tested: bool,
    openapi_tested: bool,
    first_connection: bool,
}

/// How many of `items` there are of each kind.
fn count_by<K: Ord>(items: impl Iterator<Item = K>) -> BTreeMap<K, i64> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

fn tone(bad: i64, warn: i64) -> &'static str {
    if bad > 0 {
        "bad"
    } else if warn > 0 {
        "warn"
    } else {
        "good"
    }
}

fn tile_count(n: i64, label: &'static str, tone: &'static str) -> TileCount {
    TileCount {
        n,
        label,
        tone: if n > 0 { tone } else { "" },
    }
}

/// `GET /`
pub async fn overview(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let health = gather(&state).await?;
    let setup = &health.setup;
    let watching = setup.first_event || setup.first_connection;
    render(&OverviewPage {
        base: Base::new("Overview", "/", &staff),
        problems: problems(&health),
        tiles: tiles(&health),
        checklist: if watching && setup.can_notify {
            Vec::new()
        } else {
            checklist(setup)
        },
        reaching_nobody: !setup.can_notify && !health.open_alerts.is_empty(),
    })
}

async fn gather(state: &AppState) -> Result<Health, ApiError> {
    let TokensStatus { summary, connections } = api::connections::status_data(state).await?;
    let mut devices = BTreeMap::new();
    // From the fleet summary the metrics keep (at most `fleet_summary_max_age_secs` old): the
    // overview must not pass over every device each time it is opened.
    for g in &state.metrics.fleet.get(&state.db).await?.groups {
        *devices.entry(g.status).or_default() += g.devices;
    }
    let polls = api::polling::list_data(state).await?;
    let sources = crate::storage::deliveries::list_sources(&state.db).await?;
    let (email, webhooks) = state.channels.current().await.counts();
    let is_milesight = |c: &ConnectionView| c.settings["preset"] == "milesight";
    let setup = Setup {
        webhook_secret: !state.intake.webhooks.all().await.is_empty(),
        first_event: sources.iter().any(|s| s.last_event_at.is_some()),
        can_notify: email + webhooks > 0,
        channel_tested: crate::storage::outbox::a_test_was_delivered(&state.db).await?,
        openapi_tested: connections
            .iter()
            .any(|c| is_milesight(c) && c.last_refresh_success_at.is_some()),
        first_connection: connections.iter().any(|c| !is_milesight(c)),
    };
    Ok(Health {
        setup,
        tokens: summary,
        connections,
        // Statuses from the same read, without counting events (cheap at any traffic, where
        // `sources_data` counts the last day's events).
        sources: sources
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    api::webhook_sources::status_of(s, crate::storage::now()),
                )
            })
            .collect(),
        devices,
        polls: polls.len() as i64,
        failing_polls: polls.iter().filter(|p| p.consecutive_failures > 0).count() as i64,
        open_alerts: alerts::open_alerts(&state.db).await?,
    })
}

/// The steps from a blank install to watched devices and a reachable on-call, each linking to
/// where it is done.
fn checklist(setup: &Setup) -> Vec<Step> {
    let step = |text, href, done, optional| Step {
        text,
        href,
        done,
        optional,
    };
    vec![
        step(
            "Set a Milesight webhook secret",
            "/settings#milesight",
            setup.webhook_secret,
            false,
        ),
        step(
            "Receive the first webhook event from MDP",
            "/webhooks",
            setup.first_event,
            false,
        ),
        step(
            "Set up a notification channel (SMTP and on-call addresses, or an alert webhook) and send a test",
            "/settings#notifications",
            setup.can_notify && setup.channel_tested,
            false,
        ),
        step(
            "Test the Milesight OpenAPI application",
            "/settings#milesight",
            setup.openapi_tested,
            true,
        ),
        step(
            "Connect a first platform",
            "/connections/new",
            setup.first_connection,
            true,
        ),
    ]
}

/// Firing alerts, stale sources and tokens a person must act on, in that order.
fn problems(health: &Health) -> Vec<Problem> {
    let firing = health
        .open_alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing);
    let stale = health
        .sources
        .iter()
        .filter(|(_, status)| *status == SourceStatus::Stale);
    let lapsed = health
        .connections
        .iter()
        .filter(|c| matches!(c.status, TokenHealth::NeedsReauth | TokenHealth::Expired));
    firing
        .map(|a| Problem {
            href: format!("/alerts/{}", a.id),
            text: format!("{}: {}", a.severity, a.summary),
        })
        .chain(stale.map(|(name, _)| Problem {
            href: "/webhooks".into(),
            text: format!("webhook source {name} is stale"),
        }))
        .chain(lapsed.map(|c| Problem {
            href: format!("/connections/{}", c.id),
            text: match c.status {
                TokenHealth::Expired => format!("the token of connection {} has expired", c.name),
                _ => format!("connection {} needs re-authorisation", c.name),
            },
        }))
        .collect()
}

fn tiles(health: &Health) -> Vec<Tile> {
    let sources = count_by(health.sources.iter().map(|(_, status)| *status));
    let alerts = count_by(health.open_alerts.iter().map(|a| a.state));
    let sources_in = |status| sources.get(&status).copied().unwrap_or(0);
    let devices_in = |status| health.devices.get(&status).copied().unwrap_or(0);
    let alerts_in = |state| alerts.get(&state).copied().unwrap_or(0);
    let n = |count: usize| count as i64;
    let t = &health.tokens;
    vec![
        Tile {
            id: "tokens",
            label: "Tokens",
            href: "/tokens",
            tone: tone(n(t.needs_reauth + t.expired), n(t.expiring_soon)),
            counts: vec![
                tile_count(n(t.needs_reauth), "need re-auth", "bad"),
                tile_count(n(t.expired), "expired", "bad"),
                tile_count(n(t.expiring_soon), "expiring", "warn"),
                tile_count(n(t.valid), "valid", "good"),
            ],
        },
        Tile {
            id: "webhooks",
            label: "Webhook sources",
            href: "/webhooks",
            tone: tone(sources_in(SourceStatus::Stale), 0),
            counts: vec![
                tile_count(sources_in(SourceStatus::Stale), "stale", "bad"),
                tile_count(
                    sources_in(SourceStatus::Waiting),
                    "waiting for the first event",
                    "",
                ),
                tile_count(sources_in(SourceStatus::Active), "active", "good"),
            ],
        },
        Tile {
            id: "devices",
            label: "Devices",
            href: "/devices",
            tone: tone(0, devices_in(DeviceStatus::Offline)),
            counts: vec![
                tile_count(devices_in(DeviceStatus::Offline), "offline", "warn"),
                tile_count(devices_in(DeviceStatus::Online), "online", "good"),
                tile_count(devices_in(DeviceStatus::Unknown), "unknown", ""),
            ],
        },
        Tile {
            id: "polls",
            label: "Polls",
            href: "/polling",
            tone: tone(0, health.failing_polls),
            counts: vec![
                tile_count(health.failing_polls, "failing", "warn"),
                tile_count(health.polls - health.failing_polls, "ok", "good"),
            ],
        },
        Tile {
            id: "alerts",
            label: "Alerts",
            href: "/alerts",
            tone: tone(alerts_in(AlertState::Firing), alerts_in(AlertState::Acknowledged)),
            counts: vec![
                tile_count(alerts_in(AlertState::Firing), "firing", "bad"),
                tile_count(alerts_in(AlertState::Acknowledged), "acknowledged", "warn"),
                tile_count(alerts_in(AlertState::Silenced), "silenced", ""),
            ],
        },
    ]
}
