//! The refresh engine for connected platforms: finds due connections, claims each in the
//! database (so processes sharing PostgreSQL never refresh the same one at once), refreshes
//! with bounded concurrency through the connection's provider, retries transient failures
//! with backoff, parks revoked grants as `needs_reauth`, and logs every attempt.
//!
//! The scheduled sweep, manual refreshes, the CLI and the cron endpoint all call
//! `RefreshEngine` so they behave the same.

pub mod connect;
pub mod manage;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use serde::Serialize;

use crate::config::Config;
use crate::crypto::Crypto;
use crate::providers::{self, Failure, Issued, Outcome, Provider, circuit};
use crate::scheduler::{JobSpec, run_with};
use crate::storage::connections::{self, Connection, ConnectionSecrets, RefreshedToken};
use crate::storage::refresh_log::{self, NewRefreshLogEntry};
use crate::storage::{ConnectionStatus, RefreshOutcome, RefreshTrigger, TokenHealth};
use crate::storage::{Db, StorageResult, UtcTime, now};
use settings::TokensConfig;

pub const SWEEP_JOB: &str = "token-refresh-sweep";

/// One connection's result in a sweep or a manual refresh.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectionResult {
    pub id: i64,
    /// The account (customer or user) the connection belongs to; unknown when its row could
    /// not be read.
    pub account_id: Option<i64>,
    pub provider: String,
    pub name: String,
    /// `refreshed`, `would_refresh` (dry run), `needs_reauth`, `failed`, or `skipped`.
    pub outcome: RefreshOutcome,
    pub detail: Option<String>,
    pub expires_at: Option<UtcTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub checked: usize,
    pub refreshed: usize,
    pub failed: usize,
    pub dry_run: bool,
    pub timestamp: UtcTime,
    pub results: Vec<ConnectionResult>,
}

/// What a refresh's attempts came to.
enum Attempted {
    /// The platform answered (the last answer, when there were retries).
    Answered(Result<Issued, Outcome>),
    /// The upstream's circuit is open: no request was sent. Says since when.
    NotAttempted(String),
}

/// Candidates read and judged per page in a sweep.
const JUDGE_PAGE: usize = 2000;

/// One page of a sweep's candidates, judged.
struct Judged {
    due: Vec<Connection>,
    soonest_expiry: Option<UtcTime>,
}

#[derive(Debug, Clone)]
pub struct SweepRequest {
    pub trigger: RefreshTrigger,
    pub actor: String,
    pub dry_run: bool,
    pub provider: Option<String>,
    pub connection_id: Option<i64>,
}

/// The instruments the engine updates.
#[derive(Clone)]
pub struct RefreshMetrics {
    /// `telltale_token_refresh_attempts_total` by provider, trigger and outcome.
    pub attempts: prometheus::IntCounterVec,
    pub attempt_seconds: prometheus::HistogramVec,
    pub circuit_open: prometheus::IntGaugeVec,
    pub calls_refused: prometheus::IntCounterVec,
}

pub struct RefreshEngine {
    db: Db,
    crypto: Arc<Crypto>,
    http: reqwest::Client,
    settings: TokensConfig,
    metrics: RefreshMetrics,
    /// Names this process's leases.
    instance: String,
    /// One lock per connection in this process, so a manual and a scheduled refresh of the
    /// same connection make one upstream call.
    inflight: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// A circuit breaker per upstream (provider kind and host): the engine's own state.
    circuits: circuit::Circuits,
    /// Once cancelled, sweeps claim nothing more (those under way finish and give their
    /// claims back): how a stopped `telltale refresh-tokens` leaves no connection held.
    stopping: tokio_util::sync::CancellationToken,
}

/// A token this close to expiry is not used while its renewal fails: a request sent with it
/// could arrive after it lapsed. Shared by the Milesight token keeper and the poller.
pub const STILL_USABLE_FOR: Duration = Duration::from_secs(30);

/// Whether a token expiring at `expires_at` still has more than `STILL_USABLE_FOR` left.
pub fn still_usable(expires_at: Option<UtcTime>) -> bool {
    let margin = chrono::Duration::from_std(STILL_USABLE_FOR).unwrap_or_default();
    expires_at.is_some_and(|e| e.0 > now().0 + margin)
}

