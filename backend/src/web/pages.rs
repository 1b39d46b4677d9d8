//! The staff web UI: pages rendered on the server from `frontend/templates/` (minijinja, HTML
//! auto-escaped), from the same data the JSON API serves. Each page gets a typed view model,
//! and the template engine refuses undefined values, so a renamed field fails the page's test
//! instead of silently blanking a cell. `frontend/static/telltale.js` keeps each page live by
//! re-fetching it and swapping `<main>`, and sends the buttons' requests with the CSRF token.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use actix_web::{HttpResponse, web};
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use rust_embed::RustEmbed;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::api;
use super::api::connections::{TokenSummary, TokensStatus};
use super::api::polling::PairView;
use super::api::webhook_sources::SourceView;
use crate::app::AppState;
use crate::auth::Staff;
use crate::milesight::token::TokenStatus;
use crate::scheduler::JobView;
use crate::storage::alerts::{Alert, AlertEvent, Silence};
use crate::storage::deliveries::{WebhookEvent, WebhookRejection};
use crate::storage::devices::{self, Device, DeviceFilter};
use crate::storage::refresh_log::{self, LogFilter, RefreshLogEntry};
use crate::storage::staff::{ApiToken, StaffUser};
use crate::storage::{
    AlertState, DeviceStatus, SourceStatus, StorageError, TokenHealth, UtcTime, alerts, deliveries, now,
    outbox, staff,
};
use crate::tokens::manage::ConnectionView;

#[derive(RustEmbed)]
#[folder = "../frontend/templates/"]
struct Templates;

/// Every template, parsed once (a broken template fails the unit test below, not a page view).
static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A value the view model does not have is an error, not an empty cell.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for name in Templates::iter() {
        let Some(file) = Templates::get(&name) else {
            continue;
        };
        let source = String::from_utf8_lossy(&file.data).into_owned();
        if let Err(e) = env.add_template_owned(name.to_string(), source) {
            tracing::error!(template = %name, error = %e, "cannot parse a page template");
        }
    }
    env
});

const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/webhooks", "Webhooks"),
    ("/tokens", "Tokens"),
    ("/polling", "Polling"),
    ("/alerts", "Alerts"),
    ("/scheduler", "Scheduler"),
    ("/settings", "Settings"),
];

#[derive(Serialize)]
struct NavItem {
    href: &'static str,
    label: &'static str,
}

/// Renders `template` inside the layout with the page's view model.
fn render(
    template: &str,
    title: &str,
    active: &str,
    staff: &Staff,
    page: &impl Serialize,
) -> Result<HttpResponse, ApiError> {
    render_with_status(
        actix_web::http::StatusCode::OK,
        template,
        title,
        active,
        staff,
        page,
    )
}

/// `render`, answering with `status`.
pub(super) fn render_with_status(
    status: actix_web::http::StatusCode,
    template: &str,
    title: &str,
    active: &str,
    staff: &Staff,
    page: &impl Serialize,
) -> Result<HttpResponse, ApiError> {
    let nav: Vec<NavItem> = NAV
        .iter()
        .filter(|(href, _)| *href != "/settings" || staff.is_admin())
        .map(|&(href, label)| NavItem { href, label })
        .collect();
    let base = context! {
        title => title,
        active => active,
        nav => Serde(nav),
        user => staff.user.email.clone(),
        role => staff.user.role.as_str(),
        admin => staff.is_admin(),
        csrf => staff.csrf(),
        live => 10,
        generated_at => now().to_string(),
    };
    let html = PAGES
        .get_template(template)
        .and_then(|t| t.render(context! { ..base, ..minijinja::Value::from(Serde(page)) }))
        .map_err(|e| {
            tracing::error!(template, error = %format!("{e:#}"), "cannot render a page");
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "render_failed",
                "the page could not be rendered",
            )
        })?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(html))
}

