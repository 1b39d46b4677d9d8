//! SQLite's WAL checkpoints on a thread of their own.
//!
//! By default the connection whose commit takes the write-ahead log past 1,000 pages copies
//! them into the database file and fsyncs it, inside that commit. On the webhook path that is
//! the one ingest writer, which stores nothing meanwhile: a sixth of its time in the 50-event
//! benchmark, while the other core idled. Here a thread copies the log every quarter second
//! instead, with a passive checkpoint (it neither waits for nor blocks the writer). The
//! connections' own checkpoint stays as a backstop at ten times the usual size, should this
//! thread fall behind or be unable to open the file.

use std::sync::mpsc;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;

/// `PRAGMA wal_autocheckpoint` for the pooled connections: the backstop, in pages.
pub(super) const BACKSTOP_PAGES: u32 = 10_000;
const EVERY: Duration = Duration::from_millis(250);

/// Runs until the last clone of the `Db` holding it is dropped.
pub(super) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

pub(super) fn start(path: &str) -> Checkpointer {
    let (stop, stopped) = mpsc::channel::<()>();
    let path = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let mut conn: Option<diesel::SqliteConnection> = None;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                let Some(c) = conn.as_mut() else {
                    // Opened on the first tick, when the pool has created the file.
                    conn = diesel::SqliteConnection::establish(&path)
                        .inspect_err(
                            |err| tracing::debug!(error = %err, "checkpoint connection not open yet"),
                        )
                        .ok();
                    continue;
                };
                if let Err(err) = c.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::warn!(error = %err, "SQLite checkpoint failed; retrying on a new connection");
                    conn = None;
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the SQLite checkpoint thread; commits checkpoint instead");
    }
    Checkpointer { _stop: stop }
}
