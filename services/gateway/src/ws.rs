//! The WebSocket endpoint `/ws`: authentication at connect and per action, the client
//! protocol, heartbeats and closing.
//!
//! A token comes at connect in `Authorization: Bearer`, or as the subprotocol `bearer.<jwt>`
//! offered beside `liquid.v1` (browsers cannot set headers), or as the first message
//! `{"type":"auth","token":"..."}` within `websocket.auth_deadline_secs`. A token sent at
//! connect that does not verify refuses the upgrade with the usual 401 envelope
//! ([`EdgeAuth::verify_at_connect`], shared with the GraphQL socket). Every refused token, at
//! connect or in an `auth` message, is charged to the client address like any refusal at the
//! edge; once that quota is spent an `auth` refusal is a `rate_limited` error (and the first
//! one closes with 4029 instead of 4001). With
//! `websocket.require_auth` off, a connection without a token holds
//! `websocket.anonymous_scopes` and cannot follow tenant channels.
//!
//! Every action is checked again against the connection's current claims
//! (`domain::channel::authorize`): the scope it needs and the token's expiry. The connection
//! closes when its token expires unless the client sent a fresh one (`auth` again, same
//! subject and tenant).
//!
//! Client → server (JSON text): `auth`, `subscribe {channel}`, `unsubscribe {channel}`,
//! `chat {session, message}`, `trade {intent}`, `ping`; each may carry an `id` echoed in the
//! answer. Server → client: `welcome`, `subscribed`, `unsubscribed`, `message {channel, data}`,
//! `ack`, `pong`, `error {code, message}`. Close codes: 1001 shutdown, 4001 unauthenticated,
//! 4002 token expired, 4003 heartbeat timeout, 4008 slow consumer (its queue overflowed, or one
//! frame took longer than `websocket.write_timeout_secs` to write because it stopped reading),
//! 4029 rate limited (a refused first token once the address's quota is spent).
//!
//! `chat` and `trade` actions are charged to the rate limiter like requests (the verified
//! user's tier; chat in the class of `POST /api/v1/chat`, trades in the class of `/ws`); a
//! refusal is an `error` frame with code `rate_limited` and `retry_after_seconds`. A connection
//! runs at most [`MAX_TURNS_IN_FLIGHT`] chat turns at once, and its turns are cancelled when it
//! closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use liquid_auth::{Claims, unix_now};
use liquid_bus::{EventBus, Headers};
use liquid_kit::telemetry::target;
use liquid_kit::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Admitted, ConnectToken, EdgeAuth, RefusalCharge};
use crate::config::WebSocketSettings;
use crate::domain::channel::{Action, Channel, authorize, encode_tenant};
use crate::hub::{Hub, Registration, SocketEndpoint, SocketGauge};
use crate::ratelimit::{self, Outcome, RateLimiter};

