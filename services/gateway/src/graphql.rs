//! GraphQL at `/graphql` (async-graphql): queries and mutations over HTTP `POST`, subscriptions
//! over WebSocket (`graphql-transport-ws`, and the older `graphql-ws`) on `GET /graphql`.
//!
//! A façade over the services, never a source of its own data: server status is each
//! service's `liquid.platform.v1.PlatformService/GetInfo` over gRPC; agents and tasks come from
//! the a2a service (cards over HTTP, tasks over its A2A gRPC binding); containers from
//! container-pool's `GetStatus`; prices from the hub (the last tick it forwarded, then live
//! ticks); chat is the gateway's own chat service ([`crate::chat`]); cowork sessions, plans,
//! steps, agents and event logs from cowork's REST API (cowork has no gRPC API of its own), its
//! live events from the hub's `cowork:<session>` channel. A field whose service is
//! not configured or does not answer resolves to an error naming the service, never its
//! address (that goes to the log; `extensions.code` is the platform's error code); nothing is
//! made up.
//!
//! Authentication: an HTTP request passes the gateway's token verification like every other
//! route; a WebSocket connection sends its token in the `Authorization` header at connect
//! (admitted as `/ws` is, [`EdgeAuth::verify_at_connect`]) or in `connection_init`'s payload
//! (`{"Authorization": "Bearer <jwt>"}` or `{"token": "<jwt>"}`) and is closed when that token
//! expires. A token refused in `connection_init` is charged to the client address like any
//! refusal at the edge: the socket closes with 4403, or with 4029 once that quota is spent. Scopes are those of REST: the gateway checks its own
//! fields (`write:chat` for chat, `read:prices` for prices), and the caller's token is
//! forwarded on every service call (gRPC metadata `authorization`, with W3C trace context from
//! [`GrpcTraceInjector`]) so each service authorises the caller itself. Depth and complexity
//! are limited by `graphql.max_depth` and `graphql.max_complexity`; a field that calls a service
//! (chat and subscriptions included) costs [`SERVICE_CALL_COST`] (or [`FAN_OUT_COST`] when it
//! asks them all) plus its selection, and a `tasks` page counts its selection once per task.
//! Chat turns are charged to the caller's quota of the chat route's rate-limit class, as REST
//! chat is. The request's `x-request-id` goes with every service call.
//!
//! Limits: a `POST` body is bounded by `server.body_limit_bytes` (413) and is JSON only
//! (multipart is 415); the WebSocket takes the `[websocket]` section's message size, auth
//! deadline, heartbeats, write timeout and `max_subscriptions` active streams, and closes with
//! `/ws`'s codes (a client that does not take a frame within `websocket.write_timeout_secs` is
//! a slow consumer: 4008, counted in `/ws`'s slow-consumer metrics).

mod operation_span;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{
    Context, Data, Error, ErrorExtensions, InputObject, Json, Object, Schema, SimpleObject,
    Subscription,
};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, Stream, StreamExt};
use liquid_a2a::pb as a2a;
use liquid_auth::{Authenticated, BearerToken, Claims, scopes, unix_now};
use liquid_kit::error::HasErrorCode;
use liquid_kit::server::REQUEST_ID_HEADER;
use liquid_kit::telemetry::{GrpcTraceInjector, SpanLink, target};
use liquid_kit::{ApiError, ErrorCode};
use liquid_llm::{Parameters, StreamEvent};
use liquid_proto::liquid::container_pool::v1 as pool;
use liquid_proto::liquid::platform::v1 as platform;
use liquid_runtime::Peer;
use liquid_runtime::platform::InstanceInfo;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tracing::Instrument;

use crate::auth::{Admitted, ConnectToken, EdgeAuth, RefusalCharge};
use crate::chat::{ChatBody, ChatService, MessageInput, reply_json};
use crate::coalesce::Outcome;
use crate::config::{GraphqlSettings, WebSocketSettings};
use crate::domain::channel::Channel;
use crate::domain::price::PriceTick;
use crate::graphql::operation_span::{OperationSpans, SocketTrace};
use crate::hub::{Hub, SocketEndpoint, SocketGauge};
use crate::ratelimit::{self, Outcome as RateOutcome, RateLimiter};
use crate::ws::{
    CLOSE_FRAME_BOUND, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_RATE_LIMITED, CLOSE_SLOW,
    CLOSE_TOKEN_EXPIRED, CLOSE_UNAUTHENTICATED, Unsent, send_within,
};

/// graphql-transport-ws's close code for a refused `connection_init`.
pub const CLOSE_FORBIDDEN: u16 = 4403;

/// The next GraphQL socket's id (see [`SocketTrace`]).
static NEXT_SOCKET_ID: AtomicU64 = AtomicU64::new(1);

/// How the reason of a `connection_init` refused for its token begins (closed with
/// [`CLOSE_FORBIDDEN`]).
const UNAUTHENTICATED_REASON: &str = "unauthenticated";

/// How the reason of a `connection_init` refused because the client address's quota is spent
/// begins (closed with [`CLOSE_RATE_LIMITED`], as `/ws`).
const RATE_LIMITED_REASON: &str = "rate_limited";

/// The close code of a `connection_init` refusal, told by its reason.
fn init_refusal_code(reason: &str) -> Option<u16> {
    if reason.starts_with(UNAUTHENTICATED_REASON) {
        Some(CLOSE_FORBIDDEN)
    } else if reason.starts_with(RATE_LIMITED_REASON) {
        Some(CLOSE_RATE_LIMITED)
    } else {
        None
    }
}

/// Complexity of a field that makes one call to a service (or a model) on top of its
/// selection's, so `graphql.max_complexity` bounds the calls a query can fan out to, not only
/// its size: a hundred aliased `containers` exceed the default of 1000.
pub const SERVICE_CALL_COST: usize = 10;

/// Complexity of a field that asks every configured service (or agent) at once.
pub const FAN_OUT_COST: usize = 5 * SERVICE_CALL_COST;

/// The REST route whose rate-limit class GraphQL chat turns are charged to
/// (`rate_limit.routes`), so a turn costs the same quota whichever way it comes.
const CHAT_ROUTE: &str = "/api/v1/chat";

/// Messages a GraphQL WebSocket queues for a slow client before its writer waits; the
/// executor waits with it (backpressure), so nothing grows without bound.
const SEND_QUEUE: usize = 32;

/// `tasks` page size when the query names none.
const DEFAULT_PAGE_SIZE: i32 = 20;

/// Largest `tasks` page (its selection counts once per task).
const MAX_PAGE_SIZE: i32 = 100;

/// The gateway's schema.
pub type LiquidSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// The verified caller of one GraphQL request or WebSocket connection.
#[derive(Clone)]
pub struct Caller {
    claims: Claims,
    token: BearerToken,
    host: Option<String>,
    /// The `x-request-id` of the HTTP request (or WebSocket upgrade), passed on to services.
    request_id: Option<String>,
}

