//! The NATS implementation: core NATS for publish/subscribe and request/reply, JetStream
//! (file storage) for durable streams and pull consumers, via async-nats.
//!
//! Trace context goes into the NATS headers through [`NatsHeaderInjector`]; received headers
//! become [`Headers`]. The client reconnects on its own after a lost connection; durable
//! consumers live on the server, so their position survives both a dropped handle and a
//! reconnect. This module must not add semantics the in-process bus does not have.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry::propagation::{Extractor, Injector};
use tokio::sync::watch;

use crate::durable::{AckKind, AckSink, ConsumerBackend, validate_dedupe_id};
use crate::reply::{RESPONDER_GROUP, ReplySink};
use crate::{
    BusError, Consumer, ConsumerConfig, ConsumerInfo, DeliverFrom, Delivery, EventBus, Headers,
    Message, PublishAck, Request, Requests, StreamConfig, Subscription, subject,
};

/// How long connecting and readiness checks wait for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `drain` waits for the client to flush and close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest expiry of a pull request (see `NatsConsumer::fetch`).
const MIN_PULL_EXPIRY: Duration = Duration::from_millis(1);
/// The JetStream context's timeout for API calls and publish acks (the async-nats default).
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Injector`] over an async-nats header map (W3C trace context on publish).
pub struct NatsHeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for NatsHeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// [`Extractor`] over an async-nats header map, for code that reads raw async-nats messages.
pub struct NatsHeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for NatsHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Builds the NATS header map for an outgoing message: the caller's headers (validated), the
/// current trace context and, for durable publishes, the de-duplication id.
fn outgoing_headers(headers: Headers, dedupe_id: Option<&str>) -> Result<HeaderMap, BusError> {
    headers.validate()?;
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        let invalid = |reason| BusError::InvalidHeader {
            name: name.to_owned(),
            reason,
        };
        let header_name = HeaderName::from_str(name).map_err(|_| invalid("invalid name"))?;
        let header_value = HeaderValue::from_str(value).map_err(|_| invalid("invalid value"))?;
        map.insert(header_name, header_value);
    }
    liquid_kit::telemetry::inject_context(&mut NatsHeaderInjector(&mut map));
    if let Some(id) = dedupe_id {
        validate_dedupe_id(id)?;
        let value = HeaderValue::from_str(id).map_err(|_| BusError::InvalidArgument {
            field: "dedupe_id",
            reason: "must be on one line".to_owned(),
        })?;
        map.insert(async_nats::header::NATS_MESSAGE_ID, value);
    }
    Ok(map)
}

/// Size of a message as counted against the limit (the same formula as the in-process bus).
fn encoded_len(headers: &HeaderMap, payload: &Bytes) -> usize {
    let header_len: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    header_len + payload.len()
}

fn incoming_message(message: async_nats::Message) -> Message {
    let headers = message
        .headers
        .as_ref()
        .map(|map| {
            map.iter()
                .filter_map(|(name, values)| {
                    let name: &str = name.as_ref();
                    values
                        .first()
                        .map(|v| (name.to_owned(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        subject: message.subject.to_string(),
        headers,
        payload: message.payload,
    }
}

fn log_event(url: &str, event: async_nats::Event, closed: &watch::Sender<bool>) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!(target: "bus", %url, "nats connected"),
        Event::Disconnected => {
            tracing::warn!(target: "bus", %url, "nats disconnected, reconnecting");
        }
        Event::LameDuckMode => {
            tracing::warn!(target: "bus", %url, "nats server entered lame duck mode");
        }
        Event::Draining => tracing::debug!(target: "bus", %url, "nats connection draining"),
        Event::Closed => {
            tracing::info!(target: "bus", %url, "nats connection closed");
            closed.send_replace(true);
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(target: "bus", %url, sid, "slow subscriber, messages dropped");
        }
        Event::ServerError(error) => {
            tracing::warn!(target: "bus", %url, %error, "nats server error");
        }
        Event::ClientError(error) => {
            tracing::warn!(target: "bus", %url, %error, "nats client error");
        }
    }
}

/// A connection to NATS with JetStream. Clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// The URL with any password redacted, for errors and logs.
    url: String,
    closed: Arc<AtomicBool>,
    closed_events: watch::Receiver<bool>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.url)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to `url` (`nats://[user:password@]host:port`, comma-separated for a cluster),
    /// failing after 5 s without an answer.
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        let redacted = liquid_kit::secret::redact_url(url);
        let unreachable = |reason: String| BusError::Unreachable {
            url: redacted.clone(),
            reason,
        };
        let (closed_tx, closed_events) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);
        let log_url = redacted.clone();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let closed_tx = closed_tx.clone();
                let url = log_url.clone();
                async move { log_event(&url, event, &closed_tx) }
            });
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client.clone());
        Ok(NatsBus {
            client,
            jetstream,
            url: redacted,
            closed: Arc::new(AtomicBool::new(false)),
            closed_events,
        })
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }

    /// Turns a transport failure into [`BusError::Closed`] after `drain`.
    fn failure(&self, operation: &'static str, err: impl std::fmt::Display) -> BusError {
        if self.closed.load(Ordering::Acquire) {
            BusError::Closed
        } else {
            BusError::backend(operation, err)
        }
    }

    fn check_size(&self, headers: &HeaderMap, payload: &Bytes) -> Result<(), BusError> {
        let size = encoded_len(headers, payload);
        let limit = self.client.server_info().max_payload;
        if limit > 0 && size > limit {
            return Err(BusError::PayloadTooLarge { size, limit });
        }
        Ok(())
    }
}

