//! Durable streams and pull consumers: the configuration types, the publish acknowledgement and
//! the [`Consumer`]/[`Delivery`] handles both implementations return.
//!
//! Semantics (identical for NATS JetStream and the in-process bus):
//! - a stream stores every message published on its subjects; two streams may not share a
//!   subject; a message with a de-duplication id seen within the stream's window is not stored
//!   again and its publish is acknowledged as a duplicate of the first;
//! - a consumer is named and durable: its position and its unacknowledged deliveries live in the
//!   bus, so dropping the handle and opening the same name again resumes where it stopped;
//! - a delivery not acknowledged within `ack_wait` (or negatively acknowledged) is delivered
//!   again, at most `max_deliver` times in all; `term` stops redelivery;
//! - at most `max_ack_pending` deliveries are outstanding; beyond that only redeliveries flow.

use std::time::Duration;

use async_trait::async_trait;

use crate::{BusError, Message, subject};

/// JetStream's default de-duplication window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// JetStream's default acknowledgement wait.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// JetStream's default limit of outstanding deliveries per consumer.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 1000;

/// A durable stream: which subjects it stores and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Stream name (no whitespace, `.`, `*`, `>`, `/`, `\`).
    pub name: String,
    /// Subject patterns the stream captures.
    pub subjects: Vec<String>,
    /// Window within which a repeated de-duplication id is dropped.
    pub duplicate_window: Duration,
    /// Messages older than this are removed; `None` keeps them.
    pub max_age: Option<Duration>,
    /// Beyond this many messages the oldest are removed; `None` keeps them all.
    pub max_messages: Option<u64>,
}

impl StreamConfig {
    /// A stream with default limits (keep everything, two-minute de-duplication window).
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: None,
            max_messages: None,
        }
    }

    /// The events stream a service owns: `<service>-events` capturing `evt.<service>.>`.
    pub fn events(service: &str) -> StreamConfig {
        StreamConfig::new(format!("{service}-events"), [format!("evt.{service}.>")])
    }

    /// Sets the de-duplication window.
    pub fn with_duplicate_window(mut self, window: Duration) -> StreamConfig {
        self.duplicate_window = window;
        self
    }

    /// Removes messages older than `max_age`.
    pub fn with_max_age(mut self, max_age: Duration) -> StreamConfig {
        self.max_age = Some(max_age);
        self
    }

    /// Keeps at most `max_messages` messages.
    pub fn with_max_messages(mut self, max_messages: u64) -> StreamConfig {
        self.max_messages = Some(max_messages);
        self
    }

    /// Checks the configuration the same way for both implementations.
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        subject::validate_name("stream", &self.name)?;
        if self.subjects.is_empty() {
            return Err(BusError::InvalidArgument {
                field: "stream subjects",
                reason: "a stream needs at least one subject".to_owned(),
            });
        }
        for (i, s) in self.subjects.iter().enumerate() {
            subject::validate(s, true)?;
            if self.subjects[..i].contains(s) {
                return Err(BusError::InvalidArgument {
                    field: "stream subjects",
                    reason: format!("`{s}` is listed twice"),
                });
            }
        }
        if self.duplicate_window.is_zero() {
            return Err(BusError::InvalidArgument {
                field: "duplicate_window",
                reason: "must be greater than zero".to_owned(),
            });
        }
        if let Some(max_age) = self.max_age {
            if max_age.is_zero() {
                return Err(BusError::InvalidArgument {
                    field: "max_age",
                    reason: "must be greater than zero (leave it unset to keep messages)"
                        .to_owned(),
                });
            }
            if self.duplicate_window > max_age {
                return Err(BusError::InvalidArgument {
                    field: "duplicate_window",
                    reason: "must not be longer than max_age".to_owned(),
                });
            }
        }
        if self.max_messages == Some(0) {
            return Err(BusError::InvalidArgument {
                field: "max_messages",
                reason: "must be greater than zero (leave it unset to keep messages)".to_owned(),
            });
        }
        Ok(())
    }
}

/// Where a new consumer starts; it cannot change once the consumer exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliverFrom {
    /// From the first message still in the stream.
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
}

