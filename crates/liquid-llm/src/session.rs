//! The session-scoped client factory: each chat session gets its own [`ModelSession`] — a
//! client handle with the session's model, system prompt, tools and parameters, and the
//! conversation history — that lives while the session is used and is dropped after an idle
//! TTL (30 minutes by default).
//!
//! Sessions are keyed by ([`SessionKey::tenant`], [`SessionKey::session_id`]): the same
//! session id under another tenant is another session, so nothing leaks between tenants or
//! sessions. A session's turns are serialised (one turn at a time, streams included), so its
//! history is always a valid alternation; a failed turn leaves the history as it was.
//!
//! Storage is a `moka::future::Cache` with `time_to_idle`, not a hand-rolled map: moka gives
//! per-entry idle expiry that resets on every access, a size bound with a good eviction policy,
//! single-flight creation (`get_with`, so two concurrent first requests for a session create it
//! once) and an eviction listener for metrics, all lock-free on the read path. An expired entry
//! is invisible to reads at once, but moka frees it only during its housekeeping, which runs
//! on cache activity; the named cleanup task (`llm-session-cleanup`, every 5 minutes by
//! default, stopped by its cancellation token) runs that housekeeping so an idle process does
//! not keep expired histories in memory, and publishes the session gauge.
//! History lives in process memory: a gateway replica that restarts forgets its sessions
//! (clients resend history, or get a fresh session).
//!
//! A session's history is bounded (`llm.sessions.max_history_messages` and
//! `max_history_bytes`, see [`trim_history`]): after each turn the oldest messages are dropped
//! until it fits, at boundaries that keep it a valid conversation, so a long session costs
//! bounded memory and a bounded request. The system prompt, tools and parameters are session
//! options, not history, and are never dropped.
//!
//! Spend: a turn's answer may not have been paid for by its session. When a client shares one
//! upstream answer between identical requests (the gateway's request coalescing) or serves an
//! earlier answer from a cache, only the turn whose request went upstream spent its tokens
//! and cost. A caller that knows where an answer came from runs the turn in two steps
//! ([`ModelSession::begin`], then [`PendingTurn::finish`] with an [`AnswerSource`]); such
//! answers are counted in [`SessionUsage::shared`], not in the session's spend, so summing
//! [`SessionUsage::cost_usd`] over sessions gives what was really spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use moka::notification::RemovalCause;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::assemble::ChatStream;
use crate::client::ModelClient;
use crate::error::LlmError;
use crate::types::{
    ChatRequest, ChatResponse, Message, Parameters, StreamEvent, ToolChoice, ToolDefinition, Usage,
};

/// Lifetimes of sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Dropped after this long without use.
    pub idle_ttl: Duration,
    /// How often expired sessions are freed.
    pub cleanup_interval: Duration,
    /// Most sessions held at once.
    pub max_sessions: u64,
    /// Most messages a session's history keeps (see [`trim_history`]).
    pub max_history_messages: usize,
    /// Most bytes of text (contents, tool arguments and results) a session's history keeps.
    pub max_history_bytes: usize,
}

impl SessionPolicy {
    fn history_limit(&self) -> HistoryLimit {
        HistoryLimit {
            max_messages: self.max_history_messages,
            max_bytes: self.max_history_bytes,
        }
    }
}

/// The bound on one session's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistoryLimit {
    max_messages: usize,
    max_bytes: usize,
}

