//! An isolated Redis key space per test: a unique prefix on the server `make dev-up` starts (or
//! `LIQUID_TEST_REDIS_URL`). The fixture removes its own keys when dropped (SCAN + UNLINK of
//! every key holding the prefix, also behind a service's namespace such as
//! `liquid:gateway:t:<uuid>:…`) and never runs FLUSHDB, FLUSHALL or KEYS on the shared server.

use std::time::Duration;

use liquid_kit::secret::redact_url;
use redis::aio::MultiplexedConnection;

/// Where Redis is unless `LIQUID_TEST_REDIS_URL` says otherwise.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// The environment variable naming the server.
pub const URL_ENV: &str = "LIQUID_TEST_REDIS_URL";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
const SCAN_BATCH: usize = 500;

/// A key prefix of its own on the test Redis.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
    client: redis::Client,
}

fn unreachable(url: &str, reason: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach Redis at {} ({reason}); run `make dev-up` to start the local test servers, \
         or point {URL_ENV} at one",
        redact_url(url)
    )
}

impl TestRedis {
    /// Checks that Redis answers and picks `t:<uuid>:` as this test's prefix.
    pub async fn new() -> anyhow::Result<TestRedis> {
        crate::watchdog::arm();
        let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("{URL_ENV}={}: {e}", redact_url(&url)))?;
        let fixture = TestRedis {
            prefix: format!("t:{}:", uuid::Uuid::now_v7().simple()),
            url,
            client,
        };
        let mut c = fixture.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| unreachable(&fixture.url, &e.to_string()))?;
        Ok(fixture)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's key prefix, `t:<uuid>:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `suffix` under this test's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A connection of the test's own, for looking at keys directly.
    pub async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(unreachable(&self.url, &e.to_string())),
            Err(_) => Err(unreachable(
                &self.url,
                &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            )),
        }
    }

    /// Every key holding this test's prefix: the keys it wrote under [`TestRedis::key`] and
    /// those a service wrote behind its own namespace (`liquid:<service>:` in front of a prefix
    /// the test configured). These are the keys removed when the fixture is dropped.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        self.scan(&self.own_keys()).await
    }

    /// Every key matching the glob `pattern` (via SCAN; never KEYS on a shared server).
    pub async fn scan(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut c = self.connection().await?;
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut c)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The glob of the keys this fixture owns: the prefix anywhere in the key (it holds a
    /// fresh UUID, so no other test's key matches).
    fn own_keys(&self) -> String {
        format!("*{}*", self.prefix)
    }
}

/// Removes every key matching `pattern` with SCAN + UNLINK on a blocking connection.
fn unlink_matching(c: &mut redis::Connection, pattern: &str) -> redis::RedisResult<u64> {
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query(c)?;
        if !keys.is_empty() {
            removed += redis::cmd("UNLINK").arg(&keys).query::<u64>(c)?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Drop may run on a runtime thread: clean up from a thread of its own with a blocking
        // connection, and wait so the keys are gone when the test ends.
        let client = self.client.clone();
        let pattern = self.own_keys();
        let cleaner = std::thread::Builder::new()
            .name("test-redis-clean".into())
            .spawn(move || {
                let result = client
                    .get_connection_with_timeout(CONNECT_TIMEOUT)
                    .and_then(|mut c| {
                        // A server that stops answering ends the cleanup, not the test run.
                        c.set_read_timeout(Some(CLEANUP_TIMEOUT))?;
                        c.set_write_timeout(Some(CLEANUP_TIMEOUT))?;
                        unlink_matching(&mut c, &pattern)
                    });
                if let Err(e) = result {
                    tracing::warn!(%pattern, error = %e, "could not remove test keys");
                }
            });
        if let Ok(handle) = cleaner {
            let _ = handle.join();
        }
    }
}