impl Caller {
    fn new(claims: Claims, token: BearerToken, headers: &http::HeaderMap) -> Caller {
        Caller {
            claims,
            token,
            host: host_of(headers),
            request_id: headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// Adds the request's `x-request-id` to the headers of an HTTP call to a service.
    fn request_id_to(&self, headers: &mut http::HeaderMap) {
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| http::HeaderValue::from_str(id).ok())
        {
            headers.insert(REQUEST_ID_HEADER, id);
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Error {
    Error::new(message.into()).extend_with(|_, e| e.set("code", code.as_str()))
}

fn api_error(e: ApiError) -> Error {
    error(e.code, e.message)
}

/// The `unavailable` error of a service that did not answer: its name only, never its address.
fn unavailable(service: &str) -> Error {
    error(
        ErrorCode::Unavailable,
        crate::error::service_unavailable(service),
    )
}

/// The `rate_limited` error of a refused chat turn, with the figures `POST /api/v1/chat`'s 429
/// carries (`retryAfterSeconds` among them) in its extensions.
fn rate_limited(outcome: &RateOutcome) -> Error {
    let retry = outcome.retry_after_secs();
    tracing::info!(target: target::SECURITY, tier = outcome.charge.tier.as_str(), class = %outcome.class, retry_after_secs = retry, "graphql chat rate limited");
    let tier = outcome.charge.tier.as_str();
    let class = outcome.class.to_string();
    let limit = outcome.decision.limit;
    let period = outcome.period_secs;
    Error::new(outcome.refusal_message()).extend_with(move |_, e| {
        e.set("code", ErrorCode::RateLimited.as_str());
        e.set("tier", tier);
        e.set("class", class.as_str());
        e.set("limit", limit);
        e.set("periodSeconds", period);
        e.set("retryAfterSeconds", retry);
    })
}

/// Charges one chat turn (the `chat` mutation, a `chatStream` subscription) to the caller's
/// user quota of the chat route's class, as `POST /api/v1/chat` is charged: GraphQL is no way
/// around the chat limits. The `/graphql` request itself is charged to its own class as well.
async fn charge_chat_turn(ctx: &Context<'_>, c: &Caller) -> Result<(), Error> {
    let limiter = ctx.data::<RateLimiter>().map_err(|_| {
        error(
            ErrorCode::Internal,
            "this graphql request has no rate limiter; chat is refused",
        )
    })?;
    match limiter.check_user(CHAT_ROUTE, &c.claims).await {
        Some(outcome) if !outcome.decision.allowed => Err(rate_limited(&outcome)),
        _ => Ok(()),
    }
}

/// The active subscription streams of one GraphQL WebSocket, at most `max`
/// (`websocket.max_subscriptions`): each `prices`, `chatMessages` or `coworkEvents` field takes
/// one of the replica's hub registrations (at most `websocket.max_connections`), so without a bound
/// one socket could take them all. In the connection's data; a field takes a [`StreamSlot`]
/// that its stream holds until it ends.
#[derive(Clone)]
struct StreamSlots {
    active: Arc<AtomicUsize>,
    max: usize,
}

/// One active subscription stream; dropped with the stream, which frees the slot.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamSlots {
    fn new(max: usize) -> StreamSlots {
        StreamSlots {
            active: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    fn acquire(&self) -> Result<StreamSlot, Error> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| StreamSlot(self.active.clone()))
            .map_err(|_| {
                error(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "this connection already has {} active subscriptions \
                         (websocket.max_subscriptions); complete one before starting another",
                        self.max
                    ),
                )
            })
    }
}

/// A slot for one more subscription stream of this connection.
fn stream_slot(ctx: &Context<'_>) -> Result<StreamSlot, Error> {
    ctx.data::<StreamSlots>()
        .map_err(|_| {
            error(
                ErrorCode::InvalidArgument,
                "subscriptions are served over the graphql websocket only",
            )
        })?
        .acquire()
}

/// `stream`, holding `slot` until it ends or is dropped.
fn holding<S: Stream>(slot: StreamSlot, stream: S) -> impl Stream<Item = S::Item> {
    stream.map(move |item| {
        let _held = &slot;
        item
    })
}

fn caller<'a>(ctx: &'a Context<'_>) -> Result<&'a Caller, Error> {
    ctx.data::<Caller>()
        .map_err(|_| error(ErrorCode::Unauthenticated, "a verified token is required"))
}

fn require(caller: &Caller, scope: &str) -> Result<(), Error> {
    if caller.claims.exp <= unix_now() {
        return Err(error(ErrorCode::Unauthenticated, "token expired"));
    }
    caller
        .claims
        .require(scope)
        .map_err(|e| error(e.error_code(), e.to_string()))
}

/// The display name of a peer key (`container_pool` → `container-pool`).
fn service_name(key: &str) -> String {
    key.replace('_', "-")
}

type A2aGrpc =
    a2a::a2a_service_client::A2aServiceClient<InterceptedService<GrpcChannel, GrpcTraceInjector>>;

/// Where the services are and how to call them; schema data.
pub struct Backends {
    peers: Arc<BTreeMap<String, Peer>>,
    channels: Mutex<HashMap<String, GrpcChannel>>,
    http: reqwest::Client,
    timeout: Duration,
    gateway: Arc<InstanceInfo>,
    a2a_agents: Vec<String>,
    hub: Hub,
    chat: Option<ChatService>,
}

impl Backends {
    /// The peer `key` (`a2a`, `container_pool`...) with a gRPC address.
    fn grpc_peer(&self, key: &str) -> Result<&Peer, Error> {
        self.peers
            .get(key)
            .filter(|p| !p.grpc.is_empty())
            .ok_or_else(|| {
                error(
                    ErrorCode::Unavailable,
                    format!(
                        "the {} service is not configured on this gateway (peers.{key}.grpc is empty)",
                        service_name(key)
                    ),
                )
            })
    }

    fn http_peer(&self, key: &str) -> Result<&Peer, Error> {
        self.peers
            .get(key)
            .filter(|p| !p.http.is_empty())
            .ok_or_else(|| {
                error(
                    ErrorCode::Unavailable,
                    format!(
                        "the {} service is not configured on this gateway (peers.{key}.http is empty)",
                        service_name(key)
                    ),
                )
            })
    }

    /// A lazily connected channel to `url`, one per address.
    fn channel(&self, key: &str, url: &str) -> Result<GrpcChannel, Error> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| error(ErrorCode::Internal, "grpc channel table is poisoned"))?;
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| {
                tracing::warn!(target: target::GRAPHQL, service = key, url, error = %e, "peer grpc address is not a url");
                error(
                    ErrorCode::InvalidConfig,
                    format!(
                        "the {} service is misconfigured on this gateway (peers.{key}.grpc is not a url)",
                        service_name(key)
                    ),
                )
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout)
            .connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    fn request<T>(&self, caller: &Caller, message: T) -> Result<tonic::Request<T>, Error> {
        let mut request = tonic::Request::new(message);
        caller
            .token
            .apply_to_metadata(request.metadata_mut())
            .map_err(|e| error(e.error_code(), e.to_string()))?;
        if let Some(id) = caller
            .request_id
            .as_deref()
            .and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok())
        {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        request.set_timeout(self.timeout);
        Ok(request)
    }

    fn status_error(&self, key: &str, url: &str, status: &tonic::Status) -> Error {
        let code = status
            .metadata()
            .get("x-liquid-error-code")
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse)
            .unwrap_or(match status.code() {
                tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
                tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
                tonic::Code::NotFound => ErrorCode::NotFound,
                tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
                tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
                tonic::Code::ResourceExhausted => ErrorCode::RateLimited,
                tonic::Code::Unavailable | tonic::Code::Unknown => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            });
        let name = service_name(key);
        // The address and the transport's words stay in the log: clients never see where a
        // service runs.
        if code == ErrorCode::Unavailable {
            tracing::warn!(target: target::GRAPHQL, service = %name, url, message = status.message(), "service did not answer");
            return unavailable(&name);
        }
        tracing::debug!(target: target::GRAPHQL, service = %name, code = code.as_str(), "service call failed");
        error(
            code,
            format!("the {name} service refused: {}", status.message()),
        )
    }

    async fn get_info(&self, caller: &Caller, key: &str) -> Result<ServiceInfo, Error> {
        let peer = self.grpc_peer(key)?;
        let channel = self.channel(key, &peer.grpc)?;
        let mut client = platform::platform_service_client::PlatformServiceClient::with_interceptor(
            channel,
            GrpcTraceInjector,
        );
        let request = self.request(caller, platform::GetInfoRequest {})?;
        let info = client
            .get_info(request)
            .await
            .map_err(|s| self.status_error(key, &peer.grpc, &s))?
            .into_inner();
        let mut backends: Vec<BackendKind> = info
            .backends
            .into_iter()
            .map(|(role, kind)| BackendKind { role, kind })
            .collect();
        backends.sort_by(|a, b| a.role.cmp(&b.role));
        Ok(ServiceInfo {
            version: info.version,
            instance_id: info.instance_id,
            started_at: info.started_at,
            backends,
            fallbacks: info.fallbacks,
            caller: info.caller,
        })
    }

    fn own_info(&self, caller: &Caller) -> ServiceInfo {
        let info = &self.gateway;
        let mut backends: Vec<BackendKind> = info
            .backends
            .iter()
            .map(|(role, kind)| BackendKind {
                role: role.clone(),
                kind: kind.clone(),
            })
            .collect();
        backends.sort_by(|a, b| a.role.cmp(&b.role));
        ServiceInfo {
            version: info.version.clone(),
            instance_id: info.instance_id.to_string(),
            started_at: info.started_at.to_rfc3339(),
            backends,
            fallbacks: info.fallbacks.clone(),
            caller: caller.claims.sub.clone(),
        }
    }

    async fn status_of(&self, caller: &Caller, key: &str) -> ServiceStatus {
        let info = if key == "gateway" {
            Ok(self.own_info(caller))
        } else {
            self.get_info(caller, key).await
        };
        ServiceStatus {
            service: service_name(key),
            info,
        }
    }

    fn a2a(&self) -> Result<(A2aGrpc, String), Error> {
        let peer = self.grpc_peer("a2a")?;
        let channel = self.channel("a2a", &peer.grpc)?;
        Ok((
            a2a::a2a_service_client::A2aServiceClient::with_interceptor(channel, GrpcTraceInjector),
            peer.grpc.clone(),
        ))
    }

    fn a2a_request<T>(&self, caller: &Caller, message: T) -> Result<tonic::Request<T>, Error> {
        let mut request = self.request(caller, message)?;
        request.metadata_mut().insert(
            liquid_a2a::params::VERSION_HEADER,
            tonic::metadata::MetadataValue::from_static(liquid_a2a::PROTOCOL_VERSION),
        );
        Ok(request)
    }

    async fn agent_card(&self, caller: &Caller, name: Option<&str>) -> Result<AgentCard, Error> {
        let peer = self.http_peer("a2a")?;
        let path = match name {
            Some(n) => {
                check_agent_name(n)?;
                format!("/agents/{n}{}", liquid_a2a::card::WELL_KNOWN_PATH)
            }
            None => liquid_a2a::card::WELL_KNOWN_PATH.to_owned(),
        };
        let url = format!("{}{path}", peer.http.trim_end_matches('/'));
        let mut headers = http::HeaderMap::new();
        // The card names the address the caller used: the gateway's.
        if let Some(host) = caller
            .host
            .as_deref()
            .and_then(|h| http::HeaderValue::from_str(h).ok())
        {
            headers.insert("x-forwarded-host", host);
            headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
        }
        caller.request_id_to(&mut headers);
        liquid_kit::telemetry::inject_http(&mut headers);
        let response = self
            .http
            .get(&url)
            .headers(headers)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(target: target::GRAPHQL, service = "a2a", %url, error = %e, "service did not answer");
                unavailable("a2a")
            })?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            return Err(error(
                ErrorCode::NotFound,
                format!("the a2a service hosts no agent `{}`", name.unwrap_or("")),
            ));
        }
        if !status.is_success() {
            return Err(error(
                ErrorCode::Unavailable,
                format!("the a2a service answered http {status} for {path}"),
            ));
        }
        let card: a2a::AgentCard = response.json().await.map_err(|e| {
            tracing::warn!(target: target::GRAPHQL, service = "a2a", %url, error = %e, "agent card unreadable");
            error(
                ErrorCode::Unavailable,
                "the a2a service sent an unreadable agent card",
            )
        })?;
        Ok(AgentCard::from_pb(name.unwrap_or(""), card))
    }
}