/// Bytes of text a message carries (contents, tool call ids, names, arguments and results).
fn message_bytes(message: &Message) -> usize {
    match message {
        Message::User { content } => content.len(),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            content.len()
                + tool_calls
                    .iter()
                    .map(|c| {
                        c.id.len()
                            + c.name.len()
                            + serde_json::to_string(&c.arguments).map_or(0, |a| a.len())
                            + c.signature.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>()
        }
        Message::Tool { results } => results
            .iter()
            .map(|r| r.call_id.len() + r.name.len() + r.content.len())
            .sum(),
    }
}

/// Drops the oldest messages of `messages` until at most `limit.max_messages` messages of at
/// most `limit.max_bytes` are left, cutting only where the rest is still a valid conversation:
/// first whole exchanges (a user message and everything up to the next user message); then,
/// inside the one exchange left, the oldest tool round trips (an assistant turn with tool
/// calls and the results answering it) after its user message. The last exchange's user
/// message and whatever follows its last round trip are always kept, so one oversized
/// exchange can stay over the limit. Returns how many messages were dropped.
pub fn trim_history(messages: &mut Vec<Message>, max_messages: usize, max_bytes: usize) -> usize {
    let before = messages.len();
    let mut bytes: usize = messages.iter().map(message_bytes).sum();
    let fits =
        |messages: &[Message], bytes: usize| messages.len() <= max_messages && bytes <= max_bytes;
    while !fits(messages, bytes) {
        let Some(next_user) = messages
            .iter()
            .skip(1)
            .position(|m| matches!(m, Message::User { .. }))
        else {
            break;
        };
        bytes -= messages
            .drain(..=next_user)
            .map(|m| message_bytes(&m))
            .sum::<usize>();
    }
    while !fits(messages, bytes)
        && messages.len() > 3
        && matches!(messages.first(), Some(Message::User { .. }))
        && matches!(messages.get(1), Some(Message::Assistant { tool_calls, .. }) if !tool_calls.is_empty())
        && matches!(messages.get(2), Some(Message::Tool { .. }))
    {
        bytes -= messages
            .drain(1..3)
            .map(|m| message_bytes(&m))
            .sum::<usize>();
    }
    before - messages.len()
}

impl Default for SessionPolicy {
    fn default() -> Self {
        crate::config::SessionConfig::default().policy()
    }
}

/// Identifies a session: tenant (or subject) plus the session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The caller's tenant (or subject when there is none).
    pub tenant: String,
    /// The session id the caller chose or was issued.
    pub session_id: String,
}

impl SessionKey {
    /// A key for `session_id` under `tenant`.
    pub fn new(tenant: impl Into<String>, session_id: impl Into<String>) -> Self {
        SessionKey {
            tenant: tenant.into(),
            session_id: session_id.into(),
        }
    }
}

/// What a new session is created with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionOptions {
    /// Model (empty: the router's default).
    pub model: String,
    /// System prompt.
    pub system: Option<String>,
    /// Tools offered on every turn.
    pub tools: Vec<ToolDefinition>,
    /// Tool-calling mode.
    pub tool_choice: ToolChoice,
    /// Sampling parameters.
    pub params: Parameters,
}

#[derive(Debug, Default)]
struct Conversation {
    messages: Vec<Message>,
    totals: SessionUsage,
}

/// Where a turn's answer came from, which decides whether the session spent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerSource {
    /// The turn's own request went to the provider (alone, or as the one whose call others
    /// shared): its tokens and cost were spent for this session.
    #[default]
    Upstream,
    /// An identical request's upstream call answered it too (request coalescing): spent
    /// once, by the session of that request.
    Shared,
    /// An earlier identical request's answer, from a cache: nothing was spent now.
    Cached,
}

/// Answers a session received without spending them (see [`AnswerSource`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SharedUsage {
    /// Turns answered by another request's call or from a cache.
    pub turns: u64,
    /// Tokens those answers consumed where they were produced (not again here).
    pub usage: Usage,
    /// What those answers cost where they were produced: saved here, not spent.
    pub cost_usd: f64,
}

