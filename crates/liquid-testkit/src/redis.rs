//! An isolated Redis key space per test: a unique prefix on the server `make dev-up` starts (or
//! `LIQUID_TEST_REDIS_URL`); the fixture removes its own keys when dropped, never FLUSHDB.

/// Where Redis is unless `LIQUID_TEST_REDIS_URL` says otherwise.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A prefix of its own on the test Redis.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    /// Checks that Redis answers and picks `t:<uuid>:` as the prefix.
    pub async fn new() -> anyhow::Result<TestRedis> {
        let url = std::env::var("LIQUID_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let client = redis::Client::open(url.as_str())?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}; run `make dev-up`"))?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(TestRedis {
            url,
            prefix: format!("t:{}:", uuid::Uuid::new_v4().simple()),
        })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .clone()
            .iter(&mut c)
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> = redis::cmd("UNLINK").arg(keys).query(&mut c);
        }
    }
}
