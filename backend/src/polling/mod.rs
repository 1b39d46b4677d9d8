//! Polling connected platforms: a sweep finds due (connection, endpoint) pairs, claims each in
//! the database (so replicas never poll a pair twice in a period), polls them with bounded
//! concurrency overall and per platform, spaces requests with a per-platform rate limit, and
//! stores each new payload. Scheduled sweeps, "poll now", the cron endpoint and
//! `telltale poll` all go through `PollEngine`.

pub mod catalogue;
mod fetch;
pub mod settings;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use sha2::Digest;

use self::catalogue::Endpoint;
use self::fetch::Failure;
use crate::crypto::Crypto;
use crate::polling::settings::PollingConfig;
use crate::scheduler::{JobSpec, run_with};
use crate::storage::connections::{self, Connection};
use crate::storage::polling::{self as store, Finished, PollState};
use crate::storage::{
    ConnectionStatus, Db, PollOutcome, PollStatus, PollTrigger, StorageResult, UtcTime, now,
};
use crate::tokens::RefreshEngine;

pub const SWEEP_JOB: &str = "platform-polling";
pub const RETENTION_JOB: &str = "platform-data-retention";

/// One poll's result, as sweeps, the API and the CLI report it.
#[derive(Debug, Clone, Serialize)]
pub struct PollResult {
    pub connection_id: i64,
    pub account_id: i64,
    pub connection: String,
    pub platform: String,
    pub endpoint: String,
    pub outcome: PollOutcome,
    pub items: i64,
    pub pages: i32,
    /// Whether the payload was new and stored (identical consecutive payloads are not).
    pub stored: bool,
    pub http_status: Option<i32>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PollReport {
    /// Accounts and connections with a due poll.
    pub users: usize,
    pub connections: usize,
    pub polls: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub dry_run: bool,
    pub timestamp: UtcTime,
    pub results: Vec<PollResult>,
}

#[derive(Debug, Clone, Default)]
pub struct PollRequest {
    pub trigger: PollTrigger,
    pub dry_run: bool,
    /// A platform (`spotify`) or provider kind (`thingsboard`).
    pub platform: Option<String>,
    pub connection_id: Option<i64>,
}

type Limiter = governor::DefaultKeyedRateLimiter<&'static str>;
/// A due pair: its connection, endpoint and state row. (A named type rather than a tuple,
/// so the sweep's stream closure is not generic over the endpoint's lifetime.)
struct Due {
    connection: Connection,
    endpoint: &'static Endpoint,
    state_id: i64,
}

/// The instruments the engine updates (`telltale_poll_*`).
#[derive(Clone)]
pub struct PollMetrics {
    pub runs: prometheus::IntCounterVec,
    pub items: prometheus::IntCounterVec,
    pub seconds: prometheus::HistogramVec,
}

pub struct PollEngine {
    db: Db,
    crypto: Arc<Crypto>,
    http: reqwest::Client,
    settings: PollingConfig,
    /// The scheduler's time zone, which poll schedules are read in.
    timezone: chrono_tz::Tz,
    /// Tokens are refreshed through the refresh engine, so a poll and a sweep never race.
    tokens: Arc<RefreshEngine>,
    metrics: PollMetrics,
    instance: String,
    limiter: Limiter,
    per_platform: usize,
    slots: Mutex<HashMap<&'static str, Arc<tokio::sync::Semaphore>>>,
    /// Platforms that answered 429, paused until then (in this process).
    paused: Mutex<HashMap<&'static str, Instant>>,
}

impl PollEngine {
    /// `instance` names this process in leases.
    pub fn new(
        db: Db,
        crypto: Arc<Crypto>,
        http: reqwest::Client,
        config: &crate::config::Config,
        tokens: Arc<RefreshEngine>,
        metrics: PollMetrics,
        instance: String,
    ) -> PollEngine {
        let rate = NonZeroU32::new(config.polling.requests_per_second).unwrap_or(NonZeroU32::MIN);
        PollEngine {
            db,
            crypto,
            http,
            settings: config.polling.clone(),
            timezone: config.scheduler.timezone,
            tokens,
            metrics,
            instance,
            limiter: governor::RateLimiter::keyed(governor::Quota::per_second(rate)),
            per_platform: config.polling.per_platform_concurrency.max(1),
            slots: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
        }
    }

