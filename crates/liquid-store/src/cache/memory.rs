//! The in-process cache behind `memory://` (embedded mode): a moka cache with a per-entry
//! expiry and least-recently-used eviction, so a write is never refused on admission the way a
//! frequency-based policy would refuse it (the Redis backend never refuses a write either).
//!
//! It lives in one process: replicas do not share it. Distributed deployments use Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache as MokaCache;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;

use super::{Cache, ttl_millis};
use crate::StoreError;

#[derive(Clone)]
struct Entry {
    value: Arc<[u8]>,
    expires: Instant,
}

impl Entry {
    fn new(value: &[u8], ttl_ms: u64) -> Entry {
        let ttl = Duration::from_millis(ttl_ms);
        let now = Instant::now();
        Entry {
            value: Arc::from(value),
            // ttl_ms is at most MAX_TTL, so this only saturates on a broken clock.
            expires: now.checked_add(ttl).unwrap_or(now),
        }
    }

    fn is_live(&self, now: Instant) -> bool {
        self.expires > now
    }
}

/// Tells moka when each entry expires: at the instant stored in the entry itself, on insert
/// and on every replacement.
struct ExpiresAt;

impl moka::Expiry<String, Entry> for ExpiresAt {
    fn expire_after_create(&self, _key: &String, value: &Entry, now: Instant) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        now: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(now))
    }
}

/// The in-process cache.
pub struct MemoryCache {
    prefix: String,
    entries: MokaCache<String, Entry>,
}

impl MemoryCache {
    /// An empty cache that holds at most `max_entries` entries under `prefix`.
    pub fn new(prefix: &str, max_entries: u64) -> Self {
        MemoryCache {
            prefix: prefix.to_owned(),
            entries: MokaCache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(ExpiresAt)
                .build(),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// True when `guard` holds `expected` (`None`: absent or expired).
    async fn guard_holds(&self, guard: &str, expected: Option<&[u8]>) -> bool {
        let now = Instant::now();
        let current = self
            .entries
            .get(&self.full_key(guard))
            .await
            .filter(|e| e.is_live(now));
        current.as_ref().map(|e| &*e.value) == expected
    }
}

fn parse_counter(key: &str, value: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| StoreError::NotAnInteger {
            key: key.to_owned(),
        })
}

#[async_trait]
impl Cache for MemoryCache {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        Ok(self
            .entries
            .get(&self.full_key(key))
            .await
            .filter(|e| e.is_live(now))
            .map(|e| e.value.to_vec()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let entry = Entry::new(value, ttl_millis(ttl)?);
        self.entries.insert(self.full_key(key), entry).await;
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let entry = Entry::new(value, ttl_millis(ttl)?);
        // and_compute_with runs under a per-key lock: two set_nx calls cannot both win.
        let result = self
            .entries
            .entry(self.full_key(key))
            .and_compute_with(|existing| async move {
                match existing {
                    Some(e) if e.value().is_live(Instant::now()) => Op::Nop,
                    _ => Op::Put(entry),
                }
            })
            .await;
        Ok(matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn set_if_guard(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        guard: &str,
        expected: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let entry = Entry::new(value, ttl_millis(ttl)?);
        if !self.guard_holds(guard, expected).await {
            return Ok(false);
        }
        let full = self.full_key(key);
        let written = entry.value.clone();
        self.entries.insert(full.clone(), entry).await;
        if self.guard_holds(guard, expected).await {
            return Ok(true);
        }
        // The guard changed while the value went in: take this value out again, not one a
        // later writer put there meanwhile.
        self.entries
            .entry(full)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(e) if Arc::ptr_eq(&e.value().value, &written) => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
        Ok(false)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let removed = self.entries.remove(&self.full_key(key)).await;
        Ok(removed.is_some_and(|e| e.is_live(Instant::now())))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let full = self.full_key(prefix);
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(&full))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0u64;
        for key in keys {
            if let Some(e) = self.entries.remove(key.as_str()).await
                && e.is_live(Instant::now())
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        let ttl_ms = ttl_millis(ttl)?;
        let result =
            self.entries
                .entry(self.full_key(key))
                .and_try_compute_with(|existing| async move {
                    let next = match existing {
                        Some(e) if e.value().is_live(Instant::now()) => {
                            let current = parse_counter(key, &e.value().value)?;
                            let sum = current.checked_add(delta).ok_or_else(|| {
                                StoreError::NotAnInteger {
                                    key: key.to_owned(),
                                }
                            })?;
                            Entry {
                                value: Arc::from(sum.to_string().as_bytes()),
                                expires: e.value().expires,
                            }
                        }
                        _ => Entry::new(delta.to_string().as_bytes(), ttl_ms),
                    };
                    Ok::<_, StoreError>(Op::Put(next))
                })
                .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => {
                parse_counter(key, &e.value().value)
            }
            // Op::Put always inserts or replaces; anything else would be a moka contract change.
            CompResult::StillNone(_) | CompResult::Unchanged(_) | CompResult::Removed(_) => {
                Err(StoreError::Corrupt {
                    what: "counter",
                    reason: "the memory cache did not store the new value".into(),
                })
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
