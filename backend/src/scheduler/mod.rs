//! Scheduled jobs on tokio-cron-scheduler. The scheduler only decides *when*; each job is a
//! closure over what it uses (its engine, the database, its settings), also callable from
//! tests and commands. The `Runner` records every run and holds exclusive jobs' leases.
//!
//! Every run is recorded in `job_state` (last run, result, next run) and in metrics; a job
//! switched off in `job_state` is skipped; a tick that finds the previous run still going is
//! skipped rather than stacked. tokio-cron-scheduler fixes a job's UTC offset when the job is
//! created, so a watcher re-creates jobs whose time zone changed offset (daylight saving).

pub mod lease;
pub mod settings;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Offset, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::storage::{Db, UtcTime, jobs, now};

pub type JobFuture = Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send>>;
/// A job body: does its work and returns a one-line summary for `job_state` and the log.
pub type JobFn = Arc<dyn Fn() -> JobFuture + Send + Sync>;

/// A job body over `context` (its engine, database, settings), cloned into each run.
pub fn run_with<C, F, Fut>(context: C, body: F) -> JobFn
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<String>> + Send + 'static,
{
    Arc::new(move || Box::pin(body(context.clone())))
}

#[derive(Clone)]
pub struct JobSpec {
    pub name: &'static str,
    /// Six fields: second minute hour day-of-month month day-of-week.
    pub schedule: String,
    pub timezone: Tz,
    /// One piece of work (not a set of separately claimed units): with several replicas it
    /// runs on one per tick, under a lease in `job_state`. Sweeps that claim each connection,
    /// poll or email themselves leave this off, so every replica helps.
    pub exclusive: bool,
    pub run: JobFn,
}

/// A schedule in the six-field form the scheduler runs (second minute hour day-of-month month
/// day-of-week). A standard five-field crontab expression (minute precision, as cron and the
/// scripts Telltale replaces write them, e.g. `*/30 * * * *`) fires at second 0.
pub fn normalize_schedule(expression: &str) -> Result<String, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let six = match fields.len() {
        5 => format!("0 {}", fields.join(" ")),
        6 => fields.join(" "),
        n => {
            return Err(format!(
                "{n} field(s); expected five as in crontab (min hour day month weekday) or six with seconds first"
            ));
        }
    };
    parse_six(&six)?;
    Ok(six)
}

/// Parses a cron expression (five or six fields, see `normalize_schedule`) the way
/// tokio-cron-scheduler will (day-of-month AND day-of-week), so configuration errors surface
/// at start-up.
pub fn parse_schedule(expression: &str) -> Result<croner::Cron, String> {
    parse_six(&normalize_schedule(expression)?)
}

fn parse_six(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

/// The next `n` times `expression` fires after `after`, in `timezone` (for `check-config`).
pub fn next_runs(expression: &str, timezone: Tz, after: UtcTime, n: usize) -> Vec<chrono::DateTime<Tz>> {
    let Ok(cron) = parse_schedule(expression) else {
        return Vec::new();
    };
    let mut at = after.0.with_timezone(&timezone);
    let mut runs = Vec::new();
    while runs.len() < n {
        match cron.find_next_occurrence(&at, false) {
            Ok(next) => {
                at = next;
                runs.push(next);
            }
            Err(_) => break,
        }
    }
    runs
}

pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name)
        .map_err(|_| format!("unknown time zone {name:?}; use an IANA name such as UTC or Europe/Berlin"))
}

/// The next time `spec` fires after `after`.
pub fn next_run(spec: &JobSpec, after: UtcTime) -> Option<UtcTime> {
    use chrono::SubsecRound;
    let cron = parse_schedule(&spec.schedule).ok()?;
    // Whole seconds: croner keeps the fraction (after 12:00:03.2 "every minute" would be
    // 12:01:03.2), but ticks fire on the second, and exclusive jobs hold their lease until
    // just before the real next tick.
    let local = after.0.trunc_subsecs(0).with_timezone(&spec.timezone);
    cron.find_next_occurrence(&local, false)
        .ok()
        .map(|t| UtcTime::new(t.with_timezone(&Utc)))
}

fn offset_secs(tz: &Tz) -> i32 {
    offset_secs_at(tz, Utc::now())
}

