//! Request coalescing for model calls: identical concurrent requests of one tenant share one
//! upstream call (Go's singleflight), and a finished answer is served from the cache for
//! `coalescing.cache_ttl_secs` to identical requests of the same tenant.
//!
//! Identity is [`ChatRequest::coalescing_key`]: SHA-256 over the tenant, model, system prompt,
//! every message, tools, tool choice and parameters, so two tenants never share a call or an
//! answer. Cached answers live in the gateway's cache (Redis shared by the replicas, or
//! memory) under `<coalescing.key_prefix><tenant>:<key>`; [`Coalescer::invalidate_tenant`]
//! removes one tenant's answers by prefix (the cache unlinks that namespace only, never
//! FLUSHDB).
//!
//! [`Coalescer`] is itself a [`ModelClient`] in front of the model router, so session-scoped
//! clients ([`liquid_llm::SessionClients`]) coalesce their turns too. The tenant travels in a
//! task-local [`CoalesceScope`] set by the chat API ([`scoped`]): the client trait carries no
//! tenant, and a call without a scope is never coalesced (it goes straight upstream).
//!
//! A flight is driven by its own task, not by the first caller: every participant (the one that
//! started it included) reads the flight's event log from the start and then follows it live,
//! so a caller that disconnects does not cut off the others, streaming and non-streaming callers
//! can share one call, and the answer still reaches the cache. The answer is cached before any
//! participant sees it, so whoever holds an answer finds it cached on every replica. A failed
//! flight hands every participant the same error code and message and caches nothing.
//!
//! A flight always finishes: if its call panics (or its task is dropped), a guard frees its key
//! and fails it with `internal`, so participants get an error instead of waiting forever and
//! the next identical request makes a fresh call.
//!
//! Invalidation holds for every replica, calls in flight included. Each tenant has a
//! generation in the shared cache (`<coalescing.key_prefix>!generation:<tenant>`, outside every
//! tenant's prefix); [`Coalescer::invalidate_tenant`] replaces it with a fresh random value
//! before it removes the tenant's answers. A flight reads the generation when it starts, and
//! its answer is cached with [`Cache::set_if_guard`]: written only while the generation is
//! still the one read, checked and written in one step (one Redis round trip, a Lua script).
//! So an answer whose call started before an invalidation, on this replica or any other, is
//! handed to its participants but never cached: its write either comes before the new
//! generation (and the removal that follows takes it away) or is refused.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use liquid_kit::ErrorCode;
use liquid_kit::error::HasErrorCode;
use liquid_kit::telemetry::target;
use liquid_llm::{ChatRequest, ChatResponse, ChatStream, LlmError, ModelClient, StreamEvent};
use liquid_store::Cache;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::CoalescingSettings;
use crate::domain::channel::encode_tenant;

/// `kind` of the [`LlmError::StreamError`] a shared flight's failure is handed on as.
pub const SHARED_FAILURE_KIND: &str = "coalesced";

/// How long a tenant's invalidation generation is kept after its last invalidation. It must
/// outlive every call in flight when it was set (a call that outlived it could cache a stale
/// answer); a model call lasts minutes at most.
pub const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// How a model request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It started the upstream call others could join.
    Upstream,
    /// It joined an identical request already in flight.
    Joined,
    /// A cached answer of an identical earlier request.
    Cached,
    /// Not coalesced (disabled, or no tenant scope).
    Bypass,
}

impl Outcome {
    /// `upstream`, `joined`, `cached` or `bypass` (metric label and API field).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Joined => "joined",
            Outcome::Cached => "cached",
            Outcome::Bypass => "bypass",
        }
    }
}

/// The tenant of the model calls made inside [`scoped`], and how the last one was answered.
#[derive(Debug)]
pub struct CoalesceScope {
    tenant: String,
    outcome: Mutex<Option<Outcome>>,
}

tokio::task_local! {
    static SCOPE: Arc<CoalesceScope>;
}