/// The subprotocol the gateway speaks.
pub const PROTOCOL: &str = "liquid.v1";
/// Prefix of the subprotocol that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// Server shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// No valid token at connect or within the deadline.
pub const CLOSE_UNAUTHENTICATED: u16 = 4001;
/// The token expired and no fresh one came.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// The client stopped answering heartbeats.
pub const CLOSE_IDLE: u16 = 4003;
/// The client read too slowly; its queue overflowed.
pub const CLOSE_SLOW: u16 = 4008;
/// A refused token once the client address's quota is spent (`/ws` and the GraphQL socket):
/// retry after the time the refusal names, not with another token.
pub const CLOSE_RATE_LIMITED: u16 = 4029;
/// Bus subject prefix of trade intents (`trades.intents.<tenant>`).
pub const TRADE_SUBJECT_PREFIX: &str = "trades.intents";
/// Chat turns one connection may have running at once.
pub const MAX_TURNS_IN_FLIGHT: usize = 4;
/// The route whose rate-limit class a WebSocket `chat` action is charged to.
pub const CHAT_ROUTE: &str = "/api/v1/chat";
/// The route whose rate-limit class a WebSocket `trade` action is charged to.
pub const TRADE_ROUTE: &str = "/ws";
/// The latest instant a deadline is set to (a token valid for longer counts as this).
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a chat turn started over a WebSocket holds while it runs: the token cancelled when its
/// connection closes (or the gateway shuts down), and one of the connection's turn slots.
pub struct TurnScope {
    /// Cancelled when the connection that started the turn closes.
    pub cancel: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

/// What chat over the WebSocket calls once the chat API exists (issue 6, items 1–2): it gets
/// the verified caller, the session and the message, streams its output to the tenant's
/// `chat:<session>` channel through the hub, and answers the acknowledgement's data.
pub trait ChatHandler: Send + Sync {
    /// Handles one chat message; the turn it starts holds `scope` until it ends and stops
    /// when `scope.cancel` is cancelled.
    fn handle(
        &self,
        caller: Claims,
        session: String,
        message: Value,
        scope: TurnScope,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send>>;
}

/// What the WebSocket endpoint needs.
#[derive(Clone)]
pub struct WsState {
    /// Verifies tokens.
    pub tokens: EdgeAuth,
    /// The hub.
    pub hub: Hub,
    /// The rate limiter (connects are charged like requests).
    pub limiter: RateLimiter,
    /// `[websocket]`.
    pub settings: Arc<WebSocketSettings>,
    /// The bus (trade intents).
    pub bus: Arc<dyn EventBus>,
    /// Chat, once it exists.
    pub chat: Option<Arc<dyn ChatHandler>>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// This replica's id (in `welcome`).
    pub replica: String,
}

/// The instant `secs` from now; a wait longer than [`FAR_FUTURE`] (a token expiring in the
/// far future, a huge setting) is that far, never an overflow.
fn instant_after(secs: u64) -> Instant {
    let now = Instant::now();
    let wait = Duration::from_secs(secs).min(FAR_FUTURE);
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

fn expiry_instant(claims: &Claims) -> Instant {
    instant_after(claims.exp.saturating_sub(unix_now()))
}

/// `GET /ws`: verifies what came at connect, charges the rate limit, upgrades.
pub async fn upgrade(State(state): State<WsState>, request: Request) -> Response {
    let peer = ratelimit::peer_of(&request);
    let (mut parts, _body) = request.into_parts();
    let sources = ConnectToken::HeaderOrSubprotocol(BEARER_PROTOCOL_PREFIX);
    let Admitted {
        caller,
        refusals,
        outcome,
    } = match state
        .tokens
        .verify_at_connect(&state.limiter, &parts, peer, sources)
        .await
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let claims = caller.map(|(claims, _)| claims);
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let open = match state.hub.admit_socket(SocketEndpoint::Ws) {
        Ok(open) => open,
        Err(full) => return full.into_response(),
    };
    let Some(registration) = state.hub.register() else {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this gateway replica holds its maximum of hub registrations (websocket.max_connections); retry, another replica may answer",
        )
        .with_details(json!({"retry_after_seconds": 1}))
        .into_response();
    };
    let settings = state.settings.clone();
    let tasks = state.hub.tasks().clone();
    let mut response = upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0)
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes)
        .on_upgrade(move |socket| {
            let connection = Connection::new(state, registration, claims, refusals);
            tasks.track_future(connection.run(socket, open))
        });
    if let Some(outcome) = &outcome {
        ratelimit::write_headers(response.headers_mut(), outcome);
    }
    response
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Auth {
        token: String,
        #[serde(default)]
        id: Value,
    },
    Subscribe {
        channel: String,
        #[serde(default)]
        id: Value,
    },
    Unsubscribe {
        channel: String,
        #[serde(default)]
        id: Value,
    },
    Chat {
        session: String,
        message: Value,
        #[serde(default)]
        id: Value,
    },
    Trade {
        intent: Value,
        #[serde(default)]
        id: Value,
    },
    Ping {
        #[serde(default)]
        id: Value,
    },
}

/// Why the loop ended, with the close frame to send.
struct Closing {
    code: u16,
    reason: &'static str,
    label: &'static str,
}

impl Closing {
    fn new(code: u16, label: &'static str, reason: &'static str) -> Closing {
        Closing {
            code,
            reason,
            label,
        }
    }
}

enum Step {
    Continue,
    Close(Closing),
}

/// The write half of a connection.
type Sink = SplitSink<WebSocket, Message>;