/// The zone's UTC offset at an instant (what tokio-cron-scheduler freezes into a job).
fn offset_secs_at(tz: &Tz, at: chrono::DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

struct Registered {
    spec: JobSpec,
    id: Uuid,
    offset_secs: i32,
    running: Arc<AtomicBool>,
}

/// The instruments the runner updates.
#[derive(Clone)]
pub struct RunnerMetrics {
    /// `telltale_scheduler_job_runs_total` by job and outcome.
    pub runs: prometheus::IntCounterVec,
    /// `telltale_scheduler_job_last_run_timestamp_seconds` by job.
    pub last_run: prometheus::IntGaugeVec,
}

/// Runs jobs and records their runs: what the scheduler, the API's "run now" and tests share.
pub struct Runner {
    db: Db,
    /// Names this process in exclusive jobs' leases.
    instance: String,
    metrics: RunnerMetrics,
}

pub struct Scheduler {
    cron: JobScheduler,
    jobs: Arc<Mutex<Vec<Registered>>>,
}

impl Scheduler {
    /// Registers and starts `specs`. Job runs are tracked by `tasks`, so shutdown waits for
    /// them; after `cancel` no new run starts.
    pub async fn start(
        runner: Arc<Runner>,
        specs: Vec<JobSpec>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<Scheduler> {
        let cron = JobScheduler::new().await?;
        let mut registered = Vec::new();
        for spec in specs {
            let running = Arc::new(AtomicBool::new(false));
            let job = build_job(&runner, &spec, &running, &tasks, &cancel)?;
            let id = cron.add(job).await?;
            let tz_name = spec.timezone.name();
            if let Err(err) = jobs::register(
                &runner.db,
                spec.name,
                &spec.schedule,
                tz_name,
                next_run(&spec, now()),
            )
            .await
            {
                tracing::warn!(job = spec.name, error = %err, "could not record job state");
            }
            tracing::info!(job = spec.name, schedule = %spec.schedule, timezone = tz_name, "job scheduled");
            registered.push(Registered {
                offset_secs: offset_secs(&spec.timezone),
                spec,
                id,
                running,
            });
        }
        cron.start().await?;
        let scheduler = Scheduler {
            cron,
            jobs: Arc::new(Mutex::new(registered)),
        };
        scheduler.watch_offsets(runner, tasks, cancel);
        Ok(scheduler)
    }

    /// Every minute, re-creates any job whose time zone's UTC offset changed.
    fn watch_offsets(&self, runner: Arc<Runner>, tasks: TaskTracker, cancel: CancellationToken) {
        let cron = self.cron.clone();
        let jobs = self.jobs.clone();
        let watcher_tasks = tasks.clone();
        watcher_tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let changed: Vec<(usize, JobSpec, Uuid, Arc<AtomicBool>)> = match jobs.lock() {
                    Ok(list) => list
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| offset_secs(&r.spec.timezone) != r.offset_secs)
                        .map(|(i, r)| (i, r.spec.clone(), r.id, r.running.clone()))
                        .collect(),
                    Err(_) => return,
                };
                for (index, spec, old_id, running) in changed {
                    let Ok(job) = build_job(&runner, &spec, &running, &tasks, &cancel) else {
                        continue;
                    };
                    let _ = cron.remove(&old_id).await;
                    match cron.add(job).await {
                        Ok(new_id) => {
                            if let Ok(mut list) = jobs.lock() {
                                list[index].id = new_id;
                                list[index].offset_secs = offset_secs(&spec.timezone);
                            }
                            tracing::info!(
                                job = spec.name,
                                timezone = spec.timezone.name(),
                                "UTC offset changed; job rescheduled"
                            );
                        }
                        Err(err) => {
                            tracing::error!(job = spec.name, error = %err, "could not reschedule job")
                        }
                    }
                }
            }
        });
    }

    /// Stops ticking; runs already started finish under the task tracker.
    pub async fn shutdown(mut self) {
        if let Err(err) = self.cron.shutdown().await {
            tracing::warn!(error = %err, "scheduler shutdown reported an error");
        }
    }
}

