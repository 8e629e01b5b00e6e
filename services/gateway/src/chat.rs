//! The chat API: `POST /api/v1/chat` (JSON, or SSE when asked), chat over the WebSocket
//! ([`ChatHandler`]) and the GraphQL chat fields, all with scope `write:chat`.
//!
//! Models are chosen by configuration (`[llm]` routes by model name, liquid-llm's
//! [`ModelRouter`]); a provider without a key answers through the offline provider, and every
//! such answer says so (`"offline": true` and a `notice`). Two modes:
//! - **session**: `session` (or, without one, the gateway-issued session of a valid
//!   `X-Session-Token`) names a conversation the gateway keeps ([`SessionClients`]: one client
//!   and history per user (tenant and token subject) and session, dropped after
//!   `llm.sessions.idle_ttl_secs` idle); the request carries the next `message`. Another user
//!   of the tenant naming the same session gets their own conversation, and a session of
//!   someone else is "not found" to them. Replies are also published on the owner's
//!   `chat:<session>` channel (`chat.publish_replies`, [`Channel::subject_for`]).
//! - **stateless**: `messages` is the whole conversation; nothing is kept.
//!
//! Every model call runs inside a [`coalesce::scoped`] tenant scope, so identical concurrent
//! requests of a tenant share one upstream call ([`crate::coalesce`]). A session turn is asked
//! in two steps ([`ModelSession::begin`]) so that the scope's [`Outcome`] reaches the session:
//! only the turn whose request went upstream counts the answer's tokens and cost as its
//! session's spend; a joined or cached answer is counted as shared ([`answer_source`]), and
//! the session's figures show both (`cost_usd` spent, `shared`).
//!
//! Streamed turns (SSE, GraphQL, WebSocket chat) send runs of text deltas in batches
//! ([`DELTA_BATCHING`]: up to 4 KiB, at most 25 ms after their first delta, flushed by any
//! other event), so a burst — a provider streaming word by word, a late joiner of a shared
//! call replaying its log — is a few events and bus messages rather than one per word, and a
//! WebSocket client's bounded send queue is not filled by one answer's words.
//!
//! WebSocket chat does not hold the connection's loop while the model answers: the action is
//! acknowledged at once with the turn id, and the turn's deltas, reply or error arrive on the
//! `chat:<session>` channel (subscribe first). Such a turn stops when its connection closes
//! ([`TurnScope`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use liquid_auth::{Authenticated, Claims, scopes};
use liquid_kit::error::HasErrorCode;
use liquid_kit::telemetry::target;
use liquid_kit::{ApiError, ErrorCode};
use liquid_llm::{
    AnswerSource, ChatRequest, ChatResponse, ChatStream, DeltaBatching, LlmError, Message,
    ModelClient, ModelRouter, ModelSession, Parameters, SessionClients, SessionKey, SessionOptions,
    StreamEvent, ToolChoice, ToolDefinition, batch_deltas,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::coalesce::{self, Coalescer, Outcome, SHARED_FAILURE_KIND};
use crate::config::ChatSettings;
use crate::domain::channel::{Channel, encode_tenant};
use crate::domain::session_token::SessionSigner;
use crate::hub::Hub;
use crate::ratelimit::SESSION_HEADER;
use crate::ws::{ChatHandler, TurnScope};

/// Longest chat session id (the channel name `chat:<session>` must fit the hub's limit).
pub const MAX_SESSION_LEN: usize = 128;

/// How streamed text deltas are batched before they are sent to a client or published on a
/// session's channel (liquid-llm's defaults: 4 KiB, 25 ms).
pub const DELTA_BATCHING: DeltaBatching = DeltaBatching::DEFAULT;

/// What the offline label says.
pub const OFFLINE_NOTICE: &str = "answered by the built-in offline provider because no API key is configured for this model's provider; it is not a language model. Set GEMINI_API_KEY, ANTHROPIC_API_KEY or OPENAI_API_KEY (or llm.providers.<name>.api_key) for real answers";

/// A message as the API takes it: plain text (a user message) or a full message object
/// (`{"role":"tool","results":[...]}` to answer tool calls).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageInput {
    /// The user's text.
    Text(String),
    /// Any message.
    Message(Message),
}

impl MessageInput {
    fn into_message(self) -> Message {
        match self {
            MessageInput::Text(text) => Message::user(text),
            MessageInput::Message(m) => m,
        }
    }
}