/// Totals of one session.
///
/// `usage` and `cost_usd` are this session's spend: turns whose request went upstream. Answers
/// it shared with an identical request in flight, or got from the answer cache, are in
/// `shared` instead, so the sum of `cost_usd` over sessions is the real spend and each
/// provider call is counted once.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SessionUsage {
    /// Completed turns, however they were answered.
    pub turns: u64,
    /// Tokens of the turns whose request went upstream.
    pub usage: Usage,
    /// Cost of the priced turns whose request went upstream.
    pub cost_usd: f64,
    /// Turns answered by another request's upstream call or from a cache.
    pub shared: SharedUsage,
    /// Streamed turns whose caller stopped reading before the answer was complete: not in
    /// `turns` or the history. When the answer was produced anyway (a shared call runs to its
    /// end, see [`PendingTurn::finish_stream_running_on`]), its tokens and cost are in
    /// `usage` and `cost_usd` all the same.
    pub abandoned_turns: u64,
}

/// One session's client handle and conversation.
pub struct ModelSession {
    key: SessionKey,
    options: SessionOptions,
    client: Arc<dyn ModelClient>,
    conversation: Arc<Mutex<Conversation>>,
    created_at: SystemTime,
    history_limit: HistoryLimit,
}

impl std::fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSession")
            .field("key", &self.key)
            .field("model", &self.options.model)
            .finish_non_exhaustive()
    }
}

impl ModelSession {
    /// The session's key.
    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// The options it was created with.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// When it was created.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// The conversation so far.
    pub async fn history(&self) -> Vec<Message> {
        self.conversation.lock().await.messages.clone()
    }

    /// Turns, tokens and cost so far: what the session spent, and what it received from
    /// shared or cached answers ([`SessionUsage::shared`]).
    pub async fn usage(&self) -> SessionUsage {
        self.conversation.lock().await.totals
    }

    fn request(&self, messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: self.options.model.clone(),
            system: self.options.system.clone(),
            messages,
            tools: self.options.tools.clone(),
            tool_choice: self.options.tool_choice.clone(),
            params: self.options.params.clone(),
        }
    }

    /// Starts a turn with `message` (a user message or tool results) for a caller that asks
    /// the model itself, through a client that may share or cache answers: waits for the
    /// session's previous turn, then holds the session until the returned turn is finished
    /// or dropped. Dropping it unfinished leaves the history as it was.
    pub async fn begin(&self, message: Message) -> PendingTurn {
        let conversation = self.conversation.clone().lock_owned().await;
        let mut messages = conversation.messages.clone();
        messages.push(message);
        PendingTurn {
            request: self.request(messages.clone()),
            conversation,
            messages,
            limit: self.history_limit,
        }
    }

    /// Adds `message` (a user message or tool results) and asks the model through the
    /// session's client; the answer joins the history and is counted as spent by this session
    /// ([`AnswerSource::Upstream`]). On failure the history is unchanged.
    pub async fn send(&self, message: Message) -> Result<ChatResponse, LlmError> {
        let turn = self.begin(message).await;
        let response = self.client.complete(turn.request()).await?;
        turn.finish(&response, AnswerSource::Upstream);
        Ok(response)
    }

    /// Like [`ModelSession::send`], streaming. The session stays locked until the stream ends
    /// or is dropped; the answer joins the history only if the stream completed.
    pub async fn send_stream(&self, message: Message) -> Result<ChatStream, LlmError> {
        let turn = self.begin(message).await;
        let stream = self.client.stream(turn.request()).await?;
        Ok(turn.finish_stream(stream, AnswerSource::Upstream))
    }

    /// Forgets the conversation, keeping the session.
    pub async fn clear(&self) {
        *self.conversation.lock().await = Conversation::default();
    }
}

/// A session turn under way ([`ModelSession::begin`]): holds the session (its turns are
/// serialised) until it is finished or dropped.
pub struct PendingTurn {
    request: ChatRequest,
    conversation: OwnedMutexGuard<Conversation>,
    /// The history with the turn's message, the answer still to come.
    messages: Vec<Message>,
    limit: HistoryLimit,
}

