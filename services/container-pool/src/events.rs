//! Events the pool publishes on the bus, durably on the `container-pool-events` stream:
//! `container-pool.container.acquired`, `.released`, `.reaped` (idle TTL, orphan sweep,
//! replacement) and `.unhealthy` (a container stopped answering). Each carries the tenant of
//! the claim (`system` for containers no tenant held) and never a secret value.
//!
//! Delivery is a transactional outbox: an event is a row of `pool_outbox` written in the same
//! transaction as the claim or release it describes (or on its own for reaped and unhealthy),
//! and the relay ([`PoolEvents::relay`], any replica's) publishes queued rows with
//! `publish_event` (the event id is the de-duplication id) and deletes them once the bus
//! stored them. A crash between commit and publish loses nothing: the row waits for the next
//! relay. A crash between publish and delete publishes a duplicate the stream drops (or, past
//! its duplicate window, one a consumer's idempotency absorbs). An acquire never waits for the
//! bus.

use std::sync::Arc;
use std::time::Duration;

use liquid_bus::{Event, EventBus, StreamConfig};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::PoolError;
use crate::store::PoolStore;

/// Tenant of events about containers no tenant held.
pub const SYSTEM_TENANT: &str = "system";

/// How many queued events one relay round takes.
const BATCH: u32 = 100;
/// How long a relay holds the rows it took before another relay may take them.
const LEASE_MS: i64 = 10_000;
/// How often the relay looks for rows it was not woken for (other replicas', a crashed
/// process's).
const POLL: Duration = Duration::from_secs(1);

/// Builds the pool's events and relays the outbox to the bus.
#[derive(Debug, Clone)]
pub struct PoolEvents {
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
}

impl PoolEvents {
    /// A publisher on `bus`; makes sure the service's stream exists.
    pub async fn new(bus: Arc<dyn EventBus>) -> Result<PoolEvents, PoolError> {
        bus.ensure_stream(&StreamConfig::events("container-pool"))
            .await?;
        Ok(PoolEvents {
            bus,
            wake: Arc::new(Notify::new()),
        })
    }

    /// The bus (request/reply between replicas uses it too).
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// The event `container-pool.container.<verb>`; `None` (logged) when it is malformed.
    pub fn event(verb: &str, tenant: &str, data: Value) -> Option<Event> {
        match Event::new(format!("container-pool.container.{verb}"), tenant, data) {
            Ok(e) => Some(e),
            Err(error) => {
                tracing::warn!(%error, verb, "pool event refused");
                None
            }
        }
    }

    /// Tells the relay that rows were queued.
    pub fn queued(&self) {
        self.wake.notify_one();
    }

    /// Queues an event that belongs to no claim change; failures are logged (the event is
    /// lost only when the database is down as well).
    pub async fn emit(&self, store: &dyn PoolStore, verb: &str, tenant: &str, data: Value) {
        let Some(event) = Self::event(verb, tenant, data) else {
            return;
        };
        match store.enqueue_events(std::slice::from_ref(&event)).await {
            Ok(()) => self.queued(),
            Err(error) => {
                tracing::warn!(%error, event = %event.event_type, "pool event not queued");
            }
        }
    }

    /// One relay round: publishes what is queued (up to a batch) and deletes what the bus
    /// stored. Returns how many were published, or the first failure (the rows not published
    /// stay leased until their lease runs out, then any relay retries them).
    pub async fn relay_once(&self, store: &dyn PoolStore) -> Result<usize, PoolError> {
        let now = chrono::Utc::now().timestamp_millis();
        let events = store.lease_events(BATCH, now, LEASE_MS).await?;
        let mut done = Vec::new();
        let mut failure = None;
        for e in &events {
            match self.bus.publish_event(e).await {
                Ok(_) => done.push(e.id),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if !done.is_empty() {
            store.delete_events(&done).await?;
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(done.len()),
        }
    }

    /// The relay loop: a round when woken, every second anyway, until `shutdown`.
    pub async fn relay(&self, store: Arc<dyn PoolStore>, shutdown: CancellationToken) {
        loop {
            let backoff = match self.relay_once(store.as_ref()).await {
                // A full batch: more may be waiting.
                Ok(n) if n == BATCH as usize => continue,
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "pool events not relayed; retrying");
                    Some(POLL)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified(), if backoff.is_none() => {}
                () = tokio::time::sleep(backoff.unwrap_or(POLL)) => {}
            }
        }
    }
}
