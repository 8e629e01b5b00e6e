//! The distributed WebSocket hub: which local connection follows which channel, and fan-out
//! of channel messages across every gateway replica.
//!
//! Publishing never delivers locally: a message goes to the bus on its channel's subject
//! (`ws.public.<channel>` or `ws.tenant.<tenant>.<channel>`, core NATS, may be lost), and every
//! replica — the publishing one included — receives it on its single `ws.>` subscription and
//! hands it to its own subscribers. Other services publish to the same subjects
//! ([`Channel::subject`]) and reach every browser without knowing the gateway's replicas.
//!
//! Prices come straight from the price subjects (`prices.<symbol>`) every replica subscribes
//! to; any feed may publish there. A symbol's ticks are forwarded only in increasing time, so
//! identical ticks from several simulated feeds (one per replica) reach clients once. A tick
//! stamped more than [`MAX_TICK_SKEW_MS`] ahead of this replica's clock is dropped (one such
//! tick would otherwise hold back every later one of its symbol), and at most
//! [`MAX_TRACKED_SYMBOLS`] symbols are tracked (a new one takes the place of the symbol with
//! the oldest tick, so a feed that floods symbols cannot lock a real one out).
//!
//! Each connection has a bounded queue; a message that does not fit marks the connection slow
//! and its task closes it (`ws::CLOSE_SLOW`), so a stalled client costs at most its queue.
//!
//! A registration is not a socket, and `websocket.max_connections` bounds each apart: the open
//! WebSockets of both endpoints together (an idle GraphQL socket included), admitted by
//! [`Hub::admit_socket`] before the upgrade and counted by [`WS_CONNECTIONS`] per endpoint;
//! and the hub's registrations (one per `/ws` connection, one per active GraphQL subscription
//! stream), counted by [`HUB_SUBSCRIBERS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::StreamExt;
use liquid_bus::{EventBus, Headers, Message};
use liquid_kit::ApiError;
use liquid_kit::error::ErrorCode;
use liquid_kit::telemetry::target;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::channel::{Channel, SUBJECT_PREFIX};
use crate::domain::price::PriceTick;
use crate::error::GatewayError;

/// How far ahead of this replica's clock a price tick may be stamped, in milliseconds.
pub const MAX_TICK_SKEW_MS: u64 = 60_000;
/// Most symbols whose newest tick a replica keeps; a further symbol replaces the one whose
/// tick is oldest.
pub const MAX_TRACKED_SYMBOLS: usize = 10_000;

/// Gauge of open WebSockets on this replica, labelled `endpoint` ([`SocketEndpoint`]).
pub const WS_CONNECTIONS: &str = "liquid_gateway_ws_connections";
/// Gauge of hub registrations on this replica: `/ws` connections plus active GraphQL
/// subscription streams (at most `websocket.max_connections`).
pub const HUB_SUBSCRIBERS: &str = "liquid_gateway_hub_subscribers";
/// Counter of WebSocket upgrades refused because the replica held `websocket.max_connections`
/// open sockets, labelled `endpoint`.
pub const WS_REFUSED_FULL: &str = "liquid_gateway_ws_refused_full_total";

/// The WebSocket endpoint a [`SocketGauge`] counts a socket of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEndpoint {
    /// `/ws`, the channel protocol.
    Ws,
    /// `/graphql`, GraphQL subscriptions over `graphql-transport-ws`.
    Graphql,
}

impl SocketEndpoint {
    /// Every endpoint, for registering their series at zero.
    pub const ALL: [SocketEndpoint; 2] = [SocketEndpoint::Ws, SocketEndpoint::Graphql];

    /// The `endpoint` label: `ws` or `graphql`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketEndpoint::Ws => "ws",
            SocketEndpoint::Graphql => "graphql",
        }
    }
}

