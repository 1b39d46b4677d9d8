//! `GET /account`: who you are signed in as, and changing your own password (any role).

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::UtcTime;
use crate::web::ApiError;

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    base: Base,
    last_login: Option<UtcTime>,
}

/// `GET /account`
pub async fn account(me: web::ReqData<Staff>) -> Result<HttpResponse, ApiError> {
    render(&AccountPage {
        base: Base::new("Account", "/account", &me),
        last_login: me.user.last_login_at,
    })
}
