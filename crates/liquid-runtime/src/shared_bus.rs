//! One in-process bus per process: in embedded mode the seven services must see each other's
//! events, exactly as they would through one NATS server, so every `memory://` URL resolves to
//! the same instance.

use std::sync::{Arc, OnceLock};

use liquid_bus::{BusError, EventBus};

static IN_PROCESS: OnceLock<Arc<dyn EventBus>> = OnceLock::new();

/// Connects to `url`, sharing the process's in-process bus for `memory://`.
pub async fn connect(url: &str) -> Result<Arc<dyn EventBus>, BusError> {
    if url.starts_with("memory://") {
        if let Some(bus) = IN_PROCESS.get() {
            return Ok(bus.clone());
        }
        let bus = liquid_bus::connect(url).await?;
        return Ok(IN_PROCESS.get_or_init(|| bus).clone());
    }
    liquid_bus::connect(url).await
}