impl Backends {
    /// `GET` on cowork's REST API (`peers.cowork.http`, no gRPC API of its own) with the
    /// caller's token, so cowork checks `cowork:read` and the tenant as for a REST call; its
    /// error envelope becomes the field's error with the same code.
    async fn cowork_get(&self, caller: &Caller, path: &str) -> Result<Value, Error> {
        let peer = self.http_peer("cowork")?;
        let url = format!("{}{path}", peer.http.trim_end_matches('/'));
        let mut headers = http::HeaderMap::new();
        caller
            .token
            .apply_to_headers(&mut headers)
            .map_err(|e| error(e.error_code(), e.to_string()))?;
        caller.request_id_to(&mut headers);
        liquid_kit::telemetry::inject_http(&mut headers);
        let response = self
            .http
            .get(&url)
            .headers(headers)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(target: target::GRAPHQL, service = "cowork", %url, error = %e, "service did not answer");
                unavailable("cowork")
            })?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| {
            tracing::warn!(target: target::GRAPHQL, service = "cowork", %url, %status, error = %e, "cowork answer unreadable");
            error(
                ErrorCode::Unavailable,
                format!("the cowork service sent an unreadable answer ({status})"),
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let code = body["error"]["code"]
            .as_str()
            .and_then(ErrorCode::parse)
            .unwrap_or(if status.is_server_error() {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Internal
            });
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        tracing::debug!(target: target::GRAPHQL, service = "cowork", code = code.as_str(), "service call failed");
        Err(error(
            code,
            format!("the cowork service refused: {message}"),
        ))
    }
}

/// A cowork id as it may appear in a path: a UUID's characters only.
fn check_cowork_id(what: &str, id: &str) -> Result<(), Error> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(error(
            ErrorCode::InvalidArgument,
            format!("{what} is a cowork id (a uuid)"),
        ))
    }
}

fn check_agent_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(error(
            ErrorCode::InvalidArgument,
            "agent names are letters, digits, - and _",
        ))
    }
}

/// Who the caller is.
#[derive(SimpleObject)]
pub struct Whoami {
    /// Subject.
    subject: String,
    /// Tenant (the subject when the token names none).
    tenant: String,
    /// Scopes.
    scopes: Vec<String>,
}

/// One backend of a service.
#[derive(SimpleObject, Clone)]
pub struct BackendKind {
    /// `database`, `bus` or `cache`.
    role: String,
    /// `postgres`, `sqlite`, `nats`, `memory`, `redis`.
    kind: String,
}

/// What a service says about itself (`GetInfo`).
#[derive(SimpleObject, Clone)]
pub struct ServiceInfo {
    /// Version.
    version: String,
    /// The answering replica.
    instance_id: String,
    /// When it started (RFC 3339).
    started_at: String,
    /// Its backends.
    backends: Vec<BackendKind>,
    /// Fallbacks it took at start-up.
    fallbacks: Vec<String>,
    /// The caller as the service verified it.
    caller: String,
}

/// A service and whether it answered.
pub struct ServiceStatus {
    service: String,
    info: Result<ServiceInfo, Error>,
}

#[Object]
impl ServiceStatus {
    /// Service name.
    async fn service(&self) -> &str {
        &self.service
    }

    /// Whether it answered `GetInfo`.
    async fn reachable(&self) -> bool {
        self.info.is_ok()
    }

    /// Its answer; an error naming the service when it did not answer.
    async fn info(&self) -> Result<&ServiceInfo, Error> {
        self.info.as_ref().map_err(Clone::clone)
    }
}

/// One interface of an agent.
#[derive(SimpleObject)]
pub struct AgentInterface {
    /// URL.
    url: String,
    /// `JSONRPC`, `HTTP+JSON` or `GRPC`.
    binding: String,
    /// gRPC tenant selecting the agent.
    tenant: String,
}

/// One skill of an agent.
#[derive(SimpleObject)]
pub struct AgentSkill {
    /// Id.
    id: String,
    /// Name.
    name: String,
    /// Description.
    description: String,
    /// Tags.
    tags: Vec<String>,
}

/// An agent of the a2a service, from its public card.
#[derive(SimpleObject)]
pub struct AgentCard {
    /// The name to pass as `agent` (empty for the root agent).
    agent: String,
    /// The card's name.
    name: String,
    /// Description.
    description: String,
    /// Version.
    version: String,
    /// Whether it streams.
    streaming: bool,
    /// Its interfaces (URLs through the gateway).
    interfaces: Vec<AgentInterface>,
    /// Its skills.
    skills: Vec<AgentSkill>,
}

impl AgentCard {
    fn from_pb(agent: &str, card: a2a::AgentCard) -> AgentCard {
        AgentCard {
            agent: agent.to_owned(),
            streaming: card
                .capabilities
                .as_ref()
                .and_then(|c| c.streaming)
                .unwrap_or(false),
            name: card.name,
            description: card.description,
            version: card.version,
            interfaces: card
                .supported_interfaces
                .into_iter()
                .map(|i| AgentInterface {
                    url: i.url,
                    binding: i.protocol_binding,
                    tenant: i.tenant,
                })
                .collect(),
            skills: card
                .skills
                .into_iter()
                .map(|s| AgentSkill {
                    id: s.id,
                    name: s.name,
                    description: s.description,
                    tags: s.tags,
                })
                .collect(),
        }
    }
}

/// An A2A task.
#[derive(SimpleObject)]
pub struct Task {
    /// Id.
    id: String,
    /// Context id.
    context_id: String,
    /// State (`TASK_STATE_COMPLETED`...).
    state: String,
    /// Text of the status message, if any.
    status_text: Option<String>,
    /// When the status was set (RFC 3339).
    updated_at: Option<String>,
    /// The whole task in ProtoJSON (history, artifacts, metadata).
    json: Json<Value>,
}

