//! Event bus: one trait, NATS and in-process implementations chosen by URL.
//!
//! This is the fan-out part (publish and subscribe with NATS subject wildcards, trace context
//! in headers); durable JetStream streams and pull consumers are not in this step.

mod memory;
mod nats;
pub mod subject;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use liquid_kit::error::{ErrorCode, HasErrorCode};

pub use memory::MemoryBus;
pub use nats::NatsBus;

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL names no supported bus.
    #[error("unsupported bus url `{0}`; use nats://host:port or memory://")]
    UnsupportedUrl(String),
    /// The server did not answer.
    #[error("cannot reach the bus at {url}: {reason}; is nats-server running? (`make dev-up`)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The client's words.
        reason: String,
    },
    /// A subject was empty or malformed.
    #[error("invalid subject `{0}`: tokens are non-empty, without spaces, `>` only last")]
    InvalidSubject(String),
    /// Publishing or subscribing failed.
    #[error("bus: {0}")]
    Io(String),
}

impl HasErrorCode for BusError {
    fn error_code(&self) -> ErrorCode {
        match self {
            BusError::UnsupportedUrl(_) => ErrorCode::InvalidConfig,
            BusError::InvalidSubject(_) => ErrorCode::InvalidArgument,
            BusError::Unreachable { .. } | BusError::Io(_) => ErrorCode::Unavailable,
        }
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The concrete subject it was published on.
    pub subject: String,
    /// Headers (trace context included).
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub payload: Bytes,
}

impl Message {
    /// The trace context the publisher sent.
    pub fn trace_context(&self) -> opentelemetry::Context {
        liquid_kit::telemetry::extract_context(&HeaderView(&self.headers))
    }
}

struct HeaderView<'a>(&'a BTreeMap<String, String>);

impl opentelemetry::propagation::Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderWriter<'a>(&'a mut BTreeMap<String, String>);

impl opentelemetry::propagation::Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Headers for a publish, with the current trace context added.
pub fn headers_with_trace(mut headers: BTreeMap<String, String>) -> BTreeMap<String, String> {
    liquid_kit::telemetry::inject_context(&mut HeaderWriter(&mut headers));
    headers
}

/// A stream of messages for one subscription.
pub type Subscription = Pin<Box<dyn Stream<Item = Message> + Send>>;

/// The bus.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// `nats` or `memory`.
    fn kind(&self) -> &'static str;
    /// Publishes to every current subscriber of a matching subject (may be lost).
    async fn publish(
        &self,
        subject: &str,
        headers: BTreeMap<String, String>,
        payload: Bytes,
    ) -> Result<(), BusError>;
    /// Subscribes to a subject pattern (`*` one token, `>` the rest).
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError>;
    /// Answers when the bus is reachable.
    async fn ping(&self) -> Result<(), BusError>;
}

/// Connects to `nats://...` or creates an in-process bus for `memory://`.
pub async fn connect(url: &str) -> Result<Arc<dyn EventBus>, BusError> {
    if url.starts_with("memory://") {
        return Ok(Arc::new(MemoryBus::new()));
    }
    if url.starts_with("nats://") {
        return Ok(Arc::new(NatsBus::connect(url).await?));
    }
    Err(BusError::UnsupportedUrl(url.to_owned()))
}
