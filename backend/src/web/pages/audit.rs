//! `GET /settings/audit` (admin): the audit log, newest first, by person.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Base, render};
use crate::app::AppState;
use crate::audit::{Change, read_details};
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::audit::{self, AuditEntry};
use crate::storage::staff;
use crate::web::ApiError;

/// Entries per page.
const PAGE: i64 = 100;

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
    actor: Option<String>,
}

#[derive(Template)]
#[template(path = "settings_audit.html")]
struct AuditPage {
    base: Base,
    section: &'static str,
    entries: Vec<EntryRow>,
    people: Vec<String>,
    actor: String,
    /// `&actor=…` for the next page's link, or empty.
    actor_query: String,
    /// The id to page back from, when there may be older entries.
    older: Option<i64>,
    retention_days: u32,
}

struct EntryRow {
    entry: AuditEntry,
    changes: Vec<Change>,
    note: Option<String>,
}

/// `GET /settings/audit` (admin; the guard answers viewers)
pub async fn audit_page(
    state: web::Data<AppState>,
    me: web::ReqData<Staff>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let actor = query.actor.clone().unwrap_or_default();
    let entries = audit::list(
        &state.db,
        query.before,
        Some(actor.as_str()).filter(|a| !a.is_empty()),
        PAGE,
    )
    .await?;
    let older = (entries.len() as i64 == PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let mut base = Base::new("Settings", "/settings", &me);
    // An old page of the log does not change; a live refresh would only move the reader.
    base.live = 60;
    render(&AuditPage {
        base,
        section: "audit",
        entries: entries
            .into_iter()
            .map(|entry| {
                let (changes, note) = read_details(entry.details.as_deref());
                EntryRow { entry, changes, note }
            })
            .collect(),
        people: staff::list_users(&state.db)
            .await?
            .into_iter()
            .map(|u| u.email)
            .collect(),
        actor_query: if actor.is_empty() {
            String::new()
        } else {
            format!(
                "&actor={}",
                url::form_urlencoded::byte_serialize(actor.as_bytes()).collect::<String>()
            )
        },
        actor,
        older,
        retention_days: state.config.auth.audit_retention_days,
    })
}
