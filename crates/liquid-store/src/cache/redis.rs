//! The Redis cache behind `redis://` and `rediss://`: one `ConnectionManager` (a single
//! multiplexed connection that reconnects on its own) shared by every call; cloning it is a
//! reference-count bump, not a new connection.
//!
//! Prefix deletion walks the key space with `SCAN MATCH <namespace><prefix>*` and removes keys
//! with `UNLINK` (freed off the main thread); it never uses `KEYS` or `FLUSHDB`.

use std::time::Duration;

use async_trait::async_trait;
use liquid_kit::secret::redact_url;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;

use super::{Cache, CacheConfig, ttl_millis};
use crate::StoreError;

/// Keys asked for per SCAN round trip (a hint to the server, not a limit).
const SCAN_BATCH: usize = 500;

/// [`Cache::set_if_guard`] as one step: KEYS[1] the key, KEYS[2] the guard; ARGV[1] the
/// value, ARGV[2] its TTL in milliseconds, ARGV[3] `1` when the guard must hold ARGV[4] (`0`:
/// when it must be absent). Returns 1 when written.
const SET_IF_GUARD: &str = r"
local current = redis.call('GET', KEYS[2])
if ARGV[3] == '1' then
  if current ~= ARGV[4] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// A Redis client for `url` whose TCP connections set `TCP_NODELAY`.
///
/// redis-rs leaves Nagle's algorithm on, so on a shared multiplexed connection a command written
/// while an earlier one is still unanswered waits in the kernel until Redis's reply brings the
/// ACK: one extra round trip for every request that arrives during a burst. Every Redis client
/// of the platform is made here.
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// The Redis cache.
pub struct RedisCache {
    prefix: String,
    connection: ConnectionManager,
    /// [`SET_IF_GUARD`], called by hash (`EVALSHA`, loaded on the first `NOSCRIPT`).
    guarded_set: redis::Script,
}

impl RedisCache {
    /// Connects the shared connection and checks that the server answers `PING`.
    pub async fn connect(config: &CacheConfig) -> Result<RedisCache, StoreError> {
        let url = config.url.as_str();
        let client = client(url).map_err(|e| StoreError::InvalidUrl {
            role: "cache",
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        let connect_timeout = Duration::from_secs(config.connect_timeout_secs);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(config.response_timeout_secs)))
            .set_number_of_retries(2);
        let unreachable = |reason: String| StoreError::Unreachable {
            role: "cache",
            url: redact_url(url),
            reason,
        };
        // The manager retries with backoff; bound the whole start-up wait, not each attempt.
        let connection = tokio::time::timeout(
            connect_timeout * 2,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| {
            unreachable(format!(
                "no answer within {}s",
                connect_timeout.as_secs() * 2
            ))
        })?
        .map_err(|e| unreachable(e.to_string()))?;
        let cache = RedisCache {
            prefix: config.prefix.clone(),
            connection,
            guarded_set: redis::Script::new(SET_IF_GUARD),
        };
        cache.ping().await.map_err(|e| unreachable(e.to_string()))?;
        Ok(cache)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// True when Redis refused INCRBY because the value is not an integer or the sum would
/// overflow (inside MULTI/EXEC the refusal arrives as one of the transaction's errors).
fn is_not_an_integer(e: &redis::RedisError) -> bool {
    e.clone().into_server_errors().is_some_and(|errors| {
        errors.iter().any(|(_, error)| {
            error
                .details()
                .is_some_and(|d| d.contains("not an integer") || d.contains("overflow"))
        })
    })
}

#[async_trait]
impl Cache for RedisCache {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.connection.clone();
        redis::cmd("GET")
            .arg(self.full_key(key))
            .query_async(&mut c)
            .await
            .map_err(StoreError::redis)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let millis = ttl_millis(ttl)?;
        let mut c = self.connection.clone();
        redis::cmd("SET")
            .arg(self.full_key(key))
            .arg(value)
            .arg("PX")
            .arg(millis)
            .query_async(&mut c)
            .await
            .map_err(StoreError::redis)
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let millis = ttl_millis(ttl)?;
        let mut c = self.connection.clone();
        let written: Option<String> = redis::cmd("SET")
            .arg(self.full_key(key))
            .arg(value)
            .arg("PX")
            .arg(millis)
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(StoreError::redis)?;
        Ok(written.is_some())
    }

    async fn set_if_guard(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        guard: &str,
        expected: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let millis = ttl_millis(ttl)?;
        let mut c = self.connection.clone();
        let mut invocation = self.guarded_set.key(self.full_key(key));
        invocation
            .key(self.full_key(guard))
            .arg(value)
            .arg(millis)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default());
        let written: i64 = invocation
            .invoke_async(&mut c)
            .await
            .map_err(StoreError::redis)?;
        Ok(written == 1)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let removed: u64 = redis::cmd("UNLINK")
            .arg(self.full_key(key))
            .query_async(&mut c)
            .await
            .map_err(StoreError::redis)?;
        Ok(removed > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut c = self.connection.clone();
        let pattern = format!("{}*", escape_glob(&self.full_key(prefix)));
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut c)
                .await
                .map_err(StoreError::redis)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .map_err(StoreError::redis)?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        let millis = ttl_millis(ttl)?;
        let full = self.full_key(key);
        let mut c = self.connection.clone();
        // MULTI/EXEC: the counter is created with its TTL and incremented as one step, so a
        // counter never exists without an expiry.
        let (value,): (i64,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&full)
            .arg(0)
            .arg("PX")
            .arg(millis)
            .arg("NX")
            .ignore()
            .cmd("INCRBY")
            .arg(&full)
            .arg(delta)
            .query_async(&mut c)
            .await
            .map_err(|e| {
                if is_not_an_integer(&e) {
                    StoreError::NotAnInteger {
                        key: key.to_owned(),
                    }
                } else {
                    StoreError::redis(e)
                }
            })?;
        Ok(value)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(StoreError::redis)
    }
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_match_literally() {
        assert_eq!(escape_glob("t:abc:"), "t:abc:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn clients_turn_nagle_off_and_keep_the_url() {
        let made = client("redis://:pw@127.0.0.1:6390/3").unwrap();
        let info = made.get_connection_info();
        assert!(info.tcp_settings().nodelay());
        assert_eq!(info.addr().to_string(), "127.0.0.1:6390");
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert!(client("http://nope").is_err());
    }
}
