//! `GET /settings` (admin): Milesight and notifications (email and alert webhooks). Staff
//! and API tokens are `staff.rs`, the audit log `audit.rs`.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::alerts::channels::{ChannelsView, Origin, TlsMode};
use crate::app::AppState;
use crate::auth::Staff;
use crate::milesight::token::ApiOrigin;
use crate::present::filters;
use crate::storage::outbox;
use crate::web::ApiError;
use crate::web::api;

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    base: Base,
    /// Which settings page `settings_nav.html` marks.
    section: &'static str,
    outbox_pending: i64,
    milesight: api::milesight::MilesightSettings,
    /// Whether the Milesight application is set in the config or environment (read-only here).
    milesight_from_config: bool,
    /// Every notification channel and where its values come from; never a secret.
    notifications: ChannelsView,
}

/// `GET /settings` (admin; the guard answers viewers)
pub async fn settings(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let milesight = api::milesight::settings_data(&state).await?;
    render(&SettingsPage {
        base: Base::new("Settings", "/settings", &staff),
        milesight_from_config: milesight.origin == Some(ApiOrigin::Config),
        milesight,
        section: "setup",
        outbox_pending: outbox::pending_count(&state.db).await?,
        notifications: state
            .channels
            .view()
            .await
            .map_err(api::notifications::channels_error)?,
    })
}