/// The sign-in page (no layout: nobody is signed in yet).
pub fn login_page(next: &str, email: &str, error: Option<&str>) -> String {
    PAGES
        .get_template("login.html")
        .and_then(|t| t.render(context! { next, email, error }))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot render the sign-in page");
            "cannot render the sign-in page; the cause is in the service log".to_owned()
        })
}

/// The first-run page (no layout): the admin form when `granted`, else how to find the link.
pub fn setup_page(granted: bool, token: &str, email: &str, error: Option<&str>) -> String {
    PAGES
        .get_template("setup.html")
        .and_then(|t| t.render(context! { granted, token, email, error }))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot render the setup page");
            "cannot render the setup page; the cause is in the service log".to_owned()
        })
}

/// How many of `items` there are of each kind.
fn count_by<K: Ord>(items: impl Iterator<Item = K>) -> BTreeMap<K, i64> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

#[derive(Serialize)]
struct OverviewPage {
    tiles: Vec<Tile>,
    problems: Vec<Problem>,
}

/// One area's health on the overview.
#[derive(Serialize)]
struct Tile {
    id: &'static str,
    label: &'static str,
    href: &'static str,
    /// `bad`, `warn` or `good`.
    tone: &'static str,
    counts: Vec<TileCount>,
}

#[derive(Serialize)]
struct TileCount {
    n: i64,
    label: &'static str,
    /// The count's tone when it is not zero (a zero is never highlighted).
    tone: &'static str,
}