fn text_of(message: &a2a::Message) -> String {
    message
        .parts
        .iter()
        .filter_map(|p| match &p.content {
            Some(a2a::part::Content::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

fn state_name(state: i32) -> String {
    a2a::TaskState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN_{state}"))
}

impl Task {
    fn from_pb(task: a2a::Task) -> Task {
        let json = serde_json::to_value(&task).unwrap_or(Value::Null);
        let status = task.status.as_ref();
        Task {
            state: state_name(status.map_or(0, |s| s.state)),
            status_text: status
                .and_then(|s| s.message.as_ref())
                .map(text_of)
                .filter(|t| !t.is_empty()),
            updated_at: status
                .and_then(|s| s.timestamp.as_ref())
                .and_then(|t| t.to_rfc3339()),
            id: task.id,
            context_id: task.context_id,
            json: Json(json),
        }
    }
}

/// A page of tasks.
#[derive(SimpleObject)]
pub struct TaskPage {
    /// The tasks.
    tasks: Vec<Task>,
    /// Token of the next page (empty on the last).
    next_page_token: String,
    /// Tasks matching in total.
    total_size: i32,
}

/// What sending a message to an agent produced: a task, or a direct reply message.
#[derive(SimpleObject)]
pub struct AgentReply {
    /// The task, when the agent made one.
    task: Option<Task>,
    /// The reply's text, when the agent answered with a message.
    message_text: Option<String>,
    /// The reply in ProtoJSON.
    json: Json<Value>,
}

/// Pool counts of one container template.
#[derive(SimpleObject)]
pub struct TemplateStatus {
    /// Template name.
    name: String,
    /// Warm and free.
    idle: u32,
    /// Claimed.
    busy: u32,
    /// Being created.
    creating: u32,
    /// Claims waiting.
    waiting: u32,
    /// Warm minimum.
    min_idle: u32,
    /// Upper bound.
    max_total: u32,
}

/// One container host.
#[derive(SimpleObject)]
pub struct HostStatus {
    /// Name.
    name: String,
    /// Whether it answers.
    healthy: bool,
    /// Whether placement uses it.
    enabled: bool,
    /// Containers on it.
    containers: u32,
    /// Its capacity.
    capacity: u32,
}

/// The container pool's status (`GetStatus`).
#[derive(SimpleObject)]
pub struct ContainerPool {
    /// `docker` or `process` (not isolated).
    runtime: String,
    /// Per template.
    templates: Vec<TemplateStatus>,
    /// Per host.
    hosts: Vec<HostStatus>,
}

/// A price tick.
#[derive(SimpleObject)]
pub struct Price {
    /// Symbol.
    symbol: String,
    /// Price.
    price: f64,
    /// Observation time, Unix milliseconds.
    ts_ms: u64,
    /// Who published it (`simulated` for the built-in demo feed, not market data).
    source: String,
}

impl From<PriceTick> for Price {
    fn from(t: PriceTick) -> Price {
        Price {
            symbol: t.symbol,
            price: t.price,
            ts_ms: t.ts_ms,
            source: t.source,
        }
    }
}

/// A chat turn.
#[derive(InputObject)]
pub struct ChatInput {
    /// Session to continue (letters, digits, `-`, `_`); none: a single stateless turn.
    session: Option<String>,
    /// The user's message.
    message: String,
    /// Model (routed by `llm.routes`); none: `llm.default_model`.
    model: Option<String>,
    /// System prompt (a new session's, or this turn's).
    system: Option<String>,
    /// Sampling temperature.
    temperature: Option<f32>,
    /// Output token limit.
    max_tokens: Option<u32>,
}

impl ChatInput {
    fn into_body(self) -> ChatBody {
        let params =
            (self.temperature.is_some() || self.max_tokens.is_some()).then(|| Parameters {
                temperature: self.temperature,
                max_tokens: self.max_tokens,
                ..Parameters::default()
            });
        ChatBody {
            session: self.session,
            message: Some(MessageInput::Text(self.message)),
            model: self.model,
            system: self.system,
            params,
            ..ChatBody::default()
        }
    }
}

/// A model's answer.
#[derive(SimpleObject)]
pub struct ChatReply {
    /// Text.
    text: String,
    /// The model that answered.
    model: String,
    /// The provider that answered (`offline` for the built-in offline provider).
    provider: String,
    /// True when the offline provider answered (not a language model).
    offline: bool,
    /// Why it was offline, when it was.
    notice: Option<String>,
    /// The session, if any.
    session: Option<String>,
    /// `upstream`, `joined`, `cached` or `bypass`.
    coalesced: String,
    /// Why generation stopped.
    finish_reason: Json<Value>,
    /// Input tokens.
    input_tokens: u64,
    /// Output tokens.
    output_tokens: u64,
    /// Cost in USD when the model is priced.
    cost_usd: Option<f64>,
    /// Tool calls the model asked for.
    tool_calls: Json<Value>,
}

impl ChatReply {
    fn from_json(v: &Value) -> ChatReply {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        ChatReply {
            text: s("text"),
            model: s("model"),
            provider: s("provider"),
            offline: v["offline"].as_bool().unwrap_or(false),
            notice: v["notice"].as_str().map(str::to_owned),
            session: v["session"].as_str().map(str::to_owned),
            coalesced: s("coalesced"),
            finish_reason: Json(v["finish_reason"].clone()),
            input_tokens: v["usage"]["input_tokens"].as_u64().unwrap_or(0),
            output_tokens: v["usage"]["output_tokens"].as_u64().unwrap_or(0),
            cost_usd: v["cost_usd"].as_f64(),
            tool_calls: Json(v.get("tool_calls").cloned().unwrap_or(json!([]))),
        }
    }
}

/// One event of a streamed chat answer.
#[derive(SimpleObject)]
pub struct ChatEvent {
    /// `delta`, `tool_call_start`, `tool_call_delta` or `done`.
    kind: String,
    /// The new text of a `delta`.
    text: Option<String>,
    /// The tool call fragment of `tool_call_*`.
    tool_call: Option<Json<Value>>,
    /// The whole answer, on `done`.
    reply: Option<ChatReply>,
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_owned()
}

fn opt_str_of(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_owned)
}

fn strings_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A cowork deep-work session, as `GET /api/v1/cowork/sessions/{id}` shows it; its plan, steps,
/// agents and events are further calls to cowork, made only when selected.
pub struct CoworkSession {
    v: Value,
}

impl CoworkSession {
    fn id(&self) -> &str {
        self.v["session_id"].as_str().unwrap_or("")
    }
}

#[Object]
impl CoworkSession {
    /// Id.
    async fn session_id(&self) -> &str {
        self.id()
    }

    /// `planning`, `awaiting_approval`, `running`, `paused`, `completed`, `failed`,
    /// `rejected` or `cancelled`.
    async fn state(&self) -> String {
        str_of(&self.v, "state")
    }

    /// Title.
    async fn title(&self) -> String {
        str_of(&self.v, "title")
    }

    /// The request it was created with.
    async fn request(&self) -> String {
        str_of(&self.v, "request")
    }

    /// The workspace.
    async fn workspace(&self) -> String {
        str_of(&self.v, "workspace")
    }

    /// The staging sandbox (`/api/v1/sandbox/{id}`: diff, apply, rollback).
    async fn sandbox_id(&self) -> String {
        str_of(&self.v, "sandbox_id")
    }

    /// Requested strategy.
    async fn strategy(&self) -> String {
        str_of(&self.v, "strategy")
    }

    /// Current plan version (0: none yet).
    async fn plan_version(&self) -> i64 {
        self.v["plan_version"].as_i64().unwrap_or(0)
    }

    /// `model:<name>` or `offline`.
    async fn planner(&self) -> String {
        str_of(&self.v, "planner")
    }

    /// Why it failed.
    async fn error(&self) -> Option<String> {
        opt_str_of(&self.v, "error")
    }

    /// Who created it.
    async fn created_by(&self) -> String {
        str_of(&self.v, "created_by")
    }

    /// RFC 3339.
    async fn created_at(&self) -> String {
        str_of(&self.v, "created_at")
    }

    /// RFC 3339.
    async fn updated_at(&self) -> String {
        str_of(&self.v, "updated_at")
    }

    /// RFC 3339, once final.
    async fn finished_at(&self) -> Option<String> {
        opt_str_of(&self.v, "finished_at")
    }

    /// Steps by state (`{"succeeded": 2, "running": 1}`), once approved.
    async fn step_counts(&self) -> Json<Value> {
        Json(self.v["steps"].clone())
    }

    /// The plan under review or running (`version` none: the current one); null before the
    /// planner produced one.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn plan(
        &self,
        ctx: &Context<'_>,
        version: Option<i32>,
    ) -> Result<Option<CoworkPlan>, Error> {
        if version.is_none() && self.v["plan_version"].as_i64().unwrap_or(0) == 0 {
            return Ok(None);
        }
        let path = match version {
            Some(n) => format!("/api/v1/cowork/sessions/{}/plan?version={n}", self.id()),
            None => format!("/api/v1/cowork/sessions/{}/plan", self.id()),
        };
        let v = ctx
            .data::<Backends>()?
            .cowork_get(caller(ctx)?, &path)
            .await?;
        Ok(Some(CoworkPlan::from_json(&v)))
    }

    /// The steps with their state, runner and outcome (once approved).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn steps(&self, ctx: &Context<'_>) -> Result<Vec<CoworkStep>, Error> {
        let path = format!("/api/v1/cowork/sessions/{}/steps", self.id());
        let v = ctx
            .data::<Backends>()?
            .cowork_get(caller(ctx)?, &path)
            .await?;
        Ok(v["steps"]
            .as_array()
            .map(|a| a.iter().map(CoworkStep::from_json).collect())
            .unwrap_or_default())
    }

    /// The agents started for its steps (the first 500).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn agents(&self, ctx: &Context<'_>) -> Result<Vec<CoworkAgent>, Error> {
        let path = format!("/api/v1/cowork/agents?session_id={}&limit=500", self.id());
        let v = ctx
            .data::<Backends>()?
            .cowork_get(caller(ctx)?, &path)
            .await?;
        Ok(v["agents"]
            .as_array()
            .map(|a| a.iter().map(CoworkAgent::from_json).collect())
            .unwrap_or_default())
    }

    /// Its event log, oldest first (`limit` 1 to 500, default 100; `after` an event id).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        limit: Option<i32>,
    ) -> Result<Vec<CoworkEvent>, Error> {
        let limit = limit.unwrap_or(100);
        if !(1..=500).contains(&limit) {
            return Err(error(ErrorCode::InvalidArgument, "limit is 1 to 500"));
        }
        let mut path = format!("/api/v1/cowork/sessions/{}/events?limit={limit}", self.id());
        if let Some(a) = after {
            check_cowork_id("after", &a)?;
            path.push_str(&format!("&after={a}"));
        }
        let v = ctx
            .data::<Backends>()?
            .cowork_get(caller(ctx)?, &path)
            .await?;
        Ok(v["events"]
            .as_array()
            .map(|a| a.iter().map(CoworkEvent::from_json).collect())
            .unwrap_or_default())
    }

    /// The session as cowork sent it.
    async fn json(&self) -> Json<Value> {
        Json(self.v.clone())
    }
}

/// A page of cowork sessions, newest first.
#[derive(SimpleObject)]
pub struct CoworkSessionPage {
    /// The sessions.
    sessions: Vec<CoworkSession>,
    /// Pass as `cursor` for the next page (null on the last).
    next_cursor: Option<String>,
}

/// One step of a cowork plan.
#[derive(SimpleObject)]
pub struct CoworkPlanStep {
    /// Its id in the plan.
    id: String,
    /// Title.
    title: String,
    /// What the agent is asked to do.
    instructions: String,
    /// The specialist (`ui`, `api`, `security`, `test`, `general`).
    domain: String,
    /// Steps that must finish first.
    depends_on: Vec<String>,
    /// Files it may touch (glob patterns).
    file_scopes: Vec<String>,
    /// What it should produce.
    expected_artifacts: Vec<String>,
    /// `critical`, `high`, `normal` or `low`.
    priority: String,
}

/// A version of a cowork session's plan.
#[derive(SimpleObject)]
pub struct CoworkPlan {
    /// Version.
    version: i64,
    /// `model`, `offline` or `edited`.
    source: String,
    /// The plan's summary.
    summary: String,
    /// `sequential`, `parallel`, `hybrid` or `domain`.
    strategy: String,
    /// The steps.
    steps: Vec<CoworkPlanStep>,
    /// Step ids in waves that can run in parallel.
    waves: Vec<Vec<String>>,
    /// RFC 3339.
    created_at: String,
}