/// The body of `POST /api/v1/chat` (and the GraphQL chat input).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// The conversation to continue (letters, digits, `-`, `_`); with `message`.
    #[serde(default)]
    pub session: Option<String>,
    /// The next message of a session, or a single-turn question.
    #[serde(default)]
    pub message: Option<MessageInput>,
    /// A whole conversation, without a session.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// Model name (`llm.routes` picks the provider); empty: `llm.default_model`.
    #[serde(default)]
    pub model: Option<String>,
    /// System prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    /// Tool-calling mode.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Sampling parameters.
    #[serde(default)]
    pub params: Option<Parameters>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
}

/// One turn ready to run.
pub struct PreparedChat {
    tenant: String,
    /// The caller's subject: a session's owner.
    owner: String,
    session: Option<String>,
    turn: Turn,
}

enum Turn {
    Session(Arc<ModelSession>, Message),
    Stateless(ChatRequest),
}

impl PreparedChat {
    /// The session the turn belongs to, if any.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }
}

/// The chat service; cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<ChatInner>,
}

struct ChatInner {
    router: Arc<ModelRouter>,
    coalescer: Coalescer,
    sessions: SessionClients,
    hub: Hub,
    signer: Arc<SessionSigner>,
    settings: ChatSettings,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A model error as the API reports it (a shared flight's failure keeps its own message).
pub fn llm_error(error: &LlmError) -> ApiError {
    match error {
        LlmError::StreamError {
            kind,
            message,
            code,
            ..
        } if kind == SHARED_FAILURE_KIND => ApiError::new(*code, message.clone()),
        LlmError::RateLimited {
            retry_after: Some(wait),
            ..
        } => ApiError::new(error.error_code(), error.to_string())
            .with_details(json!({"retry_after_seconds": wait.as_secs().max(1)})),
        other => ApiError::new(other.error_code(), other.to_string()),
    }
}

/// Whose spend an answer is, from how the coalescer answered its request: the request that
/// went upstream (or was not coalesced) spent it; a joined or cached answer was spent once
/// elsewhere.
pub fn answer_source(outcome: Option<Outcome>) -> AnswerSource {
    match outcome {
        Some(Outcome::Joined) => AnswerSource::Shared,
        Some(Outcome::Cached) => AnswerSource::Cached,
        Some(Outcome::Upstream | Outcome::Bypass) | None => AnswerSource::Upstream,
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

/// The key of `caller`'s session `session`: sessions belong to one subject of one tenant
/// (both encoded as single tokens, so no pair of them collides with another).
fn session_key(caller: &Claims, session: &str) -> SessionKey {
    let owner = format!(
        "{}/{}",
        encode_tenant(caller.tenant_id()),
        encode_tenant(&caller.sub)
    );
    SessionKey::new(owner, session)
}

/// Checks a session id.
pub fn check_session_id(session: &str) -> Result<(), ApiError> {
    let ok = !session.is_empty()
        && session.len() <= MAX_SESSION_LEN
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "session ids are 1-{MAX_SESSION_LEN} letters, digits, `-` and `_`"
        )))
    }
}

/// The JSON of an answer: the model's response plus `session`, `offline`, `notice` and
/// `coalesced`.
pub fn reply_json(response: &ChatResponse, session: Option<&str>, outcome: Outcome) -> Value {
    let mut value = serde_json::to_value(response).unwrap_or_else(|_| json!({}));
    value["session"] = json!(session);
    value["offline"] = json!(response.is_offline());
    if response.is_offline() {
        value["notice"] = json!(OFFLINE_NOTICE);
    }
    value["coalesced"] = json!(outcome.as_str());
    value
}

fn event_json(event: &StreamEvent) -> Option<(&'static str, Value)> {
    match event {
        StreamEvent::TextDelta { text } => Some(("delta", json!({"text": text}))),
        StreamEvent::ToolCallStart { index, id, name } => Some((
            "tool_call_start",
            json!({"index": index, "id": id, "name": name}),
        )),
        StreamEvent::ToolCallDelta { index, arguments } => Some((
            "tool_call_delta",
            json!({"index": index, "arguments": arguments}),
        )),
        StreamEvent::Completed { .. } => None,
    }
}