#[derive(Serialize)]
struct Problem {
    href: String,
    text: String,
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

/// `GET /`: tiles per area, problems first.
pub async fn overview(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let TokensStatus { summary, connections } = api::connections::status_data(&state).await?;
    let sources = api::webhook_sources::source_statuses(&state).await?;
    let source_counts = count_by(sources.iter().map(|(_, status)| status.as_str()));
    let mut device_counts: BTreeMap<&str, i64> = BTreeMap::new();
    // From the fleet summary the metrics keep (at most `fleet_summary_max_age_secs` old): the
    // overview must not pass over every device each time it is opened.
    for g in &state.metrics.fleet.get(&state.db).await?.groups {
        *device_counts.entry(g.status.as_str()).or_default() += g.devices;
    }
    let polls = api::polling::list_data(&state).await?;
    let failing_polls = polls.iter().filter(|p| p.consecutive_failures > 0).count() as i64;
    let open = alerts::open_alerts(&state.db).await?;
    let alert_counts = count_by(open.iter().map(|a| a.state.as_str()));
    let sources_in = |status: SourceStatus| source_counts.get(status.as_str()).copied().unwrap_or(0);
    let devices_in = |status: DeviceStatus| device_counts.get(status.as_str()).copied().unwrap_or(0);
    let alerts_in = |state: AlertState| alert_counts.get(state.as_str()).copied().unwrap_or(0);
    let n = |count: usize| count as i64;

    let mut problems = Vec::new();
    for a in open.iter().filter(|a| a.state == AlertState::Firing) {
        problems.push(Problem {
            href: format!("/alerts/{}", a.id),
            text: format!("{}: {}", a.severity, a.summary),
        });
    }
    for (name, _) in sources
        .iter()
        .filter(|(_, status)| *status == SourceStatus::Stale)
    {
        problems.push(Problem {
            href: "/webhooks".into(),
            text: format!("webhook source {name} is stale"),
        });
    }
    for c in connections
        .iter()
        .filter(|c| matches!(c.status, TokenHealth::NeedsReauth | TokenHealth::Expired))
    {
        problems.push(Problem {
            href: "/tokens".into(),
            text: format!("connection {} is {}", c.name, c.status),
        });
    }
    let TokenSummary {
        valid,
        expiring_soon,
        expired,
        needs_reauth,
        ..
    } = summary;
    let tiles = vec![
        Tile {
            id: "tokens",
            label: "Tokens",
            href: "/tokens",
            tone: tone(n(needs_reauth + expired), n(expiring_soon)),
            counts: vec![
                tile_count(n(needs_reauth), "need re-auth", "bad"),
                tile_count(n(expired), "expired", "bad"),
                tile_count(n(expiring_soon), "expiring", "warn"),
                tile_count(n(valid), "valid", "good"),
            ],
        },
        Tile {
            id: "webhooks",
            label: "Webhook sources",
            href: "/webhooks",
            tone: tone(sources_in(SourceStatus::Stale), 0),
            counts: vec![
                tile_count(sources_in(SourceStatus::Stale), "stale", "bad"),
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
            tone: tone(0, failing_polls),
            counts: vec![
                tile_count(failing_polls, "failing", "warn"),
                tile_count(polls.len() as i64 - failing_polls, "ok", "good"),
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
    ];
    render(
        "overview.html",
        "Overview",
        "/",
        &staff,
        &OverviewPage { tiles, problems },
    )
}

#[derive(Deserialize)]
pub struct DeviceQuery {
    search: Option<String>,
    status: Option<String>,
    sort: Option<String>,
}

const DEVICE_COLUMNS: [(&str, &str); 5] = [
    ("status", "Status"),
    ("name", "Name"),
    ("sn", "Serial / devEUI"),
    ("model", "Model"),
    ("last_seen", "Last seen"),
];

#[derive(Serialize)]
struct DevicesPage {
    devices: Vec<DeviceRow>,
    total: i64,
    columns: Vec<Column>,
    search: String,
    /// The status filter (`""` for any) and the statuses it may take.
    status: &'static str,
    statuses: &'static [DeviceStatus],
    sort: String,
}

/// A sortable column heading.
#[derive(Serialize)]
struct Column {
    label: &'static str,
    href: String,
    /// `ascending` or `descending` when the table is sorted by it.
    active: Option<&'static str>,
}

#[derive(Serialize)]
struct DeviceRow {
    id: i64,
    sn: String,
    dev_eui: Option<String>,
    name: Option<String>,
    model: Option<String>,
    status: DeviceStatus,
    last_seen_at: Option<UtcTime>,
    payload_summary: String,
}

/// A short, one-line view of a payload for the table.
fn summary(payload: Option<&str>) -> String {
    let text = payload.unwrap_or("");
    let short: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        format!("{short}…")
    } else {
        short
    }
}

/// `GET /devices?search=&status=&sort=`
pub async fn devices(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<DeviceQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = query
        .status
        .as_deref()
        .and_then(|s| s.parse::<DeviceStatus>().ok());
    let search = query.search.clone().unwrap_or_default();
    let filter = DeviceFilter {
        status,
        source_id: None,
        search: Some(search.trim().chars().take(100).collect::<String>()).filter(|s| !s.is_empty()),
        after_sn: None,
    };
    let (mut items, total) = devices::search(&state.db, &filter, 500, 0).await?;
    let sort = query.sort.clone().unwrap_or_else(|| "status".into());
    let (key, descending) = match sort.strip_prefix('-') {
        Some(key) => (key.to_owned(), true),
        None => (sort.clone(), false),
    };
    match key.as_str() {
        // Problems first: offline, then unknown, then online.
        "status" => items.sort_by_key(|d| {
            (
                match d.status {
                    DeviceStatus::Offline => 0,
                    DeviceStatus::Unknown => 1,
                    DeviceStatus::Online => 2,
                },
                d.sn.clone(),
            )
        }),
        "name" => items.sort_by_key(|d| d.name.clone().unwrap_or_default().to_lowercase()),
        "model" => items.sort_by_key(|d| d.model.clone().unwrap_or_default()),
        "last_seen" => items.sort_by_key(|d| d.last_seen_at.map(|t| t.0)),
        _ => items.sort_by_key(|d| d.sn.clone()),
    }
    if descending {
        items.reverse();
    }
    let status = status.map_or("", DeviceStatus::as_str);
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let columns = DEVICE_COLUMNS
        .iter()
        .map(|&(name, label)| {
            let next = if key == name && !descending {
                format!("-{name}")
            } else {
                name.to_owned()
            };
            Column {
                label,
                href: format!("/devices?search={}&status={status}&sort={next}", encode(&search)),
                active: (key == name).then_some(if descending { "descending" } else { "ascending" }),
            }
        })
        .collect();
    let devices = items
        .into_iter()
        .map(|d| DeviceRow {
            payload_summary: summary(d.last_payload.as_deref()),
            id: d.id,
            sn: d.sn,
            dev_eui: d.dev_eui,
            name: d.name,
            model: d.model,
            status: d.status,
            last_seen_at: d.last_seen_at,
        })
        .collect();
    let page = DevicesPage {
        devices,
        total,
        columns,
        search,
        status,
        statuses: DeviceStatus::ALL,
        sort,
    };
    render("devices.html", "Devices", "/devices", &staff, &page)
}

#[derive(Serialize)]
struct DevicePage {
    device: Device,
    events: Vec<DeviceEventRow>,
    timeline: Vec<TimelineBar>,
}

#[derive(Serialize)]
struct DeviceEventRow {
    event_time: UtcTime,
    event_type: String,
    event_id: String,
    payload: String,
}

/// One hour of the 24-hour uplink chart (SVG coordinates).
#[derive(Serialize)]
struct TimelineBar {
    x: usize,
    h: i64,
    n: i64,
    label: String,
}

/// `GET /devices/{id}`: recent events and a 24-hour uplink timeline.
pub async fn device(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let device = devices::get(&state.db, *id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no device {id}")),
        other => other.into(),
    })?;
    let events = deliveries::list_events(&state.db, None, Some(device.id), 100).await?;
    let at = now();
    let mut hours = [0i64; 24];
    for e in &events {
        let when = e.event_time.unwrap_or(e.received_at);
        let age = (at.0 - when.0).num_hours();
        if (0..24).contains(&age) {
            hours[23 - age as usize] += 1;
        }
    }
    let peak = hours.iter().copied().max().unwrap_or(0).max(1);
    let timeline = hours
        .iter()
        .enumerate()
        .map(|(i, &n)| TimelineBar {
            x: i * 20,
            h: n * 45 / peak,
            n,
            label: format!("{} h ago", 23 - i),
        })
        .collect();
    let events = events
        .into_iter()
        .take(50)
        .map(|e| DeviceEventRow {
            event_time: e.event_time.unwrap_or(e.received_at),
            payload: summary(Some(&e.payload)),
            event_type: e.event_type,
            event_id: e.event_id,
        })
        .collect();
    let title = device.name.clone().unwrap_or_else(|| device.sn.clone());
    let page = DevicePage {
        device,
        events,
        timeline,
    };
    render("device.html", &title, "/devices", &staff, &page)
}

#[derive(Serialize)]
struct WebhooksPage {
    sources: Vec<SourceView>,
    events: Vec<WebhookEvent>,
    rejections: Vec<WebhookRejection>,
    connect: ConnectHelp,
}

/// What to paste into the Milesight Development Platform, and whether it has been heard from.
#[derive(Serialize)]
struct ConnectHelp {
    /// One callback URL per source (the plain intake URL when there is none yet).
    urls: Vec<CallbackUrl>,
    /// MDP delivers only to HTTPS with a valid certificate.
    https: bool,
    /// Whether any webhook secret is configured (else every request is refused).
    secret_configured: bool,
    /// Whether any request has arrived yet (the help stays open until one has).
    heard: bool,
}

#[derive(Serialize)]
struct CallbackUrl {
    source: String,
    url: String,
    /// `waiting for the first request`, `receiving`, or `verified` (MDP's Test arrived).
    state: &'static str,
}

/// The base URL staff reach Telltale at: `alerts.public_url` when it is set, else the host the
/// browser asked for (the default public URL is the listen address, often `0.0.0.0`).
pub(super) fn public_base(state: &AppState, req: &actix_web::HttpRequest) -> String {
    if let Some(configured) = state.config.configured_public_url() {
        return configured.to_owned();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn connect_help(base: &str, sources: &[SourceView]) -> ConnectHelp {
    let mut urls: Vec<CallbackUrl> = sources
        .iter()
        .map(|s| CallbackUrl {
            url: if s.name == "default" {
                format!("{base}/webhooks/milesight")
            } else {
                format!("{base}/webhooks/milesight/{}", s.name)
            },
            state: if s.verified_at.is_some() {
                "verified"
            } else if s.last_event_at.is_some() {
                "receiving"
            } else {
                "waiting for the first request"
            },
            source: s.name.clone(),
        })
        .collect();
    if urls.is_empty() {
        urls.push(CallbackUrl {
            source: "default".into(),
            url: format!("{base}/webhooks/milesight"),
            state: "waiting for the first request",
        });
    }
    ConnectHelp {
        https: base.starts_with("https://"),
        secret_configured: sources.iter().any(|s| s.secret_configured),
        heard: sources
            .iter()
            .any(|s| s.last_event_at.is_some() || s.verified_at.is_some()),
        urls,
    }
}

/// `GET /webhooks`
pub async fn webhooks_page(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sources = api::webhook_sources::sources_data(&state).await?;
    let connect = connect_help(&public_base(&state, &req), &sources);
    let page = WebhooksPage {
        sources,
        events: deliveries::list_events(&state.db, None, None, 25).await?,
        rejections: deliveries::recent_rejections(&state.db, 25).await?,
        connect,
    };
    render("webhooks.html", "Webhooks", "/webhooks", &staff, &page)
}

#[derive(Deserialize)]
pub struct TokensQuery {
    provider: Option<String>,
    success: Option<String>,
}

#[derive(Serialize)]
struct TokensPage {
    milesight: TokenStatus,
    summary: TokenSummary,
    connections: Vec<ConnectionView>,
    windows: Vec<RateWindow>,
    log: Vec<RefreshLogEntry>,
    /// The log's filters as given (`success` is `""`, `"true"` or `"false"`).
    provider: String,
    success: String,
}

/// Refresh success per provider over one window.
#[derive(Serialize)]
struct RateWindow {
    label: &'static str,
    rows: Vec<ProviderRate>,
}

#[derive(Serialize)]
struct ProviderRate {
    provider: String,
    /// Successes over attempts, 0 to 1.
    rate: f64,
}

/// `GET /tokens`
pub async fn tokens(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<TokensQuery>,
) -> Result<HttpResponse, ApiError> {
    let milesight = state
        .milesight_token
        .status(now())
        .await
        .map_err(|e| ApiError::unavailable("token_status", e.to_string()))?;
    let TokensStatus { summary, connections } = api::connections::status_data(&state).await?;
    let mut windows = Vec::new();
    for (hours, label) in [(24, "last 24 hours"), (24 * 7, "last 7 days")] {
        let stats = api::connections::stats_data(&state, hours).await?;
        let mut by_provider: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for item in stats.items {
            let entry = by_provider.entry(item.provider).or_default();
            entry.0 += item.attempts;
            entry.1 += item.successes;
        }
        let rows = by_provider
            .into_iter()
            .map(|(provider, (attempts, ok))| ProviderRate {
                provider,
                rate: ok as f64 / attempts.max(1) as f64,
            })
            .collect();
        windows.push(RateWindow { label, rows });
    }
    let provider = query.provider.clone().filter(|p| !p.trim().is_empty());
    let success = match query.success.as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    let filter = LogFilter {
        provider: provider.clone(),
        success,
        connection_id: None,
        since: None,
    };
    let page = TokensPage {
        milesight,
        summary,
        connections,
        windows,
        log: refresh_log::query(&state.db, &filter, 50).await?,
        provider: provider.unwrap_or_default(),
        success: success.map(|s| s.to_string()).unwrap_or_default(),
    };
    render("tokens.html", "Tokens", "/tokens", &staff, &page)
}

#[derive(Serialize)]
struct PollingPage {
    items: Vec<PairView>,
}

/// `GET /polling`
pub async fn polling(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let page = PollingPage {
        items: api::polling::list_data(&state).await?,
    };
    render("polling.html", "Polling", "/polling", &staff, &page)
}

#[derive(Deserialize)]
pub struct AlertsQuery {
    state: Option<String>,
}

#[derive(Serialize)]
struct AlertsPage {
    alerts: Vec<Alert>,
    silences: Vec<Silence>,
    /// The tab shown: a state, or `open`.
    state: String,
}

/// `GET /alerts?state=`
pub async fn alerts_page(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<AlertsQuery>,
) -> Result<HttpResponse, ApiError> {
    let wanted = query.state.clone().unwrap_or_else(|| "open".into());
    // Anything unknown shows the open alerts, the page's default.
    let states = AlertState::selection(&wanted).unwrap_or_else(|_| AlertState::OPEN.to_vec());
    let page = AlertsPage {
        alerts: alerts::list(&state.db, &states, 200).await?,
        silences: alerts::silences(&state.db, now()).await?,
        state: wanted,
    };
    render("alerts.html", "Alerts", "/alerts", &staff, &page)
}

#[derive(Serialize)]
struct AlertPage {
    alert: Alert,
    history: Vec<AlertEvent>,
}

/// `GET /alerts/{id}`: the alert and its history, including why an email was held back.
pub async fn alert(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let (alert, history) = alerts::get(&state.db, *id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no alert {id}")),
        other => other.into(),
    })?;
    let title = alert.summary.clone();
    render(
        "alert.html",
        &title,
        "/alerts",
        &staff,
        &AlertPage { alert, history },
    )
}

#[derive(Serialize)]
struct SchedulerPage {
    jobs: Vec<JobView>,
}

/// `GET /scheduler`
pub async fn scheduler(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let jobs = crate::scheduler::overview(&state.db, &crate::app::job_specs(&state), None).await?;
    render(
        "scheduler.html",
        "Scheduler",
        "/scheduler",
        &staff,
        &SchedulerPage { jobs },
    )
}

#[derive(Serialize)]
struct SettingsPage {
    users: Vec<StaffUser>,
    tokens: Vec<ApiToken>,
    outbox_pending: i64,
    milesight: api::milesight::MilesightSettings,
    alert_webhooks: Vec<AlertWebhookRow>,
}

/// An alert webhook endpoint as Settings shows it: never its URL or secret.
#[derive(Serialize)]
struct AlertWebhookRow {
    name: String,
    signed: bool,
    rules: String,
}

/// `GET /settings` (admin)
pub async fn settings(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    if !staff.is_admin() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "this page needs the admin role",
        ));
    }
    let page = SettingsPage {
        users: staff::list_users(&state.db).await?,
        tokens: staff::list_api_tokens(&state.db).await?,
        outbox_pending: outbox::pending_count(&state.db).await?,
        milesight: api::milesight::settings_data(&state).await?,
        alert_webhooks: state
            .config
            .alerts
            .webhooks
            .iter()
            .map(|w| AlertWebhookRow {
                name: w.name.clone(),
                signed: w.secret.is_some(),
                rules: if w.rules.is_empty() {
                    "every rule".into()
                } else {
                    w.rules.join(", ")
                },
            })
            .collect(),
    };
    render("settings.html", "Settings", "/settings", &staff, &page)
}