/// One open WebSocket admitted by [`Hub::admit_socket`]: it holds one of the replica's
/// `websocket.max_connections` sockets and is counted in [`WS_CONNECTIONS`] until dropped.
/// Taken before the upgrade and moved into the socket's task, which holds it for as long as
/// it serves the socket (an upgrade the client never completes drops it with the task).
#[must_use = "the socket is admitted only while the guard lives"]
pub struct SocketGauge {
    endpoint: SocketEndpoint,
    hub: Arc<HubInner>,
}

impl std::fmt::Debug for SocketGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketGauge")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for SocketGauge {
    fn drop(&mut self) {
        self.hub.sockets.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(WS_CONNECTIONS, "endpoint" => self.endpoint.as_str()).decrement(1.0);
    }
}

/// Takes one of `limit` slots counted by `count`; false (and `count` unchanged) when all are
/// taken.
fn take_slot(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A connection's handle as the hub holds it.
#[derive(Clone, Debug)]
pub struct Outbox {
    sender: mpsc::Sender<Utf8Bytes>,
    slow: CancellationToken,
}

/// A registered connection: its id, the receiving end of its queue and the token cancelled
/// when it falls behind.
pub struct Registration {
    /// The connection id (unique within the replica).
    pub id: u64,
    /// Messages to send to the client.
    pub inbox: mpsc::Receiver<Utf8Bytes>,
    /// Cancelled when the queue overflowed.
    pub slow: CancellationToken,
    _guard: ConnectionGuard,
}

impl Registration {
    /// Removes the connection and all its subscriptions (also done on drop).
    pub fn close(self) {
        drop(self);
    }
}

struct ConnectionGuard {
    hub: Hub,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.hub.remove_connection(self.id);
    }
}

