//! Databases for tests: `TestDb` (a fresh SQLite file or PostgreSQL database per test, dropped
//! afterwards) and `TestApp` (the service's in-process state over one, configured key by key).

use std::net::SocketAddr;
use std::sync::Once;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{Backend, DEFAULT_PG_URL};

pub fn pg_admin_url() -> String {
    std::env::var("TELLTALE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// The service's state for one test, configured key by key rather than by hand-written TOML:
/// `TestApp::on(&db).set("tokens.max_attempts", 2).state().await`. Keys are the file's dotted
/// names (`alerts.recipients.device_offline` makes the nested table); a key set twice keeps the
/// last value, so a suite's defaults can be overridden by one test.
pub struct TestApp<'a> {
    db: &'a TestDb,
    settings: toml::Table,
}

impl<'a> TestApp<'a> {
    pub fn on(db: &'a TestDb) -> TestApp<'a> {
        TestApp {
            db,
            settings: toml::Table::new(),
        }
    }

    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> TestApp<'a> {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_else(|| panic!("empty key"));
        let mut table = &mut self.settings;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {part} is not a table"));
        }
        table.insert(last.to_owned(), value.into());
        self
    }

    /// The state on the (migrated) database, with these settings.
    pub async fn state(self) -> telltale::app::AppState {
        self.db.app_state(&self.settings.to_string()).await
    }
}

/// A database that exists for one test.
pub struct TestDb {
    pub backend: Backend,
    url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

const PG_PREFIX: &str = "telltale_test_";

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("telltale.db").display());
                TestDb {
                    backend,
                    url,
                    pg_name: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let mut conn = pg_connect(&admin).await;
                sweep_stale_databases(&mut conn).await;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let name = format!("{PG_PREFIX}{stamp}_{:08x}", rand::random::<u32>());
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let url = with_database(&admin, &name, None);
                TestDb {
                    backend,
                    url,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same database reached through another host:port (a `TcpProxy`). PostgreSQL only.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let name = self
            .pg_name
            .as_deref()
            .unwrap_or_else(|| panic!("url_via is for PostgreSQL"));
        with_database(&pg_admin_url(), name, Some(addr))
    }

    /// The PostgreSQL server's address, for pointing a proxy at it.
    pub fn pg_server_addr(&self) -> SocketAddr {
        let parsed = url::Url::parse(&pg_admin_url()).unwrap_or_else(|e| panic!("bad admin URL: {e}"));
        let host = parsed.host_str().unwrap_or("127.0.0.1");
        let port = parsed.port().unwrap_or(5432);
        format!("{host}:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("PostgreSQL host must be an IP: {e}"))
    }

    /// The service's state on this database (migrated), in process, configured by
    /// `settings_toml` (TOML sections after `database_url`), with a fixed secret key.
    pub async fn app_state(&self, settings_toml: &str) -> telltale::app::AppState {
        self.open_migrated().await;
        let toml = format!("database_url = \"{}\"\n{settings_toml}\n", self.url);
        let config = telltale::config::Config::from_toml(&toml, &[("UNUSED", "")])
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        telltale::app::AppState::new(config, telltale::crypto::Crypto::new(&[0x42; 32], &[]))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A `telltale::storage::Db` on this database as it is (not migrated).
    pub async fn open(&self) -> telltale::storage::Db {
        let target = telltale::storage::DatabaseTarget::parse(&self.url).unwrap_or_else(|e| panic!("{e}"));
        telltale::storage::Db::open(&target, &Default::default()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A `telltale::storage::Db` on this database, migrated.
    pub async fn open_migrated(&self) -> telltale::storage::Db {
        let target = telltale::storage::DatabaseTarget::parse(&self.url).unwrap_or_else(|e| panic!("{e}"));
        telltale::storage::migrate::run(&target)
            .await
            .unwrap_or_else(|e| panic!("migrations failed: {e:#}"));
        telltale::storage::Db::open(&target, &Default::default()).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&pg_admin_url()).await {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn pg_connect(url: &str) -> AsyncPgConnection {
    match AsyncPgConnection::establish(url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url}: {e}\n\
             The suite needs a real PostgreSQL: run `scripts/test` (it starts one), or start one yourself \
             (e.g. `pg_ctlcluster 15 main start`) and/or set TELLTALE_TEST_DATABASE_URL."
        ),
    }
}

/// Drops test databases left behind by crashed runs (older than an hour).
async fn sweep_stale_databases(conn: &mut AsyncPgConnection) {
    static SWEPT: Once = Once::new();
    let mut first = false;
    SWEPT.call_once(|| first = true);
    if !first {
        return;
    }
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'"
    ))
    .load(conn)
    .await
    .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for Name { datname } in names {
        let stamp = datname
            .strip_prefix(PG_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|s| now.saturating_sub(s) > 3600) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {datname} WITH (FORCE)"))
                .execute(conn)
                .await;
        }
    }
}

fn with_database(admin: &str, name: &str, via: Option<SocketAddr>) -> String {
    let mut parsed = url::Url::parse(admin).unwrap_or_else(|e| panic!("bad admin URL {admin}: {e}"));
    parsed.set_path(&format!("/{name}"));
    if let Some(addr) = via {
        let _ = parsed.set_host(Some(&addr.ip().to_string()));
        let _ = parsed.set_port(Some(addr.port()));
    }
    parsed.to_string()
}
