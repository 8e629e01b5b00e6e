//! The [`EventBus`] trait: the one interface services use, whatever backend the URL chose.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    BusError, Consumer, ConsumerConfig, Event, Headers, Message, PublishAck, Requests,
    StreamConfig, Subscription,
};

/// An event bus: core fan-out, durable streams with pull consumers, request/reply.
///
/// Object-safe; services hold it as `Arc<dyn EventBus>`. Every publishing method adds the
/// current span's W3C trace context to the headers; received messages expose it through
/// [`Message::trace_context`].
#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// `nats` or `memory`.
    fn kind(&self) -> &'static str;

    /// Publishes to every current subscriber of a matching pattern. Fire and forget: a message
    /// nobody subscribes to is gone (core NATS). A stream capturing the subject stores it too.
    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BusError>;

    /// Subscribes to a subject pattern (`*` one token, `>` the rest). Every subscription gets
    /// every matching message published after it was made.
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError>;

    /// Creates the stream, or updates its subjects and limits when it exists. Idempotent.
    async fn ensure_stream(&self, config: &StreamConfig) -> Result<(), BusError>;

    /// Publishes to the stream capturing `subject` and waits for it to be stored. With a
    /// `dedupe_id` seen within the stream's duplicate window, nothing new is stored and the ack
    /// says `duplicate`. Core subscribers of the subject receive it as well.
    async fn publish_durable(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<PublishAck, BusError>;

    /// Opens the durable pull consumer `config.name` on `config.stream`, creating it or updating
    /// its settings; an existing consumer keeps its position.
    async fn consumer(&self, config: &ConsumerConfig) -> Result<Consumer, BusError>;

    /// Sends a request and waits up to `timeout` for the first reply.
    /// [`BusError::NoResponders`] when nobody serves the subject, [`BusError::Timeout`] when
    /// nobody answered in time.
    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError>;

    /// Serves a subject (pattern): yields each request once across all responders of it.
    async fn serve(&self, subject: &str) -> Result<Requests, BusError>;

    /// Answers when the bus is usable (for `/readyz`).
    async fn ping(&self) -> Result<(), BusError>;

    /// Stops taking new work, delivers what subscribers have buffered, flushes what was
    /// published and closes. Afterwards every operation fails with [`BusError::Closed`].
    async fn drain(&self) -> Result<(), BusError>;

    /// Publishes an event durably on [`Event::subject`] with its id as de-duplication id, so
    /// publishing the same event twice stores it once.
    async fn publish_event(&self, event: &Event) -> Result<PublishAck, BusError> {
        event.validate()?;
        let payload = event.to_json()?;
        let id = event.id.to_string();
        self.publish_durable(&event.subject(), Headers::new(), payload, Some(&id))
            .await
    }
}
