//! What subscribers receive: [`Message`] and the [`Subscription`] stream of them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::{BusError, Event, Headers};

/// A received message, the same shape from either implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The concrete subject it was published on.
    pub subject: String,
    /// Headers, including the publisher's trace context.
    pub headers: Headers,
    /// Body.
    pub payload: Bytes,
}

impl Message {
    /// The trace context the publisher sent (empty when it sent none). Make the consumer's span
    /// a child of it with `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`.
    pub fn trace_context(&self) -> opentelemetry::Context {
        self.headers.trace_context()
    }

    /// Decodes the payload as an [`Event`] envelope.
    pub fn event(&self) -> Result<Event, BusError> {
        Event::from_json(&self.payload)
    }
}

/// The messages of one subscription, in publish order per publisher. Dropping it unsubscribes.
///
/// Delivery is at most once: a subscriber that falls more than the subscription capacity behind
/// loses messages (a NATS "slow consumer"); the stream ends when the bus is drained.
pub struct Subscription {
    pattern: String,
    inner: Pin<Box<dyn Stream<Item = Message> + Send>>,
}

impl Subscription {
    pub(crate) fn new(
        pattern: &str,
        inner: impl Stream<Item = Message> + Send + 'static,
    ) -> Subscription {
        Subscription {
            pattern: pattern.to_owned(),
            inner: Box::pin(inner),
        }
    }

    /// The subject pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inner.as_mut().poll_next(cx)
    }
}
