//! The one error type of this crate and its mapping onto the shared [`ErrorCode`].
//!
//! Driver errors (sqlx, redis) are classified here once, so callers can match on what happened
//! (unreachable, duplicate, not found, lease lost) instead of on driver internals.

use liquid_kit::config::ConfigError;
use liquid_kit::error::{ErrorCode, HasErrorCode};
use sqlx::error::DatabaseError;
use uuid::Uuid;

/// Failures of the database, job queue and cache layers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported backend.
    #[error("unsupported {role} url `{url}`; use {expected}")]
    UnsupportedUrl {
        /// `database` or `cache`.
        role: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The URL has a supported scheme but cannot be parsed.
    #[error("invalid {role} url `{url}`: {reason}")]
    InvalidUrl {
        /// `database` or `cache`.
        role: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend did not answer when connecting.
    #[error(
        "cannot reach {role} at `{url}`: {reason}; check that it is running and the url is right \
         (`make dev-up` starts local Postgres and Redis)"
    )]
    Unreachable {
        /// `database` or `cache`.
        role: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The driver's words.
        reason: String,
    },
    /// A local SQLite file or its directory could not be created.
    #[error("cannot create `{path}`: {source}")]
    Filesystem {
        /// The path that could not be created.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Migrations failed; the schema was left at the last migration that succeeded.
    #[error("migrations on {kind} failed: {source}")]
    Migration {
        /// `postgres` or `sqlite`.
        kind: &'static str,
        /// What sqlx reported.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The database connection was lost or the pool could not hand out a connection.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// A query failed for another reason.
    #[error("database query failed: {0}")]
    Database(#[source] sqlx::Error),
    /// A unique constraint was violated.
    #[error("already exists: {message}")]
    Duplicate {
        /// The constraint that was violated, when the database names it.
        constraint: Option<String>,
        /// The database's words.
        message: String,
    },
    /// A foreign key points at a row that does not exist (or a referenced row is still in use).
    #[error("referenced row missing or still referenced: {message}")]
    ForeignKey {
        /// The constraint that was violated, when the database names it.
        constraint: Option<String>,
        /// The database's words.
        message: String,
    },
    /// A row was not found.
    #[error("not found")]
    NotFound,
    /// A stored value could not be read back (a row written by something else than this crate).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// The caller passed a value this layer cannot accept.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The parameter.
        name: &'static str,
        /// What is accepted.
        reason: String,
    },
    /// The job's lease is no longer held by this worker (it expired and another worker claimed
    /// the job, or the job already finished).
    #[error("lease on job {job_id} is no longer held by worker `{worker}`")]
    LeaseLost {
        /// The job.
        job_id: Uuid,
        /// The worker that thought it held the lease.
        worker: String,
    },
    /// The cache could not be reached or dropped the connection.
    #[error("cache unavailable: {0}")]
    CacheUnavailable(#[source] redis::RedisError),
    /// The cache refused a command.
    #[error("cache command failed: {0}")]
    Cache(#[source] redis::RedisError),
    /// `incr` on a key that holds something other than a 64-bit integer.
    #[error("cache key `{key}` does not hold a 64-bit integer")]
    NotAnInteger {
        /// The key, without the namespace.
        key: String,
    },
}

impl HasErrorCode for StoreError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::UnsupportedUrl { .. }
            | StoreError::InvalidUrl { .. }
            | StoreError::Config(_) => ErrorCode::InvalidConfig,
            StoreError::Unreachable { .. }
            | StoreError::Filesystem { .. }
            | StoreError::DatabaseUnavailable(_)
            | StoreError::CacheUnavailable(_) => ErrorCode::Unavailable,
            StoreError::Migration { .. }
            | StoreError::Database(_)
            | StoreError::Corrupt { .. }
            | StoreError::Cache(_) => ErrorCode::Internal,
            StoreError::Duplicate { .. } => ErrorCode::AlreadyExists,
            StoreError::ForeignKey { .. } => ErrorCode::FailedPrecondition,
            StoreError::NotFound => ErrorCode::NotFound,
            StoreError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            StoreError::LeaseLost { .. } => ErrorCode::Conflict,
            StoreError::NotAnInteger { .. } => ErrorCode::FailedPrecondition,
        }
    }
}

/// True for driver errors that mean "the database is not there right now" rather than "the
/// query is wrong".
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes: another
                // writer held the database for longer than the busy timeout.
                return sqlite
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6));
            }
            // Postgres SQLSTATE class 08 (connection exception) and 57P0x (shutdown, crash
            // recovery, cannot connect now).
            db.code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
        }
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate {
                constraint: db.constraint().map(str::to_owned),
                message: db.message().to_owned(),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::ForeignKey {
                constraint: db.constraint().map(str::to_owned),
                message: db.message().to_owned(),
            },
            _ if is_unavailable(&e) => StoreError::DatabaseUnavailable(e),
            _ => StoreError::Database(e),
        }
    }
}

impl StoreError {
    /// Classifies a migration failure: a lost connection is [`StoreError::DatabaseUnavailable`],
    /// anything else [`StoreError::Migration`].
    pub(crate) fn migration(kind: &'static str, source: sqlx::migrate::MigrateError) -> Self {
        match source {
            sqlx::migrate::MigrateError::Execute(e) if is_unavailable(&e) => {
                StoreError::DatabaseUnavailable(e)
            }
            source => StoreError::Migration { kind, source },
        }
    }

    /// Classifies a Redis failure: connection trouble is [`StoreError::CacheUnavailable`],
    /// anything else [`StoreError::Cache`].
    pub(crate) fn redis(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            StoreError::CacheUnavailable(e)
        } else {
            StoreError::Cache(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_map_to_stable_codes() {
        assert_eq!(
            StoreError::from(sqlx::Error::RowNotFound).error_code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            StoreError::from(sqlx::Error::PoolTimedOut).error_code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            StoreError::from(sqlx::Error::Protocol("bad".into())).error_code(),
            ErrorCode::Internal
        );
        let lost = StoreError::LeaseLost {
            job_id: Uuid::nil(),
            worker: "w".into(),
        };
        assert_eq!(lost.error_code(), ErrorCode::Conflict);
    }

    #[test]
    fn messages_are_lowercase_without_trailing_period() {
        let errors = [
            StoreError::NotFound.to_string(),
            StoreError::Unreachable {
                role: "database",
                url: "postgres://u:***@h/db".into(),
                reason: "connection refused".into(),
            }
            .to_string(),
            StoreError::NotAnInteger { key: "k".into() }.to_string(),
        ];
        for message in errors {
            assert!(!message.ends_with('.'), "{message}");
            assert!(
                message.chars().next().is_some_and(char::is_lowercase),
                "{message}"
            );
        }
    }
}
