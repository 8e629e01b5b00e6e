//! Database and cache backends chosen by URL.
//!
//! `postgres://` or `sqlite://` gives a [`Database`] with the service's embedded migrations run
//! at start-up; `redis://` or `memory://` gives a [`Cache`]. Services write their own SQL per
//! backend; this crate owns connections, migrations and the cache semantics both backends share.

pub mod cache;

use std::str::FromStr;
use std::time::Duration;

use liquid_kit::error::{ErrorCode, HasErrorCode};
use liquid_kit::secret::redact_url;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

pub use cache::Cache;

/// Failures of the database and cache layers.
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
    /// The backend did not answer.
    #[error("cannot reach {url}: {reason}; is it running? (`make dev-up` starts local ones)")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The driver's words.
        reason: String,
    },
    /// Migrations failed.
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A query failed.
    #[error("database: {0}")]
    Query(String),
    /// A unique constraint was violated.
    #[error("already exists: {0}")]
    Duplicate(String),
    /// A row was not found.
    #[error("not found")]
    NotFound,
    /// A cache operation failed.
    #[error("cache: {0}")]
    Cache(String),
}

impl HasErrorCode for StoreError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::UnsupportedUrl { .. } => ErrorCode::InvalidConfig,
            StoreError::Unreachable { .. } | StoreError::Cache(_) => ErrorCode::Unavailable,
            StoreError::Migration(_) | StoreError::Query(_) => ErrorCode::Internal,
            StoreError::Duplicate(_) => ErrorCode::AlreadyExists,
            StoreError::NotFound => ErrorCode::NotFound,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Duplicate(db.message().to_owned())
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreError::Query(e.to_string())
            }
            _ => StoreError::Query(e.to_string()),
        }
    }
}

/// A service's migrations for both backends (embedded with `sqlx::migrate!`).
#[derive(Debug)]
pub struct Migrations {
    /// For Postgres.
    pub postgres: Migrator,
    /// For SQLite.
    pub sqlite: Migrator,
}

/// Which database backs a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Sqlite => "sqlite",
        })
    }
}

/// A connection pool to the service's own database.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// SQLite (embedded mode).
    Sqlite(sqlx::SqlitePool),
}

impl Database {
    /// Connects to `url` (`postgres://...`, `sqlite://path`, `sqlite::memory:`). SQLite files
    /// and their directory are created; WAL mode and foreign keys are on.
    pub async fn connect(url: &str) -> Result<Database, StoreError> {
        let unreachable = |e: sqlx::Error| StoreError::Unreachable {
            url: redact_url(url),
            reason: e.to_string(),
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(unreachable)?;
            return Ok(Database::Postgres(pool));
        }
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(unreachable)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let path = options.get_filename().to_path_buf();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Unreachable {
                    url: url.to_owned(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(unreachable)?;
            return Ok(Database::Sqlite(pool));
        }
        Err(StoreError::UnsupportedUrl {
            role: "database",
            url: redact_url(url),
            expected: "postgres://user:password@host:port/db or sqlite://path",
        })
    }

    /// The backend.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Database::Postgres(_) => DatabaseKind::Postgres,
            Database::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    /// Runs the migrations for this backend (idempotent; Postgres takes an advisory lock so
    /// replicas starting together do not race).
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StoreError> {
        let result = match self {
            Database::Postgres(pool) => migrations.postgres.run(pool).await,
            Database::Sqlite(pool) => migrations.sqlite.run(pool).await,
        };
        result.map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Database::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
        .map_err(StoreError::from)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(pool) => pool.close().await,
        }
    }
}
