//! `GET /devices?search=&status=&sort=`: the device list, filtered and sorted.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Base, one_line, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::devices::{self, Device, DeviceFilter};
use crate::storage::{DeviceStatus, UtcTime};
use crate::web::ApiError;

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

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    base: Base,
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
struct Column {
    label: &'static str,
    href: String,
    /// `ascending` or `descending` when the table is sorted by it.
    active: Option<&'static str>,
}

struct DeviceRow {
    id: i64,
    sn: String,
    dev_eui: Option<String>,
    /// The name, else the serial.
    shown_name: String,
    model: Option<String>,
    status: DeviceStatus,
    last_seen_at: Option<UtcTime>,
    payload_summary: String,
}

/// A `sort` parameter: a column's name, `-` first for descending.
struct Sort {
    key: String,
    descending: bool,
}

impl Sort {
    fn parse(sort: &str) -> Sort {
        match sort.strip_prefix('-') {
            Some(key) => Sort {
                key: key.to_owned(),
                descending: true,
            },
            None => Sort {
                key: sort.to_owned(),
                descending: false,
            },
        }
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
    let order = Sort::parse(&sort);
    sort_devices(&mut items, &order);
    let status = status.map_or("", DeviceStatus::as_str);
    render(&DevicesPage {
        base: Base::new("Devices", "/devices", &staff),
        columns: columns(&order, &search, status),
        devices: items.into_iter().map(row).collect(),
        total,
        search,
        status,
        statuses: DeviceStatus::ALL,
        sort,
    })
}

fn sort_devices(items: &mut [Device], order: &Sort) {
    match order.key.as_str() {
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
    if order.descending {
        items.reverse();
    }
}

/// The column headings, each linking to the table sorted by it (again: the other way).
fn columns(order: &Sort, search: &str, status: &str) -> Vec<Column> {
    let search: String = url::form_urlencoded::byte_serialize(search.as_bytes()).collect();
    DEVICE_COLUMNS
        .iter()
        .map(|&(name, label)| {
            let sorted_by_it = order.key == name;
            let next = if sorted_by_it && !order.descending {
                format!("-{name}")
            } else {
                name.to_owned()
            };
            Column {
                label,
                href: format!("/devices?search={search}&status={status}&sort={next}"),
                active: sorted_by_it.then_some(if order.descending {
                    "descending"
                } else {
                    "ascending"
                }),
            }
        })
        .collect()
}

fn row(d: Device) -> DeviceRow {
    DeviceRow {
        payload_summary: one_line(d.last_payload.as_deref()),
        id: d.id,
        shown_name: d.name.unwrap_or_else(|| d.sn.clone()),
        sn: d.sn,
        dev_eui: d.dev_eui,
        model: d.model,
        status: d.status,
        last_seen_at: d.last_seen_at,
    }
}