#[derive(Deserialize)]
pub struct NewConnectionQuery {
    kind: Option<String>,
}

#[derive(Serialize)]
struct NewConnectionPage {
    choices: Vec<crate::providers::Choice>,
    chosen: Option<crate::providers::Choice>,
    redirect_uri: String,
}

/// `GET /connections/new?kind=`: the platforms to choose from, then the chosen one's form.
pub async fn new_connection(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<NewConnectionQuery>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let choices = crate::providers::choices();
    let chosen = query
        .kind
        .as_deref()
        .and_then(|k| choices.iter().find(|c| c.id == k).cloned());
    let page = NewConnectionPage {
        redirect_uri: super::connect::redirect_uri(&state, &req),
        choices,
        chosen,
    };
    render(
        "connection_new.html",
        "Add a connection",
        "/tokens",
        &staff,
        &page,
    )
}

/// One input of a connection's edit form, with its current value (never a secret's).
#[derive(Serialize)]
struct EditField {
    key: &'static str,
    label: &'static str,
    input: &'static str,
    placeholder: &'static str,
    value: String,
    /// For a secret: whether one is stored.
    set: bool,
}

#[derive(Serialize)]
struct ConnectionPage {
    c: ConnectionView,
    label: String,
    account: String,
    consent: bool,
    redirect_uri: String,
    fields: Vec<EditField>,
    log: Vec<RefreshLogEntry>,
}

