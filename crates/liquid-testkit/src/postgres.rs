//! A fresh PostgreSQL database per test on the server `make dev-up` starts (or the one named by
//! `LIQUID_TEST_POSTGRES_URL`), dropped when the fixture is dropped.
//!
//! Database names are `t_<UUIDv7 without dashes>`. The UUID's timestamp lets [`TestDatabase::create`]
//! sweep databases that a killed test run left behind (older than [`STALE_AFTER`]); nothing
//! else on the server is touched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use liquid_kit::secret::redact_url;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

/// Where the admin connection goes unless `LIQUID_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "postgres://liquid:liquid@127.0.0.1:5432/postgres";
/// The environment variable naming the admin URL.
pub const ADMIN_URL_ENV: &str = "LIQUID_TEST_POSTGRES_URL";
/// Test databases older than this are assumed leaked by a killed run and dropped.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping a test's database may take before the test ends without it (a later
/// run's sweep removes it once stale).
const DROP_TIMEOUT: Duration = Duration::from_secs(60);
const NAME_PREFIX: &str = "t_";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
    dropped: bool,
}

/// The admin URL from the environment or the default.
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn connect_admin(admin_url: &str) -> anyhow::Result<PgConnection> {
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(admin_url)).await;
    let failure = match attempt {
        Ok(Ok(connection)) => return Ok(connection),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
    };
    anyhow::bail!(
        "cannot reach PostgreSQL at {} ({failure}); run `make dev-up` to start the local test \
         servers, or point {ADMIN_URL_ENV} at a server where this role may create databases",
        redact_url(admin_url)
    )
}

/// `admin_url` with its database replaced by `name`, keeping any query parameters.
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (scheme, rest) = admin_url
        .split_once("://")
        .with_context(|| format!("{} is not a URL", redact_url(admin_url)))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    Ok(match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

/// When a fixture database was created, from the UUIDv7 in its name.
fn created_at(name: &str) -> Option<SystemTime> {
    let id = Uuid::try_parse(name.strip_prefix(NAME_PREFIX)?).ok()?;
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn is_stale(name: &str, now: SystemTime) -> bool {
    created_at(name)
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age > STALE_AFTER)
}

async fn drop_database(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    // The name is a fixture name (t_ + hex), checked by the callers, never free text.
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .with_context(|| format!("dropping test database {name}"))?;
    Ok(())
}

/// Drops fixture databases that killed test runs left behind.
async fn sweep_stale(admin: &mut PgConnection) -> anyhow::Result<()> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut *admin)
            .await?;
    let now = SystemTime::now();
    for name in names.iter().filter(|n| is_stale(n, now)) {
        if let Err(e) = drop_database(admin, name).await {
            tracing::warn!(database = %name, error = %e, "could not drop stale test database");
        }
    }
    Ok(())
}

impl TestDatabase {
    /// Creates `t_<uuid>` on the test server and returns its URL.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        crate::watchdog::arm();
        let admin_url = admin_url();
        let mut admin = connect_admin(&admin_url).await?;
        if let Err(e) = sweep_stale(&mut admin).await {
            tracing::warn!(error = %e, "could not sweep stale test databases");
        }
        let name = format!("{NAME_PREFIX}{}", Uuid::now_v7().simple());
        // The name is generated right here (t_ + hex), never caller input.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| {
                format!(
                    "creating test database {name} on {} (the role needs CREATEDB)",
                    redact_url(&admin_url)
                )
            })?;
        let _ = admin.close().await;
        let url = database_url(&admin_url, &name)?;
        Ok(TestDatabase {
            admin_url,
            name,
            url,
            dropped: false,
        })
    }

    /// The database's URL (same server and credentials as the admin URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now, reporting failures (dropping the fixture does the same
    /// silently). Open connections to it are terminated.
    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        let mut admin = connect_admin(&self.admin_url).await?;
        drop_database(&mut admin, &self.name).await?;
        let _ = admin.close().await;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await and may run on a runtime thread: drop the database from a thread of
        // its own with a small runtime, and wait so it is gone when the test ends.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::Builder::new()
            .name("test-db-drop".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let dropping = async {
                        let mut admin = connect_admin(&admin_url).await?;
                        drop_database(&mut admin, &name).await?;
                        let _ = admin.close().await;
                        anyhow::Ok(())
                    };
                    let result = tokio::time::timeout(DROP_TIMEOUT, dropping)
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!(
                                "DROP DATABASE did not finish within {} s",
                                DROP_TIMEOUT.as_secs()
                            ))
                        });
                    if let Err(e) = result {
                        tracing::warn!(database = %name, error = %e, "could not drop test database");
                    }
                });
            });
        if let Ok(handle) = dropper {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_credentials_and_parameters() {
        assert_eq!(
            database_url("postgres://u:p@h:5432/postgres", "t_1").unwrap(),
            "postgres://u:p@h:5432/t_1"
        );
        assert_eq!(
            database_url("postgres://u:p@h:5432/postgres?sslmode=disable", "t_1").unwrap(),
            "postgres://u:p@h:5432/t_1?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h", "t_1").unwrap(),
            "postgres://h/t_1"
        );
    }

    #[test]
    fn only_old_fixture_databases_are_stale() {
        let fresh = format!("t_{}", Uuid::now_v7().simple());
        assert!(!is_stale(&fresh, SystemTime::now()));
        assert!(is_stale(&fresh, SystemTime::now() + STALE_AFTER * 2));
        assert!(!is_stale("t_notauuid", SystemTime::now() + STALE_AFTER * 2));
        let v4 = format!("t_{}", Uuid::new_v4().simple());
        assert!(!is_stale(&v4, SystemTime::now() + STALE_AFTER * 2));
        assert!(!is_stale("postgres", SystemTime::now() + STALE_AFTER * 2));
    }
}