/// Runs `future` with model calls coalesced for `tenant`; returns its output and how its last
/// model call was answered (`None` when it made none).
pub async fn scoped<F: Future>(tenant: &str, future: F) -> (F::Output, Option<Outcome>) {
    let scope = Arc::new(CoalesceScope {
        tenant: tenant.to_owned(),
        outcome: Mutex::new(None),
    });
    let output = SCOPE.scope(scope.clone(), future).await;
    let outcome = scope.outcome.lock().ok().and_then(|o| *o);
    (output, outcome)
}

fn current_tenant() -> Option<Arc<CoalesceScope>> {
    SCOPE.try_with(Arc::clone).ok()
}

fn note(scope: Option<&CoalesceScope>, outcome: Outcome) {
    metrics::counter!("liquid_gateway_coalescing_requests_total", "outcome" => outcome.as_str())
        .increment(1);
    if let Some(scope) = scope
        && let Ok(mut slot) = scope.outcome.lock()
    {
        *slot = Some(outcome);
    }
}

/// What a failed flight hands every participant.
#[derive(Debug, Clone)]
struct SharedFailure {
    provider: String,
    code: ErrorCode,
    message: String,
}

impl SharedFailure {
    /// What participants get when the flight's call panicked or its task was dropped.
    fn abandoned() -> SharedFailure {
        SharedFailure {
            provider: "gateway".into(),
            code: ErrorCode::Internal,
            message: "the model call failed unexpectedly; retry the request".into(),
        }
    }

    fn of(error: &LlmError) -> SharedFailure {
        SharedFailure {
            provider: "gateway".into(),
            code: error.error_code(),
            message: error.to_string(),
        }
    }

    fn to_error(&self) -> LlmError {
        LlmError::StreamError {
            provider: self.provider.clone(),
            kind: SHARED_FAILURE_KIND.into(),
            message: self.message.clone(),
            code: self.code,
        }
    }
}

#[derive(Default)]
struct FlightLog {
    events: Vec<StreamEvent>,
    failure: Option<SharedFailure>,
    done: bool,
}

/// One upstream call and everything it produced so far.
#[derive(Default)]
struct Flight {
    log: Mutex<FlightLog>,
    changed: Notify,
    /// Requests reading this flight (the one that started it included), each counted by its
    /// [`Participant`] while it lives.
    participants: AtomicUsize,
}

impl Flight {
    fn push(&self, event: StreamEvent) {
        if let Ok(mut log) = self.log.lock() {
            log.events.push(event);
        }
        self.changed.notify_waiters();
    }

    fn finish(&self, failure: Option<SharedFailure>) {
        if let Ok(mut log) = self.log.lock() {
            log.failure = failure;
            log.done = true;
        }
        self.changed.notify_waiters();
    }
}

/// One request reading a flight, counted in [`Coalescer::waiting`] until it is dropped (it
/// finished reading, or its caller went away).
struct Participant(Arc<Flight>);

impl Participant {
    fn join(flight: Arc<Flight>) -> Participant {
        flight.participants.fetch_add(1, Ordering::Relaxed);
        Participant(flight)
    }