/// When a connection is next due for a refresh: at once with no token yet (or an unknown
/// expiry its provider refreshes at once), else the earlier of its lead time before expiry
/// and the idle window after its last refresh (so unused grants are not revoked).
pub fn next_refresh_at(connection: &Connection, provider: &dyn Provider, idle: Duration) -> UtcTime {
    // Any time in the past: "at once" must hold for a sweep judged at any time.
    let at_once = UtcTime::new(chrono::DateTime::UNIX_EPOCH);
    if connection.access_token.is_none() {
        return at_once;
    }
    if connection.expires_at.is_none()
        && connection.last_refresh_success_at.is_none()
        && provider.refresh_unknown_expiry_at_once()
    {
        return at_once;
    }
    let lead = own_lead(connection).unwrap_or_else(|| provider.default_lead());
    let lead = chrono::Duration::from_std(lead).unwrap_or_default();
    let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
    let idle_due = connection
        .last_refresh_success_at
        .unwrap_or(connection.created_at)
        .0
        .checked_add_signed(idle)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let due = match connection.expires_at {
        Some(expires) => idle_due.min(expires.0 - lead),
        None => idle_due,
    };
    UtcTime::new(due)
}

/// Whether a connection is due at `at` (see [`next_refresh_at`]).
pub fn is_due(connection: &Connection, provider: &dyn Provider, at: UtcTime, idle: Duration) -> bool {
    next_refresh_at(connection, provider, idle) <= at
}

