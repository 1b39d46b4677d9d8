//! `GET /settings` (admin): Milesight, email, alert webhooks, users and API tokens.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::milesight::token::ApiOrigin;
use crate::present::filters;
use crate::storage::staff::{ApiToken, StaffUser};
use crate::storage::{outbox, staff};
use crate::web::ApiError;
use crate::web::api;

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    base: Base,
    users: Vec<StaffUser>,
    tokens: Vec<ApiToken>,
    outbox_pending: i64,
    milesight: api::milesight::MilesightSettings,
    /// Whether the Milesight application is set in the config or environment (read-only here).
    milesight_from_config: bool,
    alert_webhooks: Vec<AlertWebhookRow>,
}

/// An alert webhook endpoint as Settings shows it: never its URL or secret.
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
    let milesight = api::milesight::settings_data(&state).await?;
    render(&SettingsPage {
        base: Base::new("Settings", "/settings", &staff),
        milesight_from_config: milesight.origin == Some(ApiOrigin::Config),
        milesight,
        users: staff::list_users(&state.db).await?,
        tokens: staff::list_api_tokens(&state.db).await?,
        outbox_pending: outbox::pending_count(&state.db).await?,
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
    })
}
