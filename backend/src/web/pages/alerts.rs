//! `GET /alerts?state=`: alerts by state, silences, and the form to add one.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::alerts::{Alert, Silence};
use crate::storage::{AlertState, alerts, now};
use crate::web::ApiError;

#[derive(Deserialize)]
pub struct AlertsQuery {
    state: Option<String>,
}

/// The tabs, each a selection `AlertState::selection` understands.
const TABS: [&str; 5] = ["open", "firing", "acknowledged", "silenced", "resolved"];

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    base: Base,
    alerts: Vec<Alert>,
    silences: Vec<Silence>,
    tabs: [&'static str; 5],
    /// The tab shown: a state, or `open`.
    state: String,
    /// Alerts are open and no channel can deliver them.
    reaching_nobody: bool,
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
    let (email, webhooks) = state.channels.current().await.counts();
    let reaching_nobody = email + webhooks == 0 && !alerts::open_alerts(&state.db).await?.is_empty();
    render(&AlertsPage {
        reaching_nobody,
        base: Base::new("Alerts", "/alerts", &staff),
        alerts: alerts::list(&state.db, &states, 200).await?,
        silences: alerts::silences(&state.db, now()).await?,
        tabs: TABS,
        state: wanted,
    })
}