impl RefreshEngine {
    /// `instance` names this process in leases.
    pub fn new(
        db: Db,
        crypto: Arc<Crypto>,
        http: reqwest::Client,
        settings: &TokensConfig,
        metrics: RefreshMetrics,
        instance: String,
    ) -> RefreshEngine {
        RefreshEngine {
            circuits: circuit::Circuits::new(
                settings.circuit_failures,
                settings.circuit_open_secs,
                metrics.circuit_open.clone(),
                metrics.calls_refused.clone(),
            ),
            db,
            crypto,
            http,
            settings: settings.clone(),
            metrics,
            instance,
            inflight: Mutex::new(HashMap::new()),
            stopping: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Sweeps start no more refreshes from now on; those under way finish.
    pub fn stop_claiming(&self) {
        self.stopping.cancel();
    }

    fn lock_for(&self, id: i64) -> Arc<tokio::sync::Mutex<()>> {
        match self.inflight.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// `connection` as its provider should see it: a ThingsBoard connection without a base URL
    /// gets `tokens.thingsboard_url` (`THINGSBOARD_URL`).
    pub fn with_defaults<'c>(&self, connection: &'c Connection) -> std::borrow::Cow<'c, Connection> {
        match (&connection.base_url, &self.settings.thingsboard_url) {
            (None, Some(default)) if connection.provider == "thingsboard" => {
                let mut filled = connection.clone();
                filled.base_url = Some(default.trim_end_matches('/').to_owned());
                std::borrow::Cow::Owned(filled)
            }
            _ => std::borrow::Cow::Borrowed(connection),
        }
    }

    /// The HTTP client token requests go out on (`tokens.request_timeout_secs`), also for
    /// the code exchange after a consent screen.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Splits one page of candidates into the due ones (returned) and the ones not due yet
    /// (new or changed since their last sweep), whose time is written so later sweeps skip
    /// them until then.
    async fn judge(
        &self,
        request: &SweepRequest,
        ids: &[i64],
        at: UtcTime,
        idle: Duration,
    ) -> StorageResult<Judged> {
        let page = connections::connections_by_ids(&self.db, ids).await?;
        let soonest_expiry = page.iter().filter_map(|c| c.expires_at).min();
        let mut due = Vec::new();
        let mut later = Vec::new();
        for c in page {
            // A provider this build does not know: nothing to refresh it with.
            let Some(provider) = providers::provider_for(&c.provider) else {
                continue;
            };
            // Nothing to refresh with yet (a consent-screen connection before its first
            // Connect): waiting for a person, not failing.
            if c.access_token.is_none() && c.refresh_token.is_none() && !provider.logs_in_with_credentials() {
                continue;
            }
            let next = next_refresh_at(&c, provider, idle);
            if next > at {
                later.push((c.id, next, c.updated_at));
            } else {
                due.push(c);
            }
        }
        if !request.dry_run {
            connections::schedule_refreshes(&self.db, &later).await?;
        }
        Ok(Judged { due, soonest_expiry })
    }

    /// Refreshes every due connection (or reports what would be refreshed, for a dry run).
    pub async fn sweep(&self, request: &SweepRequest, at: UtcTime) -> StorageResult<SweepReport> {
        let idle = self.settings.idle_refresh_days;
        let candidates = connections::refresh_candidate_ids(
            &self.db,
            request.provider.as_deref(),
            request.connection_id,
            at,
        )
        .await?;
        let considered = candidates.len();
        let mut soonest_expiry = None;
        let mut due = Vec::new();
        // Judged a page at a time, so a sweep over many unjudged connections (the first after
        // an upgrade, a bulk import) holds one page of rows, not all of them.
        for page in candidates.chunks(JUDGE_PAGE) {
            let judged = self.judge(request, page, at, idle).await?;
            soonest_expiry = soonest_expiry.into_iter().chain(judged.soonest_expiry).min();
            due.extend(judged.due);
        }
        let results: Vec<ConnectionResult> = if request.dry_run {
            let mut results = Vec::new();
            for c in &due {
                self.log(c, request, true, Ok(None), Duration::ZERO).await;
                results.push(ConnectionResult {
                    id: c.id,
                    account_id: Some(c.account_id),
                    provider: c.provider.clone(),
                    name: c.name.clone(),
                    outcome: RefreshOutcome::WouldRefresh,
                    detail: None,
                    expires_at: c.expires_at,
                });
            }
            results
        } else {
            let ids: Vec<i64> = due.iter().map(|c| c.id).collect();
            futures_util::stream::iter(ids)
                .take_until(self.stopping.cancelled())
                .map(|id| self.refresh_one(id, request, Some(at)))
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await
        };
        let mut results = results;
        results.sort_by_key(|r| r.id);
        let report = SweepReport {
            checked: due.len(),
            refreshed: results
                .iter()
                .filter(|r| r.outcome == RefreshOutcome::Refreshed)
                .count(),
            failed: results
                .iter()
                .filter(|r| matches!(r.outcome, RefreshOutcome::Failed | RefreshOutcome::NeedsReauth))
                .count(),
            dry_run: request.dry_run,
            timestamp: now(),
            results,
        };
        // One line a sweep, so a log viewer shows it ran and what is coming up.
        tracing::info!(
            trigger = request.trigger.as_str(),
            checked = considered,
            due = report.checked,
            refreshed = report.refreshed,
            failed = report.failed,
            dry_run = request.dry_run,
            soonest_expiry = %soonest_expiry.map_or_else(|| "none".to_owned(), |t| t.to_string()),
            "token sweep: {considered} checked, {} due, {} refreshed, {} failed",
            report.checked,
            report.refreshed,
            report.failed
        );
        Ok(report)
    }

    /// Refreshes one connection now, whether due or not (the manual button).
    pub async fn refresh_now(
        &self,
        id: i64,
        trigger: RefreshTrigger,
        actor: &str,
    ) -> StorageResult<ConnectionResult> {
        connections::get_connection(&self.db, id).await?;
        let request = SweepRequest {
            trigger,
            actor: actor.into(),
            dry_run: false,
            provider: None,
            connection_id: Some(id),
        };
        Ok(self.refresh_one(id, &request, None).await)
    }

    /// Refreshes one connection if it is due at `at` (callers that need its token now).
    pub async fn refresh_due(
        &self,
        id: i64,
        trigger: RefreshTrigger,
        actor: &str,
        at: UtcTime,
    ) -> StorageResult<ConnectionResult> {
        let request = SweepRequest {
            trigger,
            actor: actor.into(),
            dry_run: false,
            provider: None,
            connection_id: Some(id),
        };
        Ok(self.refresh_one(id, &request, Some(at)).await)
    }

    /// `due_at`: refresh only if still due at that time (sweeps); `None`: refresh regardless,
    /// unless another refresh finished while we waited for the lock (manual).
    async fn refresh_one(
        &self,
        id: i64,
        request: &SweepRequest,
        due_at: Option<UtcTime>,
    ) -> ConnectionResult {
        let asked_at = now();
        let lock = self.lock_for(id);
        let _serial = lock.lock().await;
        match self.claim_and_refresh(id, request, due_at, asked_at).await {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(connection = id, error = %err, "refresh could not complete");
                ConnectionResult {
                    id,
                    account_id: None,
                    provider: String::new(),
                    name: String::new(),
                    outcome: RefreshOutcome::Failed,
                    detail: Some(format!("storage: {err}")),
                    expires_at: None,
                }
            }
        }
    }

