//! The staff web UI: pages rendered on the server from `frontend/templates/` (minijinja, HTML
//! auto-escaped), from the same data the JSON API serves. `frontend/static/telltale.js` keeps
//! each page live by re-fetching it and swapping `<main>`, and sends the buttons' requests with
//! the CSRF token.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::{HttpResponse, web};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use rust_embed::RustEmbed;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::api;
use crate::app::AppState;
use crate::auth::Staff;
use crate::storage::devices::{self, DeviceFilter};
use crate::storage::refresh_log::{self, LogFilter};
use crate::storage::{AlertState, StorageError, TokenHealth, alerts, deliveries, now, outbox, staff};

#[derive(RustEmbed)]
#[folder = "../frontend/templates/"]
struct Templates;

/// Every template, parsed once (a broken template fails the unit test below, not a page view).
static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
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

/// Renders `template` inside the layout with the page's `data`.
fn render(
    template: &str,
    title: &str,
    active: &str,
    staff: &Staff,
    data: Value,
) -> Result<HttpResponse, ApiError> {
    let nav: Vec<Value> = NAV
        .iter()
        .filter(|(href, _)| *href != "/settings" || staff.is_admin())
        .map(|(href, label)| json!({"href": href, "label": label}))
        .collect();
    let base = context! {
        title => title,
        active => active,
        nav => Serde(nav),
        user => staff.user.email.clone(),
        role => staff.user.role.clone(),
        admin => staff.is_admin(),
        csrf => staff.csrf(),
        live => 10,
        generated_at => now().to_string(),
    };
    let html = PAGES
        .get_template(template)
        .and_then(|t| t.render(context! { ..base, ..minijinja::Value::from(Serde(data)) }))
        .map_err(|e| {
            tracing::error!(template, error = %format!("{e:#}"), "cannot render a page");
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "render_failed",
                "the page could not be rendered",
            )
        })?;
    Ok(HttpResponse::Ok()
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

fn count_by<'a>(items: impl Iterator<Item = &'a str>) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// `GET /`: tiles per area, problems first.
pub async fn overview(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let tokens = api::connections::status_data(&state).await?;
    let summary = &tokens["summary"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let sources = api::webhook_sources::sources_data(&state).await?;
    let source_items = sources["items"].as_array().cloned().unwrap_or_default();
    let source_counts = count_by(source_items.iter().filter_map(|s| s["status"].as_str()));
    let device_counts = count_by(
        devices::health(&state.db)
            .await?
            .iter()
            .map(|d| d.status.as_str()),
    );
    let polls = api::polling::list_data(&state).await?;
    let poll_items = polls["items"].as_array().cloned().unwrap_or_default();
    let failing_polls = poll_items
        .iter()
        .filter(|p| p["consecutive_failures"].as_i64().unwrap_or(0) > 0)
        .count() as i64;
    let open = alerts::open_alerts(&state.db).await?;
    let alert_counts = count_by(open.iter().map(|a| a.state.as_str()));
    let get = |m: &HashMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);

    let mut problems = Vec::new();
    for a in open.iter().filter(|a| a.state == AlertState::Firing) {
        problems.push(
            json!({"href": format!("/alerts/{}", a.id), "text": format!("{}: {}", a.severity, a.summary)}),
        );
    }
    for s in source_items.iter().filter(|s| s["status"] == "STALE") {
        problems.push(json!({"href": "/webhooks", "text": format!("webhook source {} is stale", s["name"].as_str().unwrap_or("?"))}));
    }
    let unusable = [TokenHealth::NeedsReauth, TokenHealth::Expired];
    for c in tokens["connections"].as_array().into_iter().flatten() {
        if unusable.iter().any(|h| c["status"] == h.as_str()) {
            problems.push(json!({"href": "/tokens", "text": format!("connection {} is {}", c["name"].as_str().unwrap_or("?"), c["status"].as_str().unwrap_or("?"))}));
        }
    }
    let tone = |bad: i64, warn: i64| {
        if bad > 0 {
            "bad"
        } else if warn > 0 {
            "warn"
        } else {
            "good"
        }
    };
    let count = |n: i64, label: &str, tone: &str| json!({"n": n, "label": label, "tone": if n > 0 { tone } else { "" }});
    let tiles = json!([
        {"id": "tokens", "label": "Tokens", "href": "/tokens",
         "tone": tone(n(&summary["needs_reauth"]) + n(&summary["expired"]), n(&summary["expiring_soon"])),
         "counts": [count(n(&summary["needs_reauth"]), "need re-auth", "bad"), count(n(&summary["expired"]), "expired", "bad"),
                    count(n(&summary["expiring_soon"]), "expiring", "warn"), count(n(&summary["valid"]), "valid", "good")]},
        {"id": "webhooks", "label": "Webhook sources", "href": "/webhooks",
         "tone": tone(get(&source_counts, "STALE"), 0),
         "counts": [count(get(&source_counts, "STALE"), "stale", "bad"), count(get(&source_counts, "ACTIVE"), "active", "good")]},
        {"id": "devices", "label": "Devices", "href": "/devices",
         "tone": tone(0, get(&device_counts, "offline")),
         "counts": [count(get(&device_counts, "offline"), "offline", "warn"), count(get(&device_counts, "online"), "online", "good"),
                    count(get(&device_counts, "unknown"), "unknown", "")]},
        {"id": "polls", "label": "Polls", "href": "/polling",
         "tone": tone(0, failing_polls),
         "counts": [count(failing_polls, "failing", "warn"), count(poll_items.len() as i64 - failing_polls, "ok", "good")]},
        {"id": "alerts", "label": "Alerts", "href": "/alerts",
         "tone": tone(get(&alert_counts, "firing"), get(&alert_counts, "acknowledged")),
         "counts": [count(get(&alert_counts, "firing"), "firing", "bad"), count(get(&alert_counts, "acknowledged"), "acknowledged", "warn"),
                    count(get(&alert_counts, "silenced"), "silenced", "")]},
    ]);
    render(
        "overview.html",
        "Overview",
        "/",
        &staff,
        json!({"tiles": tiles, "problems": problems}),
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
        .clone()
        .filter(|s| ["online", "offline", "unknown"].contains(&s.as_str()));
    let search = query.search.clone().unwrap_or_default();
    let filter = DeviceFilter {
        status: status.clone(),
        source_id: None,
        search: Some(search.trim().chars().take(100).collect::<String>()).filter(|s| !s.is_empty()),
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
                match d.status.as_str() {
                    "offline" => 0,
                    "unknown" => 1,
                    _ => 2,
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
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let columns: Vec<Value> = DEVICE_COLUMNS
        .iter()
        .map(|(name, label)| {
            let next = if key == *name && !descending { format!("-{name}") } else { (*name).to_owned() };
            json!({
                "label": label,
                "href": format!("/devices?search={}&status={}&sort={}", encode(&search), status.as_deref().unwrap_or(""), next),
                "active": (key == *name).then_some(if descending { "descending" } else { "ascending" }),
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "sn": d.sn, "dev_eui": d.dev_eui, "name": d.name, "model": d.model,
                "status": d.status, "last_seen_at": d.last_seen_at,
                "payload_summary": summary(d.last_payload.as_deref()),
            })
        })
        .collect();
    render(
        "devices.html",
        "Devices",
        "/devices",
        &staff,
        json!({"devices": rows, "total": total, "columns": columns, "search": search, "status": status.unwrap_or_default(), "sort": sort}),
    )
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
    let timeline: Vec<Value> = hours
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"x": i * 20, "h": n * 45 / peak, "n": n, "label": format!("{} h ago", 23 - i)}))
        .collect();
    let events: Vec<Value> = events
        .iter()
        .take(50)
        .map(|e| json!({"event_time": e.event_time.unwrap_or(e.received_at), "event_type": e.event_type, "event_id": e.event_id, "payload": summary(Some(&e.payload))}))
        .collect();
    let title = device.name.clone().unwrap_or_else(|| device.sn.clone());
    render(
        "device.html",
        &title,
        "/devices",
        &staff,
        json!({"device": device, "events": events, "timeline": timeline}),
    )
}

