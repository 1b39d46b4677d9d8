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

/// One line of an alert's details: text, then a UI page it points at (its path).
struct DetailLine {
    text: String,
    link: Option<String>,
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
                }
            }
            _ => DetailLine {
                text: line.to_owned(),
                link: None,
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
    render(&AlertPage {
        base: Base::new(alert.summary.clone(), "/alerts", &staff),
        details: detail_lines(&alert.details, &state.config.alerts.public_url),
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