    /// Claims the connection's lease (so no other process refreshes it meanwhile), refreshes
    /// it if still due, and gives the lease back.
    async fn claim_and_refresh(
        &self,
        id: i64,
        request: &SweepRequest,
        due_at: Option<UtcTime>,
        asked_at: UtcTime,
    ) -> StorageResult<ConnectionResult> {
        let lease = self.settings.lease_secs;
        let until = crate::scheduler::lease::until(lease);
        let Some(connection) = connections::claim(&self.db, id, &self.instance, now(), until).await? else {
            let c = connections::get_connection(&self.db, id).await?;
            return Ok(result_of(
                &c,
                RefreshOutcome::Skipped,
                Some("being refreshed by another process".into()),
            ));
        };
        // Renewed while the refresh runs: a short lease, so a killed process's claim is
        // taken over soon, that a slow platform cannot make run out.
        let outcome = crate::scheduler::lease::renewed_while(
            lease,
            self.refresh_if_due(&connection, request, due_at, asked_at),
            |until| connections::renew(&self.db, id, &self.instance, until),
        )
        .await;
        // Always give the lease back, also after a failure. A refresh already stored is
        // reported as it happened even if the release fails: the lease then runs out by itself.
        if let Err(err) = connections::release(&self.db, id, &self.instance).await {
            tracing::warn!(connection = id, error = %err, "cannot release the refresh lease; it expires by itself");
        }
        outcome
    }

    /// Judges the claimed row as it is now, then attempts the refresh and records the result.
    async fn refresh_if_due(
        &self,
        connection: &Connection,
        request: &SweepRequest,
        due_at: Option<UtcTime>,
        asked_at: UtcTime,
    ) -> StorageResult<ConnectionResult> {
        let Some(provider) = providers::provider_for(&connection.provider) else {
            return Ok(result_of(
                connection,
                RefreshOutcome::Failed,
                Some(format!("unknown provider {:?}", connection.provider)),
            ));
        };
        // Judge the row as it is now: another process may have refreshed it since the sweep
        // listed it, or a concurrent refresh in this one finished while we waited.
        match due_at {
            Some(at) if !is_due(connection, provider, at, self.settings.idle_refresh_days) => {
                return Ok(result_of(
                    connection,
                    RefreshOutcome::Skipped,
                    Some("already fresh".into()),
                ));
            }
            None if connection.last_refresh_success_at.is_some_and(|t| t >= asked_at) => {
                return Ok(result_of(
                    connection,
                    RefreshOutcome::Refreshed,
                    Some("refreshed by a concurrent request".into()),
                ));
            }
            _ => {}
        }
        if connection.status.waits_for_a_person() && due_at.is_some() {
            return Ok(result_of(
                connection,
                RefreshOutcome::Skipped,
                Some(connection.status.to_string()),
            ));
        }
        let secrets = connections::secrets(&self.crypto, connection)?;
        match self.attempt(connection, provider, &secrets, request).await {
            Attempted::Answered(result) => self.record(connection, request, result).await,
            Attempted::NotAttempted(note) => Ok(self.not_attempted(connection, request, note)),
        }
    }

    /// The upstream's circuit refused the refresh before any request: nothing about the
    /// connection changes (its last error stays the platform's last real answer, and its
    /// failures in a row count only requests that reached the platform); the result says both.
    fn not_attempted(
        &self,
        connection: &Connection,
        request: &SweepRequest,
        note: String,
    ) -> ConnectionResult {
        let platform_said = connection
            .last_error
            .as_deref()
            .map_or_else(|| "nothing yet".to_owned(), str::to_owned);
        let detail = format!("{note}; the platform last said: {platform_said}");
        tracing::warn!(
            connection = connection.id,
            provider = %connection.provider,
            name = %connection.name,
            trigger = request.trigger.as_str(),
            reason = "circuit_open",
            "token refresh not attempted: {detail}"
        );
        result_of(connection, RefreshOutcome::Failed, Some(detail))
    }