impl ChatService {
    /// The chat service over `router`, coalescing through `coalescer` (which must wrap the
    /// same router), with sessions from `[llm.sessions]`.
    pub fn new(
        router: Arc<ModelRouter>,
        coalescer: Coalescer,
        session_policy: liquid_llm::SessionPolicy,
        hub: Hub,
        signer: Arc<SessionSigner>,
        settings: &ChatSettings,
        shutdown: CancellationToken,
    ) -> ChatService {
        let client: Arc<dyn ModelClient> = Arc::new(coalescer.clone());
        let sessions = SessionClients::new(client, session_policy, shutdown.clone());
        ChatService {
            inner: Arc::new(ChatInner {
                router,
                coalescer,
                sessions,
                hub,
                signer,
                settings: settings.clone(),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// The coalescer in front of the models.
    pub fn coalescer(&self) -> &Coalescer {
        &self.inner.coalescer
    }

    /// Turns running in tasks of their own (WebSocket chat, REST session turns); shutdown
    /// waits for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// The session id of a valid `X-Session-Token`, if one came.
    pub fn session_from_headers(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers.get(SESSION_HEADER)?.to_str().ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.inner.signer.verify(token, now).ok().map(|s| s.id)
    }

    fn check_text(&self, message: &Message) -> Result<(), ApiError> {
        let limit = self.inner.settings.max_message_bytes;
        let size = match message {
            Message::User { content } | Message::Assistant { content, .. } => content.len(),
            Message::Tool { results } => results.iter().map(|r| r.content.len()).sum(),
        };
        if size > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("a message is larger than chat.max_message_bytes ({limit} bytes)"),
            ));
        }
        Ok(())
    }

    /// Checks `body` for `caller` and resolves its session; `header_session` is the
    /// gateway-issued session used when the body names none.
    pub async fn prepare(
        &self,
        caller: &Claims,
        body: ChatBody,
        header_session: Option<String>,
    ) -> Result<PreparedChat, ApiError> {
        caller
            .require(scopes::WRITE_CHAT)
            .map_err(|e| ApiError::new(e.error_code(), e.to_string()))?;
        let tenant = caller.tenant_id().to_owned();
        let model = body.model.unwrap_or_default();
        // Routing by configuration: an unknown model fails here, before any session exists.
        self.inner
            .router
            .resolve(&model)
            .map_err(|e| llm_error(&e))?;
        let session = match (&body.session, &body.messages) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "send `session` with `message`, or a whole conversation in `messages` without a session",
                ));
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(_)) => None,
            (None, None) => header_session,
        };
        if let Some(session) = session {
            check_session_id(&session)?;
            let Some(message) = body.message else {
                return Err(invalid("a session turn needs `message`"));
            };
            let message = message.into_message();
            self.check_text(&message)?;
            let options = SessionOptions {
                model,
                system: body.system,
                tools: body.tools,
                tool_choice: body.tool_choice.unwrap_or_default(),
                params: body.params.unwrap_or_default(),
            };
            let handle = self
                .inner
                .sessions
                .session(&session_key(caller, &session), options)
                .await;
            return Ok(PreparedChat {
                tenant,
                owner: caller.sub.clone(),
                session: Some(session),
                turn: Turn::Session(handle, message),
            });
        }
        let messages = match (body.messages, body.message) {
            (Some(_), Some(_)) => {
                return Err(invalid("send either `message` or `messages`, not both"));
            }
            (Some(m), None) => m,
            (None, Some(m)) => vec![m.into_message()],
            (None, None) => return Err(invalid("send `message` or `messages`")),
        };
        if messages.len() > self.inner.settings.max_messages {
            return Err(invalid(format!(
                "at most {} messages per request (chat.max_messages)",
                self.inner.settings.max_messages
            )));
        }
        for m in &messages {
            self.check_text(m)?;
        }
        let request = ChatRequest {
            model,
            system: body.system,
            messages,
            tools: body.tools,
            tool_choice: body.tool_choice.unwrap_or_default(),
            params: body.params.unwrap_or_default(),
        };
        request.validate().map_err(invalid)?;
        Ok(PreparedChat {
            tenant,
            owner: caller.sub.clone(),
            session: None,
            turn: Turn::Stateless(request),
        })
    }

    /// Runs a turn to its answer; publishes session replies on `chat:<session>`.
    pub async fn complete(&self, prepared: PreparedChat) -> Result<Value, ApiError> {
        let PreparedChat {
            tenant,
            owner,
            session,
            turn,
        } = prepared;
        let client = &self.inner.coalescer;
        let (result, outcome) = match turn {
            Turn::Session(handle, message) => {
                let pending = handle.begin(message).await;
                let (result, outcome) =
                    coalesce::scoped(&tenant, client.complete(pending.request())).await;
                if let Ok(response) = &result {
                    pending.finish(response, answer_source(outcome));
                }
                (result, outcome)
            }
            Turn::Stateless(request) => coalesce::scoped(&tenant, client.complete(&request)).await,
        };
        let response = result.map_err(|e| llm_error(&e))?;
        let reply = reply_json(
            &response,
            session.as_deref(),
            outcome.unwrap_or(Outcome::Bypass),
        );
        if let Some(session) = &session {
            self.publish(&tenant, &owner, session, "reply", &reply)
                .await;
        }
        Ok(reply)
    }

    /// Starts a turn as a stream of events, text deltas batched ([`DELTA_BATCHING`]); the
    /// last is `Completed` or an error.
    pub async fn stream(
        &self,
        prepared: &mut Option<PreparedChat>,
    ) -> Result<(ChatStream, Outcome), ApiError> {
        let Some(PreparedChat { tenant, turn, .. }) = prepared.take() else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "chat turn already started",
            ));
        };
        let client = &self.inner.coalescer;
        let (result, outcome) = match turn {
            Turn::Session(handle, message) => {
                let pending = handle.begin(message).await;
                let (result, outcome) =
                    coalesce::scoped(&tenant, client.stream(pending.request())).await;
                let source = answer_source(outcome);
                // A coalesced call runs on in its flight's task when this caller stops
                // reading; the turn then still counts what the call spent.
                let runs_on = outcome.is_some_and(|o| o != Outcome::Bypass);
                let finished = move |s| {
                    if runs_on {
                        pending.finish_stream_running_on(s, source)
                    } else {
                        pending.finish_stream(s, source)
                    }
                };
                (result.map(finished), outcome)
            }
            Turn::Stateless(request) => coalesce::scoped(&tenant, client.stream(&request)).await,
        };
        let stream = result.map_err(|e| llm_error(&e))?;
        Ok((
            batch_deltas(stream, DELTA_BATCHING),
            outcome.unwrap_or(Outcome::Bypass),
        ))
    }

    /// Publishes `data` (with `type`) on the `chat:<session>` channel of `owner` of `tenant`.
    pub async fn publish(
        &self,
        tenant: &str,
        owner: &str,
        session: &str,
        kind: &str,
        data: &Value,
    ) {
        if !self.inner.settings.publish_replies {
            return;
        }
        let Ok(channel) = Channel::parse(&format!("chat:{session}")) else {
            return;
        };
        let mut message = data.clone();
        if let Some(object) = message.as_object_mut() {
            object.insert("type".into(), json!(kind));
        } else {
            message = json!({"type": kind, "data": data});
        }
        if let Err(error) = self
            .inner
            .hub
            .publish_owned(&channel, tenant, owner, &message)
            .await
        {
            tracing::warn!(target: target::WEBSOCKET, %error, session, "chat reply not published");
        }
    }

    /// The history of `caller`'s session, with its turns, tokens and cost; another user's
    /// session is not found. `usage` and `cost_usd` are what the session spent (turns whose
    /// request went upstream); `shared` counts the answers it got from an identical request's
    /// call or the answer cache (their cost was spent once, elsewhere, or saved);
    /// `abandoned_turns` the streamed turns whose caller left before the answer was complete
    /// (not in the history; a shared call's answer is still in the spend, as it was paid).
    pub async fn history(&self, caller: &Claims, session: &str) -> Result<Value, ApiError> {
        check_session_id(session)?;
        let handle = self
            .inner
            .sessions
            .get(&session_key(caller, session))
            .await
            .map_err(|e| llm_error(&e))?;
        let usage = handle.usage().await;
        Ok(json!({
            "session": session,
            "model": handle.options().model,
            "messages": handle.history().await,
            "turns": usage.turns,
            "usage": usage.usage,
            "cost_usd": usage.cost_usd,
            "shared": {
                "turns": usage.shared.turns,
                "usage": usage.shared.usage,
                "cost_usd": usage.shared.cost_usd,
            },
            "abandoned_turns": usage.abandoned_turns,
        }))
    }

    /// Forgets `caller`'s session; true if it existed (another user's session never does).
    pub async fn destroy(&self, caller: &Claims, session: &str) -> Result<bool, ApiError> {
        check_session_id(session)?;
        Ok(self
            .inner
            .sessions
            .destroy_session(&session_key(caller, session))
            .await)
    }

    /// Live sessions on this replica.
    pub async fn session_count(&self) -> u64 {
        self.inner.sessions.session_count().await
    }

    /// Runs a streamed turn in the background, publishing deltas, the reply or the error on
    /// the session's channel tagged with `turn`; stops at shutdown or when `scope` is
    /// cancelled (its connection closed), and holds `scope` until it ends.
    fn spawn_turn(&self, prepared: PreparedChat, turn: String, scope: TurnScope) {
        let chat = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let span = tracing::info_span!(target: "ai", "chat_turn", %turn);
        self.inner.tasks.spawn(
            async move {
                let tenant = prepared.tenant.clone();
                let owner = prepared.owner.clone();
                let Some(session) = prepared.session.clone() else {
                    return;
                };
                let mut slot = Some(prepared);
                let work = async {
                    let (mut stream, outcome) = match chat.stream(&mut slot).await {
                        Ok(s) => s,
                        Err(e) => {
                            let error = json!({"turn": turn, "code": e.code.as_str(), "message": e.message});
                            chat.publish(&tenant, &owner, &session, "error", &error).await;
                            return;
                        }
                    };
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(StreamEvent::Completed { response }) => {
                                let mut reply = reply_json(&response, Some(&session), outcome);
                                reply["turn"] = json!(turn);
                                chat.publish(&tenant, &owner, &session, "reply", &reply).await;
                            }
                            Ok(event) => {
                                if let Some((kind, mut data)) = event_json(&event) {
                                    data["turn"] = json!(turn);
                                    chat.publish(&tenant, &owner, &session, kind, &data).await;
                                }
                            }
                            Err(e) => {
                                let e = llm_error(&e);
                                let error = json!({"turn": turn, "code": e.code.as_str(), "message": e.message});
                                chat.publish(&tenant, &owner, &session, "error", &error).await;
                                return;
                            }
                        }
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = scope.cancel.cancelled() => {
                        tracing::debug!(target: "ai", "chat turn cancelled: its connection closed");
                    }
                    () = work => {}
                }
                drop(scope);
            }
            .instrument(span),
        );
    }
}