impl std::fmt::Debug for PendingTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTurn")
            .field("model", &self.request.model)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl PendingTurn {
    /// What to ask the model: the session's options and history plus the turn's message.
    pub fn request(&self) -> &ChatRequest {
        &self.request
    }

    /// Adds `response` to the history and counts it as answered from `source`.
    pub fn finish(mut self, response: &ChatResponse, source: AnswerSource) {
        let mut messages = std::mem::take(&mut self.messages);
        messages.push(response.to_message());
        record(
            &mut self.conversation,
            messages,
            response,
            source,
            self.limit,
        );
    }

    /// Like [`PendingTurn::finish_stream`], for a stream whose upstream call runs to its end
    /// whether or not it is read (a call shared between identical requests, driven by a task
    /// of its own). Dropped before the answer is complete, the stream frees the session at
    /// once, the history stays as it was, and a task reads the rest: the answer's tokens and
    /// cost still count as this session's spend when `source` is [`AnswerSource::Upstream`],
    /// as the provider charged them. Such a turn is counted in
    /// [`SessionUsage::abandoned_turns`].
    pub fn finish_stream_running_on(self, stream: ChatStream, source: AnswerSource) -> ChatStream {
        Box::pin(StreamedTurn {
            stream: Some(stream),
            turn: Some(self),
            source,
            runs_on: true,
        })
    }

    /// Passes `stream` on; its answer joins the history, counted as answered from `source`,
    /// when the stream completes. The session stays held until the stream ends or is dropped;
    /// dropped before the answer is complete, it counts an abandoned turn
    /// ([`SessionUsage::abandoned_turns`]) and nothing more (the call stops with it).
    pub fn finish_stream(self, stream: ChatStream, source: AnswerSource) -> ChatStream {
        Box::pin(StreamedTurn {
            stream: Some(stream),
            turn: Some(self),
            source,
            runs_on: false,
        })
    }
}

/// A streamed turn ([`PendingTurn::finish_stream`], [`PendingTurn::finish_stream_running_on`]):
/// the answer joins the history when the stream completes. Dropped before that, it frees the
/// session and counts an abandoned turn; when its upstream call runs on regardless
/// (`runs_on`), a task reads the rest and counts the answer's spend.
struct StreamedTurn {
    stream: Option<ChatStream>,
    turn: Option<PendingTurn>,
    source: AnswerSource,
    runs_on: bool,
}

impl futures_util::Stream for StreamedTurn {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(stream) = self.stream.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = stream.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(StreamEvent::Completed { response }))) => {
                if let Some(turn) = self.turn.take() {
                    turn.finish(response, self.source);
                }
            }
            // The stream failed or ended without an answer: the turn is over, unrecorded.
            std::task::Poll::Ready(Some(Err(_)) | None) => self.turn = None,
            _ => {}
        }
        polled
    }
}

