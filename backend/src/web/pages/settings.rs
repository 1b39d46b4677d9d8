//! `GET /settings` (admin): Milesight, notifications (email and alert webhooks), users and API
//! tokens.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::alerts::channels::{ChannelsView, Origin, TlsMode};
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
    /// Every notification channel and where its values come from; never a secret.
    notifications: ChannelsView,
}

/// `GET /settings` (admin)
pub async fn settings(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    if !staff.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
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
        notifications: state
            .channels
            .view()
            .await
            .map_err(api::notifications::channels_error)?,
    })
}