impl CoworkPlan {
    fn from_json(v: &Value) -> CoworkPlan {
        let plan = &v["plan"];
        CoworkPlan {
            version: v["version"].as_i64().unwrap_or(0),
            source: str_of(v, "source"),
            summary: str_of(plan, "summary"),
            strategy: str_of(plan, "strategy"),
            steps: plan["steps"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| CoworkPlanStep {
                            id: str_of(s, "id"),
                            title: str_of(s, "title"),
                            instructions: str_of(s, "instructions"),
                            domain: str_of(s, "domain"),
                            depends_on: strings_of(&s["depends_on"]),
                            file_scopes: strings_of(&s["file_scopes"]),
                            expected_artifacts: strings_of(&s["expected_artifacts"]),
                            priority: str_of(s, "priority"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            waves: v["waves"]
                .as_array()
                .map(|w| w.iter().map(strings_of).collect())
                .unwrap_or_default(),
            created_at: str_of(v, "created_at"),
        }
    }
}

/// A step of a running or finished cowork session.
#[derive(SimpleObject)]
pub struct CoworkStep {
    /// Id.
    step_id: String,
    /// Its id in the plan.
    key: String,
    /// `pending`, `running`, `succeeded`, `failed`...
    state: String,
    /// The plan step's title.
    title: String,
    /// The specialist.
    domain: String,
    /// Agents started for it.
    attempts: i64,
    /// Runner of the last agent.
    runner: Option<String>,
    /// The agent's closing words.
    summary: Option<String>,
    /// Why it failed.
    error: Option<String>,
    /// RFC 3339.
    started_at: Option<String>,
    /// RFC 3339.
    finished_at: Option<String>,
}

impl CoworkStep {
    fn from_json(v: &Value) -> CoworkStep {
        CoworkStep {
            step_id: str_of(v, "step_id"),
            key: str_of(v, "key"),
            state: str_of(v, "state"),
            title: str_of(&v["step"], "title"),
            domain: str_of(&v["step"], "domain"),
            attempts: v["attempts"].as_i64().unwrap_or(0),
            runner: opt_str_of(v, "runner"),
            summary: opt_str_of(v, "summary"),
            error: opt_str_of(v, "error"),
            started_at: opt_str_of(v, "started_at"),
            finished_at: opt_str_of(v, "finished_at"),
        }
    }
}

/// An agent cowork started for a step.
#[derive(SimpleObject)]
pub struct CoworkAgent {
    /// Id.
    agent_id: String,
    /// The step.
    step_id: String,
    /// Attempt at the step.
    attempt: i64,
    /// The specialist.
    domain: String,
    /// `critical`, `high`, `normal` or `low`.
    priority: String,
    /// `queued`, `running`, `succeeded`, `failed`, `dead`...
    state: String,
    /// Runner.
    runner: Option<String>,
    /// The container-pool claim it ran in.
    claim_id: Option<String>,
    /// Last heartbeat (RFC 3339).
    heartbeat_at: Option<String>,
}

impl CoworkAgent {
    fn from_json(v: &Value) -> CoworkAgent {
        CoworkAgent {
            agent_id: str_of(v, "agent_id"),
            step_id: str_of(v, "step_id"),
            attempt: v["attempt"].as_i64().unwrap_or(0),
            domain: str_of(v, "domain"),
            priority: str_of(v, "priority"),
            state: str_of(v, "state"),
            runner: opt_str_of(v, "runner"),
            claim_id: opt_str_of(v, "claim_id"),
            heartbeat_at: opt_str_of(v, "heartbeat_at"),
        }
    }
}

/// A cowork session event (`session:created`, `plan:generated`, `subtask:completed`...).
#[derive(SimpleObject)]
pub struct CoworkEvent {
    /// Id (the bus message id).
    event_id: Option<String>,
    /// Type.
    #[graphql(name = "type")]
    kind: String,
    /// The session.
    session_id: String,
    /// RFC 3339.
    time: String,
    /// The event's data.
    data: Json<Value>,
}

impl CoworkEvent {
    fn from_json(v: &Value) -> CoworkEvent {
        CoworkEvent {
            event_id: match &v["event_id"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
            kind: str_of(v, "type"),
            session_id: str_of(v, "session_id"),
            time: str_of(v, "time"),
            data: Json(v["data"].clone()),
        }
    }
}

fn chat_of<'a>(ctx: &'a Context<'_>) -> Result<&'a ChatService, Error> {
    ctx.data::<Backends>()?.chat.as_ref().ok_or_else(|| {
        error(
            ErrorCode::Unavailable,
            "chat is disabled on this gateway (chat.enabled)",
        )
    })
}

/// Queries.
pub struct Query;

#[Object]
impl Query {
    /// The verified caller.
    async fn whoami(&self, ctx: &Context<'_>) -> Result<Whoami, Error> {
        let c = caller(ctx)?;
        Ok(Whoami {
            subject: c.claims.sub.clone(),
            tenant: c.claims.tenant_id().to_owned(),
            scopes: c.claims.scopes().to_vec(),
        })
    }

    /// Every service this gateway knows, each asked over gRPC (`GetInfo`) with the caller's
    /// token; a service that does not answer has `reachable: false` and an error on `info`.
    #[graphql(complexity = "FAN_OUT_COST + child_complexity")]
    async fn status(&self, ctx: &Context<'_>) -> Result<Vec<ServiceStatus>, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let mut keys = vec!["gateway".to_owned()];
        keys.extend(
            backends
                .peers
                .iter()
                .filter(|(k, p)| k.as_str() != "gateway" && !p.grpc.is_empty())
                .map(|(k, _)| k.clone()),
        );
        Ok(futures_util::future::join_all(keys.iter().map(|k| backends.status_of(c, k))).await)
    }

    /// One service's status (`container-pool` or `container_pool`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn service(&self, ctx: &Context<'_>, name: String) -> Result<ServiceStatus, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let key = liquid_runtime::peer_key(&name);
        if key != "gateway" && !backends.peers.contains_key(&key) {
            let known: Vec<String> = backends.peers.keys().map(|k| service_name(k)).collect();
            return Err(error(
                ErrorCode::NotFound,
                format!(
                    "no service named `{name}` behind this gateway; known: {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(backends.status_of(c, &key).await)
    }

    /// The a2a service's root agent and the hosted agents in `graphql.a2a_agents`, from their
    /// public cards.
    #[graphql(complexity = "FAN_OUT_COST + child_complexity")]
    async fn agents(&self, ctx: &Context<'_>) -> Result<Vec<AgentCard>, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let mut names: Vec<Option<&str>> = vec![None];
        names.extend(backends.a2a_agents.iter().map(|n| Some(n.as_str())));
        let cards =
            futures_util::future::join_all(names.iter().map(|n| backends.agent_card(c, *n))).await;
        cards.into_iter().collect()
    }

    /// One agent's card (`name` none: the root agent).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn agent(&self, ctx: &Context<'_>, name: Option<String>) -> Result<AgentCard, Error> {
        let c = caller(ctx)?;
        ctx.data::<Backends>()?.agent_card(c, name.as_deref()).await
    }

    /// The caller's tasks at an agent (`agent` none: the root agent), newest first.
    #[graphql(
        complexity = "SERVICE_CALL_COST + page_size.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize * child_complexity"
    )]
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        agent: Option<String>,
        context_id: Option<String>,
        page_size: Option<i32>,
        page_token: Option<String>,
    ) -> Result<TaskPage, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let tenant = agent.unwrap_or_default();
        if !tenant.is_empty() {
            check_agent_name(&tenant)?;
        }
        let size = page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(error(ErrorCode::InvalidArgument, "pageSize is 1 to 100"));
        }
        let (mut client, url) = backends.a2a()?;
        let request = backends.a2a_request(
            c,
            a2a::ListTasksRequest {
                tenant,
                context_id: context_id.unwrap_or_default(),
                page_size: Some(size),
                page_token: page_token.unwrap_or_default(),
                ..Default::default()
            },
        )?;
        let page = client
            .list_tasks(request)
            .await
            .map_err(|s| backends.status_error("a2a", &url, &s))?
            .into_inner();
        Ok(TaskPage {
            tasks: page.tasks.into_iter().map(Task::from_pb).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size,
        })
    }

    /// One task.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn task(
        &self,
        ctx: &Context<'_>,
        id: String,
        agent: Option<String>,
        history_length: Option<i32>,
    ) -> Result<Task, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let (mut client, url) = backends.a2a()?;
        let request = backends.a2a_request(
            c,
            a2a::GetTaskRequest {
                tenant: agent.unwrap_or_default(),
                id,
                history_length,
            },
        )?;
        let task = client
            .get_task(request)
            .await
            .map_err(|s| backends.status_error("a2a", &url, &s))?
            .into_inner();
        Ok(Task::from_pb(task))
    }

    /// The container pool (`GetStatus`; the service requires `containers:read`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn containers(&self, ctx: &Context<'_>) -> Result<ContainerPool, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let peer = backends.grpc_peer("container_pool")?;
        let channel = backends.channel("container_pool", &peer.grpc)?;
        let mut client =
            pool::container_pool_service_client::ContainerPoolServiceClient::with_interceptor(
                channel,
                GrpcTraceInjector,
            );
        let status = client
            .get_status(backends.request(c, pool::GetStatusRequest {})?)
            .await
            .map_err(|s| backends.status_error("container_pool", &peer.grpc, &s))?
            .into_inner();
        Ok(ContainerPool {
            runtime: status.runtime,
            templates: status
                .templates
                .into_iter()
                .map(|t| TemplateStatus {
                    name: t.name,
                    idle: t.idle,
                    busy: t.busy,
                    creating: t.creating,
                    waiting: t.waiting,
                    min_idle: t.min_idle,
                    max_total: t.max_total,
                })
                .collect(),
            hosts: status
                .hosts
                .into_iter()
                .map(|h| HostStatus {
                    name: h.name,
                    healthy: h.healthy,
                    enabled: h.enabled,
                    containers: h.containers,
                    capacity: h.capacity,
                })
                .collect(),
        })
    }

    /// The newest tick of every symbol this gateway replica has forwarded (`read:prices`).
    async fn prices(&self, ctx: &Context<'_>) -> Result<Vec<Price>, Error> {
        require(caller(ctx)?, scopes::READ_PRICES)?;
        Ok(ctx
            .data::<Backends>()?
            .hub
            .latest_prices()
            .into_iter()
            .map(Price::from)
            .collect())
    }

    /// The caller's cowork sessions, newest first (`state` filters; `limit` 1 to 100, default
    /// 20), from cowork's REST API with the caller's token (`cowork:read`, the caller's tenant).
    #[graphql(
        complexity = "SERVICE_CALL_COST + limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize * child_complexity"
    )]
    async fn cowork_sessions(
        &self,
        ctx: &Context<'_>,
        state: Option<String>,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> Result<CoworkSessionPage, Error> {
        let c = caller(ctx)?;
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(error(ErrorCode::InvalidArgument, "limit is 1 to 100"));
        }
        let mut path = format!("/api/v1/cowork/sessions?limit={limit}");
        if let Some(s) = state {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "state is a session state such as running or awaiting_approval",
                ));
            }
            path.push_str(&format!("&state={s}"));
        }
        if let Some(cur) = cursor {
            check_cowork_id("cursor", &cur)?;
            path.push_str(&format!("&cursor={cur}"));
        }
        let v = ctx.data::<Backends>()?.cowork_get(c, &path).await?;
        Ok(CoworkSessionPage {
            sessions: v["sessions"]
                .as_array()
                .map(|a| a.iter().map(|s| CoworkSession { v: s.clone() }).collect())
                .unwrap_or_default(),
            next_cursor: match &v["next_cursor"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        })
    }

    /// One of the caller's cowork sessions (`cowork:read`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn cowork_session(&self, ctx: &Context<'_>, id: String) -> Result<CoworkSession, Error> {
        let c = caller(ctx)?;
        check_cowork_id("id", &id)?;
        let v = ctx
            .data::<Backends>()?
            .cowork_get(c, &format!("/api/v1/cowork/sessions/{id}"))
            .await?;
        Ok(CoworkSession { v })
    }

    /// The history of one of the caller's chat sessions (`write:chat`).
    async fn chat_session(&self, ctx: &Context<'_>, session: String) -> Result<Json<Value>, Error> {
        let c = caller(ctx)?;
        require(c, scopes::WRITE_CHAT)?;
        chat_of(ctx)?
            .history(&c.claims, &session)
            .await
            .map(Json)
            .map_err(api_error)
    }
}