/// Sends one frame, bounded by `limit` and abandoned at shutdown. `Err(None)`: the peer is
/// gone; `Err(Some(closing))`: close with that code (a client that does not read within
/// `limit` is a slow consumer).
async fn send_bounded(
    sink: &mut Sink,
    message: Message,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Option<Closing>> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            Err(Some(Closing::new(CLOSE_GOING_AWAY, "shutdown", "server shutting down")))
        }
        sent = send_within(sink, message, limit) => match sent {
            Ok(()) => Ok(()),
            Err(Unsent::Gone) => Err(None),
            Err(Unsent::Slow) => {
                metrics::counter!("liquid_gateway_ws_slow_consumers_total").increment(1);
                Err(Some(Closing::new(CLOSE_SLOW, "slow", "slow consumer: a write timed out")))
            }
        },
    }
}

/// How long the final close frame may take to write: a client that does not read must not
/// hold its task any longer (`/ws` and the GraphQL socket).
pub(crate) const CLOSE_FRAME_BOUND: Duration = Duration::from_secs(1);

/// Why a frame was not written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The socket failed: the peer is gone.
    Gone,
    /// The client did not take the frame in time: a slow consumer.
    Slow,
}

/// Sends one frame, bounded by `within` (`/ws` and the GraphQL socket).
pub(crate) async fn send_within<S>(
    sink: &mut S,
    message: Message,
    within: Duration,
) -> Result<(), Unsent>
where
    S: futures_util::Sink<Message> + Unpin,
{
    match tokio::time::timeout(within, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Unsent::Gone),
        Err(_) => Err(Unsent::Slow),
    }
}

struct Connection {
    state: WsState,
    registration: Registration,
    claims: Option<Claims>,
    /// Charges a refused `auth` token to the connect's client address.
    refusals: RefusalCharge,
    /// Waiting for the first-message token until this instant.
    pending_auth: bool,
    deadline: Instant,
    /// The channels followed, as the client named them, with their bus subjects.
    following: Vec<(Channel, String)>,
    /// One permit per chat turn that may run at once.
    turn_slots: Arc<Semaphore>,
    /// Cancelled when the connection ends; parent of its turns' tokens.
    turns: CancellationToken,
}

fn error_frame(id: &Value, code: ErrorCode, message: impl Into<String>) -> Value {
    json!({"type": "error", "id": id, "code": code.as_str(), "message": message.into()})
}

/// The `rate_limited` error frame of a refusal, with `retry_after_seconds` and the figures of
/// a REST 429 in `details`.
fn rate_limited_frame(id: &Value, outcome: &Outcome) -> Value {
    let mut frame = error_frame(id, ErrorCode::RateLimited, outcome.refusal_message());
    frame["retry_after_seconds"] = json!(outcome.retry_after_secs());
    frame["details"] = outcome.refusal_details();
    frame
}

impl Connection {
    fn new(
        state: WsState,
        registration: Registration,
        claims: Option<Claims>,
        refusals: RefusalCharge,
    ) -> Connection {
        let (pending_auth, deadline) = match &claims {
            Some(c) => (false, expiry_instant(c)),
            None if state.settings.require_auth => {
                (true, instant_after(state.settings.auth_deadline_secs))
            }
            None => (false, instant_after(u64::MAX)),
        };
        let turns = state.shutdown.child_token();
        Connection {
            state,
            registration,
            claims,
            refusals,
            pending_auth,
            deadline,
            following: Vec::new(),
            turn_slots: Arc::new(Semaphore::new(MAX_TURNS_IN_FLIGHT)),
            turns,
        }
    }

    fn scopes(&self) -> Vec<&str> {
        match &self.claims {
            Some(c) => c.scopes().iter().map(String::as_str).collect(),
            None => self
                .state
                .settings
                .anonymous_scopes
                .iter()
                .map(String::as_str)
                .collect(),
        }
    }

    fn welcome(&self) -> Value {
        json!({
            "type": "welcome",
            "connection": self.registration.id,
            "replica": self.state.replica,
            "subject": self.claims.as_ref().map(|c| c.sub.clone()),
            "tenant": self.claims.as_ref().map(|c| c.tenant_id().to_owned()),
            "scopes": self.scopes(),
            "heartbeat_secs": self.state.settings.heartbeat_secs,
        })
    }

