//! Events the pool publishes on the bus, durably on the `container-pool-events` stream:
//! `container-pool.container.acquired`, `.released`, `.reaped` (idle TTL, orphan sweep,
//! replacement) and `.unhealthy` (a container stopped answering). Each carries the tenant of
//! the claim (`system` for containers no tenant held) and never a secret value.
//!
//! Publishing happens off the request path: an acquire does not wait for the bus.

use std::sync::Arc;

use liquid_bus::{Event, EventBus, StreamConfig};
use serde_json::Value;

use crate::error::PoolError;

/// Tenant of events about containers no tenant held.
pub const SYSTEM_TENANT: &str = "system";

/// Publishes the pool's events.
#[derive(Debug, Clone)]
pub struct PoolEvents {
    bus: Arc<dyn EventBus>,
}

impl PoolEvents {
    /// A publisher on `bus`; makes sure the service's stream exists.
    pub async fn new(bus: Arc<dyn EventBus>) -> Result<PoolEvents, PoolError> {
        bus.ensure_stream(&StreamConfig::events("container-pool"))
            .await?;
        Ok(PoolEvents { bus })
    }

    /// Publishes `container-pool.container.<verb>` in the background.
    pub fn publish(&self, verb: &'static str, tenant: &str, data: Value) {
        let event = match Event::new(format!("container-pool.container.{verb}"), tenant, data) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(%error, verb, "pool event refused");
                return;
            }
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(error) = bus.publish_event(&event).await {
                tracing::warn!(%error, event = %event.event_type, "pool event not published");
            }
        });
    }
}
