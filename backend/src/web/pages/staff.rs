//! `GET /settings/staff` (admin): people, their roles, status and passwords, and API tokens.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::staff::{self, ApiToken, StaffUser};
use crate::web::ApiError;

#[derive(Template)]
#[template(path = "settings_staff.html")]
struct StaffPage {
    base: Base,
    section: &'static str,
    users: Vec<UserRow>,
    tokens: Vec<TokenRow>,
    /// Whether a reset link goes by email (an SMTP server is set) or to the server log.
    reset_by_email: bool,
    reset_hours: u64,
}

struct UserRow {
    user: StaffUser,
    is_me: bool,
}

struct TokenRow {
    token: ApiToken,
    /// The email of the person the token acts as.
    owner: String,
}

/// `GET /settings/staff` (admin; the guard answers viewers)
pub async fn staff_page(
    state: web::Data<AppState>,
    me: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let users = staff::list_users(&state.db).await?;
    let owner = |id: i64| {
        users
            .iter()
            .find(|u| u.id == id)
            .map_or_else(|| format!("user #{id}"), |u| u.email.clone())
    };
    let tokens = staff::list_api_tokens(&state.db)
        .await?
        .into_iter()
        .map(|token| TokenRow {
            owner: owner(token.user_id),
            token,
        })
        .collect();
    render(&StaffPage {
        base: Base::new("Settings", "/settings", &me),
        section: "staff",
        users: users
            .iter()
            .map(|user| UserRow {
                is_me: user.id == me.user.id,
                user: user.clone(),
            })
            .collect(),
        tokens,
        reset_by_email: state.channels.current().await.smtp.is_some(),
        reset_hours: state.config.auth.reset_link_hours.as_secs() / 3600,
    })
}
