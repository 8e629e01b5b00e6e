//! Liquid's event bus: one object-safe trait, [`EventBus`], with two implementations chosen by
//! URL: `memory://` ([`MemoryBus`], in-process, for embedded mode) and `nats://host:port`
//! ([`NatsBus`], NATS with JetStream, for distributed mode).
//!
//! What it offers (ARCHITECTURE.md "How they talk"):
//! - core fan-out that may be lost: [`EventBus::publish`] / [`EventBus::subscribe`] with NATS
//!   wildcards (`ws.<channel>`);
//! - durable streams and named pull consumers with ack, nak, term, redelivery after `ack_wait`
//!   and `max_deliver` ([`durable`]); idempotent publish with a de-duplication id;
//! - request/reply with timeouts and a clear "no responders" error;
//! - the [`Event`] envelope for `evt.<service>.<entity>.<verb>`;
//! - W3C trace context in headers on every publish, readable on every received message.
//!
//! The in-process bus has the same semantics as NATS for all of the above (one conformance
//! suite runs against both); it lives as long as the process. This crate must not know about
//! any service or event type; those belong to the services.

mod bus;
pub mod durable;
mod error;
mod event;
mod headers;
pub mod memory;
mod message;
pub mod nats;
mod reply;
pub mod subject;

use std::sync::Arc;

pub use bus::EventBus;
pub use durable::{
    Consumer, ConsumerConfig, ConsumerInfo, DeliverFrom, Delivery, PublishAck, StreamConfig,
};
pub use error::BusError;
pub use event::{EVENT_SUBJECT_PREFIX, Event};
pub use headers::{Headers, MSG_ID_HEADER};
pub use memory::{MemoryBus, MemoryOptions};
pub use message::{Message, Subscription};
pub use nats::NatsBus;
pub use reply::{Request, Requests};

/// Connects to `nats://...` (comma-separated server list allowed) or creates a new in-process
/// bus for `memory://`. Share one `memory://` bus per process to let services see each other.
pub async fn connect(url: &str) -> Result<Arc<dyn EventBus>, BusError> {
    if url.starts_with("memory://") {
        return Ok(Arc::new(MemoryBus::new()));
    }
    if url.starts_with("nats://") {
        return Ok(Arc::new(NatsBus::connect(url).await?));
    }
    Err(BusError::UnsupportedUrl {
        url: liquid_kit::secret::redact_url(url),
    })
}
