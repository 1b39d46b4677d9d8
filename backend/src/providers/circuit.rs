//! Circuit breakers, one per upstream (a provider kind at one host). When an upstream keeps
//! failing transiently (timeouts, 5xx, garbage), its circuit opens and refreshes against it
//! are refused here without a request, until the open period passes; then calls go through
//! again and the first success closes it, a failure re-opens it for twice as long (up to 10×).
//! This keeps a dead platform from holding sweep slots and pool connections for every one of
//! its connections, and spares a struggling platform a stampede when it comes back. The state
//! machine is failsafe's; what is ours is the key, the log lines and the metrics.
//! Per process: each replica learns an upstream's health from its own calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failsafe::{Config, Instrument, StateMachine, backoff, failure_policy};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

type Policy = failure_policy::ConsecutiveFailures<backoff::Exponential>;
pub type Breaker = StateMachine<Policy, Observer>;

/// When each open circuit first opened (kept through half-open retries until it closes), so a
/// refusal can say since when calls are paused.
type OpenedAt = Arc<Mutex<HashMap<String, crate::storage::UtcTime>>>;

fn lock(opened: &OpenedAt) -> std::sync::MutexGuard<'_, HashMap<String, crate::storage::UtcTime>> {
    opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs and counts one upstream's circuit changes.
pub struct Observer {
    upstream: String,
    open: IntGauge,
    refused: IntCounter,
    opened_at: OpenedAt,
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {
        self.refused.inc();
    }

    fn on_open(&self) {
        self.open.set(1);
        lock(&self.opened_at)
            .entry(self.upstream.clone())
            .or_insert_with(crate::storage::now);
        tracing::warn!(upstream = %self.upstream, "circuit opened: the upstream keeps failing; calls to it are paused");
    }

    fn on_half_open(&self) {
        tracing::info!(upstream = %self.upstream, "circuit half-open: trying the upstream again");
    }

    fn on_closed(&self) {
        // Also called once when the breaker is created; only a real recovery is news.
        if self.open.get() != 0 {
            tracing::info!(upstream = %self.upstream, "circuit closed: the upstream answers again");
        }
        self.open.set(0);
        lock(&self.opened_at).remove(&self.upstream);
    }
}

pub struct Circuits {
    failures: u32,
    open_for: Duration,
    breakers: Mutex<HashMap<String, Breaker>>,
    opened_at: OpenedAt,
    open: IntGaugeVec,
    refused: IntCounterVec,
}

impl Circuits {
    pub fn new(failures: u32, open_for: Duration, open: IntGaugeVec, refused: IntCounterVec) -> Circuits {
        Circuits {
            failures,
            open_for,
            breakers: Mutex::new(HashMap::new()),
            opened_at: OpenedAt::default(),
            open,
            refused,
        }
    }

    /// The breaker for `upstream` (see `upstream_of`); created closed on first use. One per
    /// upstream configured in connections, so the map is as bounded as they are.
    pub fn breaker(&self, upstream: &str) -> Breaker {
        let mut breakers = match self.breakers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        breakers
            .entry(upstream.to_owned())
            .or_insert_with(|| {
                let observer = Observer {
                    upstream: upstream.to_owned(),
                    open: self.open.with_label_values(&[upstream]),
                    refused: self.refused.with_label_values(&[upstream]),
                    opened_at: self.opened_at.clone(),
                };
                Config::new()
                    .failure_policy(failure_policy::consecutive_failures(
                        self.failures,
                        backoff::exponential(self.open_for, self.open_for * 10),
                    ))
                    .instrument(observer)
                    .build()
            })
            .clone()
    }

    /// Since when `upstream`'s circuit has been open (`None` while closed).
    pub fn open_since(&self, upstream: &str) -> Option<crate::storage::UtcTime> {
        lock(&self.opened_at).get(upstream).copied()
    }
}

/// Names an upstream: the provider kind and the host its requests go to (`thingsboard
/// tb.customer-a.example`), or the kind alone when the connection uses its preset's URL. One
/// ThingsBoard customer's outage must not pause the others.
pub fn upstream_of(kind: &str, base_url: Option<&str>) -> String {
    let host = base_url.and_then(|u| url::Url::parse(u).ok()).and_then(|u| {
        u.host_str().map(|h| match u.port() {
            Some(port) => format!("{h}:{port}"),
            None => h.to_owned(),
        })
    });
    match host {
        Some(host) => format!("{kind} {host}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuits(failures: u32, open_for: Duration) -> Circuits {
        Circuits::new(
            failures,
            open_for,
            IntGaugeVec::new(prometheus::Opts::new("open", "o"), &["upstream"]).unwrap(),
            IntCounterVec::new(prometheus::Opts::new("refused", "r"), &["upstream"]).unwrap(),
        )
    }

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_success_after_the_pause() {
        let circuits = circuits(3, Duration::from_secs(1));
        let a = circuits.breaker("spotify");
        for _ in 0..2 {
            assert!(a.is_call_permitted());
            a.on_error();
        }
        a.on_success(); // a success in between starts the count again
        for _ in 0..3 {
            assert!(a.is_call_permitted());
            a.on_error();
        }
        assert!(!a.is_call_permitted(), "open after three failures in a row");
        assert!(
            !circuits.breaker("spotify").is_call_permitted(),
            "shared per upstream"
        );
        assert!(
            circuits.breaker("github").is_call_permitted(),
            "other upstreams unaffected"
        );
        assert_eq!(circuits.open.with_label_values(&["spotify"]).get(), 1);
        assert!(circuits.open_since("spotify").is_some());
        assert_eq!(circuits.open_since("github"), None);
        assert_eq!(circuits.refused.with_label_values(&["spotify"]).get(), 2);

        std::thread::sleep(Duration::from_millis(1100));
        assert!(a.is_call_permitted(), "tried again after the pause");
        a.on_success();
        assert!(a.is_call_permitted());
        assert_eq!(circuits.open.with_label_values(&["spotify"]).get(), 0);
        assert_eq!(circuits.open_since("spotify"), None, "forgotten once closed");
    }

    #[test]
    fn upstreams_are_named_by_kind_and_host() {
        assert_eq!(
            upstream_of(
                "thingsboard",
                Some("https://tb.customer-a.example/api/auth/login")
            ),
            "thingsboard tb.customer-a.example"
        );
        assert_eq!(
            upstream_of("oauth2_refresh", Some("http://127.0.0.1:4321/token")),
            "oauth2_refresh 127.0.0.1:4321"
        );
        assert_eq!(upstream_of("oauth2_refresh", None), "oauth2_refresh");
        assert_eq!(upstream_of("oauth2_refresh", Some("not a url")), "oauth2_refresh");
    }
}