    /// Asks the provider for a new token, retrying transient failures with backoff (a
    /// `Retry-After` wins) unless the upstream's circuit is open; every attempt is logged.
    async fn attempt(
        &self,
        connection: &Connection,
        provider: &'static dyn Provider,
        secrets: &ConnectionSecrets,
        request: &SweepRequest,
    ) -> Attempted {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(
                own_max_attempts(connection)
                    .unwrap_or(self.settings.max_attempts)
                    .saturating_sub(1) as usize,
            );
        let quota_key = own_setting(connection, "quota_key").and_then(|v| v.as_str().map(str::to_owned));
        let upstream = circuit::upstream_of(provider.kind(), connection.base_url.as_deref());
        let breaker = self.circuits.breaker(&upstream);
        // The platform's last answer in this refresh, should the circuit open between attempts.
        let last_answer: std::sync::Mutex<Option<Outcome>> = std::sync::Mutex::new(None);
        let refused = std::sync::atomic::AtomicBool::new(false);
        let attempt = || async {
            if !breaker.is_call_permitted() {
                // Not retried now (retrying would only wait out backoff against an open
                // circuit), and not an attempt: no request, no refresh-log row.
                refused.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(Outcome::Failed("circuit open".into()));
            }
            if let Some(key) = quota_key.as_deref() {
                // Counted towards the platform's daily quota, but never refused for it: a lapsed
                // token would stop everything else.
                if let Err(err) = crate::storage::usage::reserve(&self.db, key, now(), i64::MAX).await {
                    tracing::debug!(error = %err, "could not count a token request");
                }
            }
            let outcome = self.call_provider(connection, provider, secrets, request).await;
            // Only transient failures mean the upstream is unwell; a refusal is an answer.
            match outcome {
                Outcome::Transient { .. } => breaker.on_error(),
                _ => breaker.on_success(),
            }
            if let Ok(mut last) = last_answer.lock() {
                *last = outcome.failure().map(|_| outcome.clone());
            }
            match outcome {
                Outcome::Refreshed(issued) => Ok(issued),
                other => Err(other),
            }
        };
        let max_wait = self.settings.max_retry_wait_secs;
        let result = attempt
            .retry(backoff)
            .when(|o: &Outcome| matches!(o, Outcome::Transient { .. }))
            .adjust(move |o: &Outcome, delay| {
                // The attempts are spent: stop, whatever the platform asked for.
                let delay = delay?;
                match o {
                    // Longer than a refresh may wait: stop now; `record` schedules the next
                    // attempt for when the platform said.
                    Outcome::Transient {
                        retry_after: Some(wait),
                        ..
                    } if *wait > max_wait => None,
                    Outcome::Transient {
                        retry_after: Some(wait),
                        ..
                    } => Some(*wait),
                    _ => Some(delay),
                }
            })
            .await;
        if !refused.load(std::sync::atomic::Ordering::Relaxed) {
            return Attempted::Answered(result);
        }
        // Refused by the circuit: after a real answer in this refresh, that answer is the
        // result; before any, nothing was asked.
        match last_answer.into_inner().ok().flatten() {
            Some(answer) => Attempted::Answered(Err(answer)),
            None => {
                let since = self
                    .circuits
                    .open_since(&upstream)
                    .map(|at| {
                        format!(
                            " since {}",
                            crate::present::when(at, now(), crate::present::zone())
                        )
                    })
                    .unwrap_or_default();
                Attempted::NotAttempted(format!(
                    "not attempted: {} failed repeatedly; its circuit is open{since}",
                    crate::present::provider_name(provider.kind())
                ))
            }
        }
    }