/// What WebSocket chat accepts as `message`: text, or text with session options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WsChatMessage {
    Text(String),
    Full {
        text: String,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        system: Option<String>,
        #[serde(default)]
        params: Option<Parameters>,
    },
}

impl ChatHandler for ChatService {
    fn handle(
        &self,
        caller: Claims,
        session: String,
        message: Value,
        scope: TurnScope,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send>> {
        let chat = self.clone();
        Box::pin(async move {
            let message: WsChatMessage = serde_json::from_value(message).map_err(|_| {
                invalid("`message` must be text or {\"text\", \"model\", \"system\", \"params\"}")
            })?;
            let body = match message {
                WsChatMessage::Text(text) => ChatBody {
                    session: Some(session.clone()),
                    message: Some(MessageInput::Text(text)),
                    ..ChatBody::default()
                },
                WsChatMessage::Full {
                    text,
                    model,
                    system,
                    params,
                } => ChatBody {
                    session: Some(session.clone()),
                    message: Some(MessageInput::Text(text)),
                    model,
                    system,
                    params,
                    ..ChatBody::default()
                },
            };
            let prepared = chat.prepare(&caller, body, None).await?;
            let turn = uuid::Uuid::now_v7().to_string();
            chat.spawn_turn(prepared, turn.clone(), scope);
            Ok(json!({"session": session, "channel": format!("chat:{session}"), "turn": turn}))
        })
    }
}

/// Whether the client asked for server-sent events.
fn wants_sse(headers: &HeaderMap, body: &ChatBody) -> bool {
    body.stream
        || headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

fn sse_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn sse_stream(
    chat: ChatService,
    mut stream: ChatStream,
    outcome: Outcome,
    tenant: String,
    owner: String,
    session: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    async_stream_like(move |tx| async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(StreamEvent::Completed { response }) => {
                    let reply = reply_json(&response, session.as_deref(), outcome);
                    // The receiver lives in the same stream as this producer, so the send only
                    // fails once both are being dropped (the client left).
                    let _ = tx.send(sse_event("done", &reply)).await;
                    if let Some(session) = &session {
                        chat.publish(&tenant, &owner, session, "reply", &reply)
                            .await;
                    }
                    return;
                }
                Ok(event) => {
                    if let Some((name, data)) = event_json(&event) {
                        let _ = tx.send(sse_event(name, &data)).await;
                    }
                }
                Err(e) => {
                    let e = llm_error(&e);
                    let body = json!({"error": {"code": e.code.as_str(), "message": e.message, "details": e.details}});
                    let _ = tx.send(sse_event("error", &body)).await;
                    return;
                }
            }
        }
    })
}

