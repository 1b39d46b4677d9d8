//! Gauges computed from the database when `/metrics` is scraped, so every replica sharing a
//! database reports the same truth (token runway, webhook freshness, devices, polls, alerts,
//! outbox). Each scrape rebuilds them from scratch: a deleted connection or device disappears.

use std::collections::{BTreeMap, HashMap};

use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::kept::FleetCache;
use crate::milesight::token::is_milesight;
use crate::polling::catalogue::platform_of;
use crate::storage::{ConnectionStatus, SourceStatus};
use crate::storage::{Db, StorageResult, UtcTime, alerts, connections, deliveries, devices, outbox, polling};

const CONNECTION: &[&str] = &["provider", "connection_id", "connection"];
const POLL: &[&str] = &["platform", "endpoint", "connection_id"];

#[derive(Clone)]
pub struct DbGauges {
    token_expiry: GaugeVec,
    token_failures: IntGaugeVec,
    token_needs_reauth: IntGaugeVec,
    milesight_invalid_credentials: IntGauge,
    webhook_age: GaugeVec,
    webhook_stale_after: GaugeVec,
    webhook_stale: IntGaugeVec,
    devices: IntGaugeVec,
    devices_seen_within: IntGaugeVec,
    oldest_seen_age: GaugeVec,
    device_age: GaugeVec,
    /// How many devices get their own `telltale_device_last_seen_age_seconds` (0: none).
    per_device_limit: usize,
    /// Which sources get series of their own; the rest are summed (or their worst taken) as `other`.
    sources: std::sync::Arc<super::labels::SourceLabels>,
    poll_success_age: GaugeVec,
    poll_failures: IntGaugeVec,
    alerts_open: IntGaugeVec,
    outbox_pending: IntGauge,
    outbox_oldest_age: prometheus::Gauge,
    /// 1 when the last scrape could read the database (these gauges are current), else 0.
    scrape_ok: IntGauge,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let gauge = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn seconds_between(later: UtcTime, earlier: UtcTime) -> f64 {
    (later.0 - earlier.0).num_milliseconds() as f64 / 1000.0
}

impl DbGauges {
    /// Registers every gauge read at scrape time: one declaration each, in a row, so the
    /// list is read (and checked against docs/metrics.md) in one place; hence its length.
    pub fn new(
        registry: &Registry,
        per_device_limit: usize,
        sources: std::sync::Arc<super::labels::SourceLabels>,
    ) -> prometheus::Result<DbGauges> {
        let outbox_oldest_age = prometheus::Gauge::new(
            "telltale_outbox_oldest_pending_age_seconds",
            "Age of the oldest email not yet delivered (0 when the outbox is empty)",
        )?;
        registry.register(Box::new(outbox_oldest_age.clone()))?;
        Ok(DbGauges {
            token_expiry: gauge_vec(
                registry,
                "telltale_token_expiry_seconds",
                "Seconds until a connection's access token expires (its runway; negative once expired)",
                CONNECTION,
            )?,
            token_failures: int_gauge_vec(
                registry,
                "telltale_token_consecutive_failures",
                "Token refresh failures in a row for a connection (0 after a success)",
                CONNECTION,
            )?,
            token_needs_reauth: int_gauge_vec(
                registry,
                "telltale_token_needs_reauth",
                "1 while a connection's grant was refused and needs a person to re-authorise it",
                CONNECTION,
            )?,
            milesight_invalid_credentials: int_gauge(
                registry,
                "telltale_milesight_invalid_credentials",
                "1 while Milesight refuses the configured OpenAPI client credentials",
            )?,
            webhook_age: gauge_vec(
                registry,
                "telltale_webhook_last_event_age_seconds",
                "Seconds since a webhook source's last event (since it was set up, if it never delivered)",
                &["source"],
            )?,
            webhook_stale_after: gauge_vec(
                registry,
                "telltale_webhook_stale_after_seconds",
                "A webhook source's expected period plus grace: older than this is stale",
                &["source"],
            )?,
            webhook_stale: int_gauge_vec(
                registry,
                "telltale_webhook_source_stale",
                "1 while a webhook source is stale (no event within period + grace)",
                &["source"],
            )?,
            devices: int_gauge_vec(
                registry,
                "telltale_devices",
                "Devices by webhook source, model and status (online, offline, unknown)",
                &["source", "model", "status"],
            )?,
            devices_seen_within: int_gauge_vec(
                registry,
                "telltale_devices_seen_within",
                "Devices of a source last heard from within `le` seconds (cumulative; `+Inf`: ever heard from)",
                &["source", "le"],
            )?,
            oldest_seen_age: gauge_vec(
                registry,
                "telltale_devices_oldest_last_seen_age_seconds",
                "Seconds since the device of a source heard from longest ago was last heard from",
                &["source", "device"],
            )?,
            device_age: gauge_vec(
                registry,
                "telltale_device_last_seen_age_seconds",
                "Seconds since a device was last heard from (only with milesight.per_device_metrics, for that many devices heard from longest ago)",
                &["device", "source"],
            )?,
            per_device_limit,
            sources,
            poll_success_age: gauge_vec(
                registry,
                "telltale_poll_last_success_age_seconds",
                "Seconds since a (connection, endpoint) poll last succeeded",
                POLL,
            )?,
            poll_failures: int_gauge_vec(
                registry,
                "telltale_poll_consecutive_failures",
                "Failed polls in a row for a (connection, endpoint)",
                POLL,
            )?,
            alerts_open: int_gauge_vec(
                registry,
                "telltale_alerts_open",
                "Open alerts by rule, severity and state (firing, acknowledged, silenced)",
                &["rule", "severity", "state"],
            )?,
            outbox_pending: int_gauge(
                registry,
                "telltale_outbox_pending",
                "Emails in the outbox not yet delivered",
            )?,
            outbox_oldest_age,
            scrape_ok: int_gauge(
                registry,
                "telltale_metrics_database_scrape_ok",
                "1 when the last scrape read the database gauges, 0 when it could not (they are then absent)",
            )?,
        })
    }

