//! Embedded migrations, run at start-up and by `telltale migrate`.
//!
//! diesel's migration harness is synchronous, so it runs on a dedicated connection inside
//! `spawn_blocking` (never on an async worker, where blocking would stall requests).

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DatabaseTarget;

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Any constant works as long as every replica uses the same one: replicas that start together
/// queue on this lock, so exactly one applies the migrations and the rest find nothing pending.
const MIGRATION_LOCK_KEY: i64 = 0x7e11_7a1e;

/// Applies every pending migration; returns the versions applied (empty when up to date).
pub async fn run(target: &DatabaseTarget) -> anyhow::Result<Vec<String>> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || run_blocking(&target)).await?
}

/// Runs `$body` on a blocking thread with `$harness` bound to a migration connection for the
/// target's backend and `$migrations` to that backend's embedded migrations.
macro_rules! with_harness {
    ($target:expr, |$harness:ident, $migrations:ident| $body:expr) => {{
        let target = $target.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            match &target {
                DatabaseTarget::Postgres(url) => {
                    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)?;
                    let ($harness, $migrations) = (&mut conn, POSTGRES_MIGRATIONS);
                    $body
                }
                DatabaseTarget::Sqlite(path) => {
                    let mut conn = SqliteConnection::establish(path)?;
                    let ($harness, $migrations) = (&mut conn, SQLITE_MIGRATIONS);
                    $body
                }
            }
        })
        .await?
    }};
}

/// Lists migrations not yet applied, without applying them.
pub async fn pending(target: &DatabaseTarget) -> anyhow::Result<Vec<String>> {
    with_harness!(target, |harness, migrations| pending_names(harness, migrations))
}

/// Applies the next pending migration only; returns its version, or `None` when up to date.
/// Steps through an upgrade one migration at a time (and lets the drift tests check each).
pub async fn apply_next(target: &DatabaseTarget) -> anyhow::Result<Option<String>> {
    with_harness!(target, |harness, migrations| {
        let pending = harness
            .pending_migrations(migrations)
            .map_err(|e| anyhow::anyhow!("cannot list migrations: {e}"))?;
        match pending.first() {
            None => Ok(None),
            Some(next) => harness
                .run_migration(&**next)
                .map(|v| Some(v.to_string()))
                .map_err(|e| anyhow::anyhow!("migration failed: {e}")),
        }
    })
}

/// Reverts the newest applied migration (its `down.sql`); returns its version. For rolling
/// back an upgrade, and for the tests that prove every `down.sql` undoes its `up.sql`.
pub async fn revert_last(target: &DatabaseTarget) -> anyhow::Result<String> {
    with_harness!(target, |harness, migrations| harness
        .revert_last_migration(migrations)
        .map(|v| v.to_string())
        .map_err(|e| anyhow::anyhow!("cannot revert: {e}")))
}

fn pending_names<B: diesel::backend::Backend>(
    harness: &mut impl MigrationHarness<B>,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<Vec<String>> {
    let pending = harness
        .pending_migrations(migrations)
        .map_err(|e| anyhow::anyhow!("cannot list migrations: {e}"))?;
    Ok(pending.iter().map(|m| m.name().to_string()).collect())
}

fn run_blocking(target: &DatabaseTarget) -> anyhow::Result<Vec<String>> {
    match target {
        DatabaseTarget::Postgres(url) => {
            let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)?;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(&mut conn)?;
            let result = apply(&mut conn, POSTGRES_MIGRATIONS);
            // Closing the session would release the lock too; unlocking keeps it explicit.
            let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn);
            result
        }
        DatabaseTarget::Sqlite(path) => {
            super::create_sqlite_directory(path)?;
            let mut conn = SqliteConnection::establish(path)?;
            // WAL is a property of the file, set once here; busy_timeout lets a second process
            // wait for the write lock rather than fail.
            conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")?;
            apply(&mut conn, SQLITE_MIGRATIONS)
        }
    }
}

fn apply<B: diesel::backend::Backend>(
    harness: &mut impl MigrationHarness<B>,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<Vec<String>> {
    let applied = harness
        .run_pending_migrations(migrations)
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}
