//! The alert rules: plain functions from the signals the other loops wrote (connections,
//! poll state, webhook sources, devices) to the conditions that hold now, one function per
//! rule. `conditions` runs them in the order that lets causes mute their effects: while a
//! connection's token is failing, its poll failures are held back and named in the token
//! alert; while a webhook source is down, its quiet devices are folded into the source alert.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::evaluate::{OfflineGroup, Signals};
use crate::alerts::settings::AlertsConfig;
use crate::milesight::token::is_milesight;
use crate::present;
use crate::storage::alerts::Firing;
use crate::storage::connections::Connection;
use crate::storage::deliveries::WebhookSource;
use crate::storage::devices::Device;
use crate::storage::polling::PollState;
use crate::storage::{AlertRule, ConnectionStatus, Severity, SourceStatus, UtcTime};

/// How many serial numbers a grouped `devices_offline` alert lists (the rest are counted).
pub const LISTED_DEVICES: usize = 100;

/// A time in an alert's stored text: local with the zone named (a relative time would be
/// stale by the time someone reads it).
pub(super) fn when(t: Option<UtcTime>) -> String {
    t.map_or_else(|| "never".into(), |t| present::local(t, present::zone()))
}

fn link(config: &AlertsConfig, path: &str) -> String {
    format!("{}{path}", config.public_url)
}

/// A connection as people name it: `Spotify connection 'acme marketing'`.
fn named(c: &Connection) -> String {
    present::connection_name(c)
}

/// The conditions that hold at `at`.
pub fn conditions(signals: &Signals, config: &AlertsConfig, at: UtcTime) -> Vec<Firing> {
    let (mut firing, held_back) = poll_failing(signals, config);
    for c in signals
        .connections
        .iter()
        .filter(|c| c.status != ConnectionStatus::Disabled)
    {
        let held = held_back.get(&c.id).map(Vec::as_slice).unwrap_or_default();
        firing.extend(token_condition(c, held, signals.next_token_sweep, config, at));
    }
    let mut stale_sources = HashSet::new();
    for s in &signals.sources {
        if let Some(stale) = webhook_source_stale(s, &signals.offline, config, at) {
            stale_sources.insert(s.id);
            firing.push(stale);
        }
        firing.extend(milesight_system_notice(s, config, at));
    }
    // Offline devices by source; a dead source already folds its own.
    let source_names: HashMap<i64, &str> = signals.sources.iter().map(|s| (s.id, s.name.as_str())).collect();
    for group in signals
        .offline
        .iter()
        .filter(|g| !g.source_id.is_some_and(|id| stale_sources.contains(&id)))
    {
        if group.count > config.device_offline_group_threshold {
            let source = group
                .source_id
                .and_then(|id| source_names.get(&id).copied())
                .unwrap_or("none");
            firing.push(devices_offline(group, source, config));
        } else {
            firing.extend(group.devices.iter().map(|d| device_offline(d, config)));
        }
    }
    firing
}

/// Connections whose token alerts, so their poll failures are held back as its effects.
fn token_failing(signals: &Signals, config: &AlertsConfig) -> HashSet<i64> {
    signals
        .connections
        .iter()
        .filter(|c| {
            c.status == ConnectionStatus::NeedsReauth
                || (c.status != ConnectionStatus::Disabled
                    && c.consecutive_failures >= config.refresh_failures)
        })
        .map(|c| c.id)
        .collect()
}

/// `poll_failing`: a poll failed `alerts.poll_failures` times in a row. Polls whose token is
/// failing are returned per connection instead, for the token alert to name.
fn poll_failing(signals: &Signals, config: &AlertsConfig) -> (Vec<Firing>, BTreeMap<i64, Vec<String>>) {
    let token_failing = token_failing(signals, config);
    let mut firing = Vec::new();
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
        firing.push(poll_alert(poll, &name, config));
    }
    (firing, held_back)
}