    /// The flight's events from the start, then live, ending with its failure if it failed.
    fn follow(self) -> ChatStream {
        let stream = futures_util::stream::unfold(
            (self, 0usize, false),
            |(participant, pos, ended)| async move {
                if ended {
                    return None;
                }
                let flight = &participant.0;
                loop {
                    let step = {
                        let notified = flight.changed.notified();
                        tokio::pin!(notified);
                        // Registered before the log is read, so a push in between is not missed.
                        notified.as_mut().enable();
                        let next = match flight.log.lock() {
                            Ok(log) => {
                                if let Some(event) = log.events.get(pos) {
                                    Some(Some(Ok(event.clone())))
                                } else if log.done {
                                    Some(log.failure.as_ref().map(|f| Err(f.to_error())))
                                } else {
                                    None
                                }
                            }
                            Err(_) => Some(Some(Err(LlmError::Protocol {
                                provider: "gateway".into(),
                                reason: "coalesced flight state is poisoned".into(),
                            }))),
                        };
                        match next {
                            Some(step) => step,
                            None => {
                                notified.await;
                                continue;
                            }
                        }
                    };
                    return match step {
                        Some(Ok(event)) => Some((Ok(event), (participant, pos + 1, false))),
                        Some(Err(error)) => Some((Err(error), (participant, pos, true))),
                        None => None,
                    };
                }
            },
        );
        Box::pin(stream)
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.0.participants.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The events a complete answer streams as (text, tool calls, then `Completed`).
fn replay(response: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    if !response.text.is_empty() {
        events.push(StreamEvent::TextDelta {
            text: response.text.clone(),
        });
    }
    for (index, call) in response.tool_calls.iter().enumerate() {
        events.push(StreamEvent::ToolCallStart {
            index,
            id: call.id.clone(),
            name: call.name.clone(),
        });
        events.push(StreamEvent::ToolCallDelta {
            index,
            arguments: call.arguments.to_string(),
        });
    }
    events.push(StreamEvent::Completed {
        response: response.clone(),
    });
    events
}

/// Reads a stream to its `Completed` answer.
async fn completed(mut stream: ChatStream) -> Result<ChatResponse, LlmError> {
    while let Some(item) = stream.next().await {
        if let StreamEvent::Completed { response } = item? {
            return Ok(response);
        }
    }
    Err(LlmError::Protocol {
        provider: "gateway".into(),
        reason: "the model stream ended without an answer".into(),
    })
}

/// The coalescing client; cheap to clone.
#[derive(Clone)]
pub struct Coalescer {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Arc<dyn ModelClient>,
    cache: Arc<dyn Cache>,
    settings: CoalescingSettings,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    shutdown: CancellationToken,
}

/// A tenant's invalidation generation as a flight read it when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    /// The generation's key in the cache.
    key: String,
    /// Its value then (`None`: never invalidated, or longer ago than [`GENERATION_TTL`]).
    generation: Option<Vec<u8>>,
}

impl Coalescer {
    /// Coalesces calls to `upstream`, caching answers in `cache`; flights stop at `shutdown`.
    pub fn new(
        upstream: Arc<dyn ModelClient>,
        cache: Arc<dyn Cache>,
        settings: &CoalescingSettings,
        shutdown: CancellationToken,
    ) -> Coalescer {
        for outcome in [
            Outcome::Upstream,
            Outcome::Joined,
            Outcome::Cached,
            Outcome::Bypass,
        ] {
            metrics::counter!("liquid_gateway_coalescing_requests_total", "outcome" => outcome.as_str())
                .increment(0);
        }
        metrics::gauge!("liquid_gateway_coalescing_inflight").set(0.0);
        Coalescer {
            inner: Arc::new(Inner {
                upstream,
                cache,
                settings: settings.clone(),
                flights: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    fn tenant_prefix(&self, tenant: &str) -> String {
        format!(
            "{}{}:",
            self.inner.settings.key_prefix,
            encode_tenant(tenant)
        )
    }

    /// The key of `tenant`'s invalidation generation: under the key prefix but outside every
    /// tenant's prefix (an encoded tenant never starts with `!`), so no invalidation removes it.
    fn generation_key(&self, tenant: &str) -> String {
        format!(
            "{}!generation:{}",
            self.inner.settings.key_prefix,
            encode_tenant(tenant)
        )
    }

    /// Reads `tenant`'s generation for a flight about to start; `None` when the cache does not
    /// answer (the flight's answer is then not cached).
    async fn stamp(&self, tenant: &str) -> Option<Stamp> {
        let key = self.generation_key(tenant);
        match self.inner.cache.get(&key).await {
            Ok(generation) => Some(Stamp { key, generation }),
            Err(error) => {
                tracing::debug!(target: target::CACHE, %error, "invalidation generation unreadable; the answer will not be cached");
                None
            }
        }
    }

    /// Removes every cached answer of `tenant`, on every replica sharing the cache; returns
    /// how many. Calls of `tenant` in flight, on any replica, answer their participants but do
    /// not cache their answers.
    pub async fn invalidate_tenant(&self, tenant: &str) -> Result<u64, liquid_store::StoreError> {
        // A new generation before the delete: a flight's conditional write either came first
        // (and the delete removes it) or finds a generation other than the one it read.
        let generation = uuid::Uuid::new_v4().simple().to_string();
        self.inner
            .cache
            .set(
                &self.generation_key(tenant),
                generation.as_bytes(),
                GENERATION_TTL,
            )
            .await?;
        let removed = self
            .inner
            .cache
            .delete_prefix(&self.tenant_prefix(tenant))
            .await?;
        tracing::info!(target: target::CACHE, %tenant, removed, "coalesced answers invalidated");
        Ok(removed)
    }

    /// Upstream calls in flight on this replica.
    pub fn in_flight(&self) -> usize {
        self.inner.flights.lock().map_or(0, |f| f.len())
    }

    /// Requests waiting on the upstream calls in flight on this replica.
    pub fn waiting(&self) -> usize {
        self.inner.flights.lock().map_or(0, |f| {
            f.values()
                .map(|flight| flight.participants.load(Ordering::Relaxed))
                .sum()
        })
    }

    fn joinable(&self, key: &str) -> Option<Arc<Flight>> {
        self.inner
            .flights
            .lock()
            .ok()
            .and_then(|f| f.get(key).cloned())
    }

    async fn cached(&self, cache_key: &str) -> Option<ChatResponse> {
        if self.inner.settings.cache_ttl_secs == 0 {
            return None;
        }
        match self.inner.cache.get(cache_key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(target: target::CACHE, %error, "coalescing cache read failed; asking upstream");
                None
            }
        }
    }

    /// The flight for `request`: joined, or started (`streaming` picks the upstream call).
    /// `Err` carries a cached answer.
    async fn flight(
        &self,
        scope: &CoalesceScope,
        request: &ChatRequest,
        streaming: bool,
    ) -> Result<Participant, ChatResponse> {
        let key = request.coalescing_key(&scope.tenant);
        if let Some(flight) = self.joinable(&key) {
            note(Some(scope), Outcome::Joined);
            return Ok(Participant::join(flight));
        }
        let cache_key = format!("{}{key}", self.tenant_prefix(&scope.tenant));
        if let Some(response) = self.cached(&cache_key).await {
            note(Some(scope), Outcome::Cached);
            return Err(response);
        }
        let stamp = if self.inner.settings.cache_ttl_secs == 0 {
            None
        } else {
            self.stamp(&scope.tenant).await
        };
        let call = Call {
            cache_key,
            stamp,
            request: request.clone(),
            streaming,
        };
        let (flight, started) = {
            let Ok(mut flights) = self.inner.flights.lock() else {
                // A poisoned map only means a panic elsewhere; run this call on its own.
                note(Some(scope), Outcome::Bypass);
                let flight = Arc::new(Flight::default());
                let participant = Participant::join(flight.clone());
                self.spawn(None, flight, call);
                return Ok(participant);
            };
            match flights.get(&key) {
                Some(existing) => (existing.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    flights.insert(key.clone(), flight.clone());
                    metrics::gauge!("liquid_gateway_coalescing_inflight").increment(1.0);
                    (flight, true)
                }
            }
        };
        let participant = Participant::join(flight.clone());
        if started {
            note(Some(scope), Outcome::Upstream);
            self.spawn(Some(key), flight, call);
        } else {
            note(Some(scope), Outcome::Joined);
        }
        Ok(participant)
    }

    fn spawn(&self, key: Option<String>, flight: Arc<Flight>, call: Call) {
        let inner = self.inner.clone();
        let span =
            tracing::info_span!(target: "ai", "coalesced_model_call", streaming = call.streaming);
        tokio::spawn(
            async move {
                // Declared first, so it outlives everything the call holds: dropped without
                // `finish` (a panic below, or the task dropped) it still ends the flight.
                let guard = FlightGuard {
                    inner: inner.clone(),
                    key,
                    flight: flight.clone(),
                    finished: false,
                };
                let failure = tokio::select! {
                    () = inner.shutdown.cancelled() => Some(SharedFailure {
                        provider: "gateway".into(),
                        code: ErrorCode::Unavailable,
                        message: "the gateway is shutting down; retry".into(),
                    }),
                    failure = drive(&inner, &call, &flight) => failure,
                };
                guard.finish(failure);
            }
            .instrument(span),
        );
    }
}

/// What a flight's task asks upstream and where the answer is cached.
struct Call {
    cache_key: String,
    /// The tenant's generation at the start; `None` caches nothing.
    stamp: Option<Stamp>,
    request: ChatRequest,
    streaming: bool,
}

/// Ends a flight however its task ends: frees its key (so the next identical request starts
/// a fresh call) and finishes it, with the call's outcome, or with
/// [`SharedFailure::abandoned`] when dropped unfinished (the call panicked, or the runtime
/// dropped the task), so no participant waits forever.
struct FlightGuard {
    inner: Arc<Inner>,
    key: Option<String>,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    fn finish(mut self, failure: Option<SharedFailure>) {
        self.release(failure);
    }

    fn release(&mut self, failure: Option<SharedFailure>) {
        self.finished = true;
        if let Some(key) = self.key.take() {
            // A poisoned map still has to lose this key, or the tenant's request hangs on it.
            let mut flights = self
                .inner
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if flights
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&key);
                metrics::gauge!("liquid_gateway_coalescing_inflight").decrement(1.0);
            }
        }
        self.flight.finish(failure);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            tracing::error!(target: "ai", "coalesced model call ended without an outcome; failing its participants");
            self.release(Some(SharedFailure::abandoned()));
        }
    }
}

/// Runs the upstream call into `flight`; caches the answer; returns the failure, if any.
async fn drive(inner: &Inner, call: &Call, flight: &Flight) -> Option<SharedFailure> {
    if call.streaming {
        let mut stream = match inner.upstream.stream(&call.request).await {
            Ok(s) => s,
            Err(error) => return Some(SharedFailure::of(&error)),
        };
        let mut completed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(StreamEvent::Completed { response }) => {
                    store(inner, call, &response).await;
                    completed = true;
                    flight.push(StreamEvent::Completed { response });
                }
                Ok(event) => flight.push(event),
                Err(error) => return Some(SharedFailure::of(&error)),
            }
        }
        if !completed {
            return Some(SharedFailure {
                provider: "gateway".into(),
                code: ErrorCode::Unavailable,
                message: "the model stream ended without an answer".into(),
            });
        }
    } else {
        match inner.upstream.complete(&call.request).await {
            Ok(response) => {
                store(inner, call, &response).await;
                for event in replay(&response) {
                    flight.push(event);
                }
            }
            Err(error) => return Some(SharedFailure::of(&error)),
        }
    }
    None
}

