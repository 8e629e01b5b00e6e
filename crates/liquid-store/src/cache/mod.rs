//! A byte cache with one semantics over two backends: `memory://` (moka, per process) and
//! `redis://` (one shared multiplexed connection, never a connection per call).
//!
//! Every key is namespaced by the configured prefix, so services sharing one Redis never see
//! each other's keys. Prefix invalidation scans and unlinks only that namespace; nothing here
//! ever runs FLUSHDB, FLUSHALL or KEYS. This module owns the semantics both backends share
//! (TTL rules, counters, namespacing); what is cached and for how long is the caller's business.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use liquid_kit::config::{ConfigError, Validate};
use liquid_kit::secret::redact_url;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use self::memory::MemoryCache;
pub use self::redis::{RedisCache, client as redis_client};
use crate::StoreError;

/// What [`connect`] accepts, for error messages.
const EXPECTED_URLS: &str = "redis://[user:password@]host:port[/db], rediss://... or memory://";

/// Longest accepted time to live (ten years); longer values are almost certainly a unit mistake.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A byte cache with per-key time to live, namespaced by a prefix.
///
/// Keys passed to these methods are relative to the namespace. TTLs are at least one
/// millisecond (shorter ones round up) and at most [`MAX_TTL`]; zero is an
/// [`StoreError::InvalidArgument`].
#[async_trait]
pub trait Cache: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// The namespace every key is stored under.
    fn prefix(&self) -> &str;
    /// Reads a key; `None` when it is absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a key, replacing any value and TTL it had.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;
    /// Writes a key only when it is absent (or expired); true when this call wrote it.
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;
    /// Writes a key like [`Cache::set`], but only while the key `guard` holds `expected`
    /// (`None`: while `guard` is absent); true when the value was written and kept.
    ///
    /// A writer that reads `guard` (a generation, a fencing token) before a long piece of work
    /// thus cannot store a result made stale by a change of `guard` meanwhile. Redis checks and
    /// writes in one step (one round trip). The memory cache lives in one process: it checks,
    /// writes and checks again, and removes its value when `guard` changed in between, so a
    /// writer that changes `guard` and then deletes the keys it guards leaves none of them.
    async fn set_if_guard(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        guard: &str,
        expected: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Removes a key; true when it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Removes every key of this namespace that starts with `prefix`; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;
    /// Adds `delta` to the integer at `key` and returns the new value. A missing key starts at 0
    /// and gets `ttl`; an existing counter keeps the TTL it was created with (a fixed window).
    /// A key holding anything but a decimal 64-bit integer is [`StoreError::NotAnInteger`].
    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError>;
    /// Answers when the backend is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Which cache to open and how.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://host:port`, `rediss://host:port` or `memory://`.
    pub url: String,
    /// Namespace of every key, e.g. `liquid:media:`. Must not be empty.
    pub prefix: String,
    /// `memory://` only: most entries held before the least recently used are evicted.
    pub memory_max_entries: u64,
    /// `redis://` only: seconds to wait for a connection.
    pub connect_timeout_secs: u64,
    /// `redis://` only: seconds to wait for the answer to one command.
    pub response_timeout_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: "memory://".to_owned(),
            prefix: String::new(),
            memory_max_entries: 100_000,
            connect_timeout_secs: 5,
            response_timeout_secs: 5,
        }
    }
}

impl CacheConfig {
    /// The defaults with `url` and `prefix`.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        CacheConfig {
            url: url.into(),
            prefix: prefix.into(),
            ..CacheConfig::default()
        }
    }
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("memory_max_entries", &self.memory_max_entries)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("response_timeout_secs", &self.response_timeout_secs)
            .finish()
    }
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

fn is_memory(url: &str) -> bool {
    url == "memory://" || url.starts_with("memory://?")
}

impl Validate for CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !is_redis(&self.url) && !is_memory(&self.url) {
            return Err(ConfigError::invalid(
                "cache.url",
                format!(
                    "`{}` is not supported; use {EXPECTED_URLS}",
                    redact_url(&self.url)
                ),
            ));
        }
        // An empty namespace would let delete_prefix("") remove every key on a shared server.
        if self.prefix.is_empty() {
            return Err(ConfigError::invalid(
                "cache.prefix",
                "must not be empty (e.g. `liquid:<service>:`)",
            ));
        }
        if self.memory_max_entries == 0 {
            return Err(ConfigError::invalid(
                "cache.memory_max_entries",
                "must be at least 1",
            ));
        }
        if self.connect_timeout_secs == 0 || self.response_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                if self.connect_timeout_secs == 0 {
                    "cache.connect_timeout_secs"
                } else {
                    "cache.response_timeout_secs"
                },
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Opens the cache at `url` with every key under `prefix`, other settings at their defaults.
pub async fn connect(url: &str, prefix: &str) -> Result<Arc<dyn Cache>, StoreError> {
    connect_with(&CacheConfig::new(url, prefix)).await
}

/// Opens the cache `config` names. A Redis server that does not answer is a
/// [`StoreError::Unreachable`] naming the URL with its password redacted.
pub async fn connect_with(config: &CacheConfig) -> Result<Arc<dyn Cache>, StoreError> {
    config.validate()?;
    let cache: Arc<dyn Cache> = if is_memory(&config.url) {
        Arc::new(MemoryCache::new(&config.prefix, config.memory_max_entries))
    } else {
        Arc::new(RedisCache::connect(config).await?)
    };
    info!(
        kind = cache.kind(),
        url = %redact_url(&config.url),
        prefix = %config.prefix,
        "cache connected"
    );
    Ok(cache)
}

/// Checks a TTL against the shared rules and returns it in whole milliseconds (rounded up).
fn ttl_millis(ttl: Duration) -> Result<u64, StoreError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(StoreError::InvalidArgument {
            name: "ttl",
            reason: format!("must be between 1ms and {}s", MAX_TTL.as_secs()),
        });
    }
    // At most MAX_TTL here, so the value fits comfortably in a u64.
    Ok(u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_bounded_and_round_up() {
        assert!(ttl_millis(Duration::ZERO).is_err());
        assert!(ttl_millis(MAX_TTL + Duration::from_secs(1)).is_err());
        assert_eq!(ttl_millis(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(ttl_millis(Duration::from_secs(2)).unwrap(), 2000);
    }

    #[test]
    fn config_rejects_unknown_urls_and_empty_prefixes() {
        let err = CacheConfig::new("memcached://x", "p:")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("cache.url"), "{err}");
        let err = CacheConfig::new("redis://127.0.0.1:6379", "")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("cache.prefix"), "{err}");
        assert!(CacheConfig::new("memory://", "p:").validate().is_ok());
        assert!(
            CacheConfig::new("rediss://h:6380/2", "p:")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", CacheConfig::new("redis://u:hunter2@h:6379", "p:"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