/// A durable pull consumer on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The stream it reads.
    pub stream: String,
    /// Durable name; opening the same name again resumes its position.
    pub name: String,
    /// Only messages whose subject matches this pattern (outside the stream's subjects it
    /// matches nothing; neither NATS nor the in-process bus refuses it).
    pub filter_subject: Option<String>,
    /// Where a newly created consumer starts.
    pub deliver_from: DeliverFrom,
    /// How long a delivery may stay unacknowledged before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries per message in all (first plus redeliveries); `None` is unlimited.
    pub max_deliver: Option<u32>,
    /// Outstanding (delivered, unacknowledged) messages at most.
    pub max_ack_pending: u32,
}

impl ConsumerConfig {
    /// A consumer with JetStream's defaults (ack wait 30 s, unlimited deliveries, 1000 pending).
    pub fn new(stream: impl Into<String>, name: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            stream: stream.into(),
            name: name.into(),
            filter_subject: None,
            deliver_from: DeliverFrom::All,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: None,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
        }
    }

    /// The platform's naming rule: consumer `<consumer>-on-<producer>-events` on the producer's
    /// events stream (see [`StreamConfig::events`]).
    pub fn events(consumer: &str, producer: &str) -> ConsumerConfig {
        ConsumerConfig::new(
            format!("{producer}-events"),
            format!("{consumer}-on-{producer}-events"),
        )
    }

    /// Only receive messages whose subject matches `pattern`.
    pub fn with_filter_subject(mut self, pattern: impl Into<String>) -> ConsumerConfig {
        self.filter_subject = Some(pattern.into());
        self
    }

    /// Sets where a newly created consumer starts.
    pub fn with_deliver_from(mut self, from: DeliverFrom) -> ConsumerConfig {
        self.deliver_from = from;
        self
    }

    /// Sets the acknowledgement wait.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> ConsumerConfig {
        self.ack_wait = ack_wait;
        self
    }

    /// Limits deliveries per message.
    pub fn with_max_deliver(mut self, max_deliver: u32) -> ConsumerConfig {
        self.max_deliver = Some(max_deliver);
        self
    }

    /// Limits outstanding deliveries.
    pub fn with_max_ack_pending(mut self, max_ack_pending: u32) -> ConsumerConfig {
        self.max_ack_pending = max_ack_pending;
        self
    }

    /// Checks the configuration the same way for both implementations.
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        subject::validate_name("stream", &self.stream)?;
        subject::validate_name("consumer", &self.name)?;
        if let Some(filter) = &self.filter_subject {
            subject::validate(filter, true)?;
        }
        if self.ack_wait < Duration::from_millis(1) {
            return Err(BusError::InvalidArgument {
                field: "ack_wait",
                reason: "must be at least 1ms".to_owned(),
            });
        }
        if self.max_deliver == Some(0) {
            return Err(BusError::InvalidArgument {
                field: "max_deliver",
                reason: "must be at least 1 (leave it unset for unlimited)".to_owned(),
            });
        }
        if self.max_ack_pending == 0 {
            return Err(BusError::InvalidArgument {
                field: "max_ack_pending",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}

/// Checks a de-duplication id, which travels as the `Nats-Msg-Id` header value.
pub(crate) fn validate_dedupe_id(id: &str) -> Result<(), BusError> {
    if id.is_empty() || id.contains(['\r', '\n']) {
        return Err(BusError::InvalidArgument {
            field: "dedupe_id",
            reason: "must be non-empty and on one line".to_owned(),
        });
    }
    Ok(())
}

/// The stream's answer to a durable publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream (the first copy's sequence for a duplicate).
    pub sequence: u64,
    /// True when the de-duplication id was seen within the window and nothing new was stored.
    pub duplicate: bool,
}

/// A consumer's backlog, for queue-depth metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Messages matching the consumer not yet delivered.
    pub pending: u64,
    /// Delivered messages not yet acknowledged (including those waiting for redelivery).
    pub ack_pending: u64,
}

/// What an acknowledgement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// Processed; never deliver again.
    Ack,
    /// Not processed; deliver again after the delay (at once when `None`).
    Nak(Option<Duration>),
    /// Still working; restart the ack wait.
    Progress,
    /// Never deliver again, without having processed it.
    Term,
}

