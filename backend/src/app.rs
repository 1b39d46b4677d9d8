//! The running service: shared state, start-up, and orderly shutdown.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::channels::NotificationChannels;
use crate::alerts::email::Mailer;
use crate::auth::LoginThrottle;
use crate::config::Config;
use crate::crypto::Crypto;
use crate::metrics::Metrics;
use crate::milesight::intake::Intake;
use crate::milesight::token::TokenKeeper;
use crate::polling::PollEngine;
use crate::scheduler::{JobSpec, Runner, Scheduler};
use crate::storage::{Db, migrate};
use crate::tokens::RefreshEngine;

/// Everything a handler or background job needs, built once and cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Every background task shutdown waits for: the webhook writers, start-up work, jobs.
    pub tasks: TaskTracker,
    pub db: Db,
    pub crypto: Arc<Crypto>,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub intake: Arc<Intake>,
    /// Outbound HTTP to the Milesight OpenAPI (`milesight.request_timeout_secs`); the token
    /// and poll engines and the mailer hold clients with their own sections' timeouts.
    pub http: reqwest::Client,
    pub milesight_token: Arc<TokenKeeper>,
    pub token_engine: Arc<RefreshEngine>,
    pub poll_engine: Arc<PollEngine>,
    pub mailer: Arc<Mailer>,
    /// Where notifications go: the config's channels over those set in Settings → Notifications.
    pub channels: Arc<NotificationChannels>,
    /// Runs scheduled jobs and records each run (the scheduler and "run now" share it).
    pub job_runner: Arc<Runner>,
    pub login_throttle: Arc<LoginThrottle>,
    /// Names this process in database leases (`pid-uuid`).
    pub instance: String,
}

/// Whether the service can do its job, and if not, why.
#[derive(Debug)]
pub struct Readiness {
    state: RwLock<ReadyState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// Start-up has not reached a migrated database yet; the reason says what is in the way.
    Starting {
        reason: String,
    },
    Ready,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            state: RwLock::new(ReadyState::Starting {
                reason: "connecting to the database".into(),
            }),
        }
    }

    pub fn get(&self) -> ReadyState {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or(ReadyState::Starting {
                reason: "state unavailable".into(),
            })
    }

    /// Start-up sets this; a process that migrated by itself (the benchmark serving its own
    /// state) says so here.
    pub fn set(&self, next: ReadyState) {
        if let Ok(mut state) = self.state.write() {
            *state = next;
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl AppState {
    pub fn new(config: Config, crypto: Crypto) -> anyhow::Result<AppState> {
        let db = Db::open(&config.database_url, &config.database.pool())?;
        let metrics = Metrics::new(
            &db,
            config.milesight.per_device_metrics,
            config.milesight.metric_sources,
            config.milesight.fleet_summary_max_age_secs,
        )?;
        // One client per section, each with that section's timeout.
        let http = http_client(config.milesight.request_timeout_secs)?;
        // One name for this process in every database lease (`pid-uuid`: the pid helps
        // operators, the uuid keeps a reused pid from inheriting a dead process's leases).
        let instance = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let crypto = Arc::new(crypto);
        let tasks = TaskTracker::new();
        let intake = Arc::new(Intake::new(
            db.clone(),
            crypto.clone(),
            &config.milesight,
            config.database.pool().ingest_writers,
            metrics.intake(),
            &tasks,
        ));
        // Each engine is built from what it uses; the web layer holds them all here.
        let token_engine = Arc::new(RefreshEngine::new(
            db.clone(),
            crypto.clone(),
            http_client(config.tokens.request_timeout_secs)?,
            &config.tokens,
            metrics.refresh(),
            instance.clone(),
        ));
        let milesight_token = Arc::new(TokenKeeper::new(
            db.clone(),
            crypto.clone(),
            &config.milesight,
            token_engine.clone(),
        ));
        let poll_engine = Arc::new(PollEngine::new(
            db.clone(),
            crypto.clone(),
            http_client(config.polling.request_timeout_secs)?,
            &config,
            token_engine.clone(),
            metrics.polling(),
            instance.clone(),
        ));
        let channels = Arc::new(NotificationChannels::new(
            db.clone(),
            crypto.clone(),
            &config.email,
            &config.alerts,
            metrics.notification_channels.clone(),
        ));
        let mailer = Arc::new(Mailer::new(
            &config.email,
            &config.alerts,
            channels.clone(),
            http_client(config.alerts.webhook_timeout_secs)?,
            instance.clone(),
            db.clone(),
            metrics.mailer(),
        ));
        let job_runner = Arc::new(Runner::new(db.clone(), instance.clone(), metrics.jobs()));
        let login_throttle = Arc::new(LoginThrottle::new(config.auth.login_failures_allowed));
        Ok(AppState {
            config: Arc::new(config),
            tasks,
            db,
            crypto,
            metrics,
            readiness: Arc::new(Readiness::new()),
            intake,
            http,
            milesight_token,
            token_engine,
            poll_engine,
            mailer,
            channels,
            job_runner,
            login_throttle,
            instance,
        })
    }
}

/// An HTTP client for third-party calls that gives up after `timeout`.
fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("telltale/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Every scheduled job the service runs, each over the engine or data it uses.
pub fn job_specs(state: &AppState) -> Vec<JobSpec> {
    let config = &state.config;
    let mut specs = crate::milesight::housekeeping::job_specs(config, &state.db);
    specs.extend(crate::milesight::inventory::job_specs(
        config,
        &state.db,
        &state.http,
        &state.milesight_token,
    ));
    specs.extend(crate::tokens::job_specs(config, &state.token_engine));
    specs.extend(crate::polling::job_specs(config, &state.poll_engine));
    specs.extend(crate::alerts::email::job_specs(config, &state.mailer));
    specs.extend(crate::alerts::evaluate::job_specs(
        config,
        &state.db,
        &state.channels,
    ));
    specs
}

/// Brings the database up: connect and migrate, retrying with backoff until it works or
/// shutdown begins. Until then `/readyz` answers 503 with the last reason. Returns whether
/// the database is ready.
async fn bring_up_database(state: &AppState, address: std::net::SocketAddr) -> bool {
    let max_delay = state.config.database.startup_retry_max_delay_secs;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max_delay)
        .with_jitter()
        .without_max_times();
    let target = state.config.database_url.clone();
    let result = (|| migrate::run(&target))
        .retry(backoff)
        .notify(|err, delay| {
            let reason = "database unreachable or not migrated; the cause is in the service log".to_owned();
            tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "database not ready; retrying");
            state.metrics.startup_db_failures.inc();
            state.metrics.ready.set(0);
            state.readiness.set(ReadyState::Starting { reason });
        })
        .await;
    match result {
        Ok(applied) => {
            if applied.is_empty() {
                tracing::info!(
                    backend = state.db.backend_name(),
                    "database ready; schema up to date"
                );
            } else {
                tracing::info!(backend = state.db.backend_name(), migrations = ?applied, "database ready; migrations applied");
            }
            state.intake.sync_configured_sources().await;
            // Before readiness, so the configured admin and token work as soon as it says ready.
            if let Err(err) = crate::auth::bootstrap(&state.db, &state.config.auth).await {
                tracing::error!(error = %format!("{err:#}"), "staff bootstrap failed");
            }
            let setup_base = crate::auth::setup::link_base(&state.config, address);
            if let Err(err) = crate::auth::setup::announce(&state.db, &state.crypto, &setup_base).await {
                tracing::error!(error = %format!("{err:#}"), "cannot prepare the first-run setup");
            }
            state.readiness.set(ReadyState::Ready);
            state.metrics.ready.set(1);
            true
        }
        // Unreachable with `without_max_times`, but a give-up must still be visible.
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "giving up on the database");
            false
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains: stop accepting, let
/// in-flight requests finish (up to the configured timeout), stop background jobs, close the pool.
pub async fn serve(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let cancel = CancellationToken::new();

    // The scheduler starts once the database is ready; shutdown stops it if it did.
    let scheduler: Arc<tokio::sync::Mutex<Option<Scheduler>>> = Arc::default();
    state.tasks.spawn(start_background(
        state.clone(),
        address,
        cancel.clone(),
        scheduler.clone(),
    ));

    let server = crate::web::http_server(state.clone(), listener)?;
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(%address, backend = state.db.backend_name(), database = %state.config.masked_database_url(), "listening");

    tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested: no longer accepting connections; finishing in-flight requests");
            handle.stop(true).await;
        }
        result = server_task => {
            // The server ended on its own: that is a failure, not a shutdown.
            stop_background(&state, &cancel, &scheduler).await;
            state.db.close();
            return Err(anyhow::anyhow!("HTTP server stopped unexpectedly: {result:?}"));
        }
    }

    stop_background(&state, &cancel, &scheduler).await;
    tracing::info!("background jobs stopped; webhook writers drained");
    state.db.close();
    tracing::info!("database pool closed; shutdown complete");
    Ok(())
}