fn too_large(size: usize, limit: usize) -> BusError {
    BusError::PayloadTooLarge {
        size,
        limit: limit.max(1),
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.check_open()?;
        subject::validate(subject, false)?;
        let headers = outgoing_headers(headers, None)?;
        self.check_size(&headers, &payload)?;
        let size = encoded_len(&headers, &payload);
        self.client
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    too_large(size, self.client.server_info().max_payload)
                }
                _ => self.failure("publish", e),
            })
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.check_open()?;
        subject::validate(pattern, true)?;
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| self.failure("subscribe", e))?;
        Ok(Subscription::new(pattern, subscriber.map(incoming_message)))
    }

    async fn ensure_stream(&self, config: &StreamConfig) -> Result<(), BusError> {
        self.check_open()?;
        config.validate()?;
        let nats_config = stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: config.duplicate_window,
            max_age: config.max_age.unwrap_or_default(),
            max_messages: config
                .max_messages
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_bytes: -1,
            ..Default::default()
        };
        match self.jetstream.create_or_update_stream(nats_config).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                async_nats::jetstream::context::CreateStreamErrorKind::JetStream(js) => {
                    let reason = js.to_string();
                    if js.error_code() == jetstream::ErrorCode::STREAM_INVALID_CONFIG {
                        BusError::InvalidArgument {
                            field: "stream config",
                            reason,
                        }
                    } else {
                        BusError::StreamConflict {
                            stream: config.name.clone(),
                            reason,
                        }
                    }
                }
                async_nats::jetstream::context::CreateStreamErrorKind::TimedOut => {
                    BusError::Timeout {
                        operation: "ensure stream",
                        timeout: JETSTREAM_TIMEOUT,
                    }
                }
                _ => self.failure("ensure stream", e),
            }),
        }
    }

    async fn publish_durable(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<PublishAck, BusError> {
        use async_nats::jetstream::context::PublishErrorKind;
        self.check_open()?;
        subject::validate(subject, false)?;
        let headers = outgoing_headers(headers, dedupe_id)?;
        self.check_size(&headers, &payload)?;
        let size = encoded_len(&headers, &payload);
        let map_error = |e: async_nats::jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::StreamNotFound => BusError::NoStream {
                subject: subject.to_owned(),
            },
            PublishErrorKind::TimedOut => BusError::Timeout {
                operation: "durable publish",
                timeout: JETSTREAM_TIMEOUT,
            },
            PublishErrorKind::MaxPayloadExceeded => {
                too_large(size, self.client.server_info().max_payload)
            }
            _ => self.failure("durable publish", e),
        };
        let ack = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(map_error)?
            .await
            .map_err(map_error)?;
        Ok(PublishAck {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn consumer(&self, config: &ConsumerConfig) -> Result<Consumer, BusError> {
        use async_nats::jetstream::stream::ConsumerErrorKind;
        self.check_open()?;
        config.validate()?;
        let nats_config = pull::Config {
            durable_name: Some(config.name.clone()),
            deliver_policy: match config.deliver_from {
                DeliverFrom::All => jetstream::consumer::DeliverPolicy::All,
                DeliverFrom::New => jetstream::consumer::DeliverPolicy::New,
            },
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.map_or(-1, i64::from),
            filter_subject: config.filter_subject.clone().unwrap_or_default(),
            max_ack_pending: i64::from(config.max_ack_pending),
            ..Default::default()
        };
        let consumer = self
            .jetstream
            .create_consumer_on_stream(nats_config, &config.stream)
            .await
            .map_err(|e| match e.kind() {
                ConsumerErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    BusError::StreamNotFound {
                        stream: config.stream.clone(),
                    }
                }
                ConsumerErrorKind::JetStream(js) => BusError::ConsumerConflict {
                    stream: config.stream.clone(),
                    consumer: config.name.clone(),
                    reason: js.to_string(),
                },
                ConsumerErrorKind::TimedOut => BusError::Timeout {
                    operation: "open consumer",
                    timeout: JETSTREAM_TIMEOUT,
                },
                _ => self.failure("open consumer", e),
            })?;
        let backend = NatsConsumer {
            client: self.client.clone(),
            consumer,
            max_ack_pending: config.max_ack_pending as usize,
            closed: self.closed.clone(),
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
        use async_nats::client::RequestErrorKind;
        self.check_open()?;
        subject::validate(subject, false)?;
        let headers = outgoing_headers(headers, None)?;
        self.check_size(&headers, &payload)?;
        let size = encoded_len(&headers, &payload);
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(incoming_message(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout {
                    operation: "request",
                    timeout,
                },
                RequestErrorKind::NoResponders => BusError::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::MaxPayloadExceeded => {
                    too_large(size, self.client.server_info().max_payload)
                }
                _ => self.failure("request", e),
            }),
        }
    }

    async fn serve(&self, subject: &str) -> Result<Requests, BusError> {
        self.check_open()?;
        subject::validate(subject, true)?;
        let subscriber = self
            .client
            .queue_subscribe(subject.to_owned(), RESPONDER_GROUP.to_owned())
            .await
            .map_err(|e| self.failure("serve", e))?;
        let sink: Arc<dyn ReplySink> = Arc::new(NatsReplier { bus: self.clone() });
        let requests = subscriber.filter_map(move |message| {
            let request = match message.reply.clone() {
                Some(reply) => Some(Request::new(
                    incoming_message(message),
                    reply.to_string(),
                    sink.clone(),
                )),
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
        self.check_open()?;
        let unreachable = |reason: String| BusError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {}
            state => return Err(unreachable(format!("connection is {state}"))),
        }
        // A JetStream API round trip: proves the server answers and JetStream is enabled.
        match tokio::time::timeout(PING_TIMEOUT, self.jetstream.query_account()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {PING_TIMEOUT:?}"))),
        }
    }

    async fn drain(&self) -> Result<(), BusError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(error) = self.client.flush().await {
            tracing::warn!(target: "bus", %error, "flush before drain failed");
        }
        self.client
            .drain()
            .await
            .map_err(|e| BusError::backend("drain", e))?;
        let mut closed = self.closed_events.clone();
        match tokio::time::timeout(DRAIN_TIMEOUT, closed.wait_for(|closed| *closed)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(BusError::Timeout {
                operation: "drain",
                timeout: DRAIN_TIMEOUT,
            }),
        }
    }
}

struct NatsReplier {
    bus: NatsBus,
}

#[async_trait]
impl ReplySink for NatsReplier {
    async fn reply(
        &self,
        reply_to: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.bus.publish(reply_to, headers, payload).await
    }
}

struct NatsConsumer {
    client: async_nats::Client,
    consumer: jetstream::consumer::PullConsumer,
    max_ack_pending: usize,
    closed: Arc<AtomicBool>,
}

impl NatsConsumer {
    fn failure(&self, operation: &'static str, err: impl std::fmt::Display) -> BusError {
        if self.closed.load(Ordering::Acquire) {
            BusError::Closed
        } else {
            BusError::backend(operation, err)
        }
    }

    fn delivery(&self, message: jetstream::Message) -> Result<Delivery, BusError> {
        let (stream_sequence, delivery_count) = {
            let info = message.info().map_err(|e| BusError::backend("fetch", e))?;
            (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1),
            )
        };
        let message = message.message;
        let reply = message
            .reply
            .clone()
            .ok_or_else(|| BusError::backend("fetch", "delivery without an ack subject"))?;
        let sink = NatsAcker {
            client: self.client.clone(),
            reply,
            closed: self.closed.clone(),
        };
        Ok(Delivery::new(
            incoming_message(message),
            stream_sequence,
            delivery_count,
            Box::new(sink),
        ))
    }
}

#[async_trait]
impl ConsumerBackend for NatsConsumer {
    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        // A `no_wait` pull with an expiry returns as soon as at least one message is there (with
        // whatever else is ready) or empty at the expiry. The server refuses pulls larger than
        // max_ack_pending (it could not fill them anyway), and a `no_wait` pull without expiry
        // is never answered while max_ack_pending is reached, hence the 1ms floor.
        let max = max.min(self.max_ack_pending).max(1);
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(max_wait.max(MIN_PULL_EXPIRY))
            .messages()
            .await
            .map_err(|e| self.failure("fetch", e))?;
        let mut out = Vec::new();
        while let Some(item) = batch.next().await {
            match item {
                Ok(message) => out.push(self.delivery(message)?),
                // A status instead of messages (leadership change, consumer deleted) ends the
                // pull; what arrived before it is still valid.
                Err(error) if !out.is_empty() => {
                    tracing::debug!(target: "bus", %error, "pull ended by a status");
                    break;
                }
                Err(error) => return Err(self.failure("fetch", error)),
            }
        }
        Ok(out)
    }

    async fn info(&self) -> Result<ConsumerInfo, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| self.failure("consumer info", e))?;
        Ok(ConsumerInfo {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
        })
    }
}