/// Sends acknowledgements for one delivery; one implementation per backend.
#[async_trait]
pub(crate) trait AckSink: Send + Sync {
    /// Sends `kind` for this delivery.
    async fn send(&self, kind: AckKind) -> Result<(), BusError>;
}

/// Fetches from one consumer; one implementation per backend.
#[async_trait]
pub(crate) trait ConsumerBackend: Send + Sync {
    /// Up to `max` deliveries, waiting at most `max_wait` for the first.
    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, BusError>;
    /// The consumer's backlog.
    async fn info(&self) -> Result<ConsumerInfo, BusError>;
}

/// A handle on a durable pull consumer. Cheap to keep; dropping it loses nothing.
pub struct Consumer {
    stream: String,
    name: String,
    backend: Box<dyn ConsumerBackend>,
}

impl Consumer {
    pub(crate) fn new(config: &ConsumerConfig, backend: Box<dyn ConsumerBackend>) -> Consumer {
        Consumer {
            stream: config.stream.clone(),
            name: config.name.clone(),
            backend,
        }
    }

    /// The durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream it reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Fetches up to `max` deliveries. Returns as soon as at least one is available, or an
    /// empty batch after `max_wait` (at once when `max_wait` is zero). Redeliveries come first.
    pub async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Err(BusError::InvalidArgument {
                field: "fetch size",
                reason: "must be at least 1".to_owned(),
            });
        }
        self.backend.fetch(max, max_wait).await
    }

    /// The consumer's backlog.
    pub async fn info(&self) -> Result<ConsumerInfo, BusError> {
        self.backend.info().await
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One delivery of a stored message to a consumer. Acknowledge it with [`Delivery::ack`] after
/// processing; a delivery dropped without an answer is delivered again after `ack_wait`.
/// The first of `ack`, `nak` and `term` decides; later answers are ignored.
pub struct Delivery {
    /// The stored message.
    pub message: Message,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered, this delivery included (1 the first time).
    pub delivery_count: u64,
    sink: Box<dyn AckSink>,
}

impl Delivery {
    pub(crate) fn new(
        message: Message,
        stream_sequence: u64,
        delivery_count: u64,
        sink: Box<dyn AckSink>,
    ) -> Delivery {
        Delivery {
            message,
            stream_sequence,
            delivery_count,
            sink,
        }
    }

    /// Marks the message processed; it is never delivered to this consumer again.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.sink.send(AckKind::Ack).await
    }

    /// Gives the message back for redelivery, after `delay` or at once.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.sink.send(AckKind::Nak(delay)).await
    }

    /// Says work is still going on: the ack wait starts again.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.sink.send(AckKind::Progress).await
    }

    /// Gives up on the message: it is never delivered to this consumer again.
    pub async fn term(&self) -> Result<(), BusError> {
        self.sink.send(AckKind::Term).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("stream_sequence", &self.stream_sequence)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rules_build_the_documented_names() {
        let s = StreamConfig::events("cowork");
        assert_eq!(s.name, "cowork-events");
        assert_eq!(s.subjects, ["evt.cowork.>"]);
        let c = ConsumerConfig::events("healer", "cowork");
        assert_eq!(c.stream, "cowork-events");
        assert_eq!(c.name, "healer-on-cowork-events");
        assert!(s.validate().is_ok());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let s = StreamConfig::events("cowork");
        assert!(
            StreamConfig::new("x", Vec::<String>::new())
                .validate()
                .is_err()
        );
        assert!(StreamConfig::new("x", ["a", "a"]).validate().is_err());
        assert!(
            s.clone()
                .with_duplicate_window(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            s.clone()
                .with_max_age(Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(s.clone().with_max_messages(0).validate().is_err());
        let c = ConsumerConfig::events("healer", "cowork");
        assert!(c.clone().with_max_deliver(0).validate().is_err());
        assert!(c.clone().with_max_ack_pending(0).validate().is_err());
        assert!(c.clone().with_ack_wait(Duration::ZERO).validate().is_err());
        assert!(c.with_filter_subject("evt..x").validate().is_err());
    }
}
