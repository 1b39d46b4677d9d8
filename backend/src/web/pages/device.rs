//! `GET /devices/{id}`: a device's facts, its uplinks over 24 hours and its recent events.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, one_line, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::deliveries::{self, WebhookEvent};
use crate::storage::devices::{self, Device};
use crate::storage::{StorageError, UtcTime, now};
use crate::web::ApiError;

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    base: Base,
    device: Device,
    events: Vec<DeviceEventRow>,
    timeline: Timeline,
}

struct DeviceEventRow {
    event_time: UtcTime,
    event_type: String,
    event_id: String,
    payload: String,
}

/// One hour of the 24-hour uplink chart (SVG coordinates).
struct TimelineBar {
    x: usize,
    h: i64,
    n: i64,
    label: String,
}

/// The uplink chart: its bars, and axes a person can read it by.
struct Timeline {
    bars: Vec<TimelineBar>,
    /// The most uplinks in one hour (the top of the value axis).
    peak: i64,
    /// Time-axis ticks: x and the local clock hour (the last is "now").
    ticks: Vec<(usize, String)>,
    /// The zone the hours are in, named.
    zone: String,
}

/// Where the plot starts: room for the value axis' labels (`device.html` draws the axes).
const PLOT_X: usize = 40;

/// `GET /devices/{id}`
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
    let title = device.name.clone().unwrap_or_else(|| device.sn.clone());
    render(&DevicePage {
        base: Base::new(title, "/devices", &staff),
        timeline: timeline(&events, now()),
        events: events.into_iter().take(50).map(event_row).collect(),
        device,
    })
}

/// Uplinks per hour over the 24 hours before `at`, scaled to the chart's height, with a
/// value axis (0 to the busiest hour) and a time axis in local clock hours.
fn timeline(events: &[WebhookEvent], at: UtcTime) -> Timeline {
    let mut hours = [0i64; 24];
    for e in events {
        let when = e.event_time.unwrap_or(e.received_at);
        let age = (at.0 - when.0).num_hours();
        if (0..24).contains(&age) {
            hours[23 - age as usize] += 1;
        }
    }
    let peak = hours.iter().copied().max().unwrap_or(0).max(1);
    let zone = crate::present::zone();
    let hour_of = |i: usize| {
        let start = at.0 - chrono::Duration::hours(23 - i as i64);
        start.with_timezone(&zone).format("%H:00").to_string()
    };
    let bars = hours
        .iter()
        .enumerate()
        .map(|(i, &n)| TimelineBar {
            x: PLOT_X + i * 20,
            h: n * 45 / peak,
            n,
            label: format!("{} h ago, from {}", 23 - i, hour_of(i)),
        })
        .collect();
    let mut ticks: Vec<(usize, String)> = (0..24)
        .step_by(6)
        .map(|i| (PLOT_X + i * 20, hour_of(i)))
        .collect();
    ticks.push((PLOT_X + 23 * 20 + 9, "now".to_owned()));
    Timeline {
        bars,
        peak,
        ticks,
        zone: at.0.with_timezone(&zone).format("%Z").to_string(),
    }
}

fn event_row(e: WebhookEvent) -> DeviceEventRow {
    DeviceEventRow {
        event_time: e.event_time.unwrap_or(e.received_at),
        payload: one_line(Some(&e.payload)),
        event_type: e.event_type,
        event_id: e.event_id,
    }
}
