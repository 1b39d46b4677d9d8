//! The alert rules: plain functions from the signals the other loops wrote (connections,
//! poll state, webhook sources, devices) to the conditions that hold now, and the evaluation
//! that opens, refreshes and resolves alerts from them, queuing one email per change.
//!
//! Cause mutes effect: while a connection's token is failing, its poll failures are held back
//! and named in the token alert; while a webhook source is down, its quiet devices are folded
//! into the source alert.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::templates::{self, AlertView};
use crate::alerts::settings::AlertsConfig;
use crate::config::Config;
use crate::milesight::token::is_milesight;
use crate::present;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::alerts::{self as store, Alert, Firing, Notification};
use crate::storage::connections::{self, Connection};
use crate::storage::deliveries::{self, WebhookSource};
use crate::storage::devices::{self, Device};
use crate::storage::polling::{self as poll_store, PollState};
use crate::storage::{AlertState, ConnectionStatus, SourceStatus};
use crate::storage::{Db, StorageResult, UtcTime, now};

pub const EVALUATION_JOB: &str = "alert-evaluation";

/// Every rule `conditions` knows (for per-rule recipients and silences).
pub const RULES: &[&str] = &[
    "token_refresh_failing",
    "token_needs_reauth",
    "token_runway",
    "poll_failing",
    "webhook_source_stale",
    "milesight_system_notice",
    "device_offline",
    "devices_offline",
];

/// How many serial numbers a grouped `devices_offline` alert lists (the rest are counted).
const LISTED_DEVICES: usize = 100;

/// What the rules look at.
pub struct Signals {
    /// The connections that may alert (see `connections::alert_candidates`), not all of them.
    pub connections: Vec<Connection>,
    /// The failing poll pairs.
    pub polls: Vec<PollState>,
    pub sources: Vec<WebhookSource>,
    /// The offline devices by source (online devices never alert), never the whole fleet.
    pub offline: Vec<OfflineGroup>,
}

/// The offline devices of one source: how many, and every one of them while they are few
/// enough to alert one by one, else the first `LISTED_DEVICES` by serial number.
pub struct OfflineGroup {
    pub source_id: Option<i64>,
    pub count: usize,
    pub devices: Vec<Device>,
}

/// How many of a source's `offline` devices the rules need: all of them for one alert each,
/// or the ones a grouped alert lists.
fn listed(offline: usize, config: &AlertsConfig) -> usize {
    if offline > config.device_offline_group_threshold {
        LISTED_DEVICES.min(offline)
    } else {
        offline
    }
}

/// Reads the offline devices by source: one grouped count, then per source only the devices
/// the rules will name, so memory follows the alerts, not the fleet.
pub async fn offline_groups(db: &Db, config: &AlertsConfig) -> StorageResult<Vec<OfflineGroup>> {
    let mut groups = Vec::new();
    for (source_id, count) in devices::offline_counts(db).await? {
        let count = usize::try_from(count).unwrap_or(0);
        let limit = i64::try_from(listed(count, config)).unwrap_or(i64::MAX);
        groups.push(OfflineGroup {
            source_id,
            count,
            devices: devices::offline_of_source(db, source_id, limit).await?,
        });
    }
    Ok(groups)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    pub firing: usize,
    pub opened: usize,
    pub reminded: usize,
    pub resolved: usize,
}

/// Which email an alert change sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Firing,
    Reminder,
    Resolved,
}

/// A time in an alert's stored text: local with the zone named (a relative time would be
/// stale by the time someone reads it).
fn when(t: Option<UtcTime>) -> String {
    t.map_or_else(|| "never".into(), |t| present::local(t, present::zone()))
}

