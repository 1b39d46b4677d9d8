//! Storage: one schema and one set of queries for PostgreSQL and SQLite.
//!
//! `Db` holds a pool for whichever backend `DATABASE_URL` names. Query functions are written
//! once inside `db_run!`, which compiles the same diesel code for each backend's connection type.

pub mod alerts;
pub mod app_settings;
pub mod audit;
mod checkpoint;
pub mod connections;
pub mod consents;
pub mod deliveries;
pub mod devices;
mod error;
pub mod fields;
pub mod ingest;
pub mod jobs;
pub mod migrate;
pub mod outbox;
pub mod polling;
pub mod refresh_log;
pub mod schema;
pub mod serve_lock;
pub mod settings;
pub mod staff;
pub mod usage;

use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

pub use error::{StorageError, StorageResult};
pub use fields::{
    AlertEventKind, AlertRule, AlertState, ConnectionStatus, DeviceStatus, PollOutcome, PollStatus,
    PollTrigger, RefreshOutcome, RefreshTrigger, Role, Severity, SourceStatus, TokenHealth, UtcTime, now,
};

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Which database a `DATABASE_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A `postgres://` or `postgresql://` URL, passed to the driver as is.
    Postgres(String),
    /// A filesystem path taken from `sqlite://path` (relative paths are relative to the working directory).
    Sqlite(String),
}

impl DatabaseTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseTarget::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("a sqlite:// URL needs a file path, e.g. sqlite://data/telltale.db".into());
            }
            Ok(DatabaseTarget::Sqlite(path.to_owned()))
        } else {
            Err("expected a URL starting with postgres://, postgresql:// or sqlite://".into())
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseTarget::Postgres(_) => "postgres",
            DatabaseTarget::Sqlite(_) => "sqlite",
        }
    }
}

/// Pool settings; defaults suit one service process.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: usize,
    /// Tasks that group-commit webhook events, each with a transaction in flight.
    pub ingest_writers: usize,
    /// How long a request waits for a free connection, or for a new one to open, before the
    /// database counts as unavailable (and the request gets a 503).
    pub acquire_timeout: Duration,
    pub sqlite_busy_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            ingest_writers: 1,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A handle to the database, cheap to clone. Building it does not connect: connections open
/// on first use, so the service can start (and report why it is not ready) while the database is down.
#[derive(Clone)]
pub struct Db {
    pub(crate) pools: Pools,
    /// Time spent waiting for a pooled connection; `Metrics` registers it.
    pub(crate) pool_wait: prometheus::Histogram,
}

/// SQLite's page cache for pooled connections, in KiB (SQLite's default). Each connection has
/// its own, and each grows to it as it reads: sixteen connections at 8 MiB grew the service
/// to 240 MiB under webhook load.
const SQLITE_POOL_CACHE_KIB: u32 = 2048;
/// The webhook writer's page cache, in KiB: it holds the indexes every group touches, which
/// were otherwise read back from the OS a page at a time for every group.
const SQLITE_WRITER_CACHE_KIB: u32 = 8192;

/// Each SQLite connection's settings. WAL lets readers run beside the writer; busy_timeout
/// makes a writer wait for the lock instead of failing at once; foreign keys are off by
/// default. Checkpoints are the checkpoint thread's (`checkpoint.rs`); a commit's is a backstop.
fn sqlite_pragmas(busy_ms: u128, cache_kib: u32) -> String {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {busy_ms}; \
         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
         PRAGMA cache_size = -{cache_kib}; PRAGMA wal_autocheckpoint = {};",
        checkpoint::BACKSTOP_PAGES
    )
}

/// SQLite's webhook writer: a thread of its own with a connection of its own, outside the
/// pool, with the larger page cache. SQLite takes one writer at a time anyway. Kept apart,
/// that writer's cache stays warm and is the only large one (every pooled connection the writer
/// once borrowed grew one), and the memory a group needs is reused from one thread's malloc
/// arena (run on the blocking pool, each group's peak settled in the arena of whichever
/// thread ran it: 13 arenas, 170 MiB).
/// The checkpoint thread (`checkpoint.rs`) lives and stops with it.
pub struct SqliteWriter {
    jobs: std::sync::mpsc::Sender<WriterJob>,
    _checkpointer: checkpoint::Checkpointer,
}

/// A job gets the writer's connection, or why it could not be opened; it returns whether the
/// connection is still fit to keep.
type WriterJob = Box<dyn FnOnce(Result<&mut SqliteConnection, String>) -> bool + Send>;

