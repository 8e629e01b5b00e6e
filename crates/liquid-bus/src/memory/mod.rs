//! The in-process bus for embedded mode: the same semantics as NATS with JetStream (one
//! conformance suite runs against both), built on tokio primitives, living as long as the
//! process. Nothing is written to disk: a restart starts with empty streams.
//!
//! Core publish/subscribe, queue groups and request/reply are in [`core`]; streams and pull
//! consumers in [`streams`]. Like NATS, a core publish on a subject a stream captures is stored
//! too, a request to such a subject is answered with the stream's publish ack, and a durable
//! publish reaches core subscribers as well.

mod core;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::core::{Core, Routed};
use self::streams::Streams;
use crate::durable::{AckKind, AckSink, ConsumerBackend, validate_dedupe_id};
use crate::reply::{RESPONDER_GROUP, ReplySink};
use crate::{
    BusError, Consumer, ConsumerConfig, ConsumerInfo, Delivery, EventBus, Headers, MSG_ID_HEADER,
    Message, PublishAck, Request, Requests, StreamConfig, Subscription, subject,
};

/// Limits of an in-process bus; the defaults are NATS's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Largest message (payload plus headers) accepted, in bytes (NATS default 1 MiB).
    pub max_payload: usize,
    /// Messages a subscription buffers before it drops new ones (async-nats default 65 536).
    pub subscription_capacity: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            max_payload: 1024 * 1024,
            subscription_capacity: 64 * 1024,
        }
    }
}

struct Inner {
    core: Arc<Core>,
    streams: Streams,
    closed: CancellationToken,
    options: MemoryOptions,
}

/// The in-process bus. Clones share the same bus.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("options", &self.inner.options)
            .field("closed", &self.inner.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl MemoryBus {
    /// A new, empty bus with NATS's default limits.
    pub fn new() -> MemoryBus {
        MemoryBus::with_options(MemoryOptions::default())
    }

    /// A new, empty bus with the given limits.
    pub fn with_options(options: MemoryOptions) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                core: Arc::new(Core::new(options.subscription_capacity.max(1))),
                streams: Streams::default(),
                closed: CancellationToken::new(),
                options,
            }),
        }
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.inner.closed.is_cancelled() {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }

    /// Validates an outgoing message and adds the current trace context.
    fn prepare(
        &self,
        subject: &str,
        mut headers: Headers,
        payload: Bytes,
    ) -> Result<Message, BusError> {
        self.check_open()?;
        subject::validate(subject, false)?;
        headers.validate()?;
        headers.inject_current_context();
        let size = payload.len() + headers.encoded_len();
        if size > self.inner.options.max_payload {
            return Err(BusError::PayloadTooLarge {
                size,
                limit: self.inner.options.max_payload,
            });
        }
        Ok(Message {
            subject: subject.to_owned(),
            headers,
            payload,
        })
    }

    /// Stores the message if a stream captures it, then fans it out; returns the stream's ack
    /// (if stored) and the interest count (0 means nobody would answer a request).
    fn route(&self, message: &Message, reply: Option<&str>) -> (Option<PublishAck>, usize) {
        let ack = self.inner.streams.store(message, Instant::now());
        let mut interest = self.inner.core.route(message, reply);
        if let Some(ack) = &ack {
            interest += 1;
            if let Some(reply) = reply {
                // A stream answers a request on its subject with its publish ack, as JetStream.
                let body = serde_json::json!({
                    "stream": ack.stream,
                    "seq": ack.sequence,
                    "duplicate": ack.duplicate,
                });
                let answer = Message {
                    subject: reply.to_owned(),
                    headers: Headers::new(),
                    payload: Bytes::from(body.to_string()),
                };
                self.inner.core.route(&answer, None);
            }
        }
        (ack, interest)
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let message = self.prepare(subject, headers, payload)?;
        self.route(&message, None);
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.check_open()?;
        subject::validate(pattern, true)?;
        let routed = self.inner.core.subscribe(pattern, None)?;
        Ok(Subscription::new(pattern, routed.map(|r| r.message)))
    }

    async fn ensure_stream(&self, config: &StreamConfig) -> Result<(), BusError> {
        self.check_open()?;
        config.validate()?;
        self.inner.streams.ensure(config, Instant::now())
    }

    async fn publish_durable(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<PublishAck, BusError> {
        let mut message = self.prepare(subject, headers, payload)?;
        if let Some(id) = dedupe_id {
            validate_dedupe_id(id)?;
            message.headers.insert(MSG_ID_HEADER, id);
        }
        match self.route(&message, None) {
            (Some(ack), _) => Ok(ack),
            (None, _) => Err(BusError::NoStream {
                subject: subject.to_owned(),
            }),
        }
    }

    async fn consumer(&self, config: &ConsumerConfig) -> Result<Consumer, BusError> {
        self.check_open()?;
        config.validate()?;
        let changed = self.inner.streams.ensure_consumer(config, Instant::now())?;
        let backend = MemoryConsumer {
            bus: self.clone(),
            stream: Arc::from(config.stream.as_str()),
            name: Arc::from(config.name.as_str()),
            changed,
        };
        Ok(Consumer::new(config, Box::new(backend)))
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        let message = self.prepare(subject, headers, payload)?;
        let inbox = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
        let mut replies = self.inner.core.subscribe(&inbox, None)?;
        let (_, interest) = self.route(&message, Some(&inbox));
        if interest == 0 {
            return Err(BusError::NoResponders {
                subject: subject.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply.message),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                operation: "request",
                timeout,
            }),
        }
    }

    async fn serve(&self, subject: &str) -> Result<Requests, BusError> {
        self.check_open()?;
        subject::validate(subject, true)?;
        let routed = self.inner.core.subscribe(subject, Some(RESPONDER_GROUP))?;
        let sink: Arc<dyn ReplySink> = Arc::new(MemoryReplier { bus: self.clone() });
        let requests = routed.filter_map(move |Routed { message, reply }| {
            let request = match reply {
                Some(reply) => Some(Request::new(message, reply, sink.clone())),
                None => {
                    tracing::debug!(
                        target: "bus",
                        subject = %message.subject,
                        "message without reply subject on a served subject, skipped"
                    );
                    None
                }
            };
            std::future::ready(request)
        });
        Ok(Requests::new(subject, requests))
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.check_open()
    }

    async fn drain(&self) -> Result<(), BusError> {
        self.inner.closed.cancel();
        self.inner.core.close();
        self.inner.streams.wake_all();
        Ok(())
    }
}

