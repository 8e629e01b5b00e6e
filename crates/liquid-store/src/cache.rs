//! Cache with one semantics over two backends: `memory://` (moka, per process) and
//! `redis://` (one shared multiplexed connection, never a connection per call). Every key is
//! namespaced by a prefix; prefix invalidation uses SCAN + UNLINK, never FLUSHDB or KEYS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use liquid_kit::secret::redact_url;
use redis::AsyncCommands;

use crate::StoreError;

/// A byte cache with TTLs.
#[async_trait]
pub trait Cache: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// Reads a key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a key with a time to live.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;
    /// Removes a key.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Removes every key under `prefix` (inside this cache's namespace); returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;
    /// Answers when the backend is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the cache at `url`, namespacing every key with `namespace`.
pub async fn connect(url: &str, namespace: &str) -> Result<Arc<dyn Cache>, StoreError> {
    if url.starts_with("memory://") {
        return Ok(Arc::new(MemoryCache::new(namespace)));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(RedisCache::connect(url, namespace).await?));
    }
    Err(StoreError::UnsupportedUrl {
        role: "cache",
        url: redact_url(url),
        expected: "redis://host:port or memory://",
    })
}

#[derive(Clone)]
struct Entry {
    value: Arc<Vec<u8>>,
    expires: Instant,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(created_at))
    }
}

/// The in-process cache.
pub struct MemoryCache {
    namespace: String,
    entries: moka::future::Cache<String, Entry>,
}

impl MemoryCache {
    /// An empty cache (64k entries at most).
    pub fn new(namespace: &str) -> Self {
        MemoryCache {
            namespace: namespace.to_owned(),
            entries: moka::future::Cache::builder()
                .max_capacity(65_536)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = format!("{}{key}", self.namespace);
        Ok(self
            .entries
            .get(&full)
            .await
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.value.to_vec()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let full = format!("{}{key}", self.namespace);
        self.entries
            .insert(
                full,
                Entry {
                    value: Arc::new(value.to_vec()),
                    expires: Instant::now() + ttl,
                },
            )
            .await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.entries
            .invalidate(&format!("{}{key}", self.namespace))
            .await;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let full = format!("{}{prefix}", self.namespace);
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(&full))
            .map(|(k, _)| (*k).clone())
            .collect();
        for k in &keys {
            self.entries.invalidate(k).await;
        }
        Ok(keys.len() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The Redis cache.
pub struct RedisCache {
    namespace: String,
    connection: redis::aio::ConnectionManager,
}

fn cache_error(e: redis::RedisError) -> StoreError {
    StoreError::Cache(e.to_string())
}

impl RedisCache {
    /// Connects one multiplexed, auto-reconnecting connection.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisCache, StoreError> {
        let unreachable = |e: redis::RedisError| StoreError::Unreachable {
            url: redact_url(url),
            reason: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(unreachable)?;
        let connection =
            tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
                .await
                .map_err(|_| StoreError::Unreachable {
                    url: redact_url(url),
                    reason: "no answer within 5s".into(),
                })?
                .map_err(unreachable)?;
        Ok(RedisCache {
            namespace: namespace.to_owned(),
            connection,
        })
    }
}

#[async_trait]
impl Cache for RedisCache {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.connection.clone();
        c.get(format!("{}{key}", self.namespace))
            .await
            .map_err(cache_error)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        c.pset_ex(format!("{}{key}", self.namespace), value, millis)
            .await
            .map_err(cache_error)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        c.unlink(format!("{}{key}", self.namespace))
            .await
            .map_err(cache_error)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut c = self.connection.clone();
        let pattern = format!("{}{}*", escape_glob(&self.namespace), escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await
                .map_err(cache_error)?;
            if !keys.is_empty() {
                let n: u64 = c.unlink(&keys).await.map_err(cache_error)?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(cache_error)
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