impl SqliteWriter {
    /// Starts the thread (and the checkpoint thread); it opens its connection at the first job
    /// (again after a failure) and stops with the last clone of the `Db`.
    fn start(path: &str, busy_ms: u128) -> anyhow::Result<SqliteWriter> {
        let (jobs, queue) = std::sync::mpsc::channel::<WriterJob>();
        let checkpointer = checkpoint::start(path);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut kept: Option<SqliteConnection> = None;
                for job in queue {
                    let opened = match kept.take() {
                        Some(conn) => Ok(conn),
                        None => open_sqlite_writer(&path, busy_ms)
                            .map_err(|err| format!("cannot open the database: {err:#}")),
                    };
                    match opened {
                        Ok(mut conn) => {
                            if job(Ok(&mut conn)) {
                                kept = Some(conn);
                            }
                        }
                        Err(reason) => {
                            job(Err(reason));
                        }
                    }
                }
            })?;
        Ok(SqliteWriter {
            jobs,
            _checkpointer: checkpointer,
        })
    }

    /// Runs `write` on the writer's connection and returns its result; calls queue in order.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut SqliteConnection) -> diesel::QueryResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: WriterJob = Box::new(move |conn| {
            let (result, keep) = match conn {
                Err(reason) => (Err(StorageError::Unavailable(reason)), false),
                // After a failure, a fresh connection next time, whatever state this one is in.
                Ok(conn) => match write(conn) {
                    Ok(value) => (Ok(value), true),
                    Err(err) => (Err(StorageError::from(err)), false),
                },
            };
            let _ = reply.send(result);
            keep
        });
        let stopped = || StorageError::Unavailable("the SQLite writer has stopped".into());
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn open_sqlite_writer(path: &str, busy_ms: u128) -> anyhow::Result<SqliteConnection> {
    let mut conn = <SqliteConnection as diesel::Connection>::establish(path)?;
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        &sqlite_pragmas(busy_ms, SQLITE_WRITER_CACHE_KIB),
    )?;
    Ok(conn)
}