    /// One call to the provider, bounded by the connection's own timeout when it has one
    /// (the client's is `tokens.request_timeout_secs`), counted in the metrics and logged.
    async fn call_provider(
        &self,
        connection: &Connection,
        provider: &'static dyn Provider,
        secrets: &ConnectionSecrets,
        request: &SweepRequest,
    ) -> Outcome {
        let started = Instant::now();
        let with_defaults = self.with_defaults(connection);
        let call = provider.refresh(&self.http, &with_defaults, secrets);
        let outcome = match own_request_timeout(connection) {
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Outcome::transient(format!("timed out: no answer within {} s", limit.as_secs()))
            }),
            None => call.await,
        };
        self.metrics
            .attempts
            .with_label_values(&[provider.kind(), request.trigger.as_str(), outcome.label()])
            .inc();
        self.metrics
            .attempt_seconds
            .with_label_values(&[provider.kind()])
            .observe(started.elapsed().as_secs_f64());
        let logged = match (&outcome, outcome.failure()) {
            (Outcome::Refreshed(issued), _) => Ok(Some(issued.clone())),
            (_, failure) => Err(failure.map(|f| f.message.clone()).unwrap_or_default()),
        };
        self.log(connection, request, false, logged, started.elapsed())
            .await;
        outcome
    }

    /// Stores what the attempt ended with and says so in the log.
    async fn record(
        &self,
        connection: &Connection,
        request: &SweepRequest,
        result: Result<Issued, Outcome>,
    ) -> StorageResult<ConnectionResult> {
        let at = now();
        let result = match result {
            Ok(issued) => {
                let stored = self.store_issued(connection, &issued).await?;
                let valid_for = stored.expires_at.map(|e| (e.0 - at.0).num_seconds());
                tracing::info!(
                    connection = connection.id,
                    provider = %connection.provider,
                    name = %connection.name,
                    trigger = request.trigger.as_str(),
                    expires_at = %stored.expires_at.map_or_else(|| "unknown".to_owned(), |t| t.to_string()),
                    valid_for_secs = valid_for,
                    "token refreshed: {} ({}), valid for {} s",
                    connection.name,
                    connection.provider,
                    valid_for.map_or_else(|| "an unknown time".to_owned(), |s| s.to_string())
                );
                result_of(&stored, RefreshOutcome::Refreshed, None)
            }
            Err(Outcome::NeedsReauth(failure)) => {
                let stored = connections::record_refresh_failure(
                    &self.db,
                    connection.id,
                    Some(ConnectionStatus::NeedsReauth),
                    &failure.message,
                    at,
                )
                .await?;
                tracing::warn!(
                    connection = connection.id,
                    provider = %connection.provider,
                    name = %connection.name,
                    trigger = request.trigger.as_str(),
                    reason = "needs_reauth",
                    http_status = failure.http_status,
                    error = %failure,
                    "token refresh refused: {} ({}) needs re-authorisation; no further attempts until then",
                    connection.name,
                    connection.provider
                );
                result_of(&stored, RefreshOutcome::NeedsReauth, Some(failure.message))
            }
            Err(Outcome::Transient { failure, retry_after }) => {
                let result = self
                    .record_failure(connection, request, "transient", failure, at)
                    .await?;
                if let Some(wait) = retry_after.filter(|w| *w > self.settings.max_retry_wait_secs) {
                    self.retry_when_asked(connection, wait).await?;
                }
                result
            }
            Err(Outcome::Failed(failure)) => {
                self.record_failure(connection, request, "refused", failure, at)
                    .await?
            }
            Err(Outcome::Refreshed(_)) => {
                result_of(connection, RefreshOutcome::Failed, Some("unreachable".into()))
            }
        };
        Ok(result)
    }

    /// Stores a failed refresh (the failure count grows; a later sweep tries again) and says so
    /// in the log, with its reason class (`transient` or `refused`) and HTTP status.
    async fn record_failure(
        &self,
        connection: &Connection,
        request: &SweepRequest,
        reason: &'static str,
        failure: Failure,
        at: UtcTime,
    ) -> StorageResult<ConnectionResult> {
        let stored =
            connections::record_refresh_failure(&self.db, connection.id, None, &failure.message, at).await?;
        tracing::warn!(
            connection = connection.id,
            provider = %connection.provider,
            name = %connection.name,
            trigger = request.trigger.as_str(),
            reason,
            http_status = failure.http_status,
            failures_in_a_row = stored.consecutive_failures,
            next_attempt = "the next sweep (tokens.sweep_schedule)",
            error = %failure,
            "token refresh failed: {} ({}), {} failure(s) in a row; tried again at the next sweep",
            connection.name,
            connection.provider,
            stored.consecutive_failures
        );
        Ok(result_of(&stored, RefreshOutcome::Failed, Some(failure.message)))
    }

    /// A platform asked to wait longer than a refresh waits (`Retry-After` over
    /// `tokens.max_retry_wait_secs`): the connection is next due when it said, not at the next
    /// sweep.
    async fn retry_when_asked(&self, connection: &Connection, wait: Duration) -> StorageResult<()> {
        let stored = connections::get_connection(&self.db, connection.id).await?;
        let next = UtcTime::new(now().0 + chrono::Duration::from_std(wait).unwrap_or_default());
        connections::schedule_refreshes(&self.db, &[(stored.id, next, stored.updated_at)]).await?;
        tracing::info!(
            connection = connection.id,
            name = %connection.name,
            retry_after_secs = wait.as_secs(),
            next_attempt = %next,
            "the platform asked to wait {} s before the next token request; tried again then",
            wait.as_secs()
        );
        Ok(())
    }

    /// Records the tokens a consent screen's code was exchanged for (trigger `connect`): one
    /// refresh-log row either way; tokens (and derived page tokens) stored only on success,
    /// which also clears `needs_reauth`. A failed exchange changes nothing else.
    pub async fn connected(
        &self,
        connection: &Connection,
        outcome: Outcome,
        actor: &str,
        took: Duration,
    ) -> StorageResult<ConnectionResult> {
        let request = SweepRequest {
            trigger: RefreshTrigger::Connect,
            actor: actor.into(),
            dry_run: false,
            provider: None,
            connection_id: Some(connection.id),
        };
        self.metrics
            .attempts
            .with_label_values(&[connection.provider.as_str(), "connect", outcome.label()])
            .inc();
        match outcome {
            Outcome::Refreshed(issued) => {
                self.log(connection, &request, false, Ok(Some(issued.clone())), took)
                    .await;
                let stored = self.store_issued(connection, &issued).await?;
                tracing::info!(connection = connection.id, provider = %connection.provider, "connected through the consent screen");
                Ok(result_of(&stored, RefreshOutcome::Refreshed, None))
            }
            Outcome::Transient { failure, .. } | Outcome::NeedsReauth(failure) | Outcome::Failed(failure) => {
                let message = failure.message;
                self.log(connection, &request, false, Err(message.clone()), took)
                    .await;
                tracing::warn!(connection = connection.id, provider = %connection.provider, error = %message, "connecting through the consent screen failed");
                Ok(result_of(connection, RefreshOutcome::Failed, Some(message)))
            }
        }
    }

    /// Stores what a platform issued: the tokens of `connection`, and the tokens derived from
    /// them (Meta's pages) as connections of their own.
    async fn store_issued(&self, connection: &Connection, issued: &Issued) -> StorageResult<Connection> {
        let at = now();
        let stored = connections::store_refreshed_token(
            &self.db,
            &self.crypto,
            connection.id,
            &to_refreshed(issued, at),
            at,
        )
        .await?;
        let stored = match &issued.learned {
            Some(learned) => self.remember_learned(&stored, learned).await?,
            None => stored,
        };
        for derived in &issued.derived {
            connections::upsert_derived_token(
                &self.db,
                &self.crypto,
                connection,
                derived.provider,
                &derived.name,
                &derived.settings,
                &derived.access_token,
            )
            .await?;
        }
        Ok(stored)
    }

    /// Merges what a provider learned (e.g. the login path it found) into the connection's
    /// settings, so the next refresh goes straight there.
    async fn remember_learned(
        &self,
        connection: &Connection,
        learned: &serde_json::Value,
    ) -> StorageResult<Connection> {
        let stored = connection.settings.to_value();
        let settings = manage::merged(stored, learned.clone());
        tracing::info!(connection = connection.id, provider = %connection.provider, learned = %learned, "remembered how to reach the provider");
        let update = connections::ConnectionUpdate {
            settings: Some(settings),
            ..Default::default()
        };
        connections::update_connection(&self.db, &self.crypto, connection.id, &update).await
    }

    async fn log(
        &self,
        connection: &Connection,
        request: &SweepRequest,
        dry_run: bool,
        result: Result<Option<Issued>, String>,
        took: Duration,
    ) {
        let at = now();
        let entry = NewRefreshLogEntry {
            connection_id: Some(connection.id),
            provider: connection.provider.clone(),
            trigger: request.trigger.as_str().into(),
            actor: Some(request.actor.clone()),
            dry_run,
            success: result.is_ok(),
            new_expires_at: result
                .as_ref()
                .ok()
                .and_then(|i| i.as_ref())
                .and_then(|i| to_refreshed(i, at).expires_at),
            error: result.err(),
            old_expires_at: connection.expires_at,
            duration_ms: took.as_millis() as i64,
            attempted_at: at,
        };
        if let Err(err) = refresh_log::append(&self.db, &entry).await {
            tracing::warn!(error = %err, "could not write the refresh log");
        }
    }
}