/// The hub of one replica; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    bus: Arc<dyn EventBus>,
    /// Bus subject → connection id → outbox.
    subscribers: RwLock<HashMap<String, HashMap<u64, Outbox>>>,
    /// Connection id → the subjects it follows.
    following: Mutex<HashMap<u64, Vec<String>>>,
    /// Connection id → outbox (for registration and counting).
    outboxes: Mutex<HashMap<u64, Outbox>>,
    /// Hub registrations (bounded by `max_connections`).
    connections: AtomicUsize,
    /// Open sockets of both endpoints (bounded by `max_connections`).
    sockets: AtomicUsize,
    max_connections: usize,
    queue: usize,
    next_id: AtomicU64,
    /// The newest tick forwarded per symbol.
    last_tick: Mutex<HashMap<String, PriceTick>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sockets", &self.socket_count())
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub publishing on `bus`, with `queue` messages per connection, admitting at most
    /// `max_connections` open sockets and as many registrations.
    pub fn new(bus: Arc<dyn EventBus>, queue: usize, max_connections: usize) -> Hub {
        // Registered from the start (an increment of zero keeps other replicas' counts).
        metrics::describe_gauge!(
            WS_CONNECTIONS,
            "open websockets on this replica by endpoint (ws, graphql), idle ones included; both together bounded by websocket.max_connections"
        );
        metrics::describe_gauge!(
            HUB_SUBSCRIBERS,
            "hub registrations on this replica: one per /ws connection and per active graphql subscription stream, bounded by websocket.max_connections"
        );
        for endpoint in SocketEndpoint::ALL {
            metrics::gauge!(WS_CONNECTIONS, "endpoint" => endpoint.as_str()).increment(0.0);
        }
        metrics::gauge!(HUB_SUBSCRIBERS).increment(0.0);
        metrics::counter!("liquid_gateway_ws_messages_sent_total").increment(0);
        metrics::counter!("liquid_gateway_ws_slow_consumers_total").increment(0);
        metrics::describe_counter!(
            WS_REFUSED_FULL,
            "websocket upgrades refused (503) because this replica held websocket.max_connections open sockets"
        );
        for endpoint in SocketEndpoint::ALL {
            metrics::counter!(WS_REFUSED_FULL, "endpoint" => endpoint.as_str()).increment(0);
        }
        Hub {
            inner: Arc::new(HubInner {
                bus,
                subscribers: RwLock::new(HashMap::new()),
                following: Mutex::new(HashMap::new()),
                outboxes: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                sockets: AtomicUsize::new(0),
                max_connections,
                queue,
                next_id: AtomicU64::new(1),
                last_tick: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Tracks connection tasks so shutdown can wait for them to close cleanly.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Registrations on this replica: `/ws` connections and GraphQL subscription streams.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Open WebSockets on this replica, both endpoints.
    pub fn socket_count(&self) -> usize {
        self.inner.sockets.load(Ordering::Relaxed)
    }

    /// Admits one more open WebSocket of `endpoint`, counted with every other socket of either
    /// endpoint against `websocket.max_connections`. Called before the upgrade, so a full
    /// replica answers over HTTP (503 `unavailable`, `Retry-After`) and no socket is opened.
    pub fn admit_socket(&self, endpoint: SocketEndpoint) -> Result<SocketGauge, ApiError> {
        let inner = &self.inner;
        if !take_slot(&inner.sockets, inner.max_connections) {
            metrics::counter!(WS_REFUSED_FULL, "endpoint" => endpoint.as_str()).increment(1);
            tracing::debug!(
                target: target::WEBSOCKET,
                endpoint = endpoint.as_str(),
                max_connections = inner.max_connections,
                "websocket refused: replica full"
            );
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this gateway replica holds its maximum of {} open websockets \
                     (websocket.max_connections); retry, another replica may answer",
                    inner.max_connections
                ),
            )
            .with_details(json!({"retry_after_seconds": 1})));
        }
        metrics::gauge!(WS_CONNECTIONS, "endpoint" => endpoint.as_str()).increment(1.0);
        Ok(SocketGauge {
            endpoint,
            hub: inner.clone(),
        })
    }

    /// Registers a new connection; `None` when the replica holds `websocket.max_connections`
    /// registrations.
    pub fn register(&self) -> Option<Registration> {
        let inner = &self.inner;
        if !take_slot(&inner.connections, inner.max_connections) {
            return None;
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, inbox) = mpsc::channel(inner.queue);
        let slow = CancellationToken::new();
        let outbox = Outbox {
            sender,
            slow: slow.clone(),
        };
        if let Ok(mut map) = inner.outboxes.lock() {
            map.insert(id, outbox);
        }
        metrics::gauge!(HUB_SUBSCRIBERS).increment(1.0);
        Some(Registration {
            id,
            inbox,
            slow,
            _guard: ConnectionGuard {
                hub: self.clone(),
                id,
            },
        })
    }

    fn remove_connection(&self, id: u64) {
        let inner = &self.inner;
        let subjects = inner
            .following
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&id))
            .unwrap_or_default();
        if !subjects.is_empty()
            && let Ok(mut subs) = inner.subscribers.write()
        {
            for subject in subjects {
                if let Some(conns) = subs.get_mut(&subject) {
                    conns.remove(&id);
                    if conns.is_empty() {
                        subs.remove(&subject);
                    }
                }
            }
        }
        if let Ok(mut map) = inner.outboxes.lock() {
            map.remove(&id);
        }
        inner.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(HUB_SUBSCRIBERS).decrement(1.0);
    }

    /// Makes connection `id` follow `subject`; false when it already did.
    pub fn follow(&self, id: u64, subject: &str) -> bool {
        let inner = &self.inner;
        let Some(outbox) = inner.outboxes.lock().ok().and_then(|m| m.get(&id).cloned()) else {
            return false;
        };
        let added = inner.following.lock().is_ok_and(|mut f| {
            let list = f.entry(id).or_default();
            if list.iter().any(|s| s == subject) {
                false
            } else {
                list.push(subject.to_owned());
                true
            }
        });
        if added && let Ok(mut subs) = inner.subscribers.write() {
            subs.entry(subject.to_owned())
                .or_default()
                .insert(id, outbox);
        }
        added
    }

    /// Stops connection `id` following `subject`; false when it did not.
    pub fn unfollow(&self, id: u64, subject: &str) -> bool {
        let inner = &self.inner;
        let removed = inner.following.lock().is_ok_and(|mut f| {
            f.get_mut(&id).is_some_and(|list| {
                let before = list.len();
                list.retain(|s| s != subject);
                before != list.len()
            })
        });
        if removed
            && let Ok(mut subs) = inner.subscribers.write()
            && let Some(conns) = subs.get_mut(subject)
        {
            conns.remove(&id);
            if conns.is_empty() {
                subs.remove(subject);
            }
        }
        removed
    }

    /// How many channels connection `id` follows.
    pub fn following_count(&self, id: u64) -> usize {
        self.inner
            .following
            .lock()
            .map_or(0, |f| f.get(&id).map_or(0, Vec::len))
    }

    /// The newest tick of every symbol this replica has seen, by symbol.
    pub fn latest_prices(&self) -> Vec<PriceTick> {
        let mut ticks: Vec<PriceTick> = self
            .inner
            .last_tick
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        ticks.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        ticks
    }

    /// Publishes `data` on `channel` for `tenant` to every replica's subscribers.
    pub async fn publish(
        &self,
        channel: &Channel,
        tenant: &str,
        data: &serde_json::Value,
    ) -> Result<String, GatewayError> {
        self.publish_on(channel.subject(tenant), data).await
    }

    /// Publishes `data` on `channel` for `owner` of `tenant` ([`Channel::subject_for`]).
    pub async fn publish_owned(
        &self,
        channel: &Channel,
        tenant: &str,
        owner: &str,
        data: &serde_json::Value,
    ) -> Result<String, GatewayError> {
        self.publish_on(channel.subject_for(tenant, owner), data)
            .await
    }

    async fn publish_on(
        &self,
        subject: String,
        data: &serde_json::Value,
    ) -> Result<String, GatewayError> {
        let payload = serde_json::to_vec(data)
            .map_err(|e| GatewayError::InvalidArgument(format!("message is not json: {e}")))?;
        self.inner
            .bus
            .publish(&subject, Headers::new(), Bytes::from(payload))
            .await?;
        Ok(subject)
    }

    /// Hands one message to the local subscribers of `subject`; returns how many got it.
    pub fn deliver_local(&self, subject: &str, channel: &str, data: &serde_json::Value) -> usize {
        let Ok(subs) = self.inner.subscribers.read() else {
            return 0;
        };
        let Some(conns) = subs.get(subject) else {
            return 0;
        };
        let frame = serde_json::json!({"type": "message", "channel": channel, "data": data});
        let frame = Utf8Bytes::from(frame.to_string());
        let mut delivered = 0;
        for outbox in conns.values() {
            match outbox.sender.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !outbox.slow.is_cancelled() {
                        metrics::counter!("liquid_gateway_ws_slow_consumers_total").increment(1);
                        outbox.slow.cancel();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        metrics::counter!("liquid_gateway_ws_messages_sent_total").increment(delivered as u64);
        delivered
    }

    fn on_channel_message(&self, message: &Message) {
        // ws.public.<channel> or ws.tenant.<tenant>.<channel>; channels contain no dots.
        let Some(channel) = message.subject.rsplit('.').next() else {
            return;
        };
        match serde_json::from_slice::<serde_json::Value>(&message.payload) {
            Ok(data) => {
                self.deliver_local(&message.subject, channel, &data);
            }
            Err(error) => {
                tracing::debug!(target: target::WEBSOCKET, subject = %message.subject, %error, "channel message is not json; dropped");
            }
        }
    }

    fn on_price_tick(&self, message: &Message) {
        let tick: PriceTick = match serde_json::from_slice(&message.payload) {
            Ok(t) => t,
            Err(error) => {
                tracing::debug!(target: target::WEBSOCKET, subject = %message.subject, %error, "price tick malformed; dropped");
                return;
            }
        };
        let Ok(channel) = Channel::prices(&tick.symbol) else {
            return;
        };
        if tick.ts_ms > now_ms().saturating_add(MAX_TICK_SKEW_MS) {
            tracing::debug!(target: target::WEBSOCKET, symbol = %tick.symbol, ts_ms = tick.ts_ms, "price tick from the future; dropped");
            return;
        }
        let newer =
            self.inner
                .last_tick
                .lock()
                .is_ok_and(|mut last| match last.get(&tick.symbol) {
                    Some(seen) if seen.ts_ms >= tick.ts_ms => false,
                    seen => {
                        if seen.is_none() && last.len() >= MAX_TRACKED_SYMBOLS {
                            let stalest = last
                                .values()
                                .min_by_key(|t| t.ts_ms)
                                .map(|t| t.symbol.clone());
                            if let Some(symbol) = stalest {
                                last.remove(&symbol);
                            }
                        }
                        last.insert(tick.symbol.clone(), tick.clone());
                        true
                    }
                });
        if newer {
            let data = serde_json::to_value(&tick).unwrap_or_default();
            self.deliver_local(&channel.subject(""), &channel.to_string(), &data);
        }
    }

    /// Subscribes this replica to every channel subject and to the price subjects; the
    /// returned futures run until `shutdown`.
    pub async fn run(
        &self,
        price_prefix: &str,
        shutdown: CancellationToken,
    ) -> Result<
        (
            impl Future<Output = ()> + Send + 'static,
            impl Future<Output = ()> + Send + 'static,
        ),
        GatewayError,
    > {
        let mut channels = self
            .inner
            .bus
            .subscribe(&format!("{SUBJECT_PREFIX}.>"))
            .await?;
        let mut prices = self
            .inner
            .bus
            .subscribe(&format!("{price_prefix}.>"))
            .await?;
        let hub = self.clone();
        let stop = shutdown.clone();
        let fanout = async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    next = channels.next() => match next {
                        Some(message) => hub.on_channel_message(&message),
                        None => {
                            tracing::warn!(target: target::WEBSOCKET, "channel subscription ended");
                            break;
                        }
                    }
                }
            }
        };
        let hub = self.clone();
        let feed = async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = prices.next() => match next {
                        Some(message) => hub.on_price_tick(&message),
                        None => {
                            tracing::warn!(target: target::WEBSOCKET, "price subscription ended");
                            break;
                        }
                    }
                }
            }
        };
        Ok((fanout, feed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(queue: usize, max: usize) -> Hub {
        Hub::new(Arc::new(liquid_bus::MemoryBus::new()), queue, max)
    }

    #[tokio::test]
    async fn messages_reach_followers_only() {
        let hub = hub(8, 10);
        let mut a = hub.register().unwrap();
        let mut b = hub.register().unwrap();
        assert!(hub.follow(a.id, "ws.public.prices:BTC"));
        assert!(
            !hub.follow(a.id, "ws.public.prices:BTC"),
            "following twice is one follow"
        );
        let n = hub.deliver_local(
            "ws.public.prices:BTC",
            "prices:BTC",
            &serde_json::json!({"p": 1}),
        );
        assert_eq!(n, 1);
        let frame = a.inbox.recv().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["channel"], "prices:BTC");
        assert_eq!(v["data"]["p"], 1);
        assert!(b.inbox.try_recv().is_err());
        assert!(hub.unfollow(a.id, "ws.public.prices:BTC"));
        assert_eq!(
            hub.deliver_local("ws.public.prices:BTC", "prices:BTC", &serde_json::json!(1)),
            0
        );
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_slow_without_growing() {
        let hub = hub(2, 10);
        let a = hub.register().unwrap();
        hub.follow(a.id, "s");
        for _ in 0..5 {
            hub.deliver_local("s", "c", &serde_json::json!(null));
        }
        assert!(a.slow.is_cancelled());
        assert_eq!(
            a.inbox.len(),
            2,
            "the queue never holds more than its bound"
        );
    }

    #[tokio::test]
    async fn the_connection_limit_holds_and_closing_frees_everything() {
        let hub = hub(2, 2);
        let a = hub.register().unwrap();
        let b = hub.register().unwrap();
        assert!(hub.register().is_none());
        assert_eq!(hub.connection_count(), 2);
        hub.follow(a.id, "x");
        hub.follow(a.id, "y");
        assert_eq!(hub.following_count(a.id), 2);
        a.close();
        assert_eq!(hub.connection_count(), 1);
        assert!(hub.inner.subscribers.read().unwrap().is_empty());
        assert!(hub.register().is_some());
        drop(b);
    }

    #[tokio::test]
    async fn price_ticks_are_forwarded_once_in_time_order() {
        let hub = hub(8, 10);
        let mut a = hub.register().unwrap();
        let subject = Channel::prices("BTC").unwrap().subject("");
        hub.follow(a.id, &subject);
        let tick = |ts: u64| Message {
            subject: "prices.BTC".into(),
            headers: Headers::new(),
            payload: Bytes::from(
                serde_json::to_vec(&PriceTick {
                    symbol: "BTC".into(),
                    price: 1.0,
                    ts_ms: ts,
                    source: "simulated".into(),
                })
                .unwrap(),
            ),
        };
        hub.on_price_tick(&tick(1_000));
        hub.on_price_tick(&tick(1_000));
        hub.on_price_tick(&tick(500));
        hub.on_price_tick(&tick(2_000));
        assert_eq!(a.inbox.len(), 2);
        let first: serde_json::Value =
            serde_json::from_str(a.inbox.recv().await.unwrap().as_str()).unwrap();
        assert_eq!(first["data"]["source"], "simulated");
        assert_eq!(first["data"]["ts_ms"], 1_000);
    }

    fn tick_of(symbol: &str, ts_ms: u64) -> Message {
        Message {
            subject: format!("prices.{symbol}"),
            headers: Headers::new(),
            payload: Bytes::from(
                serde_json::to_vec(&PriceTick {
                    symbol: symbol.into(),
                    price: 1.0,
                    ts_ms,
                    source: "feed".into(),
                })
                .unwrap(),
            ),
        }
    }

    #[tokio::test]
    async fn a_tick_from_the_future_does_not_freeze_its_symbol() {
        let hub = hub(8, 10);
        let mut a = hub.register().unwrap();
        hub.follow(a.id, &Channel::prices("BTC").unwrap().subject(""));
        hub.on_price_tick(&tick_of("BTC", u64::MAX));
        assert_eq!(a.inbox.len(), 0, "a tick far ahead of the clock is dropped");
        let now = now_ms();
        hub.on_price_tick(&tick_of("BTC", now));
        let forwarded: serde_json::Value =
            serde_json::from_str(a.inbox.recv().await.unwrap().as_str()).unwrap();
        assert_eq!(forwarded["data"]["ts_ms"], now);
        assert_eq!(hub.latest_prices()[0].ts_ms, now);
    }

    #[tokio::test]
    async fn the_symbols_tracked_are_bounded() {
        let hub = hub(8, 10);
        for i in 0..MAX_TRACKED_SYMBOLS {
            hub.on_price_tick(&tick_of(&format!("S{i}"), 1));
        }
        // A new symbol still gets through, in the place of one with the oldest tick.
        hub.on_price_tick(&tick_of("REAL", 2));
        let prices = hub.latest_prices();
        assert_eq!(prices.len(), MAX_TRACKED_SYMBOLS);
        assert!(prices.iter().any(|t| t.symbol == "REAL"));
    }
}
