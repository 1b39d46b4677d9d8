//! One `telltale serve` per SQLite file. Replicas coordinate through PostgreSQL; on SQLite a
//! second server would run every scheduled job twice and split the in-process nonce memory,
//! so it is refused at start-up with a message saying who holds the file. The lock is an OS
//! file lock (`flock`), released by the kernel however the holder exits, SIGKILL included.
//! Short-lived commands (`migrate`, `refresh-tokens`, …) do not take it: they coordinate
//! through the same database rows and leases as the server.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::DatabaseTarget;

/// Held for as long as the server runs; dropping it releases the file.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// The lock file beside a SQLite database.
pub fn lock_path(database: &str) -> PathBuf {
    PathBuf::from(format!("{database}.serve-lock"))
}

/// Takes the serve lock for a SQLite target (PostgreSQL needs none: `Ok(None)`).
pub fn acquire(target: &DatabaseTarget) -> anyhow::Result<Option<ServeLock>> {
    let DatabaseTarget::Sqlite(database) = target else {
        return Ok(None);
    };
    let path = lock_path(database);
    if let Some(parent) = Path::new(database).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            anyhow::anyhow!("cannot create the directory for SQLite database {database}: {e}")
        })?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("process {pid}"),
            };
            anyhow::bail!(
                "SQLite database {database} is already served by {holder}; SQLite runs one \
                 `telltale serve` at a time. Stop that one, or use PostgreSQL (DATABASE_URL=postgres://…) \
                 to run several replicas"
            );
        }
        Err(TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display());
        }
    }
    // The holder's pid, so the refusal above can name it.
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Some(ServeLock { _file: file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("sub").join("t.db").display().to_string();
        let target = DatabaseTarget::Sqlite(database.clone());
        let first = acquire(&target).unwrap();
        assert!(first.is_some());
        let refused = acquire(&target).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("process {}", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("PostgreSQL"), "{refused}");
        drop(first);
        assert!(acquire(&target).unwrap().is_some());
    }

    #[test]
    fn postgres_needs_no_lock() {
        let target = DatabaseTarget::Postgres("postgres://localhost/x".into());
        assert!(acquire(&target).unwrap().is_none());
    }
}