    fn slots_for(&self, platform: &'static str) -> Arc<tokio::sync::Semaphore> {
        match self.slots.lock() {
            Ok(mut map) => map
                .entry(platform)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_platform)))
                .clone(),
            Err(_) => Arc::new(tokio::sync::Semaphore::new(self.per_platform)),
        }
    }

    fn pause(&self, platform: &'static str, wait: Duration) {
        if let Ok(mut paused) = self.paused.lock() {
            let until = Instant::now() + wait;
            let entry = paused.entry(platform).or_insert(until);
            *entry = (*entry).max(until);
        }
    }

    /// Waits out a 429 pause of the platform (or, when it is longer than `max_wait`, returns how
    /// long it has left), then for the rate limiter's next slot.
    async fn wait_turn(&self, platform: &'static str, max_wait: Duration) -> Result<(), Duration> {
        let until = self.paused.lock().ok().and_then(|p| p.get(platform).copied());
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            if left > max_wait {
                return Err(left);
            }
            tokio::time::sleep(left).await;
        }
        self.limiter.until_key_ready(&platform).await;
        Ok(())
    }

    /// Polls every due pair (or, for a dry run, reports what would be polled).
    pub async fn sweep(&self, request: &PollRequest, at: UtcTime) -> StorageResult<PollReport> {
        let pairs = self.pairs(request).await?;
        let states = self.states_of(&pairs, request.connection_id).await?;
        let due: Vec<Due> = pairs
            .into_iter()
            .filter_map(|(connection, endpoint)| {
                let s = states.get(&(connection.id, endpoint.name.to_owned()))?;
                (s.enabled && s.next_due_at.is_none_or(|d| d.0 <= at.0)).then_some(Due {
                    connection,
                    endpoint,
                    state_id: s.id,
                })
            })
            .collect();
        let due = spread_by_account(due);
        let count_distinct = |key: fn(&Due) -> i64| due.iter().map(key).collect::<HashSet<_>>().len();
        let users = count_distinct(|d| d.connection.account_id);
        let connections_due = count_distinct(|d| d.connection.id);
        let mut results: Vec<PollResult> = if request.dry_run {
            due.iter()
                .map(|d| would_poll(&d.connection, d.endpoint))
                .collect()
        } else {
            futures_util::stream::iter(due)
                .map(|d: Due| self.poll_pair(d.connection, d.endpoint, d.state_id, request.trigger, Some(at)))
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await
        };
        results.sort_by(|a, b| (a.connection_id, &a.endpoint).cmp(&(b.connection_id, &b.endpoint)));
        let counted = |outcome: PollOutcome| results.iter().filter(|r| r.outcome == outcome).count();
        Ok(PollReport {
            users,
            connections: connections_due,
            polls: results.len(),
            succeeded: counted(PollOutcome::Ok),
            failed: counted(PollOutcome::Failed),
            skipped: counted(PollOutcome::Skipped),
            dry_run: request.dry_run,
            timestamp: now(),
            results,
        })
    }

    /// Every (connection, endpoint) pair the request covers.
    async fn pairs(&self, request: &PollRequest) -> StorageResult<Vec<(Connection, &'static Endpoint)>> {
        let mut all = connections::list_connections(&self.db).await?;
        all.retain(|c| request.connection_id.is_none_or(|id| c.id == id));
        let mut pairs = Vec::new();
        for connection in all {
            let Some(platform) = catalogue::platform_of(&connection) else {
                continue;
            };
            if request
                .platform
                .as_deref()
                .is_some_and(|p| p != platform && p != connection.provider)
            {
                continue;
            }
            for endpoint in catalogue::endpoints_of(platform) {
                pairs.push((connection.clone(), endpoint));
            }
        }
        Ok(pairs)
    }

    /// The pairs' stored state by (connection, endpoint); a pair without one gets it (due at
    /// once) and the list is read again.
    async fn states_of(
        &self,
        pairs: &[(Connection, &'static Endpoint)],
        connection_id: Option<i64>,
    ) -> StorageResult<HashMap<(i64, String), PollState>> {
        let mut states = HashMap::new();
        for _ in 0..2 {
            states = store::list_states(&self.db, connection_id)
                .await?
                .into_iter()
                .map(|s| ((s.connection_id, s.endpoint.clone()), s))
                .collect();
            let missing: Vec<(i64, &str)> = pairs
                .iter()
                .filter(|(c, e)| !states.contains_key(&(c.id, e.name.to_owned())))
                .map(|(c, e)| (c.id, e.name))
                .collect();
            if missing.is_empty() {
                break;
            }
            store::ensure_pairs(&self.db, &missing).await?;
        }
        Ok(states)
    }

    /// Polls one pair now, due or not ("Poll now").
    pub async fn poll_now(
        &self,
        connection_id: i64,
        endpoint: &str,
        trigger: PollTrigger,
    ) -> StorageResult<Option<PollResult>> {
        let connection = connections::get_connection(&self.db, connection_id).await?;
        let Some(endpoint) = catalogue::platform_of(&connection).and_then(|p| catalogue::find(p, endpoint))
        else {
            return Ok(None);
        };
        store::ensure_pairs(&self.db, &[(connection_id, endpoint.name)]).await?;
        let pair = store::get_state(&self.db, connection_id, endpoint.name).await?;
        Ok(Some(
            self.poll_pair(connection, endpoint, pair.id, trigger, None).await,
        ))
    }

    /// Claims the pair, polls it, records the run and counts it: claim → fetch → record.
    async fn poll_pair(
        &self,
        connection: Connection,
        endpoint: &'static Endpoint,
        state_id: i64,
        trigger: PollTrigger,
        due_at: Option<UtcTime>,
    ) -> PollResult {
        let connection = &connection;
        let slots = self.slots_for(endpoint.platform);
        let _slot = slots.acquire().await;
        let claimed = match self.claim_pair(state_id, due_at).await {
            Ok(claimed) => claimed,
            Err((outcome, detail)) => {
                let mut r = result_of(connection, endpoint, outcome);
                r.detail = Some(detail);
                return r;
            }
        };
        let started_at = now();
        let clock = Instant::now();
        // Renewed while the fetch runs (pages of a slow platform), so the lease can be short.
        let fetched = crate::scheduler::lease::renewed_while(
            self.settings.lease_secs,
            fetch::poll(self, connection, endpoint),
            |until| store::renew(&self.db, state_id, &self.instance, until),
        )
        .await;
        let took = clock.elapsed();
        let finished_at = now();
        let schedule = schedule_for(&self.settings, endpoint, claimed.schedule.as_deref());
        let mut finished = Finished {
            state_id,
            last_content_hash: claimed.last_content_hash.clone(),
            connection_id: connection.id,
            endpoint: endpoint.name.to_owned(),
            trigger: trigger.as_str().to_owned(),
            status: PollStatus::Ok,
            items: 0,
            pages: 0,
            http_status: None,
            error: None,
            duration_ms: took.as_millis() as i64,
            started_at,
            finished_at,
            next_due_at: next_due(&schedule, self.timezone, finished_at),
            payload: None,
            record_run: true,
        };
        if let Err(Failure::Failed { message, .. }) = &fetched {
            tracing::warn!(connection = connection.id, platform = endpoint.platform, endpoint = endpoint.name, error = %message, "poll failed");
        }
        let mut result = result_of(connection, endpoint, record_fetch(&mut finished, fetched));
        result.items = finished.items;
        result.pages = finished.pages;
        result.http_status = finished.http_status;
        result.detail = finished.error.clone();
        match store::finish(&self.db, &finished).await {
            Ok(stored) => result.stored = stored,
            Err(err) => {
                // The lease expires on its own; the next sweep polls the pair again.
                tracing::warn!(connection = connection.id, endpoint = endpoint.name, error = %err, "could not record a poll");
                result.outcome = PollOutcome::Failed;
                result.detail = Some(format!("storage: {err}"));
            }
        }
        self.count(endpoint, &result, took);
        result
    }

    /// Takes the pair's lease (only while still due, when `due_at` is given); the outcome
    /// and why when it cannot be taken.
    async fn claim_pair(
        &self,
        state_id: i64,
        due_at: Option<UtcTime>,
    ) -> Result<PollState, (PollOutcome, String)> {
        let until = crate::scheduler::lease::until(self.settings.lease_secs);
        match store::claim(&self.db, state_id, &self.instance, now(), until, due_at).await {
            Ok(Some(claimed)) => Ok(claimed),
            Ok(None) => Err((
                PollOutcome::Skipped,
                "polled by another process, or no longer due".into(),
            )),
            Err(err) => Err((PollOutcome::Failed, format!("storage: {err}"))),
        }
    }

    fn count(&self, endpoint: &Endpoint, result: &PollResult, took: std::time::Duration) {
        let labels = [endpoint.platform, endpoint.name, result.outcome.as_str()];
        self.metrics.runs.with_label_values(&labels).inc();
        if result.outcome == PollOutcome::Ok {
            self.metrics
                .items
                .with_label_values(&[endpoint.platform, endpoint.name])
                .inc_by(result.items.max(0) as u64);
        }
        self.metrics
            .seconds
            .with_label_values(&[endpoint.platform])
            .observe(took.as_secs_f64());
    }
}

/// Writes what a fetch brought (items and their payload, or why not) into the run to record;
/// the poll's outcome.
fn record_fetch(finished: &mut Finished, fetched: Result<fetch::Fetched, Failure>) -> PollOutcome {
    match fetched {
        Ok(fetched) => {
            finished.items = i64::try_from(fetched.items.len()).unwrap_or(i64::MAX);
            let payload = serde_json::Value::Array(fetched.items).to_string();
            let hash = hex::encode(sha2::Sha256::digest(payload.as_bytes()));
            finished.pages = fetched.pages;
            finished.http_status = fetched.http_status;
            finished.payload = Some((hash, payload));
            PollOutcome::Ok
        }
        Err(Failure::Skipped(why)) => {
            finished.status = match why {
                ConnectionStatus::Disabled => PollStatus::Disabled,
                _ => PollStatus::NeedsReauth,
            };
            finished.error = Some(format!("skipped: the connection is {why}"));
            finished.record_run = false;
            PollOutcome::Skipped
        }
        Err(Failure::Failed { message, http_status }) => {
            finished.status = PollStatus::Failed;
            finished.error = Some(message);
            finished.http_status = http_status;
            PollOutcome::Failed
        }
    }
}

/// What a dry run reports for a due pair: it would be polled, unless its connection waits
/// for a person (`fetch::can_poll`).
fn would_poll(c: &Connection, e: &Endpoint) -> PollResult {
    let usable = fetch::can_poll(c);
    let outcome = if usable {
        PollOutcome::WouldPoll
    } else {
        PollOutcome::Skipped
    };
    let mut r = result_of(c, e, outcome);
    r.detail = (!usable).then(|| c.status.to_string());
    r
}

fn result_of(connection: &Connection, endpoint: &Endpoint, outcome: PollOutcome) -> PollResult {
    PollResult {
        connection_id: connection.id,
        account_id: connection.account_id,
        connection: connection.name.clone(),
        platform: endpoint.platform.to_owned(),
        endpoint: endpoint.name.to_owned(),
        outcome,
        items: 0,
        pages: 0,
        stored: false,
        http_status: None,
        detail: None,
    }
}

/// Orders due polls round-robin across accounts, so one account with many connections does
/// not take every slot while the others wait.
fn spread_by_account(due: Vec<Due>) -> Vec<Due> {
    let mut by_account: BTreeMap<i64, VecDeque<Due>> = BTreeMap::new();
    for item in due {
        by_account
            .entry(item.connection.account_id)
            .or_default()
            .push_back(item);
    }
    let mut spread = Vec::new();
    while !by_account.is_empty() {
        by_account.retain(|_, queue| {
            if let Some(item) = queue.pop_front() {
                spread.push(item);
            }
            !queue.is_empty()
        });
    }
    spread
}

/// The schedule that applies to a pair: its own, else `polling.schedules` for
/// `platform/endpoint`, else for `platform`, else the catalogue's default.
pub fn schedule_for(config: &PollingConfig, endpoint: &Endpoint, own: Option<&str>) -> String {
    let schedules = &config.schedules;
    own.map(str::to_owned)
        .or_else(|| {
            schedules
                .get(&format!("{}/{}", endpoint.platform, endpoint.name))
                .cloned()
        })
        .or_else(|| schedules.get(endpoint.platform).cloned())
        .unwrap_or_else(|| endpoint.default_schedule.to_owned())
}

/// The schedule's next time after `after`.
pub fn next_due(schedule: &str, timezone: chrono_tz::Tz, after: UtcTime) -> Option<UtcTime> {
    let cron = crate::scheduler::parse_schedule(schedule).ok()?;
    cron.find_next_occurrence(&after.0.with_timezone(&timezone), false)
        .ok()
        .map(|t| UtcTime::new(t.with_timezone(&chrono::Utc)))
}

/// The scheduled sweep and the retention job.
pub fn job_specs(config: &crate::config::Config, engine: &Arc<PollEngine>) -> Vec<JobSpec> {
    vec![
        JobSpec {
            name: SWEEP_JOB,
            schedule: config.polling.sweep_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: false,
            run: run_with(engine.clone(), |engine| async move {
                let request = PollRequest {
                    trigger: PollTrigger::Scheduled,
                    ..Default::default()
                };
                let report = engine.sweep(&request, now()).await?;
                Ok(format!(
                    "{} poll(s): {} ok, {} failed, {} skipped",
                    report.polls, report.succeeded, report.failed, report.skipped
                ))
            }),
        },
        JobSpec {
            name: RETENTION_JOB,
            schedule: config.polling.retention_schedule.clone(),
            timezone: config.scheduler.timezone,
            exclusive: true,
            run: run_with(
                (engine.db.clone(), Arc::new(config.polling.clone())),
                |(db, settings)| async move {
                    let (payloads, runs) = prune(&db, &settings, now()).await?;
                    Ok(format!("deleted {payloads} payload(s) and {runs} poll run(s)"))
                },
            ),
        },
    ]
}

/// Deletes platform data past `polling.retention_days` (and beyond `keep_payloads` per pair),
/// always keeping each pair's newest payload.
pub async fn prune(db: &Db, config: &PollingConfig, at: UtcTime) -> StorageResult<(usize, usize)> {
    let cutoff = UtcTime::new(at.0 - chrono::Duration::days(i64::from(config.retention_days)));
    store::prune(db, cutoff, config.keep_payloads).await
}
