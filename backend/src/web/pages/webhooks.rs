//! `GET /webhooks`: what to paste into the Milesight Development Platform, each source's
//! health, recent events and refused requests.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::storage::deliveries::{self, WebhookEvent, WebhookRejection};
use crate::web::ApiError;
use crate::web::api::{self, webhook_sources::SourceView};

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    base: Base,
    sources: Vec<SourceView>,
    events: Vec<WebhookEvent>,
    /// Each event's device as people name it.
    device_names: std::collections::HashMap<i64, String>,
    rejections: Vec<WebhookRejection>,
    connect: ConnectHelp,
}

/// What to paste into the Milesight Development Platform, and whether it has been heard from.
struct ConnectHelp {
    /// One callback URL per source (the plain intake URL when there is none yet).
    urls: Vec<CallbackUrl>,
    /// MDP delivers only to HTTPS with a valid certificate.
    https: bool,
    /// Whether any webhook secret is configured (else every request is refused).
    secret_configured: bool,
    /// Whether any request has arrived yet (the help stays open until one has).
    heard: bool,
}

struct CallbackUrl {
    source: String,
    url: String,
    /// `waiting for the first request`, `receiving`, or `verified` (MDP's Test arrived).
    state: &'static str,
    /// The state's status class: `ok`, `active` or `unknown`.
    tone: &'static str,
}

/// The base URL staff reach Telltale at: `alerts.public_url` when it is set, else the host the
/// browser asked for (the default public URL is the listen address, often `0.0.0.0`).
pub(crate) fn public_base(state: &AppState, req: &actix_web::HttpRequest) -> String {
    if let Some(configured) = state.config.configured_public_url() {
        return configured.to_owned();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn connect_help(base: &str, sources: &[SourceView]) -> ConnectHelp {
    let mut urls: Vec<CallbackUrl> = sources
        .iter()
        .map(|s| {
            let (state, tone) = if s.verified_at.is_some() {
                ("verified", "ok")
            } else if s.last_event_at.is_some() {
                ("receiving", "active")
            } else {
                ("waiting for the first request", "unknown")
            };
            CallbackUrl {
                url: if s.name == "default" {
                    format!("{base}/webhooks/milesight")
                } else {
                    format!("{base}/webhooks/milesight/{}", s.name)
                },
                state,
                tone,
                source: s.name.clone(),
            }
        })
        .collect();
    if urls.is_empty() {
        urls.push(CallbackUrl {
            source: "default".into(),
            url: format!("{base}/webhooks/milesight"),
            state: "waiting for the first request",
            tone: "unknown",
        });
    }
    ConnectHelp {
        https: base.starts_with("https://"),
        secret_configured: sources.iter().any(|s| s.secret_configured),
        heard: sources
            .iter()
            .any(|s| s.last_event_at.is_some() || s.verified_at.is_some()),
        urls,
    }
}

/// `GET /webhooks`
pub async fn webhooks_page(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sources = api::webhook_sources::sources_data(&state).await?;
    let connect = connect_help(&public_base(&state, &req), &sources);
    let events = deliveries::list_events(&state.db, None, None, 25).await?;
    let ids: Vec<i64> = events.iter().filter_map(|e| e.device_id).collect();
    let device_names = crate::storage::devices::names(&state.db, &ids).await?;
    render(&WebhooksPage {
        base: Base::new("Webhooks", "/webhooks", &staff),
        sources,
        events,
        device_names,
        rejections: deliveries::recent_rejections(&state.db, 25).await?,
        connect,
    })
}
