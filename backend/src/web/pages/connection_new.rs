//! `GET /connections/new?kind=`: the platforms to choose from, then the chosen one's form.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::providers::Choice;
use crate::web::ApiError;

#[derive(Deserialize)]
pub struct NewConnectionQuery {
    kind: Option<String>,
}

#[derive(Template)]
#[template(path = "connection_new.html")]
struct NewConnectionPage {
    base: Base,
    choices: Vec<Choice>,
    chosen: Option<Choice>,
    redirect_uri: String,
}

/// `GET /connections/new?kind=`: the platforms to choose from, then the chosen one's form.
pub async fn new_connection(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<NewConnectionQuery>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let choices = crate::providers::choices();
    let chosen = query
        .kind
        .as_deref()
        .and_then(|k| choices.iter().find(|c| c.id == k).cloned());
    render(&NewConnectionPage {
        base: Base::new("Add a connection", "/tokens", &staff),
        redirect_uri: crate::web::connect::redirect_uri(&state, &req),
        choices,
        chosen,
    })
}
