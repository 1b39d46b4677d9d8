//! Storage errors, classified by what a caller should do about them.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule refused the write (e.g. a second account with the same name).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is too busy: the caller should answer 503 and retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A secret column could not be decrypted (wrong key, or tampered ciphertext).
    #[error("secret column {column} could not be decrypted: {reason}")]
    Decrypt { column: &'static str, reason: String },
    #[error("database error: {0}")]
    Query(DieselError),
}

impl StorageError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

impl From<DieselError> for StorageError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::NotFound => StorageError::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StorageError::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => StorageError::Unavailable(info.message().to_owned()),
            // SQLite reports a writer that held the lock past busy_timeout this way; it is
            // contention, not a bad query, so the sender should retry.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if info.message().contains("database is locked") =>
            {
                StorageError::Unavailable(info.message().to_owned())
            }
            other => StorageError::Query(other),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for StorageError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        StorageError::Unavailable(err.to_string())
    }
}

pub type StorageResult<T> = Result<T, StorageError>;