    /// Serves the socket, holding its admission (`_open`) until it closes.
    async fn run(mut self, socket: WebSocket, _open: SocketGauge) {
        let (mut sink, mut stream) = socket.split();
        // Every way out of this function stops the turns the connection started.
        let _turns = self.turns.clone().drop_guard();
        let settings = self.state.settings.clone();
        let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
        let write_timeout = Duration::from_secs(settings.write_timeout_secs);
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + Duration::from_secs(settings.heartbeat_secs),
            Duration::from_secs(settings.heartbeat_secs),
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let expiry = tokio::time::sleep_until(self.deadline);
        tokio::pin!(expiry);
        let shutdown = self.state.shutdown.clone();
        let slow = self.registration.slow.clone();
        if !self.pending_auth {
            let text = self.welcome().to_string();
            let welcome = Message::Text(text.into());
            if send_bounded(&mut sink, welcome, write_timeout, &shutdown)
                .await
                .is_err()
            {
                return;
            }
        }
        let closing = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    break Some(Closing::new(CLOSE_GOING_AWAY, "shutdown", "server shutting down"));
                }
                () = slow.cancelled() => {
                    break Some(Closing::new(CLOSE_SLOW, "slow", "slow consumer: send queue full"));
                }
                () = &mut expiry => {
                    break Some(if self.pending_auth {
                        Closing::new(CLOSE_UNAUTHENTICATED, "auth_deadline", "no token within the deadline")
                    } else {
                        Closing::new(CLOSE_TOKEN_EXPIRED, "token_expired", "token expired; reconnect with a fresh token")
                    });
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > idle_timeout {
                        break Some(Closing::new(CLOSE_IDLE, "idle", "heartbeat timeout"));
                    }
                    let ping = Message::Ping(Bytes::new());
                    if let Err(end) = send_bounded(&mut sink, ping, write_timeout, &shutdown).await {
                        break end;
                    }
                }
                outgoing = self.registration.inbox.recv() => {
                    let Some(frame) = outgoing else { break None };
                    let frame = Message::Text(frame);
                    if let Err(end) = send_bounded(&mut sink, frame, write_timeout, &shutdown).await {
                        break end;
                    }
                }
                incoming = stream.next() => {
                    last_seen = Instant::now();
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            let frame = error_frame(&Value::Null, ErrorCode::InvalidArgument, "send json text frames");
                            let frame = Message::Text(frame.to_string().into());
                            if let Err(end) = send_bounded(&mut sink, frame, write_timeout, &shutdown).await {
                                break end;
                            }
                            continue;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => break Some(Closing::new(1000, "client", "")),
                        Some(Err(_)) => break None,
                    };
                    // Boxed: the idle connection's task is sized by its largest await,
                    // and handling a message (chat, rate-limit checks) is far larger than
                    // waiting for one; this allocation is per client message, not per socket.
                    let (reply, step) = Box::pin(self.handle(text.as_str())).await;
                    if let Some(reply) = reply {
                        let reply = Message::Text(reply.to_string().into());
                        if let Err(end) = send_bounded(&mut sink, reply, write_timeout, &shutdown).await {
                            break end;
                        }
                    }
                    if let Step::Close(c) = step {
                        break Some(c);
                    }
                    expiry.as_mut().reset(self.deadline);
                }
            }
        };
        let label = closing.as_ref().map_or("error", |c| c.label);
        metrics::counter!("liquid_gateway_ws_closed_total", "reason" => label).increment(1);
        if let Some(c) = closing
            && c.label != "client"
        {
            tracing::debug!(target: target::WEBSOCKET, connection = self.registration.id, code = c.code, reason = c.label, "closing websocket");
            let frame = CloseFrame {
                code: c.code,
                reason: Utf8Bytes::from_static(c.reason),
            };
            let _ = send_within(&mut sink, Message::Close(Some(frame)), CLOSE_FRAME_BOUND).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }

    /// Handles one client message: the answer to send, and whether to close.
    async fn handle(&mut self, text: &str) -> (Option<Value>, Step) {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let reply = error_frame(
                    &Value::Null,
                    ErrorCode::InvalidArgument,
                    format!("unreadable message: {e}"),
                );
                if self.pending_auth {
                    return (
                        Some(reply),
                        Step::Close(Closing::new(
                            CLOSE_UNAUTHENTICATED,
                            "unauthenticated",
                            "the first message must be {\"type\":\"auth\"}",
                        )),
                    );
                }
                return (Some(reply), Step::Continue);
            }
        };
        if self.pending_auth && !matches!(message, ClientMessage::Auth { .. }) {
            tracing::info!(target: target::SECURITY, connection = self.registration.id, "websocket action before auth refused");
            return (
                Some(error_frame(
                    &Value::Null,
                    ErrorCode::Unauthenticated,
                    "send {\"type\":\"auth\",\"token\":\"...\"} first",
                )),
                Step::Close(Closing::new(
                    CLOSE_UNAUTHENTICATED,
                    "unauthenticated",
                    "the first message must be {\"type\":\"auth\"}",
                )),
            );
        }
        // Checked again per action: an expired token acts no more, even before the timer fires.
        if let Some(claims) = &self.claims
            && claims.exp <= unix_now()
            && !matches!(message, ClientMessage::Auth { .. })
        {
            return (
                None,
                Step::Close(Closing::new(
                    CLOSE_TOKEN_EXPIRED,
                    "token_expired",
                    "token expired; reconnect with a fresh token",
                )),
            );
        }
        match message {
            ClientMessage::Auth { token, id } => self.authenticate(&token, id).await,
            ClientMessage::Ping { id } => (Some(json!({"type": "pong", "id": id})), Step::Continue),
            ClientMessage::Subscribe { channel, id } => {
                (Some(self.subscribe(&channel, id)), Step::Continue)
            }
            ClientMessage::Unsubscribe { channel, id } => {
                (Some(self.unsubscribe(&channel, id)), Step::Continue)
            }
            ClientMessage::Chat {
                session,
                message,
                id,
            } => (Some(self.chat(session, message, id).await), Step::Continue),
            ClientMessage::Trade { intent, id } => {
                (Some(self.trade(intent, id).await), Step::Continue)
            }
        }
    }

    async fn authenticate(&mut self, token: &str, id: Value) -> (Option<Value>, Step) {
        match self.state.tokens.verify(token).await {
            Ok(claims) => {
                if let Some(old) = &self.claims
                    && (old.sub != claims.sub || old.tenant_id() != claims.tenant_id())
                {
                    tracing::info!(target: target::SECURITY, connection = self.registration.id, "websocket token of another subject refused");
                    return (
                        Some(error_frame(
                            &id,
                            ErrorCode::PermissionDenied,
                            "a fresh token must belong to the same subject and tenant",
                        )),
                        Step::Continue,
                    );
                }
                self.deadline = expiry_instant(&claims);
                self.claims = Some(claims);
                let first = std::mem::replace(&mut self.pending_auth, false);
                let dropped = self.drop_unauthorized();
                let mut reply = if first {
                    self.welcome()
                } else {
                    json!({"type": "ack", "action": "auth", "unsubscribed": dropped})
                };
                reply["id"] = id;
                (Some(reply), Step::Continue)
            }
            Err(error) => {
                // Charged to the client address like a token refused at connect.
                // Its events carry the connection, in a span only while it runs.
                let span = tracing::info_span!(target: target::WEBSOCKET, "websocket", connection = self.registration.id);
                let charged = self.refusals.charge_on_socket(SocketEndpoint::Ws, &error);
                if let Some(outcome) = charged.instrument(span).await {
                    let reply = rate_limited_frame(&id, &outcome);
                    let step = if self.pending_auth {
                        Step::Close(Closing::new(
                            CLOSE_RATE_LIMITED,
                            "rate_limited",
                            "rate limited; retry after the error's retry_after_seconds",
                        ))
                    } else {
                        Step::Continue
                    };
                    return (Some(reply), step);
                }
                let reply = error_frame(&id, ErrorCode::Unauthenticated, error.to_string());
                if self.pending_auth {
                    (
                        Some(reply),
                        Step::Close(Closing::new(
                            CLOSE_UNAUTHENTICATED,
                            "unauthenticated",
                            "token refused",
                        )),
                    )
                } else {
                    (Some(reply), Step::Continue)
                }
            }
        }
    }

    /// Stops following the channels the current scopes no longer allow (after a fresh token
    /// with fewer scopes); the names of those channels.
    fn drop_unauthorized(&mut self) -> Vec<String> {
        let scopes: Vec<String> = self.scopes().into_iter().map(str::to_owned).collect();
        let mut dropped = Vec::new();
        let hub = self.state.hub.clone();
        let conn = self.registration.id;
        self.following.retain(|(channel, subject)| {
            let allowed = authorize(
                &Action::Subscribe(channel.clone()),
                scopes.iter().map(String::as_str),
            )
            .is_ok();
            if !allowed {
                hub.unfollow(conn, subject);
                dropped.push(channel.to_string());
            }
            allowed
        });
        if !dropped.is_empty() {
            tracing::info!(target: target::SECURITY, connection = conn, channels = ?dropped, "websocket subscriptions dropped after a narrower token");
        }
        dropped
    }

    /// Charges one action of `route`'s class to the verified user; the `rate_limited` error
    /// frame when the quota is spent.
    async fn charge_action(&self, route: &str, claims: &Claims, id: &Value) -> Result<(), Value> {
        let Some(outcome) = self.state.limiter.check_user(route, claims).await else {
            return Ok(());
        };
        if outcome.decision.allowed {
            return Ok(());
        }
        tracing::info!(target: target::SECURITY, connection = self.registration.id, tier = outcome.charge.tier.as_str(), class = %outcome.class, retry_after_secs = outcome.retry_after_secs(), "websocket action rate limited");
        Err(rate_limited_frame(id, &outcome))
    }

    fn check(&self, action: &Action, id: &Value) -> Result<(), Value> {
        authorize(action, self.scopes()).map_err(|needed| {
            tracing::info!(target: target::SECURITY, connection = self.registration.id, scope = needed, "websocket action refused");
            error_frame(
                id,
                ErrorCode::PermissionDenied,
                format!("missing scope `{needed}`"),
            )
        })
    }

    fn subscribe(&mut self, channel: &str, id: Value) -> Value {
        let channel = match Channel::parse(channel) {
            Ok(c) => c,
            Err(e) => return error_frame(&id, ErrorCode::InvalidArgument, e.to_string()),
        };
        let action = Action::Subscribe(channel.clone());
        if let Err(reply) = self.check(&action, &id) {
            return reply;
        }
        let tenant = match (&self.claims, channel.kind().per_tenant()) {
            (Some(c), _) => c.tenant_id().to_owned(),
            (None, false) => String::new(),
            (None, true) => {
                return error_frame(
                    &id,
                    ErrorCode::PermissionDenied,
                    "tenant channels need a verified token",
                );
            }
        };
        let conn = self.registration.id;
        if self.state.hub.following_count(conn) >= self.state.settings.max_subscriptions {
            return error_frame(
                &id,
                ErrorCode::FailedPrecondition,
                format!(
                    "a connection follows at most {} channels",
                    self.state.settings.max_subscriptions
                ),
            );
        }
        let owner = self.claims.as_ref().map_or("", |c| c.sub.as_str());
        let subject = channel.subject_for(&tenant, owner);
        if self.state.hub.follow(conn, &subject) {
            self.following.push((channel.clone(), subject));
        }
        json!({"type": "subscribed", "id": id, "channel": channel.to_string()})
    }

    fn unsubscribe(&mut self, channel: &str, id: Value) -> Value {
        let channel = match Channel::parse(channel) {
            Ok(c) => c,
            Err(e) => return error_frame(&id, ErrorCode::InvalidArgument, e.to_string()),
        };
        let (tenant, owner) = self
            .claims
            .as_ref()
            .map_or(("", ""), |c| (c.tenant_id(), c.sub.as_str()));
        let subject = channel.subject_for(tenant, owner);
        let was = self.state.hub.unfollow(self.registration.id, &subject);
        self.following.retain(|(_, s)| *s != subject);
        json!({"type": "unsubscribed", "id": id, "channel": channel.to_string(), "was_subscribed": was})
    }

    async fn chat(&mut self, session: String, message: Value, id: Value) -> Value {
        if let Err(reply) = self.check(&Action::Chat, &id) {
            return reply;
        }
        let Some(claims) = self.claims.clone() else {
            return error_frame(
                &id,
                ErrorCode::Unauthenticated,
                "chat needs a verified token",
            );
        };
        if Channel::parse(&format!("chat:{session}")).is_err() {
            return error_frame(
                &id,
                ErrorCode::InvalidArgument,
                "session ids are letters, digits, `-` and `_`",
            );
        }
        let Some(chat) = self.state.chat.clone() else {
            return error_frame(
                &id,
                ErrorCode::Unavailable,
                "chat over the websocket is not enabled on this gateway yet",
            );
        };
        // Taken before the charge, so a refused turn costs no quota; given back if refused.
        let Ok(slot) = self.turn_slots.clone().try_acquire_owned() else {
            return error_frame(
                &id,
                ErrorCode::RateLimited,
                format!(
                    "a connection runs at most {MAX_TURNS_IN_FLIGHT} chat turns at once; wait for a reply or error on the session channel"
                ),
            );
        };
        if let Err(refusal) = self.charge_action(CHAT_ROUTE, &claims, &id).await {
            return refusal;
        }
        let scope = TurnScope {
            cancel: self.turns.child_token(),
            _slot: slot,
        };
        match chat.handle(claims, session, message, scope).await {
            Ok(data) => json!({"type": "ack", "action": "chat", "id": id, "data": data}),
            Err(e) => error_frame(&id, e.code, e.message),
        }
    }

    async fn trade(&mut self, intent: Value, id: Value) -> Value {
        if let Err(reply) = self.check(&Action::Trade, &id) {
            return reply;
        }
        let Some(claims) = &self.claims else {
            return error_frame(
                &id,
                ErrorCode::Unauthenticated,
                "trades need a verified token",
            );
        };
        if let Err(refusal) = self.charge_action(TRADE_ROUTE, claims, &id).await {
            return refusal;
        }
        if !intent.is_object() {
            return error_frame(
                &id,
                ErrorCode::InvalidArgument,
                "intent must be a json object",
            );
        }
        let intent_id = uuid::Uuid::now_v7();
        let subject = format!(
            "{TRADE_SUBJECT_PREFIX}.{}",
            encode_tenant(claims.tenant_id())
        );
        let payload = json!({
            "id": intent_id,
            "tenant": claims.tenant_id(),
            "subject": claims.sub,
            "intent": intent,
            "received_at_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        });
        match self
            .state
            .bus
            .publish(&subject, Headers::new(), Bytes::from(payload.to_string()))
            .await
        {
            Ok(()) => {
                json!({"type": "ack", "action": "trade", "id": id, "intent_id": intent_id, "published_on": subject})
            }
            Err(e) => {
                tracing::warn!(target: target::WEBSOCKET, error = %e, "trade intent publish failed");
                error_frame(
                    &id,
                    ErrorCode::Unavailable,
                    "the bus did not take the trade intent; retry",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_that_times_out_is_told_apart_from_a_failed_one() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Message>(1);
        tx.try_send(Message::Ping(Bytes::new())).unwrap();
        let mut sink = tokio_util::sync::PollSender::new(tx);
        let stalled = send_within(
            &mut sink,
            Message::Ping(Bytes::new()),
            Duration::from_millis(20),
        )
        .await;
        assert_eq!(stalled, Err(Unsent::Slow));
        drop(rx);
        let gone = send_within(
            &mut sink,
            Message::Ping(Bytes::new()),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(gone, Err(Unsent::Gone));
    }

    #[test]
    fn far_deadlines_are_capped_instead_of_overflowing() {
        let before = Instant::now();
        for secs in [u64::MAX, u64::MAX / 2, 1 << 62] {
            let far = instant_after(secs);
            assert!(far >= before + FAR_FUTURE, "{secs}");
            assert!(far <= Instant::now() + FAR_FUTURE, "{secs}");
        }
        let soon = instant_after(5);
        assert!(soon >= before + Duration::from_secs(5));
        assert!(soon <= Instant::now() + Duration::from_secs(5));
    }

    #[test]
    fn client_messages_parse_by_type() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","channel":"prices:BTC","id":7}"#).unwrap();
        assert!(
            matches!(m, ClientMessage::Subscribe { ref channel, .. } if channel == "prices:BTC")
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"launch"}"#).is_err());
        let m: ClientMessage = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Ping { id: Value::Null }));
    }
}