/// The conditions that hold at `at`.
pub fn conditions(signals: &Signals, config: &AlertsConfig, at: UtcTime) -> Vec<Firing> {
    let mut firing = Vec::new();
    let link = |path: String| format!("{}{path}", config.public_url);

    // Polls first, so a failing token can name the poll failures it holds back.
    let token_failing: HashSet<i64> = signals
        .connections
        .iter()
        .filter(|c| {
            c.status == ConnectionStatus::NeedsReauth
                || (c.status != ConnectionStatus::Disabled
                    && c.consecutive_failures >= config.refresh_failures)
        })
        .map(|c| c.id)
        .collect();
    let mut held_back: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for poll in signals
        .polls
        .iter()
        .filter(|p| p.enabled && p.consecutive_failures >= config.poll_failures)
    {
        if token_failing.contains(&poll.connection_id) {
            held_back
                .entry(poll.connection_id)
                .or_default()
                .push(poll.endpoint.clone());
            continue;
        }
        let name = signals
            .connections
            .iter()
            .find(|c| c.id == poll.connection_id)
            .map_or_else(
                || format!("connection {}", poll.connection_id),
                |c| c.name.clone(),
            );
        firing.push(Firing {
            key: format!("poll_failing:connection:{}:{}", poll.connection_id, poll.endpoint),
            rule: "poll_failing".into(),
            subject: format!("connection:{}:{}", poll.connection_id, poll.endpoint),
            severity: "warning".into(),
            summary: format!("polling {} of {name} has failed {} times in a row", poll.endpoint, poll.consecutive_failures),
            details: format!(
                "Last error: {}\nLast success: {}\nTelltale retried each poll with backoff and keeps the last good data.\nLook here: {}",
                poll.last_error.as_deref().unwrap_or("-"),
                when(poll.last_success_at),
                link("/api/polling".into())
            ),
        });
    }

    for c in signals
        .connections
        .iter()
        .filter(|c| c.status != ConnectionStatus::Disabled)
    {
        let held = held_back
            .get(&c.id)
            .map(|e| format!("\nHeld back (caused by this): failing polls of {}.", e.join(", ")))
            .unwrap_or_default();
        let look = link(format!("/api/connections/{}", c.id));
        let severity = if is_milesight(c) { "high" } else { "warning" };
        if c.status == ConnectionStatus::NeedsReauth {
            firing.push(Firing {
                key: format!("token_needs_reauth:connection:{}", c.id),
                rule: "token_needs_reauth".into(),
                subject: format!("connection:{}", c.id),
                severity: severity.into(),
                summary: if is_milesight(c) {
                    "Milesight refuses the configured OpenAPI client credentials".into()
                } else {
                    format!("{} connection {} needs re-authorisation", c.provider, c.name)
                },
                details: format!(
                    "The provider refused the grant: {}\nSince: {}\nTelltale stopped refreshing it; a person must supply new credentials or tokens.{held}\nLook here: {look}",
                    c.last_error.as_deref().unwrap_or("-"),
                    when(c.last_refresh_attempt_at)
                ),
            });
        } else if c.consecutive_failures >= config.refresh_failures {
            firing.push(Firing {
                key: format!("token_refresh_failing:connection:{}", c.id),
                rule: "token_refresh_failing".into(),
                subject: format!("connection:{}", c.id),
                severity: severity.into(),
                summary: format!(
                    "token refresh of {} connection {} failed {} times in a row",
                    c.provider, c.name, c.consecutive_failures
                ),
                details: format!(
                    "Last error: {}\nLast success: {}\nToken expires: {}\nTelltale retries on every sweep with backoff.{held}\nLook here: {look}",
                    c.last_error.as_deref().unwrap_or("-"),
                    when(c.last_refresh_success_at),
                    when(c.expires_at)
                ),
            });
        } else if c.access_token.is_some()
            && let Some(expires) = c.expires_at
            && expires.0 - chrono::Duration::from_std(config.runway_secs).unwrap_or_default() <= at.0
        {
            let left = (expires.0 - at.0).num_seconds();
            firing.push(Firing {
                key: format!("token_runway:connection:{}", c.id),
                rule: "token_runway".into(),
                subject: format!("connection:{}", c.id),
                severity: severity.into(),
                summary: if left > 0 {
                    format!(
                        "token of {} connection {} expires in {}",
                        c.provider,
                        c.name,
                        present::duration(left)
                    )
                } else {
                    format!("token of {} connection {} has expired", c.provider, c.name)
                },
                details: format!(
                    "Expires: {}\nLast refresh attempt: {}\nThe refresh is overdue: it should have happened within the lead time.\nLook here: {look}",
                    when(Some(expires)),
                    when(c.last_refresh_attempt_at)
                ),
            });
        }
    }

    let mut stale_sources: HashSet<i64> = HashSet::new();
    for s in &signals.sources {
        let period = std::time::Duration::from_secs(s.period_secs.max(0) as u64);
        let grace = std::time::Duration::from_secs(s.grace_secs.max(0) as u64);
        // A source that never delivered is judged from when it was set up.
        let baseline = s.last_event_at.or(Some(s.created_at));
        if crate::milesight::source_status(baseline, period, grace, at) == SourceStatus::Stale {
            stale_sources.insert(s.id);
            let quiet: usize = signals
                .offline
                .iter()
                .filter(|g| g.source_id == Some(s.id))
                .map(|g| g.count)
                .sum();
            firing.push(Firing {
                key: format!("webhook_source_stale:source:{}", s.name),
                rule: "webhook_source_stale".into(),
                subject: format!("source:{}", s.name),
                severity: "high".into(),
                summary: format!("no Milesight webhook from source {} since {}", s.name, when(s.last_event_at)),
                details: format!(
                    "Expected at least every {} (+{} grace).\n{quiet} offline device(s) of this source are folded into this alert.\nCheck the webhook in the Milesight Development Platform and Telltale's rejected requests.\nLook here: {}",
                    present::duration(s.period_secs),
                    present::duration(s.grace_secs),
                    link("/api/webhooks/sources".into())
                ),
            });
        }
        if let Some(notice_at) = s.last_system_notice_at
            && at.0 - notice_at.0 < chrono::Duration::hours(24)
        {
            firing.push(Firing {
                key: format!("milesight_system_notice:source:{}", s.name),
                rule: "milesight_system_notice".into(),
                subject: format!("source:{}", s.name),
                severity: "high".into(),
                summary: format!("Milesight sent a system notice for source {}", s.name),
                details: format!(
                    "Notice at {}: {}\nMDP may have stopped pushing or hit its daily limit.\nLook here: {}",
                    when(Some(notice_at)),
                    s.last_system_notice.as_deref().unwrap_or("-"),
                    link("/api/webhooks/sources".into())
                ),
            });
        }
    }

    // Offline devices by source; a dead source already folds its own.
    let source_names: HashMap<i64, &str> = signals.sources.iter().map(|s| (s.id, s.name.as_str())).collect();
    for group in signals
        .offline
        .iter()
        .filter(|g| !g.source_id.is_some_and(|id| stale_sources.contains(&id)))
    {
        if group.count > config.device_offline_group_threshold {
            // Many at once is one incident (a gateway, a network, power): one alert for the
            // source, not one email per device.
            let source = group
                .source_id
                .and_then(|id| source_names.get(&id).copied())
                .unwrap_or("none");
            let listed: Vec<&str> = group
                .devices
                .iter()
                .take(LISTED_DEVICES)
                .map(|d| d.sn.as_str())
                .collect();
            let more = group.count.saturating_sub(listed.len());
            firing.push(Firing {
                key: format!("devices_offline:source:{source}"),
                rule: "devices_offline".into(),
                subject: format!("source:{source}"),
                severity: "warning".into(),
                summary: format!("{} devices of source {source} are offline", group.count),
                details: format!(
                    "Offline: {}{}\nMore than {} at once, so they share this alert.\nLook here: {}",
                    listed.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    },
                    config.device_offline_group_threshold,
                    link("/devices?status=offline".into())
                ),
            });
            continue;
        }
        for d in &group.devices {
            firing.push(Firing {
                key: format!("device_offline:device:{}", d.sn),
                rule: "device_offline".into(),
                subject: format!("device:{}", d.sn),
                severity: "warning".into(),
                summary: format!(
                    "device {} ({}) is offline",
                    d.name.as_deref().unwrap_or(&d.sn),
                    d.sn
                ),
                details: format!(
                    "Last seen: {}\nExpected interval: {}\nLook here: {}",
                    when(d.last_seen_at),
                    d.expected_interval_secs
                        .map_or_else(|| "-".into(), present::duration),
                    link(format!("/api/devices/{}", d.id))
                ),
            });
        }
    }
    firing
}