impl Drop for StreamedTurn {
    fn drop(&mut self) {
        let (Some(mut stream), Some(mut turn)) = (self.stream.take(), self.turn.take()) else {
            return;
        };
        metrics::counter!("liquid_llm_session_turns_abandoned_total").increment(1);
        let source = self.source;
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (self.runs_on, runtime) else {
            // The call stops with its stream: nothing more will be spent.
            count_abandoned(&mut turn.conversation.totals, None, source);
            return;
        };
        let conversation = OwnedMutexGuard::mutex(&turn.conversation).clone();
        // The session is free again at once; its history stays as it was.
        drop(turn);
        runtime.spawn(async move {
            let mut answer = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(StreamEvent::Completed { response }) => {
                        answer = Some(response);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let mut conversation = conversation.lock().await;
            count_abandoned(&mut conversation.totals, answer.as_ref(), source);
        });
    }
}

/// One abandoned turn, and the answer's spend when it was produced upstream for this session.
fn count_abandoned(totals: &mut SessionUsage, answer: Option<&ChatResponse>, source: AnswerSource) {
    totals.abandoned_turns += 1;
    if let (Some(response), AnswerSource::Upstream) = (answer, source) {
        totals.spend(response);
    }
}

fn record(
    conversation: &mut Conversation,
    mut messages: Vec<Message>,
    response: &ChatResponse,
    source: AnswerSource,
    limit: HistoryLimit,
) {
    let dropped = trim_history(&mut messages, limit.max_messages, limit.max_bytes);
    if dropped > 0 {
        metrics::counter!("liquid_llm_session_messages_trimmed_total").increment(dropped as u64);
        tracing::debug!(target: "ai", dropped, kept = messages.len(), "session history trimmed");
    }
    conversation.messages = messages;
    let totals = &mut conversation.totals;
    totals.turns += 1;
    match source {
        AnswerSource::Upstream => totals.spend(response),
        AnswerSource::Shared | AnswerSource::Cached => {
            totals.shared.turns += 1;
            totals.shared.usage.add(response.usage);
            totals.shared.cost_usd += response.cost_usd.unwrap_or(0.0);
        }
    }
}

impl SessionUsage {
    /// Counts `response`'s tokens and cost as spent by this session.
    fn spend(&mut self, response: &ChatResponse) {
        self.usage.add(response.usage);
        self.cost_usd += response.cost_usd.unwrap_or(0.0);
    }
}

/// Counts of sessions removed, by cause.
#[derive(Debug, Default)]
struct Removals {
    expired: AtomicU64,
    destroyed: AtomicU64,
    evicted_for_size: AtomicU64,
}

/// The factory: hands out one [`ModelSession`] per key.
pub struct SessionClients {
    cache: moka::future::Cache<SessionKey, Arc<ModelSession>>,
    client: Arc<dyn ModelClient>,
    removals: Arc<Removals>,
    cleanup: CancellationToken,
    history_limit: HistoryLimit,
}

impl SessionClients {
    /// A factory whose sessions talk through `client` (normally the [`crate::ModelRouter`]).
    /// Spawns the cleanup task, which stops when `shutdown` is cancelled or the factory is
    /// dropped. Must be called inside a Tokio runtime.
    pub fn new(
        client: Arc<dyn ModelClient>,
        policy: SessionPolicy,
        shutdown: CancellationToken,
    ) -> Self {
        let removals = Arc::new(Removals::default());
        let listener_removals = removals.clone();
        let cache = moka::future::Cache::builder()
            .name("llm-sessions")
            .max_capacity(policy.max_sessions)
            .time_to_idle(policy.idle_ttl)
            .eviction_listener(move |key: Arc<SessionKey>, _session, cause| {
                let (counter, label) = match cause {
                    RemovalCause::Expired => (&listener_removals.expired, "expired"),
                    RemovalCause::Explicit => (&listener_removals.destroyed, "destroyed"),
                    RemovalCause::Size => (&listener_removals.evicted_for_size, "size"),
                    // Replaced: a session is never inserted twice under one key.
                    RemovalCause::Replaced => return,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("liquid_llm_sessions_removed_total", "cause" => label)
                    .increment(1);
                tracing::debug!(target: "ai", tenant = %key.tenant, session = %key.session_id, cause = label, "model session removed");
            })
            .build();
        let cleanup = shutdown.child_token();
        let task_cache = cache.clone();
        liquid_kit::shutdown::spawn_named("llm-session-cleanup", cleanup.clone(), async move {
            let mut ticker = tokio::time::interval(policy.cleanup_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                task_cache.run_pending_tasks().await;
                metrics::gauge!("liquid_llm_sessions").set(task_cache.entry_count() as f64);
            }
        });
        SessionClients {
            cache,
            client,
            removals,
            cleanup,
            history_limit: policy.history_limit(),
        }
    }

    /// The session for `key`, created with `options` if it does not exist (options of an
    /// existing session are not changed). Using a session resets its idle clock.
    pub async fn session(&self, key: &SessionKey, options: SessionOptions) -> Arc<ModelSession> {
        let client = self.client.clone();
        let owned_key = key.clone();
        let history_limit = self.history_limit;
        self.cache
            .get_with(key.clone(), async move {
                tracing::debug!(target: "ai", tenant = %owned_key.tenant, session = %owned_key.session_id, "model session created");
                metrics::counter!("liquid_llm_sessions_created_total").increment(1);
                Arc::new(ModelSession {
                    key: owned_key,
                    options,
                    client,
                    conversation: Arc::new(Mutex::new(Conversation::default())),
                    created_at: SystemTime::now(),
                    history_limit,
                })
            })
            .await
    }

    /// The existing session for `key`, or [`LlmError::SessionNotFound`] (expired, destroyed,
    /// or another tenant's).
    pub async fn get(&self, key: &SessionKey) -> Result<Arc<ModelSession>, LlmError> {
        self.cache
            .get(key)
            .await
            .ok_or_else(|| LlmError::SessionNotFound {
                session: key.session_id.clone(),
            })
    }

    /// Removes the session and its history; true if it existed.
    pub async fn destroy_session(&self, key: &SessionKey) -> bool {
        self.cache.remove(key).await.is_some()
    }

    /// Live sessions (expired ones are freed first, so the count is exact).
    pub async fn session_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Sessions freed because they idled out, so far.
    pub fn expired_count(&self) -> u64 {
        self.removals.expired.load(Ordering::Relaxed)
    }

    /// Sessions removed by [`SessionClients::destroy_session`], so far.
    pub fn destroyed_count(&self) -> u64 {
        self.removals.destroyed.load(Ordering::Relaxed)
    }
}

impl Drop for SessionClients {
    fn drop(&mut self) {
        self.cleanup.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ToolCall, ToolResult};