fn poll_alert(poll: &PollState, name: &str, config: &AlertsConfig) -> Firing {
    Firing {
        rule: AlertRule::PollFailing,
        subject: format!("connection:{}:{}", poll.connection_id, poll.endpoint),
        severity: Severity::Warning,
        summary: format!(
            "polling {} of {name} has failed {} times in a row",
            poll.endpoint, poll.consecutive_failures
        ),
        details: format!(
            "What the platform last said: {}\nLast success: {}\nNext attempt: {}\nTelltale retried each poll with backoff and keeps the last good data.\nLook here: {}",
            poll.last_error.as_deref().unwrap_or("-"),
            when(poll.last_success_at),
            when(poll.next_due_at),
            link(config, "/polling")
        ),
    }
}

/// The one token rule that holds for a connection, worst first: needs re-authorisation,
/// refresh failing, or a runway shorter than `alerts.runway_secs`. `held` names the poll
/// failures it holds back.
fn token_condition(
    c: &Connection,
    held: &[String],
    next_sweep: Option<UtcTime>,
    config: &AlertsConfig,
    at: UtcTime,
) -> Option<Firing> {
    let held = if held.is_empty() {
        String::new()
    } else {
        format!(
            "\nHeld back (caused by this): failing polls of {}.",
            held.join(", ")
        )
    };
    // The Milesight token feeds every device and webhook check: it is urgent.
    let severity = if is_milesight(c) {
        Severity::High
    } else {
        Severity::Warning
    };
    if c.status == ConnectionStatus::NeedsReauth {
        Some(token_needs_reauth(c, severity, &held, config))
    } else if c.consecutive_failures >= config.refresh_failures {
        Some(token_refresh_failing(
            c,
            severity,
            &held,
            next_attempt(c, next_sweep, at),
            config,
        ))
    } else {
        token_runway(c, severity, config, at)
    }
}

fn token_needs_reauth(c: &Connection, severity: Severity, held: &str, config: &AlertsConfig) -> Firing {
    let look = link(config, &format!("/connections/{}", c.id));
    Firing {
        rule: AlertRule::TokenNeedsReauth,
        subject: format!("connection:{}", c.id),
        severity,
        summary: if is_milesight(c) {
            "Milesight refuses the configured OpenAPI client credentials".into()
        } else {
            format!("{} needs to be reconnected", named(c))
        },
        details: format!(
            "Why: {}\nSince: {}\nTelltale stopped refreshing it; a person must Reconnect it or supply new credentials or tokens.{held}\nLook here: {look}",
            c.last_error.as_deref().unwrap_or("-"),
            when(c.last_refresh_attempt_at)
        ),
    }
}

/// When the engine next tries a failing connection: its next sweep, or later when the platform
/// asked to wait (`Retry-After`) and the sweep was told so.
fn next_attempt(c: &Connection, next_sweep: Option<UtcTime>, at: UtcTime) -> Option<UtcTime> {
    let asked = c.next_refresh_at.filter(|t| t.0 > at.0);
    match (asked, next_sweep) {
        (Some(asked), Some(sweep)) => Some(if asked.0 > sweep.0 { asked } else { sweep }),
        (asked, sweep) => asked.or(sweep),
    }
}

fn token_refresh_failing(
    c: &Connection,
    severity: Severity,
    held: &str,
    next_attempt: Option<UtcTime>,
    config: &AlertsConfig,
) -> Firing {
    let look = link(config, &format!("/connections/{}", c.id));
    Firing {
        rule: AlertRule::TokenRefreshFailing,
        subject: format!("connection:{}", c.id),
        severity,
        summary: format!(
            "{} cannot refresh its token ({} failed refreshes in a row)",
            named(c),
            c.consecutive_failures
        ),
        details: format!(
            "What the platform last said: {}\nFailed refreshes in a row: {} (the last at {})\nNext attempt: {}\nLast success: {}\nToken expires: {}\nIf the platform names the credentials, check them or Reconnect.{held}\nLook here: {look}",
            c.last_error.as_deref().unwrap_or("-"),
            c.consecutive_failures,
            when(c.last_refresh_attempt_at),
            next_attempt.map_or_else(|| "with the next token sweep".into(), |t| when(Some(t))),
            when(c.last_refresh_success_at),
            when(c.expires_at)
        ),
    }
}

