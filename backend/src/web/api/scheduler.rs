//! `POST /api/scheduler` `{"action": "start"|"stop"|"run"|"status", "job": "…"}`: the
//! scheduled jobs' controls. Start/stop persist in `job_state`, so they survive restarts.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::app::{AppState, job_specs};
use crate::storage::jobs;
use crate::web::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    action: String,
    /// Required except for `status`, which without it reports every job.
    job: Option<String>,
}

pub async fn control(
    state: web::Data<AppState>,
    command: web::Json<Command>,
) -> Result<HttpResponse, ApiError> {
    let specs = job_specs(&state);
    let spec = match &command.job {
        Some(name) => Some(
            specs
                .iter()
                .find(|s| s.name == name.as_str())
                .ok_or_else(|| ApiError::not_found(format!("no job named {name:?}")))?,
        ),
        None if command.action == "status" => None,
        None => {
            return Err(ApiError::bad_request(
                "invalid_command",
                "this action needs a job",
            ));
        }
    };
    let result = match (command.action.as_str(), spec) {
        ("start" | "stop", Some(spec)) => {
            let enabled = command.action == "start";
            jobs::set_enabled(&state.db, spec.name, enabled).await?;
            tracing::info!(job = spec.name, enabled, "job switched by the API");
            None
        }
        ("run", Some(spec)) => Some(match state.job_runner.run_now(spec).await {
            Ok(summary) => json!({ "ok": true, "summary": summary }),
            Err(err) => json!({ "ok": false, "error": format!("{err:#}") }),
        }),
        ("status", _) => None,
        (other, _) => {
            return Err(ApiError::bad_request(
                "invalid_command",
                format!("unknown action {other:?}; use start, stop, run or status"),
            ));
        }
    };
    let items = crate::scheduler::overview(&state.db, &specs, spec.map(|s| s.name)).await?;
    Ok(HttpResponse::Ok().json(json!({ "action": command.action, "run": result, "jobs": items })))
}
