//! `GET /tokens`: the Milesight token, every connection by runway, success rates per provider
//! and the refresh log.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::milesight::token::TokenStatus;
use crate::present::filters;
use crate::storage::now;
use crate::storage::refresh_log::{self, LogFilter, RefreshLogEntry};
use crate::tokens::manage::ConnectionView;
use crate::web::ApiError;
use crate::web::api::{self, connections::TokenSummary, connections::TokensStatus};

#[derive(Deserialize)]
pub struct TokensQuery {
    provider: Option<String>,
    success: Option<String>,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    base: Base,
    milesight: TokenStatus,
    /// The summary's counts, labelled.
    summary: Vec<(String, usize)>,
    connections: Vec<ConnectionView>,
    windows: Vec<RateWindow>,
    log: Vec<RefreshLogEntry>,
    /// The log names connections, not their ids.
    connection_names: std::collections::HashMap<i64, String>,
    /// The log's filters as given (`success` is `""`, `"true"` or `"false"`).
    provider: String,
    success: String,
}

/// Refresh success per provider over one window.
struct RateWindow {
    label: &'static str,
    rows: Vec<ProviderRate>,
}

struct ProviderRate {
    provider: String,
    /// Successes over attempts, in whole per cent.
    percent: u32,
}

/// `GET /tokens`
pub async fn tokens(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    query: web::Query<TokensQuery>,
) -> Result<HttpResponse, ApiError> {
    let milesight = state
        .milesight_token
        .status(now())
        .await
        .map_err(|e| ApiError::unavailable("token_status", e.to_string()))?;
    let TokensStatus { summary, connections } = api::connections::status_data(&state).await?;
    let windows = success_rates(&state).await?;
    let provider = query.provider.clone().filter(|p| !p.trim().is_empty());
    let success = match query.success.as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    let filter = LogFilter {
        provider: provider.clone(),
        success,
        connection_id: None,
        since: None,
    };
    let connection_names = connections.iter().map(|c| (c.id, c.name.clone())).collect();
    render(&TokensPage {
        base: Base::new("Tokens", "/tokens", &staff),
        milesight,
        summary: summary_counts(&summary),
        connections,
        connection_names,
        windows,
        log: refresh_log::query(&state.db, &filter, 50).await?,
        provider: provider.unwrap_or_default(),
        success: success.map(|s| s.to_string()).unwrap_or_default(),
    })
}

/// The summary's counts, each under its state's words (`needs_reauth` → `needs re-authorisation`).
fn summary_counts(s: &TokenSummary) -> Vec<(String, usize)> {
    [
        ("total", s.total),
        ("valid", s.valid),
        ("expiring_soon", s.expiring_soon),
        ("expired", s.expired),
        ("missing", s.missing),
        ("needs_reauth", s.needs_reauth),
        ("disabled", s.disabled),
    ]
    .into_iter()
    .map(|(code, n)| (crate::present::state_label(code), n))
    .collect()
}

/// Refresh success per provider over the last day and the last week.
async fn success_rates(state: &AppState) -> Result<Vec<RateWindow>, ApiError> {
    let mut windows = Vec::new();
    for (hours, label) in [(24, "last 24 hours"), (24 * 7, "last 7 days")] {
        let stats = api::connections::stats_data(state, hours).await?;
        let mut by_provider: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for item in stats.items {
            let entry = by_provider.entry(item.provider).or_default();
            entry.0 += item.attempts;
            entry.1 += item.successes;
        }
        let rows = by_provider
            .into_iter()
            .map(|(provider, (attempts, ok))| ProviderRate {
                provider,
                percent: (ok as f64 * 100.0 / attempts.max(1) as f64).round() as u32,
            })
            .collect();
        windows.push(RateWindow { label, rows });
    }
    Ok(windows)
}