    fn reset(&self) {
        self.token_expiry.reset();
        self.token_failures.reset();
        self.token_needs_reauth.reset();
        self.webhook_age.reset();
        self.webhook_stale_after.reset();
        self.webhook_stale.reset();
        self.devices.reset();
        self.devices_seen_within.reset();
        self.oldest_seen_age.reset();
        self.device_age.reset();
        self.poll_success_age.reset();
        self.poll_failures.reset();
        self.alerts_open.reset();
    }

    /// Recomputes every gauge as of `at`. On a database error the per-subject gauges are left
    /// empty rather than stale, and `telltale_metrics_database_scrape_ok` says so.
    pub async fn update(&self, db: &Db, fleet: &FleetCache, at: UtcTime) {
        self.reset();
        match self.read(db, fleet, at).await {
            Ok(()) => self.scrape_ok.set(1),
            Err(e) => {
                self.reset();
                self.scrape_ok.set(0);
                tracing::warn!(error = %e, "metrics: cannot read the database gauges");
            }
        }
    }

    /// The fleet as counts, a last-seen histogram and the oldest device per source, from the
    /// fleet summary (kept in memory for `fleet_summary_max_age_secs`): series and memory follow
    /// sources, not devices, and a scrape does not pass over every device.
    async fn read_devices(
        &self,
        db: &Db,
        fleet: &FleetCache,
        sources: &HashMap<i64, &str>,
        at: UtcTime,
    ) -> StorageResult<()> {
        let source_of = |id: Option<i64>| id.and_then(|id| sources.get(&id).copied()).unwrap_or("none");
        let summary = fleet.get(db).await?;
        let mut counts: BTreeMap<(&str, String, &str), i64> = BTreeMap::new();
        let mut seen: BTreeMap<(&str, usize), i64> = BTreeMap::new();
        let labelled = labelled_models(summary.groups.iter().map(|g| (g.model.as_deref(), g.devices)));
        for g in &summary.groups {
            let model = model_label(g.model.as_deref(), &labelled);
            *counts
                .entry((source_of(g.source_id), model, g.status.as_str()))
                .or_default() += g.devices;
            for (bucket, n) in g.seen_within.iter().enumerate() {
                *seen.entry((source_of(g.source_id), bucket)).or_default() += n;
            }
        }
        for ((source, model, status), count) in counts {
            self.devices
                .with_label_values(&[source, &model, status])
                .set(count);
        }
        let les: Vec<String> = devices::SEEN_WITHIN_SECS
            .iter()
            .map(|secs| secs.to_string())
            .chain(["+Inf".to_owned()])
            .collect();
        for ((source, bucket), n) in seen {
            self.devices_seen_within
                .with_label_values(&[source, &les[bucket]])
                .set(n);
        }
        // One oldest device per label: the sources sharing `other` give their oldest of all.
        let mut oldest: BTreeMap<&str, (&str, UtcTime)> = BTreeMap::new();
        for (source_id, sn, last_seen) in &summary.oldest {
            let entry = oldest
                .entry(source_of(*source_id))
                .or_insert((sn.as_str(), *last_seen));
            if last_seen.0 < entry.1.0 {
                *entry = (sn.as_str(), *last_seen);
            }
        }
        for (source, (sn, last_seen)) in oldest {
            self.oldest_seen_age
                .with_label_values(&[source, sn])
                .set(seconds_between(at, last_seen));
        }
        if self.per_device_limit > 0 {
            let limit = i64::try_from(self.per_device_limit).unwrap_or(i64::MAX);
            for d in devices::least_recently_seen(db, limit).await? {
                if let Some(seen) = d.last_seen_at {
                    self.device_age
                        .with_label_values(&[&d.sn, source_of(d.source_id)])
                        .set(seconds_between(at, seen));
                }
            }
        }
        Ok(())
    }