/// Mutations.
pub struct Mutation;

#[Object]
impl Mutation {
    /// One chat turn (`write:chat`), as `POST /api/v1/chat` and charged to the same rate
    /// limit.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn chat(&self, ctx: &Context<'_>, input: ChatInput) -> Result<ChatReply, Error> {
        let c = caller(ctx)?;
        require(c, scopes::WRITE_CHAT)?;
        let chat = chat_of(ctx)?;
        charge_chat_turn(ctx, c).await?;
        let prepared = chat
            .prepare(&c.claims, input.into_body(), None)
            .await
            .map_err(api_error)?;
        let reply = chat.complete(prepared).await.map_err(api_error)?;
        Ok(ChatReply::from_json(&reply))
    }

    /// Removes the caller's tenant's cached chat answers (`write:chat`); how many.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn invalidate_chat_cache(&self, ctx: &Context<'_>) -> Result<u64, Error> {
        let c = caller(ctx)?;
        require(c, scopes::WRITE_CHAT)?;
        chat_of(ctx)?
            .coalescer()
            .invalidate_tenant(c.claims.tenant_id())
            .await
            .map_err(|e| error(e.error_code(), e.to_string()))
    }

    /// Sends a text message to an agent (`agent` none: the root agent).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn send_agent_message(
        &self,
        ctx: &Context<'_>,
        text: String,
        agent: Option<String>,
        context_id: Option<String>,
        task_id: Option<String>,
    ) -> Result<AgentReply, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let (mut client, url) = backends.a2a()?;
        let message = a2a::Message {
            message_id: uuid::Uuid::now_v7().to_string(),
            context_id: context_id.unwrap_or_default(),
            task_id: task_id.unwrap_or_default(),
            role: a2a::Role::User as i32,
            parts: vec![a2a::Part {
                content: Some(a2a::part::Content::Text(text)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = backends.a2a_request(
            c,
            a2a::SendMessageRequest {
                tenant: agent.unwrap_or_default(),
                message: Some(message),
                ..Default::default()
            },
        )?;
        let response = client
            .send_message(request)
            .await
            .map_err(|s| backends.status_error("a2a", &url, &s))?
            .into_inner();
        let json = serde_json::to_value(&response).unwrap_or(Value::Null);
        Ok(match response.payload {
            Some(a2a::send_message_response::Payload::Task(t)) => AgentReply {
                task: Some(Task::from_pb(t)),
                message_text: None,
                json: Json(json),
            },
            Some(a2a::send_message_response::Payload::Message(m)) => AgentReply {
                task: None,
                message_text: Some(text_of(&m)),
                json: Json(json),
            },
            None => AgentReply {
                task: None,
                message_text: None,
                json: Json(json),
            },
        })
    }

    /// Cancels a task.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn cancel_task(
        &self,
        ctx: &Context<'_>,
        id: String,
        agent: Option<String>,
    ) -> Result<Task, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let (mut client, url) = backends.a2a()?;
        let request = backends.a2a_request(
            c,
            a2a::CancelTaskRequest {
                tenant: agent.unwrap_or_default(),
                id,
                ..Default::default()
            },
        )?;
        let task = client
            .cancel_task(request)
            .await
            .map_err(|s| backends.status_error("a2a", &url, &s))?
            .into_inner();
        Ok(Task::from_pb(task))
    }
}

/// Follows hub subjects as a pseudo-connection: the `data` of each message until the consumer
/// falls behind its queue (then the stream ends).
fn follow(hub: &Hub, subjects: &[String]) -> Result<impl Stream<Item = Value> + use<>, Error> {
    let registration = hub.register().ok_or_else(|| {
        error(
            ErrorCode::Unavailable,
            "this gateway replica holds its maximum of hub registrations \
             (websocket.max_connections); retry later",
        )
    })?;
    for subject in subjects {
        hub.follow(registration.id, subject);
    }
    Ok(futures_util::stream::unfold(
        registration,
        |mut reg| async move {
            loop {
                let frame = tokio::select! {
                    biased;
                    () = reg.slow.cancelled() => return None,
                    frame = reg.inbox.recv() => frame?,
                };
                if let Ok(mut v) = serde_json::from_str::<Value>(frame.as_str()) {
                    return Some((v["data"].take(), reg));
                }
            }
        },
    ))
}