/// `GET /webhooks`
pub async fn webhooks_page(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let sources = api::webhook_sources::sources_data(&state).await?;
    let events = deliveries::list_events(&state.db, None, None, 25).await?;
    let rejections = deliveries::recent_rejections(&state.db, 25).await?;
    render(
        "webhooks.html",
        "Webhooks",
        "/webhooks",
        &staff,
        json!({"sources": sources["items"], "events": events, "rejections": rejections}),
    )
}

#[derive(Deserialize)]
pub struct TokensQuery {
    provider: Option<String>,
    success: Option<String>,
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
    let status = api::connections::status_data(&state).await?;
    let mut windows = Vec::new();
    for (hours, label) in [(24, "last 24 hours"), (24 * 7, "last 7 days")] {
        let stats = api::connections::stats_data(&state, hours).await?;
        let mut by_provider: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for item in stats["items"].as_array().into_iter().flatten() {
            let entry = by_provider
                .entry(item["provider"].as_str().unwrap_or("?").to_owned())
                .or_default();
            entry.0 += item["attempts"].as_i64().unwrap_or(0);
            entry.1 += item["successes"].as_i64().unwrap_or(0);
        }
        let rows: Vec<Value> = by_provider
            .into_iter()
            .map(|(provider, (attempts, ok))| json!({"provider": provider, "rate": ok as f64 / attempts.max(1) as f64}))
            .collect();
        windows.push(json!({"label": label, "rows": rows}));
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
    let log = refresh_log::query(&state.db, &filter, 50).await?;
    render(
        "tokens.html",
        "Tokens",
        "/tokens",
        &staff,
        json!({
            "milesight": milesight, "summary": status["summary"], "connections": status["connections"],
            "windows": windows, "log": log, "provider": provider.unwrap_or_default(),
            "success": success.map(|s| s.to_string()).unwrap_or_default(),
        }),
    )
}

/// `GET /polling`
pub async fn polling(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let data = api::polling::list_data(&state).await?;
    render("polling.html", "Polling", "/polling", &staff, data)
}

#[derive(Deserialize)]
pub struct AlertsQuery {
    state: Option<String>,
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
    let items = alerts::list(&state.db, &states, 200).await?;
    let silences = alerts::silences(&state.db, now()).await?;
    render(
        "alerts.html",
        "Alerts",
        "/alerts",
        &staff,
        json!({"alerts": items, "silences": silences, "state": wanted}),
    )
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
        json!({"alert": alert, "history": history}),
    )
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
        json!({"jobs": jobs}),
    )
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
    let users = staff::list_users(&state.db).await?;
    let tokens = staff::list_api_tokens(&state.db).await?;
    let pending = outbox::pending_count(&state.db).await?;
    render(
        "settings.html",
        "Settings",
        "/settings",
        &staff,
        json!({"users": users, "tokens": tokens, "outbox_pending": pending}),
    )
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