/// Acknowledges with a request to the delivery's ack subject, so `ack` returns once the
/// server recorded it (as the in-process bus does). A request rides the client's shared reply
/// subscription, unlike async-nats's `double_ack`, which subscribes once per acknowledgement.
struct NatsAcker {
    client: async_nats::Client,
    reply: async_nats::Subject,
    closed: Arc<AtomicBool>,
}

#[async_trait]
impl AckSink for NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        use async_nats::client::RequestErrorKind;
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let kind = match kind {
            AckKind::Ack => jetstream::AckKind::Ack,
            AckKind::Nak(delay) => jetstream::AckKind::Nak(delay),
            AckKind::Progress => jetstream::AckKind::Progress,
            AckKind::Term => jetstream::AckKind::Term,
        };
        let request = async_nats::Request::new()
            .payload(Bytes::from(kind))
            .timeout(Some(JETSTREAM_TIMEOUT));
        match self.client.send_request(self.reply.clone(), request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout {
                    operation: "ack",
                    timeout: JETSTREAM_TIMEOUT,
                },
                _ if self.closed.load(Ordering::Acquire) => BusError::Closed,
                _ => BusError::backend("ack", e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn trace_context_round_trips_through_a_nats_header_map() {
        let mut map = HeaderMap::new();
        NatsHeaderInjector(&mut map).set(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        let cx = liquid_kit::telemetry::extract_context(&NatsHeaderExtractor(&map));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(NatsHeaderExtractor(&map).keys(), ["traceparent"]);
    }

    #[test]
    fn outgoing_headers_carry_the_dedupe_id_and_refuse_bad_ones() {
        let map = outgoing_headers(Headers::new().with("x-tenant", "acme"), Some("id-1")).unwrap();
        assert_eq!(map.get("x-tenant").map(HeaderValue::as_str), Some("acme"));
        assert_eq!(
            map.get(crate::MSG_ID_HEADER).map(HeaderValue::as_str),
            Some("id-1")
        );
        assert!(outgoing_headers(Headers::new(), Some("")).is_err());
        assert!(outgoing_headers(Headers::new().with("bad name", "v"), None).is_err());
    }
}