    fn call(id: &str) -> Message {
        Message::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: id.into(),
                name: "read_file".into(),
                arguments: serde_json::json!({"path": "a"}),
                signature: None,
            }],
        }
    }

    fn result(id: &str) -> Message {
        Message::tool_results(vec![ToolResult {
            call_id: id.into(),
            name: "read_file".into(),
            content: "contents".into(),
            is_error: false,
        }])
    }

    #[test]
    fn whole_old_exchanges_go_first_tool_round_trips_stay_with_their_turn() {
        let mut history = vec![
            Message::user("one"),
            call("c1"),
            result("c1"),
            Message::assistant("did one"),
            Message::user("two"),
            Message::assistant("did two"),
        ];
        // Over by one message: the whole first exchange goes, never half a round trip.
        assert_eq!(trim_history(&mut history, 5, usize::MAX), 4);
        assert_eq!(
            history,
            vec![Message::user("two"), Message::assistant("did two")]
        );
        // Within the limits nothing changes.
        assert_eq!(trim_history(&mut history, 2, usize::MAX), 0);
    }

    #[test]
    fn one_long_exchange_sheds_its_oldest_round_trips() {
        let mut history = vec![
            Message::user("do it"),
            call("c1"),
            result("c1"),
            call("c2"),
            result("c2"),
            Message::assistant("done"),
        ];
        assert_eq!(trim_history(&mut history, 4, usize::MAX), 2);
        assert_eq!(
            history,
            vec![
                Message::user("do it"),
                call("c2"),
                result("c2"),
                Message::assistant("done")
            ]
        );
        // The user message and what follows its last round trip always stay.
        assert_eq!(trim_history(&mut history, 1, usize::MAX), 2);
        assert_eq!(
            history,
            vec![Message::user("do it"), Message::assistant("done")]
        );
        assert_eq!(trim_history(&mut history, 1, 1), 0);
    }

    #[test]
    fn the_byte_limit_counts_text_of_every_kind() {
        let big = "x".repeat(1_000);
        let mut history = vec![
            Message::user(big.clone()),
            Message::assistant("short"),
            Message::user("q"),
            Message::assistant("a"),
        ];
        assert_eq!(trim_history(&mut history, 100, 1_000), 2);
        assert_eq!(history.len(), 2);
        assert_eq!(message_bytes(&result("c1")), "c1read_filecontents".len());
        assert_eq!(
            message_bytes(&call("c1")),
            "c1read_file".len() + r#"{"path":"a"}"#.len()
        );
    }
}