fn token_runway(c: &Connection, severity: Severity, config: &AlertsConfig, at: UtcTime) -> Option<Firing> {
    let expires = c.expires_at.filter(|_| c.access_token.is_some())?;
    let lead = chrono::Duration::from_std(config.runway_secs).unwrap_or_default();
    if expires.0 - lead > at.0 {
        return None;
    }
    let left = (expires.0 - at.0).num_seconds();
    let look = link(config, &format!("/connections/{}", c.id));
    Some(Firing {
        rule: AlertRule::TokenRunway,
        subject: format!("connection:{}", c.id),
        severity,
        summary: if left > 0 {
            format!("the token of {} expires in {}", named(c), present::duration(left))
        } else {
            format!("the token of {} has expired", named(c))
        },
        details: format!(
            "Expires: {}\nLast refresh attempt: {}\nThe refresh is overdue: it should have happened within the lead time.\nLook here: {look}",
            when(Some(expires)),
            when(c.last_refresh_attempt_at)
        ),
    })
}

/// `webhook_source_stale`: nothing arrived within the source's period and grace (a source
/// that never delivered is judged from when it was set up).
fn webhook_source_stale(
    s: &WebhookSource,
    offline: &[OfflineGroup],
    config: &AlertsConfig,
    at: UtcTime,
) -> Option<Firing> {
    let period = std::time::Duration::from_secs(s.period_secs.max(0) as u64);
    let grace = std::time::Duration::from_secs(s.grace_secs.max(0) as u64);
    if crate::milesight::source_status(s.last_event_at, s.created_at, period, grace, at)
        != SourceStatus::Stale
    {
        return None;
    }
    let quiet: usize = offline
        .iter()
        .filter(|g| g.source_id == Some(s.id))
        .map(|g| g.count)
        .sum();
    Some(Firing {
        rule: AlertRule::WebhookSourceStale,
        subject: format!("source:{}", s.name),
        severity: Severity::High,
        summary: match s.last_event_at {
            Some(_) => format!(
                "no Milesight webhook from source {} since {}",
                s.name,
                when(s.last_event_at)
            ),
            None => format!(
                "no Milesight webhook from source {} yet, since it was set up {}",
                s.name,
                when(Some(s.created_at))
            ),
        },
        details: format!(
            "Expected at least every {} (+{} grace).\n{quiet} offline device(s) of this source are folded into this alert.\nCheck the webhook in the Milesight Development Platform and Telltale's rejected requests.\nLook here: {}",
            present::duration(s.period_secs),
            present::duration(s.grace_secs),
            link(config, "/webhooks")
        ),
    })
}

/// `milesight_system_notice`: MDP sent a system message within the last 24 hours.
fn milesight_system_notice(s: &WebhookSource, config: &AlertsConfig, at: UtcTime) -> Option<Firing> {
    let notice_at = s
        .last_system_notice_at
        .filter(|t| at.0 - t.0 < chrono::Duration::hours(24))?;
    Some(Firing {
        rule: AlertRule::MilesightSystemNotice,
        subject: format!("source:{}", s.name),
        severity: Severity::High,
        summary: format!("Milesight sent a system notice for source {}", s.name),
        details: format!(
            "Notice at {}: {}\nMDP may have stopped pushing or hit its daily limit.\nLook here: {}",
            when(Some(notice_at)),
            s.last_system_notice.as_deref().unwrap_or("-"),
            link(config, "/webhooks")
        ),
    })
}

/// `devices_offline`: more than `alerts.device_offline_group_threshold` devices of one source
/// at once are one incident (a gateway, a network, power): one alert, not one email each.
fn devices_offline(group: &OfflineGroup, source: &str, config: &AlertsConfig) -> Firing {
    let listed: Vec<&str> = group
        .devices
        .iter()
        .take(LISTED_DEVICES)
        .map(|d| d.sn.as_str())
        .collect();
    let more = group.count.saturating_sub(listed.len());
    Firing {
        rule: AlertRule::DevicesOffline,
        subject: format!("source:{source}"),
        severity: Severity::Warning,
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
            link(config, "/devices?status=offline")
        ),
    }
}

/// `device_offline`: one device missed its deadline.
fn device_offline(d: &Device, config: &AlertsConfig) -> Firing {
    Firing {
        rule: AlertRule::DeviceOffline,
        subject: format!("device:{}", d.sn),
        severity: Severity::Warning,
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
            link(config, &format!("/devices/{}", d.id))
        ),
    }
}