/// Subscriptions.
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Price ticks of `symbols` as the hub forwards them (`read:prices`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn prices(
        &self,
        ctx: &Context<'_>,
        symbols: Vec<String>,
    ) -> Result<impl Stream<Item = Price> + use<>, Error> {
        require(caller(ctx)?, scopes::READ_PRICES)?;
        let slot = stream_slot(ctx)?;
        if symbols.is_empty() || symbols.len() > 64 {
            return Err(error(ErrorCode::InvalidArgument, "name 1 to 64 symbols"));
        }
        let subjects = symbols
            .iter()
            .map(|s| {
                Channel::prices(s)
                    .map(|c| c.subject(""))
                    .map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stream = follow(&ctx.data::<Backends>()?.hub, &subjects)?;
        Ok(holding(
            slot,
            stream.filter_map(|v| async move {
                serde_json::from_value::<PriceTick>(v).ok().map(Price::from)
            }),
        ))
    }

    /// Messages on the caller's `chat:<session>` channel: replies, deltas and errors of
    /// WebSocket chat turns and session replies of every replica (`write:chat`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn chat_messages(
        &self,
        ctx: &Context<'_>,
        session: String,
    ) -> Result<impl Stream<Item = Json<Value>> + use<>, Error> {
        let c = caller(ctx)?;
        require(c, scopes::WRITE_CHAT)?;
        crate::chat::check_session_id(&session).map_err(api_error)?;
        let channel = Channel::parse(&format!("chat:{session}"))
            .map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))?;
        let subject = channel.subject_for(c.claims.tenant_id(), &c.claims.sub);
        let slot = stream_slot(ctx)?;
        Ok(holding(
            slot,
            follow(&ctx.data::<Backends>()?.hub, &[subject])?.map(Json),
        ))
    }

    /// One chat turn, streamed (`write:chat`; charged to the chat rate limit like
    /// `POST /api/v1/chat`): deltas, tool call fragments, then `done`.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn chat_stream(
        &self,
        ctx: &Context<'_>,
        input: ChatInput,
    ) -> Result<impl Stream<Item = Result<ChatEvent, Error>> + use<>, Error> {
        let c = caller(ctx)?;
        require(c, scopes::WRITE_CHAT)?;
        let chat = chat_of(ctx)?.clone();
        let slot = stream_slot(ctx)?;
        charge_chat_turn(ctx, c).await?;
        let prepared = chat
            .prepare(&c.claims, input.into_body(), None)
            .await
            .map_err(api_error)?;
        let tenant = c.claims.tenant_id().to_owned();
        let owner = c.claims.sub.clone();
        let session = prepared.session().map(str::to_owned);
        let mut prepared_slot = Some(prepared);
        let (stream, outcome) = chat.stream(&mut prepared_slot).await.map_err(api_error)?;
        Ok(holding(
            slot,
            chat_events(chat, stream, outcome, tenant, owner, session),
        ))
    }

    /// Events of one of the caller's cowork sessions as cowork publishes them on the
    /// `cowork:<session>` channel, from now on (`cowork:read`; cowork is asked first, so an
    /// unknown session or another tenant's is `not_found`).
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn cowork_events(
        &self,
        ctx: &Context<'_>,
        session: String,
    ) -> Result<impl Stream<Item = CoworkEvent> + use<>, Error> {
        let c = caller(ctx)?;
        require(c, scopes::COWORK_READ)?;
        check_cowork_id("session", &session)?;
        let channel = Channel::parse(&format!("cowork:{session}"))
            .map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))?;
        let backends = ctx.data::<Backends>()?;
        let slot = stream_slot(ctx)?;
        // Follow before asking, so nothing published in between is missed.
        let stream = follow(&backends.hub, &[channel.subject(c.claims.tenant_id())])?;
        backends
            .cowork_get(c, &format!("/api/v1/cowork/sessions/{session}"))
            .await?;
        Ok(holding(slot, stream.map(|v| CoworkEvent::from_json(&v))))
    }

    /// Updates of a task until it reaches a final state.
    #[graphql(complexity = "SERVICE_CALL_COST + child_complexity")]
    async fn task_updates(
        &self,
        ctx: &Context<'_>,
        id: String,
        agent: Option<String>,
    ) -> Result<impl Stream<Item = Result<Json<Value>, Error>> + use<>, Error> {
        let c = caller(ctx)?;
        let backends = ctx.data::<Backends>()?;
        let slot = stream_slot(ctx)?;
        let (mut client, url) = backends.a2a()?;
        let mut request = backends.a2a_request(
            c,
            a2a::SubscribeToTaskRequest {
                tenant: agent.unwrap_or_default(),
                id,
            },
        )?;
        // A subscription lasts as long as the task; only the call's set-up is bounded.
        request.metadata_mut().remove("grpc-timeout");
        let stream = client
            .subscribe_to_task(request)
            .await
            .map_err(|s| backends.status_error("a2a", &url, &s))?
            .into_inner();
        let err = move |s: tonic::Status| {
            error(
                ErrorCode::Unavailable,
                format!("the a2a task stream failed: {}", s.message()),
            )
        };
        Ok(holding(
            slot,
            stream.map(move |item| {
                item.map(|event| Json(serde_json::to_value(&event).unwrap_or(Value::Null)))
                    .map_err(&err)
            }),
        ))
    }
}

fn chat_events(
    chat: ChatService,
    stream: liquid_llm::ChatStream,
    outcome: Outcome,
    tenant: String,
    owner: String,
    session: Option<String>,
) -> impl Stream<Item = Result<ChatEvent, Error>> {
    futures_util::stream::unfold(Some((chat, stream)), move |state| {
        let tenant = tenant.clone();
        let owner = owner.clone();
        let session = session.clone();
        async move {
            let (chat, mut stream) = state?;
            let item = stream.next().await?;
            let event = match item {
                Ok(StreamEvent::Completed { response }) => {
                    let reply = reply_json(&response, session.as_deref(), outcome);
                    if let Some(s) = &session {
                        chat.publish(&tenant, &owner, s, "reply", &reply).await;
                    }
                    return Some((
                        Ok(ChatEvent {
                            kind: "done".into(),
                            text: None,
                            tool_call: None,
                            reply: Some(ChatReply::from_json(&reply)),
                        }),
                        None,
                    ));
                }
                Ok(StreamEvent::TextDelta { text }) => ChatEvent {
                    kind: "delta".into(),
                    text: Some(text),
                    tool_call: None,
                    reply: None,
                },
                Ok(StreamEvent::ToolCallStart { index, id, name }) => ChatEvent {
                    kind: "tool_call_start".into(),
                    text: None,
                    tool_call: Some(Json(json!({"index": index, "id": id, "name": name}))),
                    reply: None,
                },
                Ok(StreamEvent::ToolCallDelta { index, arguments }) => ChatEvent {
                    kind: "tool_call_delta".into(),
                    text: None,
                    tool_call: Some(Json(json!({"index": index, "arguments": arguments}))),
                    reply: None,
                },
                Err(e) => return Some((Err(api_error(crate::chat::llm_error(&e))), None)),
            };
            Some((Ok(event), Some((chat, stream))))
        }
    })
}

/// What the `/graphql` routes need.
#[derive(Clone)]
pub struct GraphqlState {
    /// The schema.
    pub schema: LiquidSchema,
    /// Verifies WebSocket tokens.
    pub tokens: EdgeAuth,
    /// Charges WebSocket connects and GraphQL chat turns.
    pub limiter: RateLimiter,
    /// `[websocket]`: the subscription socket's message size, auth deadline, heartbeats and
    /// active subscriptions.
    pub websocket: Arc<WebSocketSettings>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Admits sockets against `websocket.max_connections` and tracks their tasks for the
    /// shutdown drain.
    pub hub: Hub,
}