fn absolute(unix_secs: Option<i64>) -> Option<UtcTime> {
    unix_secs
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(UtcTime::new)
}

fn to_refreshed(issued: &Issued, at: UtcTime) -> RefreshedToken {
    let after = |secs: i64| UtcTime::new(at.0 + chrono::Duration::seconds(secs));
    RefreshedToken {
        access_token: issued.access_token.clone(),
        refresh_token: issued.refresh_token.clone(),
        expires_at: absolute(issued.expires_at).or(issued.expires_in.map(after)),
        refresh_expires_at: absolute(issued.refresh_expires_at).or(issued.refresh_expires_in.map(after)),
    }
}

fn result_of(connection: &Connection, outcome: RefreshOutcome, detail: Option<String>) -> ConnectionResult {
    ConnectionResult {
        id: connection.id,
        account_id: Some(connection.account_id),
        provider: connection.provider.clone(),
        name: connection.name.clone(),
        outcome,
        detail,
        expires_at: connection.expires_at,
    }
}

/// The scheduled sweep.
pub fn job_specs(config: &Config, engine: &Arc<RefreshEngine>) -> Vec<JobSpec> {
    vec![JobSpec {
        name: SWEEP_JOB,
        schedule: config.tokens.sweep_schedule.clone(),
        timezone: config.scheduler.timezone,
        exclusive: false,
        run: run_with(engine.clone(), |engine| async move {
            let request = SweepRequest {
                trigger: RefreshTrigger::Scheduled,
                actor: "scheduler".into(),
                dry_run: false,
                provider: None,
                connection_id: None,
            };
            let report = engine.sweep(&request, now()).await?;
            Ok(format!(
                "{} due, {} refreshed, {} failed",
                report.checked, report.refreshed, report.failed
            ))
        }),
    }]
}