    async fn read(&self, db: &Db, fleet: &FleetCache, at: UtcTime) -> StorageResult<()> {
        let all = connections::list_connections(db).await?;
        let mut milesight_refused = false;
        let mut names = HashMap::new();
        for c in &all {
            names.insert(c.id, c);
            if c.status == ConnectionStatus::Disabled {
                continue;
            }
            let id = c.id.to_string();
            let labels = [c.provider.as_str(), id.as_str(), c.name.as_str()];
            if let Some(expires) = c.expires_at {
                self.token_expiry
                    .with_label_values(&labels)
                    .set(seconds_between(expires, at));
            }
            self.token_failures
                .with_label_values(&labels)
                .set(i64::from(c.consecutive_failures));
            let refused = c.status == ConnectionStatus::NeedsReauth;
            self.token_needs_reauth
                .with_label_values(&labels)
                .set(i64::from(refused));
            milesight_refused |= refused && is_milesight(c);
        }
        self.milesight_invalid_credentials
            .set(i64::from(milesight_refused));

        let mut sources = deliveries::list_sources(db).await?;
        sources.sort_by_key(|s| s.id);
        self.sources.keep(sources.iter().map(|s| s.name.as_str()));
        let mut source_names = HashMap::new();
        // Sources past the named ones share `other`: the longest silence, the longest
        // allowance, stale when any is.
        let mut by_label: BTreeMap<&str, (f64, f64, bool)> = BTreeMap::new();
        for s in &sources {
            let label = if self.sources.is_named(&s.name) {
                s.name.as_str()
            } else {
                super::labels::OTHER
            };
            source_names.insert(s.id, label);
            let period = std::time::Duration::from_secs(s.period_secs.max(0) as u64);
            let grace = std::time::Duration::from_secs(s.grace_secs.max(0) as u64);
            let baseline = s.last_event_at.unwrap_or(s.created_at);
            let stale = crate::milesight::source_status(s.last_event_at, s.created_at, period, grace, at)
                == SourceStatus::Stale;
            let entry = by_label.entry(label).or_insert((f64::MIN, f64::MIN, false));
            entry.0 = entry.0.max(seconds_between(at, baseline));
            entry.1 = entry.1.max((period + grace).as_secs_f64());
            entry.2 |= stale;
        }
        for (label, (age, stale_after, stale)) in by_label {
            self.webhook_age.with_label_values(&[label]).set(age);
            self.webhook_stale_after
                .with_label_values(&[label])
                .set(stale_after);
            self.webhook_stale
                .with_label_values(&[label])
                .set(i64::from(stale));
        }

        self.read_devices(db, fleet, &source_names, at).await?;

        for p in polling::list_states(db, None).await? {
            let Some(platform) = names.get(&p.connection_id).and_then(|c| platform_of(c)) else {
                continue;
            };
            let id = p.connection_id.to_string();
            let labels = [platform, p.endpoint.as_str(), id.as_str()];
            if let Some(success) = p.last_success_at {
                self.poll_success_age
                    .with_label_values(&labels)
                    .set(seconds_between(at, success));
            }
            self.poll_failures
                .with_label_values(&labels)
                .set(i64::from(p.consecutive_failures));
        }

        for a in alerts::open_alerts(db).await? {
            self.alerts_open
                .with_label_values(&[a.rule.as_str(), a.severity.as_str(), a.state.as_str()])
                .inc();
        }

        self.outbox_pending.set(outbox::pending_count(db).await?);
        let oldest = outbox::oldest_pending(db).await?;
        self.outbox_oldest_age
            .set(oldest.map_or(0.0, |t| seconds_between(at, t).max(0.0)));
        Ok(())
    }
}

/// Models that get a `model` label of their own: at most this many, the most numerous first.
const MODEL_LABELS: usize = 50;

/// The models named in `telltale_devices`: what a signed sender writes there is data, not a
/// fixed set, so only model-like names (`AM319`, `EM300-TH`) of the most numerous models get
/// a series; the rest share `other`, and `/metrics` cannot be grown from outside.
fn labelled_models<'a>(
    groups: impl Iterator<Item = (Option<&'a str>, i64)>,
) -> std::collections::HashSet<&'a str> {
    let mut by_model: HashMap<&str, i64> = HashMap::new();
    for (model, devices) in groups {
        if let Some(model) = model.filter(|m| is_model_name(m)) {
            *by_model.entry(model).or_default() += devices;
        }
    }
    let mut ranked: Vec<(&str, i64)> = by_model.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().take(MODEL_LABELS).map(|(m, _)| m).collect()
}

