//! `GET /scheduler`: every background job, its schedule, last and next run.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::scheduler::JobView;
use crate::web::ApiError;

#[derive(Template)]
#[template(path = "scheduler.html")]
struct SchedulerPage {
    base: Base,
    jobs: Vec<JobView>,
}

/// `GET /scheduler`
pub async fn scheduler(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
) -> Result<HttpResponse, ApiError> {
    let jobs = crate::scheduler::overview(&state.db, &crate::app::job_specs(&state), None).await?;
    render(&SchedulerPage {
        base: Base::new("Scheduler", "/scheduler", &staff),
        jobs,
    })
}