/// Caches a finished answer. It runs before the answer reaches any participant, so a caller
/// who has the answer finds it cached on every replica (a failed write only costs a later
/// identical request an upstream call). The write is conditional on the tenant's generation
/// read when the call started: an answer whose tenant was invalidated since, on any replica,
/// is not cached.
async fn store(inner: &Inner, call: &Call, response: &ChatResponse) {
    let ttl = inner.settings.cache_ttl_secs;
    let Some(stamp) = call.stamp.as_ref().filter(|_| ttl > 0) else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(response) else {
        return;
    };
    if bytes.len() > inner.settings.max_cached_bytes {
        return;
    }
    match inner
        .cache
        .set_if_guard(
            &call.cache_key,
            &bytes,
            Duration::from_secs(ttl),
            &stamp.key,
            stamp.generation.as_deref(),
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(target: target::CACHE, "tenant invalidated during the call; answer not cached");
        }
        Err(error) => {
            tracing::debug!(target: target::CACHE, %error, "coalescing cache write failed");
        }
    }
}

#[async_trait]
impl ModelClient for Coalescer {
    fn name(&self) -> &str {
        self.inner.upstream.name()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let scope = current_tenant();
        let Some(scope) = scope.filter(|_| self.inner.settings.enabled) else {
            note(None, Outcome::Bypass);
            return self.inner.upstream.complete(request).await;
        };
        match self.flight(&scope, request, false).await {
            Ok(participant) => completed(participant.follow()).await,
            Err(cached) => Ok(cached),
        }
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let scope = current_tenant();
        let Some(scope) = scope.filter(|_| self.inner.settings.enabled) else {
            note(None, Outcome::Bypass);
            return self.inner.upstream.stream(request).await;
        };
        match self.flight(&scope, request, true).await {
            Ok(participant) => Ok(participant.follow()),
            Err(cached) => Ok(Box::pin(futures_util::stream::iter(
                replay(&cached).into_iter().map(Ok),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liquid_kit::HasErrorCode;
    use liquid_store::StoreError;
    use std::sync::atomic::AtomicBool;

    /// Counts calls and answers after `gate` opens (panics instead, once, when `panic_once`).
    struct Gated {
        calls: AtomicUsize,
        gate: tokio::sync::Semaphore,
        panic_once: AtomicBool,
    }

    #[async_trait]
    impl ModelClient for Gated {
        fn name(&self) -> &str {
            "gated"
        }

        async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await;
            if self.panic_once.swap(false, Ordering::SeqCst) {
                panic!("test double: the provider call panics");
            }
            Ok(liquid_llm::OfflineClient.respond(request, None))
        }

        async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
            let response = self.complete(request).await?;
            Ok(Box::pin(futures_util::stream::iter(
                replay(&response).into_iter().map(Ok),
            )))
        }
    }

    /// A shared cache whose writes take a while, as a busy Redis's can.
    struct SlowWrites(Arc<dyn Cache>);

    #[async_trait]
    impl Cache for SlowWrites {
        fn kind(&self) -> &'static str {
            self.0.kind()
        }
        fn prefix(&self) -> &str {
            self.0.prefix()
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(key).await
        }
        async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.set(key, value, ttl).await
        }
        async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
            self.0.set_nx(key, value, ttl).await
        }
        async fn set_if_guard(
            &self,
            key: &str,
            value: &[u8],
            ttl: Duration,
            guard: &str,
            expected: Option<&[u8]>,
        ) -> Result<bool, StoreError> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.set_if_guard(key, value, ttl, guard, expected).await
        }
        async fn delete(&self, key: &str) -> Result<bool, StoreError> {
            self.0.delete(key).await
        }
        async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
            self.0.delete_prefix(prefix).await
        }
        async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
            self.0.incr(key, delta, ttl).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.0.ping().await
        }
    }

    async fn coalescer(ttl: u64) -> (Coalescer, Arc<Gated>) {
        let cache = liquid_store::cache::connect("memory://", "t:")
            .await
            .unwrap();
        coalescer_on(cache, ttl)
    }

    fn coalescer_on(cache: Arc<dyn Cache>, ttl: u64) -> (Coalescer, Arc<Gated>) {
        let gated = Arc::new(Gated {
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
            panic_once: AtomicBool::new(false),
        });
        let settings = CoalescingSettings {
            cache_ttl_secs: ttl,
            ..CoalescingSettings::default()
        };
        let c = Coalescer::new(gated.clone(), cache, &settings, CancellationToken::new());
        (c, gated)
    }

    #[tokio::test]
    async fn concurrent_identical_requests_share_one_call_per_tenant() {
        let (c, gated) = coalescer(0).await;
        let request = ChatRequest::new("offline", "hello");
        let mut tasks = Vec::new();
        for tenant in ["a", "a", "a", "b"] {
            let c = c.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                scoped(tenant, async { c.complete(&request).await }).await
            }));
        }
        while c.waiting() < 4 {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(10);
        let mut outcomes = Vec::new();
        for t in tasks {
            let (answer, outcome) = t.await.unwrap();
            assert!(answer.unwrap().text.contains("hello"));
            outcomes.push(outcome.unwrap());
        }
        assert_eq!(gated.calls.load(Ordering::SeqCst), 2, "one call per tenant");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Outcome::Upstream).count(),
            2
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == Outcome::Joined).count(),
            2
        );
    }

    #[tokio::test]
    async fn a_caller_with_the_answer_finds_it_cached_on_every_replica() {
        let shared: Arc<dyn Cache> = Arc::new(SlowWrites(
            liquid_store::cache::connect("memory://", "t:")
                .await
                .unwrap(),
        ));
        let (a, gated_a) = coalescer_on(shared.clone(), 60);
        let (b, gated_b) = coalescer_on(shared, 60);
        gated_a.gate.add_permits(10);
        gated_b.gate.add_permits(10);
        for (i, streaming) in [false, true].into_iter().enumerate() {
            let request = ChatRequest::new("offline", format!("question {i}"));
            let (answer, outcome) = if streaming {
                let (stream, outcome) = scoped("t", a.stream(&request)).await;
                (completed(stream.unwrap()).await, outcome)
            } else {
                scoped("t", a.complete(&request)).await
            };
            assert_eq!(outcome, Some(Outcome::Upstream));
            let (again, outcome) = scoped("t", b.complete(&request)).await;
            assert_eq!(outcome, Some(Outcome::Cached), "streaming: {streaming}");
            assert_eq!(again.unwrap(), answer.unwrap());
        }
        assert_eq!(gated_b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn finished_answers_are_cached_per_tenant_and_invalidated_by_prefix() {
        let (c, gated) = coalescer(60).await;
        gated.gate.add_permits(100);
        let request = ChatRequest::new("offline", "hi");
        let (first, o1) = scoped("a", c.complete(&request)).await;
        let (second, o2) = scoped("a", c.stream(&request)).await;
        let second = completed(second.unwrap()).await.unwrap();
        assert_eq!(first.unwrap(), second);
        assert_eq!((o1, o2), (Some(Outcome::Upstream), Some(Outcome::Cached)));
        let (_, other) = scoped("b", c.complete(&request)).await;
        assert_eq!(other, Some(Outcome::Upstream), "another tenant never hits");
        // A tenant whose name starts with another's and a separator is not under its prefix.
        let (_, lookalike) = scoped("a:b", c.complete(&request)).await;
        assert_eq!(lookalike, Some(Outcome::Upstream));
        assert_eq!(c.invalidate_tenant("a").await.unwrap(), 1);
        let (_, again) = scoped("a", c.complete(&request)).await;
        assert_eq!(again, Some(Outcome::Upstream));
        for tenant in ["b", "a:b"] {
            let (_, kept) = scoped(tenant, c.complete(&request)).await;
            assert_eq!(kept, Some(Outcome::Cached), "{tenant} kept its answer");
        }
        // Outside a scope nothing is coalesced.
        c.complete(&request).await.unwrap();
        assert_eq!(gated.calls.load(Ordering::SeqCst), 5);
    }

    /// Asks `c` for `request` as `tenant` on a task, streaming or not.
    fn ask(
        c: &Coalescer,
        tenant: &'static str,
        request: &ChatRequest,
        streaming: bool,
    ) -> tokio::task::JoinHandle<(Result<ChatResponse, LlmError>, Option<Outcome>)> {
        let (c, request) = (c.clone(), request.clone());
        tokio::spawn(async move {
            scoped(tenant, async {
                if streaming {
                    completed(c.stream(&request).await?).await
                } else {
                    c.complete(&request).await
                }
            })
            .await
        })
    }

    #[tokio::test]
    async fn a_call_that_panics_fails_its_waiters_and_frees_its_key() {
        let (c, gated) = coalescer(60).await;
        gated.panic_once.store(true, Ordering::SeqCst);
        let request = ChatRequest::new("offline", "explode");
        let tasks: Vec<_> = [false, true, false]
            .into_iter()
            .map(|streaming| ask(&c, "a", &request, streaming))
            .collect();
        while c.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(10);
        for task in tasks {
            // The limit only turns a hang (the defect) into a failure.
            let (answer, outcome) = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a waiter of a panicked call was left hanging")
                .unwrap();
            let error = answer.unwrap_err();
            assert_eq!(error.error_code().as_str(), "internal", "{error}");
            assert!(error.to_string().contains("retry the request"), "{error}");
            assert!(matches!(outcome, Some(Outcome::Upstream | Outcome::Joined)));
        }
        assert_eq!((c.in_flight(), c.waiting()), (0, 0));
        let (again, outcome) =
            tokio::time::timeout(Duration::from_secs(10), scoped("a", c.complete(&request)))
                .await
                .expect("a later identical request joined the dead flight");
        assert!(again.unwrap().text.contains("explode"));
        assert_eq!(outcome, Some(Outcome::Upstream), "a fresh upstream call");
        assert_eq!(gated.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_is_no_longer_counted_as_waiting() {
        let (c, gated) = coalescer(0).await;
        let request = ChatRequest::new("offline", "patience");
        let leaving = ask(&c, "a", &request, true);
        let staying = ask(&c, "a", &request, false);
        while c.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        leaving.abort();
        assert!(leaving.await.unwrap_err().is_cancelled());
        assert_eq!(c.waiting(), 1);
        assert_eq!(c.in_flight(), 1, "the others still share the call");
        gated.gate.add_permits(10);
        let (answer, _) = staying.await.unwrap();
        assert!(answer.unwrap().text.contains("patience"));
        assert_eq!(c.waiting(), 0);
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_in_flight_during_invalidation_is_not_cached() {
        let (c, gated) = coalescer(60).await;
        for streaming in [false, true] {
            let request =
                ChatRequest::new("offline", format!("stale soon, streaming: {streaming}"));
            let before = gated.calls.load(Ordering::SeqCst);
            let task = ask(&c, "a", &request, streaming);
            while gated.calls.load(Ordering::SeqCst) == before {
                tokio::task::yield_now().await;
            }
            c.invalidate_tenant("a").await.unwrap();
            gated.gate.add_permits(1);
            let (answer, outcome) = task.await.unwrap();
            assert!(
                answer.unwrap().text.contains("stale soon"),
                "its caller is answered"
            );
            assert_eq!(outcome, Some(Outcome::Upstream));
            let (_, after) = scoped("a", c.complete(&request)).await;
            assert_eq!(
                after,
                Some(Outcome::Upstream),
                "cached, streaming: {streaming}"
            );
            // A call started after the invalidation caches as usual.
            let (_, again) = scoped("a", c.complete(&request)).await;
            assert_eq!(again, Some(Outcome::Cached));
            // Closes the gate again for the next round.
            gated.gate.acquire().await.unwrap().forget();
        }
        assert_eq!(gated.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_answer_in_flight_on_another_replica_during_invalidation_is_not_cached() {
        let shared = liquid_store::cache::connect("memory://", "t:")
            .await
            .unwrap();
        let (a, gated_a) = coalescer_on(shared.clone(), 60);
        let (b, gated_b) = coalescer_on(shared, 60);
        gated_a.gate.add_permits(100);
        for streaming in [false, true] {
            let request =
                ChatRequest::new("offline", format!("stale on b, streaming: {streaming}"));
            let before = gated_b.calls.load(Ordering::SeqCst);
            let on_b = ask(&b, "t", &request, streaming);
            while gated_b.calls.load(Ordering::SeqCst) == before {
                tokio::task::yield_now().await;
            }
            // Invalidated on replica a while replica b's call is in flight.
            a.invalidate_tenant("t").await.unwrap();
            gated_b.gate.add_permits(1);
            let (answer, outcome) = on_b.await.unwrap();
            assert!(answer.unwrap().text.contains("stale on b"));
            assert_eq!(outcome, Some(Outcome::Upstream));
            let (_, on_a) = scoped("t", a.complete(&request)).await;
            assert_eq!(
                on_a,
                Some(Outcome::Upstream),
                "b's stale answer was cached, streaming: {streaming}"
            );
            // A's fresh answer is cached for both replicas.
            let (_, again) = scoped("t", b.complete(&request)).await;
            assert_eq!(again, Some(Outcome::Cached));
            // Closes b's gate again for the next round.
            gated_b.gate.acquire().await.unwrap().forget();
        }
        assert_eq!(gated_a.calls.load(Ordering::SeqCst), 2);
        assert_eq!(gated_b.calls.load(Ordering::SeqCst), 2);
    }
}