fn is_model_name(model: &str) -> bool {
    (1..=32).contains(&model.len())
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn model_label(model: Option<&str>, labelled: &std::collections::HashSet<&str>) -> String {
    match model {
        None => "unknown".into(),
        Some(m) if labelled.contains(m) => m.to_owned(),
        Some(_) => "other".into(),
    }
}

#[cfg(test)]
mod model_label_tests {
    use super::*;

    #[test]
    fn only_model_like_names_of_the_most_numerous_models_get_a_series() {
        let xss = "<script>alert(1)</script>";
        let mut groups = vec![(Some("AM319"), 10), (Some(xss), 99), (None, 3)];
        let many: Vec<String> = (0..80).map(|n| format!("M{n:03}")).collect();
        groups.extend(many.iter().map(|m| (Some(m.as_str()), 1)));
        let labelled = labelled_models(groups.iter().copied());
        assert_eq!(labelled.len(), MODEL_LABELS);
        assert_eq!(model_label(Some("AM319"), &labelled), "AM319");
        assert_eq!(model_label(Some(xss), &labelled), "other");
        assert_eq!(model_label(None, &labelled), "unknown");
        let others = many
            .iter()
            .filter(|m| model_label(Some(m), &labelled) == "other")
            .count();
        assert_eq!(
            others,
            80 + 1 - MODEL_LABELS,
            "the least numerous share one series"
        );
    }
}