/// The pool of whichever backend the URL named.
#[derive(Clone)]
pub enum Pools {
    Postgres(Pool<AsyncPgConnection>),
    /// The pool, and the thread webhook events are stored through with the checkpoint thread
    /// beside it (`SqliteWriter`); both threads stop with the last clone.
    Sqlite(Pool<SqliteConn>, std::sync::Arc<SqliteWriter>),
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever backend `$db` uses.
/// The body is compiled once per backend, so it must be valid diesel for both.
#[macro_export]
macro_rules! db_run {
    ($db:expr, |$conn:ident| $body:expr) => {{
        let db: &$crate::storage::Db = &$db;
        match db.pools() {
            $crate::storage::Pools::Postgres(pool) => {
                let waited = db.pool_wait().start_timer();
                let mut pooled = pool.get().await.map_err($crate::storage::StorageError::from)?;
                drop(waited);
                let $conn = &mut *pooled;
                $body
            }
            $crate::storage::Pools::Sqlite(pool, _) => {
                let waited = db.pool_wait().start_timer();
                let mut pooled = pool.get().await.map_err($crate::storage::StorageError::from)?;
                drop(waited);
                let $conn = &mut *pooled;
                $body
            }
        }
    }};
}

impl Db {
    /// Builds the pool. Must be called inside the service's main tokio runtime: every connection
    /// is opened there (see `on_runtime`).
    pub fn open(target: &DatabaseTarget, settings: &PoolSettings) -> anyhow::Result<Db> {
        let main_runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("Db::open must run inside a tokio runtime"))?;
        let pool_wait = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "telltale_db_pool_wait_seconds",
                "Time spent waiting for a database connection from the pool",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let pools = match target {
            DatabaseTarget::Postgres(url) => {
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                // The default check runs `SELECT 1` at every checkout: a round trip per
                // transaction. A connection whose socket has closed is still caught (it reports
                // itself broken); any other failure shows at first use and answers 503.
                config.recycling_method = RecyclingMethod::Fast;
                let runtime = main_runtime.clone();
                config.custom_setup = Box::new(move |url: &str| {
                    let url = url.to_owned();
                    on_runtime(&runtime, async move { AsyncPgConnection::establish(&url).await })
                });
                let manager =
                    AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url.clone(), config);
                let pool = with_limits(Pool::builder(manager), settings).build()?;
                Pools::Postgres(pool)
            }
            DatabaseTarget::Sqlite(path) => {
                create_sqlite_directory(path)?;
                let busy_ms = settings.sqlite_busy_timeout.as_millis();
                let mut config = ManagerConfig::<SqliteConn>::default();
                // An in-process file handle: nothing for a checkout query to find out.
                config.recycling_method = RecyclingMethod::Fast;
                let runtime = main_runtime.clone();
                config.custom_setup = Box::new(move |path: &str| {
                    let path = path.to_owned();
                    on_runtime(&runtime, async move {
                        let mut conn = SqliteConn::establish(&path).await?;
                        conn.batch_execute(&sqlite_pragmas(busy_ms, SQLITE_POOL_CACHE_KIB))
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path.clone(), config);
                let pool = with_limits(Pool::builder(manager), settings).build()?;
                let writer = SqliteWriter::start(path, busy_ms)?;
                Pools::Sqlite(pool, std::sync::Arc::new(writer))
            }
        };
        Ok(Db { pools, pool_wait })
    }

    /// The backend's pool (for `db_run!` and the few statements whose SQL differs by backend).
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The pool-wait histogram, for the metrics registry.
    pub fn pool_wait(&self) -> &prometheus::Histogram {
        &self.pool_wait
    }

    pub fn backend_name(&self) -> &'static str {
        match self.pools {
            Pools::Postgres(_) => "postgres",
            Pools::Sqlite(..) => "sqlite",
        }
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> StorageResult<()> {
        db_run!(self, |conn| {
            diesel::sql_query("SELECT 1").execute(conn).await?;
            Ok(())
        })
    }

    /// Connections currently open and in use, for the pool gauges.
    pub fn pool_status(&self) -> deadpool::Status {
        match &self.pools {
            Pools::Postgres(pool) => pool.status(),
            Pools::Sqlite(pool, _) => pool.status(),
        }
    }

    /// Refuses new checkouts and drops idle connections; used on shutdown.
    pub fn close(&self) {
        match &self.pools {
            Pools::Postgres(pool) => pool.close(),
            Pools::Sqlite(pool, _) => pool.close(),
        }
    }
}

/// Opens a connection on the main runtime, whichever runtime asked for it.
///
/// A connection remembers the runtime it was opened on: PostgreSQL's driver task is spawned
/// there, and SQLite's wrapper runs every query through that runtime's blocking pool. actix
/// gives each HTTP worker a runtime of its own, and a worker that stops (during a graceful
/// shutdown, an idle one stops first) would take down every pooled connection it had opened,
/// failing requests still in flight on the other workers.
fn on_runtime<C: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    open: impl std::future::Future<Output = diesel::ConnectionResult<C>> + Send + 'static,
) -> futures_core::future::BoxFuture<'static, diesel::ConnectionResult<C>> {
    let task = runtime.spawn(open);
    Box::pin(async move {
        task.await.unwrap_or_else(|e| {
            Err(diesel::ConnectionError::BadConnection(format!(
                "connection task failed: {e}"
            )))
        })
    })
}

fn with_limits<M: deadpool::managed::Manager>(
    builder: deadpool::managed::PoolBuilder<M>,
    settings: &PoolSettings,
) -> deadpool::managed::PoolBuilder<M> {
    builder
        .max_size(settings.max_connections)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .recycle_timeout(Some(settings.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        // The most recently returned connection goes out first, so steady work (the webhook
        // writers above all) keeps reusing a few warm connections, their prepared statements
        // and, on SQLite, their page caches, instead of rotating through every idle one.
        .queue_mode(deadpool::managed::QueueMode::Lifo)
}

/// Opens a secret column value, naming the column (never the value) on failure.
pub(crate) fn open_secret(
    crypto: &crate::crypto::Crypto,
    column: &'static str,
    sealed: &[u8],
) -> StorageResult<String> {
    crypto
        .decrypt_string(column, sealed)
        .map_err(|e| StorageError::Decrypt {
            column,
            reason: e.to_string(),
        })
}

/// For key rotation: the value re-sealed under the current key, or `None` when it already is.
pub(crate) fn reseal(
    crypto: &crate::crypto::Crypto,
    column: &'static str,
    sealed: Option<&[u8]>,
) -> StorageResult<Option<Vec<u8>>> {
    match sealed {
        Some(sealed) if crypto.needs_reencryption(sealed) => {
            let plain = open_secret(crypto, column, sealed)?;
            Ok(Some(crypto.encrypt_str(column, &plain)))
        }
        _ => Ok(None),
    }
}

/// Creates the directory a SQLite database file goes in, so that the first command on a fresh
/// machine (the service, `migrate`, or a one-shot command) finds it.
pub(crate) fn create_sqlite_directory(path: &str) -> anyhow::Result<()> {
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create the directory for SQLite database {path}: {e}"))?;
    }
    Ok(())
}