struct MemoryReplier {
    bus: MemoryBus,
}

#[async_trait]
impl ReplySink for MemoryReplier {
    async fn reply(
        &self,
        reply_to: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let message = self.bus.prepare(reply_to, headers, payload)?;
        // Nobody listening any more (the requester timed out) is not an error, as in NATS.
        self.bus.route(&message, None);
        Ok(())
    }
}

struct MemoryConsumer {
    bus: MemoryBus,
    stream: Arc<str>,
    name: Arc<str>,
    changed: Arc<Notify>,
}

#[async_trait]
impl ConsumerBackend for MemoryConsumer {
    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + max_wait;
        loop {
            // Registered before looking, so a change between the look and the wait wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            self.bus.check_open()?;
            let now = Instant::now();
            let taken = self
                .bus
                .inner
                .streams
                .take(&self.stream, &self.name, max, now)?;
            if !taken.deliveries.is_empty() {
                return Ok(taken
                    .deliveries
                    .into_iter()
                    .map(|(seq, count, message)| {
                        let sink = MemoryAcker {
                            bus: self.bus.clone(),
                            stream: self.stream.clone(),
                            consumer: self.name.clone(),
                            seq,
                        };
                        Delivery::new(message, seq, count, Box::new(sink))
                    })
                    .collect());
            }
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake_at = taken.next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.bus.inner.closed.cancelled() => return Err(BusError::Closed),
            }
        }
    }

    async fn info(&self) -> Result<ConsumerInfo, BusError> {
        self.bus.check_open()?;
        self.bus
            .inner
            .streams
            .info(&self.stream, &self.name, Instant::now())
    }
}

struct MemoryAcker {
    bus: MemoryBus,
    stream: Arc<str>,
    consumer: Arc<str>,
    seq: u64,
}

#[async_trait]
impl AckSink for MemoryAcker {
    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        self.bus.check_open()?;
        self.bus
            .inner
            .streams
            .answer(&self.stream, &self.consumer, self.seq, kind, Instant::now())
    }
}