/// A stream fed by a producer future through a small channel (so the producer can await
/// between items); the producer runs as long as the stream is polled.
fn async_stream_like<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    let producer = producer(tx);
    let produced = futures_util::stream::once(producer).filter_map(|()| async { None });
    let received = tokio_stream_from(rx);
    futures_util::stream::select(received.map(Some), produced)
        .filter_map(|e| async move { e.map(Ok) })
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Event>,
) -> impl Stream<Item = Event> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// State of the chat routes.
#[derive(Clone)]
pub struct ChatState {
    /// The chat service.
    pub chat: ChatService,
    /// Seconds between SSE keep-alives.
    pub keepalive: Duration,
}

/// `POST /api/v1/chat`.
pub async fn post_chat(
    State(state): State<ChatState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Result<Json<ChatBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return invalid(format!("unreadable chat request: {}", e.body_text())).into_response();
        }
    };
    let sse = wants_sse(&headers, &body);
    let header_session = state.chat.session_from_headers(&headers);
    let prepared = match state.chat.prepare(&caller, body, header_session).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !sse {
        // A session turn runs to its end in a task of its own, even if the client leaves
        // before the answer: the provider is paid for it either way, so its answer joins the
        // history, counts in the session's spend and reaches `chat:<session>`.
        let answered = if prepared.session().is_some() {
            let chat = state.chat.clone();
            let turn = async move { chat.complete(prepared).await };
            let task = state
                .chat
                .tasks()
                .spawn(turn.instrument(tracing::Span::current()));
            task.await.unwrap_or_else(|_| {
                Err(ApiError::new(
                    ErrorCode::Internal,
                    "the chat turn stopped unexpectedly; retry",
                ))
            })
        } else {
            state.chat.complete(prepared).await
        };
        return match answered {
            Ok(reply) => {
                let provider = reply["provider"].as_str().unwrap_or("").to_owned();
                let outcome = reply["coalesced"].as_str().unwrap_or("").to_owned();
                let mut response = (StatusCode::OK, Json(reply)).into_response();
                let h = response.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&provider) {
                    h.insert("x-liquid-model-provider", v);
                }
                if let Ok(v) = HeaderValue::from_str(&outcome) {
                    h.insert("x-liquid-coalesced", v);
                }
                response
            }
            Err(e) => e.into_response(),
        };
    }
    let tenant = caller.tenant_id().to_owned();
    let session = prepared.session().map(str::to_owned);
    let mut slot = Some(prepared);
    match state.chat.stream(&mut slot).await {
        Ok((stream, outcome)) => {
            let owner = caller.sub.clone();
            let events = sse_stream(state.chat.clone(), stream, outcome, tenant, owner, session);
            let mut response = Sse::new(events)
                .keep_alive(KeepAlive::new().interval(state.keepalive))
                .into_response();
            if let Ok(v) = HeaderValue::from_str(outcome.as_str()) {
                response.headers_mut().insert("x-liquid-coalesced", v);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/chat/sessions/{session}`: the caller's session history.
pub async fn get_session(
    State(state): State<ChatState>,
    Authenticated(caller): Authenticated,
    Path(session): Path<String>,
) -> Response {
    if let Err(e) = caller.require(scopes::WRITE_CHAT) {
        return e.into_response();
    }
    match state.chat.history(&caller, &session).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/chat/sessions/{session}`: forgets the caller's session.
pub async fn delete_session(
    State(state): State<ChatState>,
    Authenticated(caller): Authenticated,
    Path(session): Path<String>,
) -> Response {
    if let Err(e) = caller.require(scopes::WRITE_CHAT) {
        return e.into_response();
    }
    match state.chat.destroy(&caller, &session).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ApiError::new(
            ErrorCode::NotFound,
            "no such session (expired, destroyed or never created)",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/chat/cache`: removes the caller's tenant's cached answers.
pub async fn delete_cache(
    State(state): State<ChatState>,
    Authenticated(caller): Authenticated,
) -> Response {
    if let Err(e) = caller.require(scopes::WRITE_CHAT) {
        return e.into_response();
    }
    match state
        .chat
        .coalescer()
        .invalidate_tenant(caller.tenant_id())
        .await
    {
        Ok(removed) => Json(json!({"removed": removed})).into_response(),
        Err(e) => ApiError::from_error(&e).into_response(),
    }
}
