//! `GET /polling`: every (connection, endpoint) pair with its schedule and last outcome.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::web::ApiError;
use crate::web::api::{self, polling::PairView};

#[derive(Template)]
#[template(path = "polling.html")]
struct PollingPage {
    base: Base,
    items: Vec<PairView>,
}

/// `GET /polling`
pub async fn polling(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    render(&PollingPage {
        base: Base::new("Polling", "/polling", &staff),
        items: api::polling::list_data(&state).await?,
    })
}