/// `GET /connections/{id}`: facts, Connect / Reconnect, refresh, disable, delete, edit.
pub async fn connection(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    id: web::Path<i64>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = crate::storage::connections::get_connection(&state.db, *id)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => ApiError::not_found(format!("no connection with id {id}")),
            other => other.into(),
        })?;
    let secrets = crate::storage::connections::secrets(&state.crypto, &c)?;
    let credentials: serde_json::Value = secrets
        .credentials
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    let settings: serde_json::Value = serde_json::from_str(&c.settings).unwrap_or_default();
    let choice = crate::providers::choice_of(&c);
    let fields = choice
        .as_ref()
        .map(|choice| {
            choice
                .fields
                .iter()
                .map(|f| {
                    let (value, set) = match f.key.split_once('.') {
                        _ if f.key == "base_url" => (c.base_url.clone().unwrap_or_default(), false),
                        _ if f.key == "access_token" => (String::new(), secrets.access_token.is_some()),
                        _ if f.key == "refresh_token" => (String::new(), secrets.refresh_token.is_some()),
                        Some(("settings", key)) => (text_of(&settings, key), false),
                        Some(("credentials", key)) if f.secret() => {
                            (String::new(), credentials.get(key).is_some())
                        }
                        Some(("credentials", key)) => (text_of(&credentials, key), false),
                        _ => (String::new(), false),
                    };
                    EditField {
                        key: f.key,
                        label: f.label,
                        input: f.input,
                        placeholder: f.placeholder,
                        value,
                        set,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let filter = LogFilter {
        connection_id: Some(c.id),
        ..Default::default()
    };
    let page = ConnectionPage {
        label: choice
            .as_ref()
            .map_or_else(|| c.provider.clone(), |ch| ch.label.to_owned()),
        consent: choice.as_ref().is_some_and(|ch| ch.consent),
        account: crate::storage::connections::account_name(&state.db, c.account_id).await?,
        redirect_uri: super::connect::redirect_uri(&state, &req),
        fields,
        log: refresh_log::query(&state.db, &filter, 20).await?,
        c: crate::tokens::manage::view(&c, now()),
    };
    let title = format!("Connection {}", page.c.name);
    render("connection.html", &title, "/tokens", &staff, &page)
}

/// A JSON value's text form (strings without quotes), empty when absent.
fn text_of(object: &serde_json::Value, key: &str) -> String {
    match object.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let names: Vec<String> = Templates::iter().map(|n| n.to_string()).collect();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            assert!(PAGES.get_template(&name).is_ok(), "{name} does not parse");
        }
    }

    #[test]
    fn pages_escape_what_devices_and_providers_send() {
        let html = login_page("/x\"><script>", "<b>@example.com", Some("<img src=x>"));
        assert!(
            !html.contains("<script>") && !html.contains("<img src=x>") && !html.contains("<b>@"),
            "{html}"
        );
    }
}