/// A connection's token health as people see it.
pub fn token_status(connection: &Connection, lead: Duration, at: UtcTime) -> TokenHealth {
    let lead = chrono::Duration::from_std(lead).unwrap_or_default();
    match (
        connection.status,
        connection.access_token.is_some(),
        connection.expires_at,
    ) {
        (ConnectionStatus::Disabled, _, _) => TokenHealth::Disabled,
        (ConnectionStatus::NeedsReauth, _, _) => TokenHealth::NeedsReauth,
        (_, false, _) => TokenHealth::Missing,
        (_, true, Some(exp)) if exp.0 <= at.0 => TokenHealth::Expired,
        (_, true, Some(exp)) if exp.0 - lead <= at.0 => TokenHealth::Expiring,
        _ => TokenHealth::Active,
    }
}

/// The lead time that applies to a connection: its own `lead_secs`, else its provider's.
pub fn lead_for(connection: &Connection) -> Duration {
    own_lead(connection)
        .or_else(|| providers::provider_for(&connection.provider).map(|p| p.default_lead()))
        .unwrap_or(Duration::from_secs(600))
}

/// One of a connection's settings, if it has it.
fn own_setting<'c>(connection: &'c Connection, key: &str) -> Option<&'c serde_json::Value> {
    connection.settings.get(key)
}

/// A connection's own `lead_secs` setting, if it has one.
fn own_lead(connection: &Connection) -> Option<Duration> {
    own_setting(connection, "lead_secs")
        .and_then(|v| v.as_u64())
        .map(Duration::from_secs)
}

/// A connection's own `request_timeout_secs` (each token request), if it has one.
fn own_request_timeout(connection: &Connection) -> Option<Duration> {
    own_setting(connection, "request_timeout_secs")
        .and_then(|v| v.as_u64())
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
}

/// A connection's own `max_attempts` (upstream attempts per refresh), if it has one.
fn own_max_attempts(connection: &Connection) -> Option<u32> {
    own_setting(connection, "max_attempts")
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
}