/// The email and webhook deliveries for an alert change; `None` when nobody is to be told.
pub fn notification_for(config: &Config, alert: &Alert, notice: Notice) -> Option<Notification> {
    let recipients = config
        .alerts
        .recipients
        .get(&alert.rule)
        .unwrap_or(&config.email.on_call);
    let webhooks: Vec<String> = config
        .alerts
        .webhooks
        .iter()
        .filter(|w| w.wants(&alert.rule))
        .map(|w| w.name.clone())
        .collect();
    if (recipients.is_empty() && webhooks.is_empty())
        || (notice == Notice::Resolved && !config.alerts.notify_resolved)
    {
        return None;
    }
    let look = format!("{}/api/alerts/{}", config.alerts.public_url, alert.id);
    let (kind, name, subject, headline) = match notice {
        Notice::Resolved => (
            "alert_resolved",
            "resolved",
            format!("[Telltale] RESOLVED: {}", alert.summary),
            format!(
                "Recovered at {} (firing since {})",
                when(alert.resolved_at),
                when(Some(alert.first_seen_at))
            ),
        ),
        Notice::Reminder => (
            "alert_reminder",
            "reminder",
            format!("[Telltale] STILL FIRING ({}): {}", alert.severity, alert.summary),
            format!(
                "Still firing since {} (reminder {})",
                present::when(alert.first_seen_at, now(), present::zone()),
                alert.notify_count
            ),
        ),
        Notice::Firing => (
            "alert_firing",
            "firing",
            format!("[Telltale] FIRING ({}): {}", alert.severity, alert.summary),
            format!(
                "Since {}",
                present::when(alert.first_seen_at, now(), present::zone())
            ),
        ),
    };
    let (text, html) = templates::alert(&AlertView {
        notice: name,
        summary: &alert.summary,
        headline: &headline,
        details: &alert.details,
        severity: &alert.severity,
        rule: &alert.rule,
        subject: &alert.subject,
        link: &look,
    });
    let payload = if webhooks.is_empty() {
        String::new()
    } else {
        super::webhook::alert_json(alert, name, &config.alerts.public_url).to_string()
    };
    Some(Notification {
        kind,
        recipients: recipients.join(", "),
        subject,
        text,
        html,
        webhooks,
        payload,
        // Others changing within the wait join this one in a single email.
        due_at: UtcTime::new(
            now().0 + chrono::Duration::from_std(config.alerts.group_wait_secs).unwrap_or_default(),
        ),
    })
}

