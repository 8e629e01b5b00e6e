//! A service's own database: a Postgres or SQLite pool chosen by URL, its readiness probe and
//! its migrations.
//!
//! This module owns connecting (pool sizing, SQLite file creation and pragmas) and running
//! embedded migrations. It does not own any service's SQL: services match on [`Database`] and
//! write one query per backend in their `store/postgres.rs` and `store/sqlite.rs`.

use std::str::FromStr;
use std::time::Duration;

use liquid_kit::config::{ConfigError, Validate};
use liquid_kit::secret::redact_url;
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tracing::info;

use crate::StoreError;

/// What [`Database::connect`] accepts, for error messages.
const EXPECTED_URLS: &str =
    "postgres://user:password@host:port/db, sqlite://path/to/file.db or sqlite::memory:";

/// A service's migrations for both backends, embedded at compile time.
///
/// ```ignore
/// pub static MIGRATIONS: liquid_store::Migrations = liquid_store::Migrations {
///     postgres: sqlx::migrate!("../../migrations/media/postgres"),
///     sqlite: sqlx::migrate!("../../migrations/media/sqlite"),
/// };
/// ```
#[derive(Debug)]
pub struct Migrations {
    /// Migrations applied on PostgreSQL.
    pub postgres: Migrator,
    /// Migrations applied on SQLite.
    pub sqlite: Migrator,
}

/// Which database backs a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatabaseKind {
    /// PostgreSQL (distributed mode).
    Postgres,
    /// SQLite (embedded mode).
    Sqlite,
}

impl DatabaseKind {
    /// `postgres` or `sqlite`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach the database and how large its pool is.
///
/// Deserialises from the `database` section of a service's configuration; every field but `url`
/// has a default.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`, `sqlite://path/to/file.db` or `sqlite::memory:`.
    pub url: String,
    /// Most connections the pool opens (an in-memory SQLite database always uses one).
    pub max_connections: u32,
    /// Connections the pool keeps open while idle.
    pub min_connections: u32,
    /// Seconds to wait for a free connection (and for the first connection at start-up).
    pub acquire_timeout_secs: u64,
    /// Seconds after which an idle connection above `min_connections` is closed; 0 keeps them.
    pub idle_timeout_secs: u64,
    /// SQLite only: milliseconds a statement waits for another writer before failing.
    pub sqlite_busy_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout_secs: 5,
            idle_timeout_secs: 600,
            sqlite_busy_timeout_ms: 5_000,
        }
    }
}

impl DatabaseConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: url.into(),
            ..DatabaseConfig::default()
        }
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("sqlite_busy_timeout_ms", &self.sqlite_busy_timeout_ms)
            .finish()
    }
}

impl Validate for DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::invalid(
                "database.url",
                format!("required; use {EXPECTED_URLS}"),
            ));
        }
        if scheme_kind(&self.url).is_none() {
            return Err(ConfigError::invalid(
                "database.url",
                format!(
                    "`{}` is not supported; use {EXPECTED_URLS}",
                    redact_url(&self.url)
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if self.min_connections > self.max_connections {
            return Err(ConfigError::invalid(
                "database.min_connections",
                format!("must not exceed max_connections ({})", self.max_connections),
            ));
        }
        if self.acquire_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "database.acquire_timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn scheme_kind(url: &str) -> Option<DatabaseKind> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(DatabaseKind::Postgres)
    } else if url.starts_with("sqlite:") {
        Some(DatabaseKind::Sqlite)
    } else {
        None
    }
}

/// `sqlite::memory:`, `sqlite://:memory:` or `mode=memory`: a database that lives only as long as
/// one of its connections is open.
fn is_sqlite_memory(url: &str) -> bool {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    path.ends_with(":memory:") || query.split('&').any(|p| p == "mode=memory")
}

/// A connection pool to the service's own database.
///
/// Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// SQLite (embedded mode).
    Sqlite(sqlx::SqlitePool),
}

impl Database {
    /// Connects to `url` with the default pool settings; see [`Database::connect_with`].
    pub async fn connect(url: &str) -> Result<Database, StoreError> {
        Database::connect_with(&DatabaseConfig::from_url(url)).await
    }

    /// Connects as `config` says and checks that one connection opens.
    ///
    /// SQLite files and their parent directories are created; SQLite runs in WAL mode with
    /// foreign keys on and a busy timeout. An unreachable server is a
    /// [`StoreError::Unreachable`] that names the URL with its password redacted.
    pub async fn connect_with(config: &DatabaseConfig) -> Result<Database, StoreError> {
        config.validate()?;
        let url = config.url.as_str();
        let database = match scheme_kind(url) {
            Some(DatabaseKind::Postgres) => Database::Postgres(connect_postgres(config).await?),
            Some(DatabaseKind::Sqlite) => Database::Sqlite(connect_sqlite(config).await?),
            None => {
                return Err(StoreError::UnsupportedUrl {
                    role: "database",
                    url: redact_url(url),
                    expected: EXPECTED_URLS,
                });
            }
        };
        info!(
            kind = %database.kind(),
            url = %redact_url(url),
            max_connections = config.max_connections,
            "database connected"
        );
        Ok(database)
    }

    /// The backend.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Database::Postgres(_) => DatabaseKind::Postgres,
            Database::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    /// The Postgres pool, when this is Postgres.
    pub fn as_postgres(&self) -> Option<&sqlx::PgPool> {
        match self {
            Database::Postgres(pool) => Some(pool),
            Database::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, when this is SQLite.
    pub fn as_sqlite(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Database::Postgres(_) => None,
            Database::Sqlite(pool) => Some(pool),
        }
    }

    /// Applies the migrations for this backend that have not run yet.
    ///
    /// Idempotent; checks that migrations already applied were not edited since. On Postgres
    /// sqlx holds an advisory lock while migrating, so replicas starting together take turns.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StoreError> {
        let (migrator, result) = match self {
            Database::Postgres(pool) => (&migrations.postgres, migrations.postgres.run(pool).await),
            Database::Sqlite(pool) => (&migrations.sqlite, migrations.sqlite.run(pool).await),
        };
        result.map_err(|e| StoreError::migration(self.kind().as_str(), e))?;
        info!(
            kind = %self.kind(),
            latest = migrator.iter().map(|m| m.version).max().unwrap_or_default(),
            "migrations up to date"
        );
        Ok(())
    }

    /// `SELECT 1`, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Database::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
        .map_err(StoreError::from)
    }

    /// Closes every connection; later calls on this pool (and its clones) fail.
    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(pool) => pool.close().await,
        }
    }
}