/// Builds the schema.
#[allow(clippy::too_many_arguments)]
pub fn schema(
    settings: &GraphqlSettings,
    peers: Arc<BTreeMap<String, Peer>>,
    gateway: Arc<InstanceInfo>,
    hub: Hub,
    chat: Option<ChatService>,
) -> LiquidSchema {
    let backends = Backends {
        peers,
        channels: Mutex::new(HashMap::new()),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default(),
        timeout: Duration::from_secs(settings.call_timeout_secs),
        gateway,
        a2a_agents: settings.a2a_agents.clone(),
        hub,
        chat,
    };
    let builder = Schema::build(Query, Mutation, SubscriptionRoot)
        .data(backends)
        .limit_depth(settings.max_depth)
        .limit_complexity(settings.max_complexity)
        .extension(OperationSpans);
    if settings.introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

fn host_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /graphql`: a query or mutation by the verified caller, as JSON. The body is read
/// here within the server's body limit (`server.body_limit_bytes`, which the host sets as
/// axum's `DefaultBodyLimit`): async-graphql-axum's extractor reads the whole body whatever
/// its size, and takes multipart uploads, which no field of this schema has.
pub async fn execute(
    State(state): State<GraphqlState>,
    Authenticated(claims): Authenticated,
    token: BearerToken,
    request: Request,
) -> Response {
    let caller = Caller::new(claims, token, request.headers());
    if is_multipart(request.headers()) {
        return ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "/graphql takes no multipart requests (this schema has no uploads); send the query as application/json",
        )
        .into_response();
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the graphql request is larger than this gateway accepts (server.body_limit_bytes); send a smaller query",
            )
            .into_response();
        }
        Err(rejection) => {
            return ApiError::new(
                ErrorCode::InvalidArgument,
                format!("the request body could not be read: {rejection}"),
            )
            .into_response();
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the body is not a graphql request (a json object with `query` and optional `variables` and `operationName`): {e}"
                ),
            )
            .into_response();
        }
    };
    let response = state
        .schema
        .execute(request.data(caller).data(state.limiter.clone()))
        .await;
    GraphQLResponse::from(response).into_response()
}

fn is_multipart(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case("multipart/"))
        })
}

/// The token of a `connection_init` payload: `Authorization`/`authorization` (`Bearer x`) or
/// `token`.
fn token_in_payload(payload: &Value) -> Option<String> {
    for key in ["Authorization", "authorization"] {
        if let Some(v) = payload[key].as_str() {
            return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned());
        }
    }
    payload["token"].as_str().map(str::to_owned)
}

/// `GET /graphql`: the subscription WebSocket, with the `[websocket]` section's limits: the
/// largest message (`max_message_bytes`), a caller by `auth_deadline_secs` (else 4001), a ping
/// every `heartbeat_secs` and a close (4003) after `idle_timeout_secs` without a frame from the
/// client, at most `max_subscriptions` active subscriptions; closed with 4002 when the token
/// expires and 1001 at shutdown (the codes of `/ws`).
pub async fn subscribe(State(state): State<GraphqlState>, request: Request) -> Response {
    let peer = ratelimit::peer_of(&request);
    let (mut parts, _body) = request.into_parts();
    let Admitted {
        caller,
        refusals,
        outcome,
    } = match state
        .tokens
        .verify_at_connect(&state.limiter, &parts, peer, ConnectToken::Header)
        .await
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let at_connect = caller.map(|(claims, token)| Caller::new(claims, token, &parts.headers));
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(p) => p,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let open = match state.hub.admit_socket(SocketEndpoint::Graphql) {
        Ok(open) => open,
        Err(full) => return full.into_response(),
    };
    let tasks = state.hub.tasks().clone();
    let max_message = state.websocket.max_message_bytes;
    // The connection outlives this request, whose span ends with the upgrade: its operations
    // get spans of their own that name the socket and link to this one.
    let trace = SocketTrace {
        id: NEXT_SOCKET_ID.fetch_add(1, Ordering::Relaxed),
        upgrade: SpanLink::current(),
    };
    tracing::debug!(target: target::GRAPHQL, socket = trace.id, "graphql websocket upgraded");
    let socket = GraphqlSocket {
        schema: state.schema,
        tokens: state.tokens,
        limiter: state.limiter,
        settings: state.websocket,
        shutdown: state.shutdown,
        protocol,
        at_connect,
        refusals,
        headers: parts.headers,
        trace,
    };
    let mut response = upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |ws| tasks.track_future(socket.run(ws, open)));
    if let Some(outcome) = &outcome {
        ratelimit::write_headers(response.headers_mut(), outcome);
    }
    response
}

/// One GraphQL WebSocket once upgraded.
struct GraphqlSocket {
    schema: LiquidSchema,
    tokens: EdgeAuth,
    limiter: RateLimiter,
    settings: Arc<WebSocketSettings>,
    shutdown: CancellationToken,
    protocol: GraphQLProtocol,
    /// The caller of a token sent at connect; else `connection_init` must bring one.
    at_connect: Option<Caller>,
    /// Charges a token refused in `connection_init` to the connect's client address.
    refusals: RefusalCharge,
    /// The upgrade request's headers (host and request id of a caller from `connection_init`).
    headers: http::HeaderMap,
    /// The socket's id and the upgrade request's span, for its operations' spans.
    trace: SocketTrace,
}

impl GraphqlSocket {
    /// Serves the socket: async-graphql speaks the protocol and writes into a queue; this
    /// loop owns the socket's sending half, so it can ping, and close with a code of its own
    /// (auth deadline, idle, expiry, shutdown) instead of dropping the connection.
    /// `_open` is the socket's admission, held until it closes.
    async fn run(self, socket: axum::extract::ws::WebSocket, _open: SocketGauge) {
        let GraphqlSocket {
            schema,
            tokens,
            limiter,
            settings,
            shutdown,
            protocol,
            at_connect,
            refusals,
            headers,
            trace,
        } = self;
        let socket_id = trace.id;
        let (expiry_tx, expiry_rx) =
            tokio::sync::watch::channel(at_connect.as_ref().map(|c| c.claims.exp));
        let mut data = Data::default();
        data.insert(limiter);
        data.insert(StreamSlots::new(settings.max_subscriptions));
        data.insert(trace);
        let authenticated = at_connect.is_some();
        if let Some(c) = at_connect {
            data.insert(c);
        }
        // Its events (a refused token) carry the socket, in a span only while it runs.
        let on_init = move |payload: Value| {
            let span = tracing::info_span!(
                target: target::GRAPHQL,
                "graphql connection_init",
                socket = socket_id
            );
            async move {
                if authenticated {
                    return Ok(Data::default());
                }
                let Some(token) = token_in_payload(&payload) else {
                    return Err(Error::new(format!(
                        "{UNAUTHENTICATED_REASON}: send {{\"Authorization\": \"Bearer <jwt>\"}} in connection_init"
                    )));
                };
                match tokens.verify(&token).await {
                    Ok(claims) => {
                        let _ = expiry_tx.send(Some(claims.exp));
                        let mut data = Data::default();
                        data.insert(Caller::new(claims, BearerToken::new(token), &headers));
                        Ok(data)
                    }
                    Err(e) => {
                        // Charged to the client address like a token refused at connect.
                        if let Some(outcome) =
                            refusals.charge_on_socket(SocketEndpoint::Graphql, &e).await
                        {
                            let retry = outcome.retry_after_secs();
                            return Err(Error::new(format!(
                                "{RATE_LIMITED_REASON}: this address's quota is spent; retry after {retry}s"
                            )));
                        }
                        Err(Error::new(format!("{UNAUTHENTICATED_REASON}: {e}")))
                    }
                }
            }
            .instrument(span)
        };
        let (mut socket_sink, socket_stream) = socket.split();
        // Any frame from the client (pongs included) shows it is alive.
        let opened = Instant::now();
        let heard = Arc::new(AtomicU64::new(0));
        let heard_in = heard.clone();
        let socket_stream = socket_stream.inspect(move |_| {
            let at = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            heard_in.store(at, Ordering::Relaxed);
        });
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(SEND_QUEUE);
        // graphql-transport-ws closes a refused connection_init with 4403 Forbidden, and this
        // gateway with 4029 once the address's quota is spent (as /ws); async-graphql sends
        // 1002 with the reason, so the reason decides the code here.
        let sink = tokio_util::sync::PollSender::new(out_tx)
            .sink_map_err(axum::Error::new)
            .with(|message: Message| async move {
                Ok::<_, axum::Error>(match message {
                    Message::Close(Some(frame)) => Message::Close(Some(CloseFrame {
                        code: init_refusal_code(&frame.reason).unwrap_or(frame.code),
                        reason: frame.reason,
                    })),
                    other => other,
                })
            });
        let serve =
            GraphQLWebSocket::new_with_pair(Box::pin(sink), socket_stream, schema, protocol)
                .with_data(data)
                .on_connection_init(on_init)
                .serve();
        tokio::pin!(serve);
        let mut serving = true;
        let expired = token_expiry(expiry_rx.clone());
        tokio::pin!(expired);
        let auth_deadline = tokio::time::sleep(Duration::from_secs(settings.auth_deadline_secs));
        tokio::pin!(auth_deadline);
        let mut awaiting_auth = !authenticated;
        let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
        // Every frame is bounded by the write timeout, as on /ws: a client that stops reading
        // is closed as a slow consumer instead of holding its task until the idle timeout.
        let write_timeout = Duration::from_secs(settings.write_timeout_secs);
        let every = Duration::from_secs(settings.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let closing = loop {
            tokio::select! {
                () = &mut serve, if serving => serving = false,
                message = out_rx.recv() => {
                    // None: the executor ended and everything it wrote is sent.
                    let Some(message) = message else { break None };
                    let close = matches!(message, Message::Close(_));
                    match send_within(&mut socket_sink, message, write_timeout).await {
                        Ok(()) if !close => {}
                        Ok(()) | Err(Unsent::Gone) => break None,
                        Err(Unsent::Slow) => break Some(SLOW_CONSUMER),
                    }
                }
                _ = heartbeat.tick() => {
                    let quiet = opened.elapsed().saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
                    if quiet > idle_timeout {
                        break Some((CLOSE_IDLE, "heartbeat timeout"));
                    }
                    match send_within(&mut socket_sink, Message::Ping(Bytes::new()), write_timeout).await {
                        Ok(()) => {}
                        Err(Unsent::Gone) => break None,
                        Err(Unsent::Slow) => break Some(SLOW_CONSUMER),
                    }
                }
                () = &mut auth_deadline, if awaiting_auth => {
                    if expiry_rx.borrow().is_none() {
                        break Some((CLOSE_UNAUTHENTICATED, "no connection_init with a valid token within the deadline"));
                    }
                    awaiting_auth = false;
                }
                () = &mut expired => {
                    break Some((CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a fresh token"));
                }
                () = shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
            }
        };
        if let Some((code, reason)) = closing {
            tracing::debug!(target: target::GRAPHQL, socket = socket_id, code, reason, "graphql websocket closed");
            if code == CLOSE_SLOW {
                // The series /ws counts its slow consumers in (`crate::ws`).
                metrics::counter!("liquid_gateway_ws_slow_consumers_total").increment(1);
                metrics::counter!("liquid_gateway_ws_closed_total", "reason" => "slow")
                    .increment(1);
            }
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            // Short, as on /ws: a client that does not read must not hold the task any longer.
            let _ = send_within(&mut socket_sink, frame, CLOSE_FRAME_BOUND).await;
        }
    }
}

/// Resolves when the connection's token expires (never before a token is known).
async fn token_expiry(mut expiry: tokio::sync::watch::Receiver<Option<u64>>) {
    loop {
        let exp = *expiry.borrow_and_update();
        match exp {
            Some(exp) => {
                let left = exp.saturating_sub(unix_now());
                tokio::time::sleep(Duration::from_secs(left)).await;
                return;
            }
            None => {
                if expiry.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The close of a client that did not take a frame within `websocket.write_timeout_secs`.
const SLOW_CONSUMER: (u16, &str) = (CLOSE_SLOW, "slow consumer: a write timed out");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_init_payload() {
        assert_eq!(
            token_in_payload(&json!({"Authorization": "Bearer a.b.c"})).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            token_in_payload(&json!({"token": "x.y.z"})).as_deref(),
            Some("x.y.z")
        );
        assert_eq!(token_in_payload(&json!({})), None);
    }

    #[test]
    fn stream_slots_are_bounded_and_freed_when_a_stream_ends() {
        let slots = StreamSlots::new(2);
        let a = slots.acquire().unwrap();
        let b = slots.acquire().unwrap();
        let refused = slots.acquire().err().unwrap();
        assert!(refused.message.contains("websocket.max_subscriptions"));
        drop(a);
        let stream = holding(slots.acquire().unwrap(), futures_util::stream::iter([1]));
        assert!(slots.acquire().is_err());
        drop(stream);
        drop(b);
        assert_eq!(slots.active.load(Ordering::Acquire), 0);
    }

    #[test]
    fn multipart_is_recognised_in_any_case() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_multipart(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("Multipart/Form-Data; boundary=x"),
        );
        assert!(is_multipart(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        assert!(!is_multipart(&headers));
    }

    #[test]
    fn peer_keys_read_as_service_names() {
        assert_eq!(service_name("container_pool"), "container-pool");
        assert!(check_agent_name("echo").is_ok());
        assert!(check_agent_name("../x").is_err());
    }
}