fn build_job(
    runner: &Arc<Runner>,
    spec: &JobSpec,
    running: &Arc<AtomicBool>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Job> {
    let (runner, spec_for_job, running, tasks, cancel) = (
        runner.clone(),
        spec.clone(),
        running.clone(),
        tasks.clone(),
        cancel.clone(),
    );
    // Settings are normalised when read; a schedule built elsewhere is normalised here.
    let schedule = normalize_schedule(&spec.schedule).unwrap_or_else(|_| spec.schedule.clone());
    let job = Job::new_async_tz(schedule, spec.timezone, move |_id, _lock| {
        let (runner, spec, running, tasks, cancel) = (
            runner.clone(),
            spec_for_job.clone(),
            running.clone(),
            tasks.clone(),
            cancel.clone(),
        );
        Box::pin(async move {
            if cancel.is_cancelled() {
                return;
            }
            if running.swap(true, Ordering::SeqCst) {
                tracing::warn!(job = spec.name, "previous run still going; skipping this tick");
                return;
            }
            tasks.track_future(runner.run_once(&spec)).await;
            running.store(false, Ordering::SeqCst);
        })
    })
    .map_err(|e| anyhow::anyhow!("job {}: {e}", spec.name))?;
    Ok(job)
}

/// How long an exclusive run may take before another replica may assume its holder died:
/// twice the job's interval, between one minute and half an hour.
fn run_lease(spec: &JobSpec) -> chrono::Duration {
    let first = next_run(spec, now());
    let interval = first
        .zip(first.and_then(|first| next_run(spec, first)))
        .map(|(first, second)| second.0 - first.0)
        .unwrap_or_else(|| chrono::Duration::minutes(1));
    (interval * 2).clamp(chrono::Duration::minutes(1), chrono::Duration::minutes(30))
}

impl Runner {
    /// `instance` names this process in exclusive jobs' leases.
    pub fn new(db: Db, instance: String, metrics: RunnerMetrics) -> Runner {
        Runner {
            db,
            instance,
            metrics,
        }
    }

    /// Claims this tick of an exclusive job. A database that cannot answer means no run: the job
    /// would meet the same failure, and the next tick tries again.
    async fn claim_tick(&self, spec: &JobSpec) -> bool {
        let at = now();
        match jobs::claim_run(
            &self.db,
            spec.name,
            &self.instance,
            at,
            UtcTime::new(at.0 + run_lease(spec)),
        )
        .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(job = spec.name, error = %err, "cannot claim the job's run");
                false
            }
        }
    }

    /// Runs a job once (unless it is switched off) and records the outcome.
    pub async fn run_once(&self, spec: &JobSpec) -> Option<anyhow::Result<String>> {
        self.run(spec, false).await
    }

    /// Runs a job now on request, even if it is switched off (its schedule stays off).
    pub async fn run_now(&self, spec: &JobSpec) -> anyhow::Result<String> {
        self.run(spec, true).await.unwrap_or_else(|| Ok("skipped".into()))
    }

    async fn run(&self, spec: &JobSpec, even_if_off: bool) -> Option<anyhow::Result<String>> {
        match jobs::is_enabled(&self.db, spec.name).await {
            Ok(false) if even_if_off => {}
            Ok(false) => {
                tracing::debug!(job = spec.name, "job is switched off; skipping");
                return None;
            }
            Ok(true) => {}
            // Unknown state: run anyway; the job itself will meet the same database problem.
            Err(err) => tracing::warn!(job = spec.name, error = %err, "cannot read job state"),
        }
        // A manual run always runs; a scheduled exclusive one only where it wins the tick.
        let exclusive = spec.exclusive && !even_if_off;
        if exclusive && !self.claim_tick(spec).await {
            tracing::debug!(job = spec.name, "run by another replica this tick; skipping");
            return None;
        }
        let ran_at = now();
        let started = Instant::now();
        let result = (spec.run)().await;
        if exclusive {
            // Held until just before the next tick: a replica whose timer fires a moment late
            // must not run this tick again, and the next tick must be free (timers fire on or
            // after the second, so 10 ms ahead of it is enough).
            let next = next_run(spec, now())
                .map_or(now(), |t| UtcTime::new(t.0 - chrono::Duration::milliseconds(10)));
            if let Err(err) = jobs::finish_run(&self.db, spec.name, &self.instance, next.max(now())).await {
                tracing::warn!(job = spec.name, error = %err, "could not end the job's lease; it expires by itself");
            }
        }
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.runs.with_label_values(&[spec.name, outcome]).inc();
        self.metrics
            .last_run
            .with_label_values(&[spec.name])
            .set(ran_at.timestamp());
        let error_text = result.as_ref().err().map(|e| format!("{e:#}"));
        let record = match (&result, &error_text) {
            (Ok(summary), _) => {
                tracing::info!(job = spec.name, duration_ms = started.elapsed().as_millis() as u64, %summary, "job ran");
                Ok(summary.as_str())
            }
            (Err(_), text) => {
                let text = text.as_deref().unwrap_or_default();
                tracing::warn!(job = spec.name, error = %text, "job failed");
                Err(text)
            }
        };
        if let Err(err) = jobs::record_run(&self.db, spec.name, ran_at, record, next_run(spec, now())).await {
            tracing::warn!(job = spec.name, error = %err, "could not record job run");
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: &str, tz: &str) -> JobSpec {
        JobSpec {
            name: "test",
            schedule: schedule.into(),
            timezone: parse_timezone(tz).unwrap(),
            exclusive: false,
            run: Arc::new(|| Box::pin(async { Ok(String::new()) })),
        }
    }

    fn at(text: &str) -> UtcTime {
        UtcTime::new(
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn the_next_run_is_on_the_second_whatever_the_fraction_now() {
        assert_eq!(
            next_run(&spec("0 * * * * *", "UTC"), at("2026-03-01T12:00:03.2Z")),
            Some(at("2026-03-01T12:01:00Z"))
        );
        assert_eq!(
            next_run(&spec("* * * * * *", "UTC"), at("2026-03-01T12:00:03.999Z")),
            Some(at("2026-03-01T12:00:04Z"))
        );
    }

    #[test]
    fn local_schedules_follow_daylight_saving() {
        // 03:00 Berlin time is 02:00 UTC in winter (CET) and 01:00 UTC in summer (CEST).
        let daily = spec("0 0 3 * * *", "Europe/Berlin");
        assert_eq!(
            next_run(&daily, at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            next_run(&daily, at("2026-10-24T12:00:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
        let utc = spec("0 */30 * * * *", "UTC");
        assert_eq!(
            next_run(&utc, at("2026-03-29T00:59:59Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn offset_change_is_detected_at_the_switch() {
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        assert_eq!(offset_secs_at(&berlin, at("2026-03-29T00:59:00Z").0), 3600);
        assert_eq!(offset_secs_at(&berlin, at("2026-03-29T01:01:00Z").0), 7200);
        let utc = parse_timezone("UTC").unwrap();
        assert_eq!(offset_secs_at(&utc, at("2026-03-29T01:01:00Z").0), 0);
    }

    #[test]
    fn crontab_expressions_run_at_second_zero() {
        assert_eq!(
            normalize_schedule("*/30 * * * *").as_deref(),
            Ok("0 */30 * * * *")
        );
        assert_eq!(
            normalize_schedule(" 0  */5 * * * * ").as_deref(),
            Ok("0 */5 * * * *")
        );
        let at = UtcTime::new(
            chrono::DateTime::parse_from_rfc3339("2026-12-04T01:42:10Z")
                .unwrap()
                .to_utc(),
        );
        let runs: Vec<String> = next_runs("*/30 * * * *", Tz::UTC, at, 3)
            .iter()
            .map(|t| t.format("%H:%M:%S").to_string())
            .collect();
        assert_eq!(runs, ["02:00:00", "02:30:00", "03:00:00"]);
        for bad in ["* * * *", "0 0 0 * * * * *", "61 * * * *", "every minute"] {
            assert!(normalize_schedule(bad).is_err(), "{bad}");
        }
        assert!(
            normalize_schedule("* * * *")
                .unwrap_err()
                .contains("expected five as in crontab")
        );
    }
}

/// One job as the API and the scheduler page show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobView {
    pub job: &'static str,
    /// `running` or `paused` (switched off; survives restarts).
    pub state: &'static str,
    pub schedule: String,
    pub timezone: &'static str,
    pub last_run_at: Option<UtcTime>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub next_run_at: Option<UtcTime>,
}

/// Every job's state (or only `only`), as of now.
pub async fn overview(
    db: &Db,
    specs: &[JobSpec],
    only: Option<&str>,
) -> crate::storage::StorageResult<Vec<JobView>> {
    let stored = jobs::list(db).await?;
    let at = now();
    Ok(specs
        .iter()
        .filter(|s| only.is_none_or(|name| name == s.name))
        .map(|s| {
            let row = stored.iter().find(|j| j.name == s.name);
            let enabled = row.is_none_or(|j| j.enabled);
            JobView {
                job: s.name,
                state: if enabled { "running" } else { "paused" },
                schedule: s.schedule.clone(),
                timezone: s.timezone.name(),
                last_run_at: row.and_then(|j| j.last_run_at),
                last_result: row.and_then(|j| j.last_result.clone()),
                last_error: row.and_then(|j| j.last_error.clone()),
                next_run_at: if enabled { next_run(s, at) } else { None },
            }
        })
        .collect())
}