fn idle_timeout(config: &DatabaseConfig) -> Option<Duration> {
    (config.idle_timeout_secs > 0).then(|| Duration::from_secs(config.idle_timeout_secs))
}

async fn connect_postgres(config: &DatabaseConfig) -> Result<sqlx::PgPool, StoreError> {
    let url = config.url.as_str();
    let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
        role: "database",
        url: redact_url(url),
        reason: e.to_string(),
    })?;
    let unreachable = |reason: String| StoreError::Unreachable {
        role: "database",
        url: redact_url(url),
        reason,
    };
    probe::<sqlx::PgConnection>(&options, config)
        .await
        .map_err(unreachable)?;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
        .idle_timeout(idle_timeout(config))
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// Opens and closes one connection, so an unreachable server is reported with the driver's
/// reason ("connection refused", "password authentication failed") rather than the pool's
/// generic "timed out" after its retries.
async fn probe<C: sqlx::Connection>(
    options: &C::Options,
    config: &DatabaseConfig,
) -> Result<(), String> {
    let timeout = Duration::from_secs(config.acquire_timeout_secs);
    match tokio::time::timeout(timeout, C::connect_with(options)).await {
        Ok(Ok(connection)) => {
            // Only the outcome of opening matters; a failed goodbye changes nothing.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

async fn connect_sqlite(config: &DatabaseConfig) -> Result<sqlx::SqlitePool, StoreError> {
    let url = config.url.as_str();
    let in_memory = is_sqlite_memory(url);
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl {
            role: "database",
            url: redact_url(url),
            reason: e.to_string(),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_millis(config.sqlite_busy_timeout_ms));
    let unreachable = |reason: String| StoreError::Unreachable {
        role: "database",
        url: redact_url(url),
        reason,
    };
    if !in_memory {
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::Filesystem {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        probe::<sqlx::SqliteConnection>(&options, config)
            .await
            .map_err(unreachable)?;
    }
    let pool = if in_memory {
        // An in-memory database disappears with its last connection, and a shared-cache one
        // reports SQLITE_LOCKED (not BUSY) to concurrent writers: keep exactly one connection
        // open for the pool's whole life.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .idle_timeout(idle_timeout(config))
    };
    pool.acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_urls_are_recognised() {
        assert!(is_sqlite_memory("sqlite::memory:"));
        assert!(is_sqlite_memory("sqlite://:memory:"));
        assert!(is_sqlite_memory("sqlite://x.db?mode=memory"));
        assert!(!is_sqlite_memory("sqlite://data/x.db"));
        assert!(!is_sqlite_memory("sqlite://data/x.db?mode=rwc"));
    }

    #[test]
    fn validation_names_the_key_at_fault() {
        let missing = DatabaseConfig::default().validate().unwrap_err();
        assert!(missing.to_string().contains("database.url"), "{missing}");

        let unsupported = DatabaseConfig::from_url("mysql://u:pw@h/db")
            .validate()
            .unwrap_err();
        assert!(!unsupported.to_string().contains("pw"), "{unsupported}");

        let mut sizes = DatabaseConfig::from_url("sqlite::memory:");
        sizes.min_connections = 20;
        let err = sizes.validate().unwrap_err();
        assert!(
            err.to_string().contains("database.min_connections"),
            "{err}"
        );

        sizes.min_connections = 0;
        sizes.max_connections = 0;
        let err = sizes.validate().unwrap_err();
        assert!(
            err.to_string().contains("database.max_connections"),
            "{err}"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let config = DatabaseConfig::from_url("postgres://liquid:hunter2@db:5432/app");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:5432/app"), "{shown}");
    }
}