/// How long after its `notified`-th notification a still-firing alert is reminded about.
pub fn reminder_after(config: &AlertsConfig, notified: i32) -> Option<std::time::Duration> {
    let index = usize::try_from(notified.max(1) - 1).unwrap_or(0);
    config.reminders.get(index).or(config.reminders.last()).copied()
}

/// One evaluation: every condition that holds opens or refreshes its alert; every open alert
/// whose condition is gone resolves. Emails are queued in the same transactions.
pub async fn evaluate(db: &Db, config: &Config, at: UtcTime) -> StorageResult<Evaluation> {
    let alerts = &config.alerts;
    let runway = chrono::Duration::from_std(alerts.runway_secs).unwrap_or_default();
    let signals = Signals {
        connections: connections::alert_candidates(
            db,
            alerts.refresh_failures,
            UtcTime::new(at.0 + runway),
            alerts.poll_failures,
        )
        .await?,
        polls: poll_store::failing_states(db, alerts.poll_failures).await?,
        sources: deliveries::list_sources(db).await?,
        offline: offline_groups(db, alerts).await?,
    };
    let holding = conditions(&signals, alerts, at);
    let silences: Vec<_> = store::silences(db, at)
        .await?
        .into_iter()
        .filter(|s| s.starts_at.0 <= at.0)
        .collect();
    let hold_for = |key: &str, rule: &str, subject: &str| {
        silences
            .iter()
            .find(|s| s.matches(key, rule, subject))
            .map(|s| format!("silenced until {}: {}", when(Some(s.ends_at)), s.reason))
    };
    let mut evaluation = Evaluation {
        firing: holding.len(),
        ..Default::default()
    };
    let mut active = HashSet::new();
    for firing in &holding {
        let hold = hold_for(&firing.key, &firing.rule, &firing.subject);
        let (alert, opened) = store::fire(db, firing, at, hold.as_deref(), |alert| {
            notification_for(config, alert, Notice::Firing)
        })
        .await?;
        if opened {
            evaluation.opened += 1;
            tracing::warn!(alert = %firing.key, summary = %firing.summary, "alert firing");
        }
        if hold.is_some() && matches!(alert.state, AlertState::Firing | AlertState::Acknowledged) {
            store::set_silenced(db, alert.id, hold.as_deref(), at, |_| None).await?;
        } else if hold.is_none() && alert.state == AlertState::Silenced {
            store::set_silenced(db, alert.id, None, at, |a| {
                notification_for(config, a, Notice::Firing)
            })
            .await?;
        } else if !opened
            && alert.state == AlertState::Firing
            && alert.notify_count > 0
            && let (Some(last), Some(after)) = (
                alert.last_notified_at,
                reminder_after(&config.alerts, alert.notify_count),
            )
            && last.0 + chrono::Duration::from_std(after).unwrap_or_default() <= at.0
            && store::remind(db, alert.id, alert.notify_count, at, hold.as_deref(), |a| {
                notification_for(config, a, Notice::Reminder)
            })
            .await?
            .is_some()
        {
            evaluation.reminded += 1;
        }
        active.insert(firing.key.clone());
    }
    for open in store::open_alerts(db).await? {
        if active.contains(&open.alert_key) {
            continue;
        }
        let hold = hold_for(&open.alert_key, &open.rule, &open.subject);
        if store::resolve(db, open.id, at, hold.as_deref(), |alert| {
            notification_for(config, alert, Notice::Resolved)
        })
        .await?
        .is_some()
        {
            evaluation.resolved += 1;
            tracing::info!(alert = %open.alert_key, "alert resolved");
        }
    }
    Ok(evaluation)
}

pub fn job_specs(config: &Arc<Config>, db: &Db) -> Vec<JobSpec> {
    vec![JobSpec {
        name: EVALUATION_JOB,
        schedule: config.alerts.evaluation_schedule.clone(),
        timezone: config.scheduler.timezone,
        exclusive: true,
        run: run_with((db.clone(), config.clone()), |(db, config)| async move {
            let e = evaluate(&db, &config, now()).await?;
            Ok(format!(
                "{} firing, {} opened, {} reminded, {} resolved",
                e.firing, e.opened, e.reminded, e.resolved
            ))
        }),
    }]
}
