//! `GET /alerts/{id}`: one alert and its history, including why an email was held back.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::alerts::{Alert, AlertEvent};
use crate::storage::{StorageError, alerts};
use crate::web::ApiError;

#[derive(Template)]
#[template(path = "alert.html")]
struct AlertPage {
    base: Base,
    alert: Alert,
    /// The details line by line, a link to a UI page made clickable.
    details: Vec<DetailLine>,
    history: Vec<AlertEvent>,
}

/// One line of an alert's details: text, then a UI page it points at (its path), or the
/// devices it lists, each linked to its page when it is known.
struct DetailLine {
    text: String,
    link: Option<String>,
    devices: Vec<(String, Option<i64>)>,
    /// What follows the listed devices ("and 12 more").
    after: String,
}

/// The prefix of a grouped offline alert's list of serial numbers (`alerts::rules`).
const LISTED: &str = "Offline: ";

/// Links the serial numbers a grouped alert lists to their device pages.
async fn link_devices(db: &crate::storage::Db, lines: &mut [DetailLine]) -> Result<(), ApiError> {
    for line in lines.iter_mut() {
        let Some(list) = line.text.strip_prefix(LISTED).map(str::to_owned) else {
            continue;
        };
        let (serials, after) = match list.split_once(" and ") {
            Some((serials, more)) => (serials.to_owned(), format!(" and {more}")),
            None => (list, String::new()),
        };
        let serials: Vec<String> = serials
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let ids = crate::storage::devices::ids_by_sn(db, &serials).await?;
        line.devices = serials
            .into_iter()
            .map(|sn| {
                let id = ids.get(&sn).copied();
                (sn, id)
            })
            .collect();
        line.text = LISTED.trim_end().to_owned();
        line.after = after;
    }
    Ok(())
}

/// Splits details into lines; a URL under `public_url` (the emails' "Look here: …") becomes
/// a link to that page of this UI, whatever host the browser came by.
fn detail_lines(details: &str, public_url: &str) -> Vec<DetailLine> {
    let base = public_url.trim_end_matches('/');
    details
        .lines()
        .map(|line| match line.find(base).filter(|_| !base.is_empty()) {
            Some(at) if line[at + base.len()..].starts_with('/') => {
                let path = line[at + base.len()..].split_whitespace().next().unwrap_or("/");
                DetailLine {
                    text: line[..at].trim_end().to_owned(),
                    link: Some(path.to_owned()),
                    devices: Vec::new(),
                    after: String::new(),
                }
            }
            _ => DetailLine {
                text: line.to_owned(),
                link: None,
                devices: Vec::new(),
                after: String::new(),
            },
        })
        .collect()
}

/// `GET /alerts/{id}`
pub async fn alert(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let (alert, history) = alerts::get(&state.db, *id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found(format!("no alert {id}")),
        other => other.into(),
    })?;
    let mut details = detail_lines(&alert.details, &state.config.alerts.public_url);
    link_devices(&state.db, &mut details).await?;
    render(&AlertPage {
        base: Base::new(alert.summary.clone(), "/alerts", &staff),
        details,
        alert,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_to_a_ui_page_is_made_clickable() {
        let lines = detail_lines(
            "Notice at 10:00: stopped\nLook here: https://t.example/webhooks\nplain",
            "https://t.example/",
        );
        assert_eq!(lines[1].text, "Look here:");
        assert_eq!(lines[1].link.as_deref(), Some("/webhooks"));
        assert!(lines[0].link.is_none() && lines[2].link.is_none());
    }
}
