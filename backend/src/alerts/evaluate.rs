//! Alert evaluation: reads the signals the other loops wrote, asks the rules (`rules.rs`)
//! which conditions hold now, and opens, refreshes and resolves alerts from them, queuing one
//! notification per change.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::channels::{Channels, NotificationChannels};
use super::rules::{LISTED_DEVICES, conditions, when};
use super::templates::{self, AlertView};
use crate::alerts::settings::AlertsConfig;
use crate::config::Config;
use crate::present;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::alerts::{self as store, Alert, Firing, Notification};
use crate::storage::connections::{self, Connection};
use crate::storage::deliveries::{self, WebhookSource};
use crate::storage::devices::{self, Device};
use crate::storage::polling::{self as poll_store, PollState};
use crate::storage::{AlertRule, AlertState};
use crate::storage::{Db, StorageResult, UtcTime, now};

pub const EVALUATION_JOB: &str = "alert-evaluation";

/// What the rules look at.
pub struct Signals {
    /// The connections that may alert (see `connections::alert_candidates`), not all of them.
    pub connections: Vec<Connection>,
    /// The failing poll pairs.
    pub polls: Vec<PollState>,
    pub sources: Vec<WebhookSource>,
    /// The offline devices by source (online devices never alert), never the whole fleet.
    pub offline: Vec<OfflineGroup>,
    /// When the token sweep next runs (a failing connection's next attempt).
    pub next_token_sweep: Option<UtcTime>,
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

/// The email and webhook deliveries for an alert change; `None` when nobody is to be told.
/// `facts_now`, for a resolution: what its subject looks like now (see [`facts_now`]).
pub fn notification_for(
    config: &Config,
    channels: &Channels,
    alert: &Alert,
    notice: Notice,
    facts_now: &str,
) -> Option<Notification> {
    let recipients = channels.recipients_of(&alert.rule);
    let webhooks: Vec<String> = channels
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
    let look = format!("{}/alerts/{}", config.alerts.public_url, alert.id);
    let severity = alert.severity.to_uppercase();
    let lasted = |until: UtcTime| present::duration((until.0 - alert.first_seen_at.0).num_seconds());
    let (kind, name, subject, headline) = match notice {
        Notice::Resolved => (
            "alert_resolved",
            "resolved",
            format!("[Telltale] RESOLVED: {}", alert.summary),
            format!(
                "Recovered at {}, after {} (firing since {})",
                when(alert.resolved_at),
                lasted(alert.resolved_at.unwrap_or_else(now)),
                when(Some(alert.first_seen_at))
            ),
        ),
        Notice::Reminder => (
            "alert_reminder",
            "reminder",
            format!("[Telltale] {severity}, STILL FIRING: {}", alert.summary),
            format!(
                "Still firing since {} (reminder {})",
                present::when(alert.first_seen_at, now(), present::zone()),
                alert.notify_count
            ),
        ),
        Notice::Firing => (
            "alert_firing",
            "firing",
            format!("[Telltale] {severity}: {}", alert.summary),
            format!(
                "Since {}, for {}",
                present::when(alert.first_seen_at, now(), present::zone()),
                lasted(now())
            ),
        ),
    };
    // A recovery does not repeat the facts it fired with (the old error, the old expiry): it
    // says what holds now.
    let recovered = format!(
        "The condition no longer holds.\n{facts_now}\nWhat happened meanwhile is in the alert's history."
    );
    let details = match notice {
        Notice::Resolved => recovered.as_str(),
        Notice::Firing | Notice::Reminder => alert.details.as_str(),
    };
    let (text, html) = templates::alert(&AlertView {
        notice: name,
        summary: &alert.summary,
        headline: &headline,
        details,
        severity: &alert.severity,
        rule: &alert.rule,
        link: &look,
    });
    let payload = if webhooks.is_empty() {
        String::new()
    } else {
        super::webhook::alert_json(alert, name, &headline, details, &config.alerts.public_url).to_string()
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
pub async fn evaluate(
    db: &Db,
    config: &Config,
    channels: &NotificationChannels,
    at: UtcTime,
) -> StorageResult<Evaluation> {
    let channels = channels.current().await;
    let signals = gather(db, &config.alerts, at).await?;
    let holding = conditions(&signals, &config.alerts, at);
    let silences = Silences::in_force(db, at).await?;
    let mut evaluation = Evaluation {
        firing: holding.len(),
        ..Default::default()
    };
    let mut active = HashSet::new();
    for firing in &holding {
        let key = firing.key();
        let hold = silences.hold(&key, firing.rule.as_str(), &firing.subject);
        let (opened, reminded) =
            keep_firing(db, config, &channels, firing, &key, hold.as_deref(), at).await?;
        evaluation.opened += usize::from(opened);
        evaluation.reminded += usize::from(reminded);
        active.insert(key);
    }
    for open in store::open_alerts(db).await? {
        if active.contains(&open.alert_key) {
            continue;
        }
        let hold = silences.hold(&open.alert_key, &open.rule, &open.subject);
        let facts = facts_now(db, &open, &signals.offline, &config.alerts.public_url).await?;
        if store::resolve(db, open.id, at, hold.as_deref(), |alert| {
            notification_for(config, &channels, alert, Notice::Resolved, &facts)
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

/// What a resolved alert's subject looks like now, in the words of its page: the new expiry,
/// the last event, when the device was last seen. Facts the alert fired with are not repeated.
async fn facts_now(
    db: &Db,
    alert: &Alert,
    offline: &[OfflineGroup],
    public_url: &str,
) -> StorageResult<String> {
    let gone = "It no longer exists in Telltale (deleted).".to_owned();
    let Ok(rule) = alert.rule.parse::<AlertRule>() else {
        return Ok(String::new());
    };
    let subject = alert.subject.split_once(':').map_or("", |(_, rest)| rest);
    Ok(match rule {
        AlertRule::TokenRefreshFailing | AlertRule::TokenNeedsReauth | AlertRule::TokenRunway => {
            let Ok(id) = subject.parse::<i64>() else {
                return Ok(String::new());
            };
            match connections::get_connection(db, id).await {
                Ok(c) => format!(
                    "Status: {}\nLast successful refresh: {}\nToken valid until: {}\nLook here: {public_url}/connections/{id}",
                    present::state_label(c.status.as_str()),
                    when(c.last_refresh_success_at),
                    when(c.expires_at)
                ),
                Err(crate::storage::StorageError::NotFound) => gone,
                Err(e) => return Err(e),
            }
        }
        AlertRule::PollFailing => {
            let Some((id, endpoint)) = subject.split_once(':') else {
                return Ok(String::new());
            };
            match poll_store::get_state(db, id.parse().unwrap_or_default(), endpoint).await {
                Ok(p) => format!(
                    "Last successful poll: {}\nNext poll: {}\nLook here: {public_url}/polling",
                    when(p.last_success_at),
                    when(p.next_due_at)
                ),
                Err(crate::storage::StorageError::NotFound) => gone,
                Err(e) => return Err(e),
            }
        }
        AlertRule::WebhookSourceStale | AlertRule::MilesightSystemNotice | AlertRule::DevicesOffline => {
            match deliveries::source_by_name(db, subject).await {
                Ok(source) => {
                    let still_offline: usize = offline
                        .iter()
                        .filter(|g| g.source_id == Some(source.id))
                        .map(|g| g.count)
                        .sum();
                    format!(
                        "Last event: {}\nOffline devices of this source now: {still_offline}\nLook here: {public_url}/webhooks",
                        when(source.last_event_at)
                    )
                }
                Err(crate::storage::StorageError::NotFound) => gone,
                Err(e) => return Err(e),
            }
        }
        AlertRule::DeviceOffline => match devices::by_sn(db, subject).await? {
            Some(d) => format!(
                "Status: {}\nLast seen: {}\nLook here: {public_url}/devices/{}",
                present::state_label(d.status.as_str()),
                when(d.last_seen_at),
                d.id
            ),
            None => gone,
        },
    })
}

/// What the rules read: connections failing or near expiry, failing polls, the webhook
/// sources, and the offline devices by group.
async fn gather(db: &Db, alerts: &AlertsConfig, at: UtcTime) -> StorageResult<Signals> {
    let runway = chrono::Duration::from_std(alerts.runway_secs).unwrap_or_default();
    Ok(Signals {
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
        next_token_sweep: crate::storage::jobs::list(db)
            .await?
            .into_iter()
            .find(|j| j.name == crate::tokens::SWEEP_JOB)
            .and_then(|j| j.next_run_at),
    })
}

/// The silences that have started and not ended.
struct Silences(Vec<store::Silence>);

impl Silences {
    async fn in_force(db: &Db, at: UtcTime) -> StorageResult<Silences> {
        let started = store::silences(db, at)
            .await?
            .into_iter()
            .filter(|s| s.starts_at.0 <= at.0)
            .collect();
        Ok(Silences(started))
    }

    /// Why an alert is held back, if a silence matches it.
    fn hold(&self, key: &str, rule: &str, subject: &str) -> Option<String> {
        self.0
            .iter()
            .find(|s| s.matches(key, rule, subject))
            .map(|s| format!("silenced until {}: {}", when(Some(s.ends_at)), s.reason))
    }
}

/// Opens or refreshes one holding condition's alert, follows its silence (held back or let
/// go), and sends a reminder when one is due. Returns (opened, reminded).
async fn keep_firing(
    db: &Db,
    config: &Config,
    channels: &Channels,
    firing: &Firing,
    key: &str,
    hold: Option<&str>,
    at: UtcTime,
) -> StorageResult<(bool, bool)> {
    let (alert, opened) = store::fire(db, firing, at, hold, |alert| {
        notification_for(config, channels, alert, Notice::Firing, "")
    })
    .await?;
    if opened {
        tracing::warn!(alert = %key, summary = %firing.summary, "alert firing");
    }
    if hold.is_some() && matches!(alert.state, AlertState::Firing | AlertState::Acknowledged) {
        store::set_silenced(db, alert.id, hold, at, |_| None).await?;
    } else if hold.is_none() && alert.state == AlertState::Silenced {
        store::set_silenced(db, alert.id, None, at, |a| {
            notification_for(config, channels, a, Notice::Firing, "")
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
    {
        let reminded = store::remind(db, alert.id, alert.notify_count, at, hold, |a| {
            notification_for(config, channels, a, Notice::Reminder, "")
        })
        .await?
        .is_some();
        return Ok((opened, reminded));
    }
    Ok((opened, false))
}

pub fn job_specs(config: &Arc<Config>, db: &Db, channels: &Arc<NotificationChannels>) -> Vec<JobSpec> {
    vec![JobSpec {
        name: EVALUATION_JOB,
        schedule: config.alerts.evaluation_schedule.clone(),
        timezone: config.scheduler.timezone,
        exclusive: true,
        run: run_with(
            (db.clone(), config.clone(), channels.clone()),
            |(db, config, channels)| async move {
                let e = evaluate(&db, &config, &channels, now()).await?;
                Ok(format!(
                    "{} firing, {} opened, {} reminded, {} resolved",
                    e.firing, e.opened, e.reminded, e.resolved
                ))
            },
        ),
    }]
}