/// Once the database answers (retrying until it does, or until shutdown): the start-up token
/// sweep, then the scheduler.
async fn start_background(
    state: AppState,
    address: std::net::SocketAddr,
    cancel: CancellationToken,
    scheduler: Arc<tokio::sync::Mutex<Option<Scheduler>>>,
) {
    let ready = tokio::select! {
        ready = bring_up_database(&state, address) => ready,
        () = cancel.cancelled() => {
            tracing::info!("start-up database retries stopped by shutdown");
            false
        }
    };
    if !ready || cancel.is_cancelled() {
        return;
    }
    // On its own task, since a slow provider must not hold up the jobs.
    state.tasks.spawn(startup_sweep(state.clone()));
    let specs = job_specs(&state);
    match Scheduler::start(state.job_runner.clone(), specs, state.tasks.clone(), cancel).await {
        Ok(started) => *scheduler.lock().await = Some(started),
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "scheduler did not start; scheduled jobs will not run")
        }
    }
}

/// One sweep at start-up, so tokens that lapsed while the service was down are renewed now.
async fn startup_sweep(state: AppState) {
    state.milesight_token.start_up().await;
    let request = crate::tokens::SweepRequest {
        trigger: crate::storage::RefreshTrigger::Startup,
        actor: "telltale".into(),
        dry_run: false,
        provider: None,
        connection_id: None,
    };
    match state.token_engine.sweep(&request, crate::storage::now()).await {
        Ok(report) => tracing::info!(
            due = report.checked,
            refreshed = report.refreshed,
            failed = report.failed,
            "start-up token sweep"
        ),
        Err(err) => tracing::warn!(error = %err, "start-up token sweep failed"),
    }
}

/// Stops what runs beside the HTTP server, once no request comes in any more: the webhook
/// writers commit what is queued and end, the scheduler stops, and every tracked task is
/// waited for.
async fn stop_background(
    state: &AppState,
    cancel: &CancellationToken,
    scheduler: &tokio::sync::Mutex<Option<Scheduler>>,
) {
    state.intake.stop_writers();
    cancel.cancel();
    if let Some(scheduler) = scheduler.lock().await.take() {
        scheduler.shutdown().await;
    }
    state.tasks.close();
    state.tasks.wait().await;
    // A run stopped between a claim and its send leaves no outbox row held for its lease.
    state.mailer.release_leases().await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; falling back to Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
