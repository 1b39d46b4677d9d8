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
    history: Vec<AlertEvent>,
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
        alert,
        history,
    })
}
