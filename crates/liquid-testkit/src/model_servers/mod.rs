//! Local model servers that speak the vendors' real wire formats — Gemini `generateContent`
//! (and `streamGenerateContent`, SSE or JSON array), Anthropic Messages (SSE events) and OpenAI
//! chat completions (SSE chunks and `[DONE]`) — on `127.0.0.1:0`, for tests of code that calls
//! model APIs, which cannot be reached from here.
//!
//! A test scripts each server with a queue of [`Reply`]s (text, tool calls, usage, injected
//! 429/5xx with `Retry-After`, a stream cut off midway, an error event mid-stream) and reads
//! back every request it received ([`ModelServer::requests`]: method, path, query, headers,
//! body), so it can assert exactly how many upstream calls were made and what they carried.
//! Like the vendors, the servers check the API key header (answering with each vendor's own
//! status and error body) and reject malformed requests with the vendor's error shape: bad
//! JSON, missing required fields, unknown top-level fields, wrong roles, tool results that
//! answer no preceding tool call and tool calls left without results. Replies can be held
//! ([`ModelServer::hold_replies`]) so tests can line up concurrent requests deterministically.
//!
//! Everything here is a test double by design and says so: ids carry `local`, and an exhausted
//! script answers 500 with a message naming the missing reply.

mod anthropic;
mod gemini;
mod openai;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Which vendor's protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Google Gemini API.
    Gemini,
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI chat completions.
    OpenAi,
}

/// One tool call in a canned answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CannedToolCall {
    /// Tool name.
    pub name: String,
    /// Arguments object.
    pub arguments: Value,
}

/// How a canned answer ends (tool calls end as tool calls automatically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CannedFinish {
    /// Natural end of turn.
    #[default]
    Stop,
    /// Output token limit reached.
    Length,
}

/// A canned model answer, rendered in the vendor's format (streamed or not, as requested).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CannedMessage {
    /// Text of the answer (may be empty).
    pub text: String,
    /// Tool calls, after the text.
    pub tool_calls: Vec<CannedToolCall>,
    /// Reported input tokens.
    pub input_tokens: u64,
    /// Reported output tokens.
    pub output_tokens: u64,
    /// How it ends.
    pub finish: CannedFinish,
}

impl CannedMessage {
    /// A text answer with usage 10 in / 5 out.
    pub fn text(text: impl Into<String>) -> Self {
        CannedMessage {
            text: text.into(),
            input_tokens: 10,
            output_tokens: 5,
            ..CannedMessage::default()
        }
    }

    /// Adds a tool call.
    pub fn with_tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        self.tool_calls.push(CannedToolCall {
            name: name.into(),
            arguments,
        });
        self
    }

    /// Sets the reported usage.
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.input_tokens = input_tokens;
        self.output_tokens = output_tokens;
        self
    }

    /// Ends as if the output limit was reached.
    pub fn truncated(mut self) -> Self {
        self.finish = CannedFinish::Length;
        self
    }
}

/// One scripted response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A normal answer.
    Message(CannedMessage),
    /// An HTTP error in the vendor's error format.
    Failure {
        /// HTTP status (429, 500, 503, 529...).
        status: u16,
        /// `Retry-After` seconds to send, if any.
        retry_after_secs: Option<u64>,
        /// Error message.
        message: String,
        /// Vendor error type/code to send instead of the status's usual one
        /// (`insufficient_quota`, `overloaded_error`...).
        code: Option<String>,
    },
    /// A streamed answer whose connection ends halfway, without the vendor's end marker
    /// (a non-streaming request gets the whole message).
    BrokenStream(CannedMessage),
    /// A stream that sends `text`, then the vendor's in-stream error event.
    MidStreamError {
        /// Text sent before the error.
        text: String,
        /// Vendor error type (`overloaded_error`, `server_error`...).
        kind: String,
        /// Error message.
        message: String,
    },
}

impl Reply {
    /// A text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Message(CannedMessage::text(text))
    }

    /// An HTTP error with the status's usual vendor error type.
    pub fn failure(status: u16, retry_after_secs: Option<u64>) -> Self {
        Reply::Failure {
            status,
            retry_after_secs,
            message: format!("local model server: scripted http {status}"),
            code: None,
        }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers, names lower-case (repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Body as JSON (`Null` when it was not JSON).
    pub body: Value,
    /// Body as text.
    pub raw_body: String,
}

impl RecordedRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// What a request parsed into, passed to the vendor modules.
pub(crate) struct Incoming {
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

/// A vendor-specific outcome of checking a request (the rejection is boxed: responses are
/// large).
pub(crate) type Checked = Result<(), Box<Response>>;

/// Rejects a request with `response`.
pub(crate) fn reject(response: Response) -> Checked {
    Err(Box::new(response))
}

/// The vendor modules' interface.
pub(crate) trait WireFormat: Send + Sync + 'static {
    /// Checks the path (404 if it is not the vendor's endpoint).
    fn route(&self, method: &Method, inc: &Incoming) -> Checked;
    /// Checks the credentials against `key`.
    fn authenticate(&self, key: &str, inc: &Incoming) -> Checked;
    /// An error for a body that is not JSON.
    fn malformed(&self, reason: &str) -> Response;
    /// Checks the body as the vendor would; `state` knows what this server issued before.
    fn validate(&self, inc: &Incoming, state: &ServerState) -> Checked;
    /// True when the request asks for a stream.
    fn wants_stream(&self, inc: &Incoming) -> bool;
    /// The vendor error response for `status`.
    fn failure(&self, status: u16, message: &str, code: Option<&str>) -> Response;
    /// A non-streaming answer.
    fn message(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        state: &ServerState,
    ) -> Response;
    /// A streamed answer as SSE frames (each a complete `event:`/`data:` block).
    fn stream_frames(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        state: &ServerState,
    ) -> Vec<String>;
    /// Frames for text followed by an in-stream error.
    fn error_frames(
        &self,
        inc: &Incoming,
        text: &str,
        kind: &str,
        message: &str,
        seq: u64,
    ) -> Vec<String>;
    /// The response for a stream made of `frames`, in the vendor's framing.
    fn stream_response(&self, inc: &Incoming, frames: Vec<String>) -> Response {
        let _ = inc;
        sse_response(frames)
    }
}

/// Shared state of one server.
pub(crate) struct ServerState {
    api_key: String,
    /// Replies in order, each with the text a request must contain to take it (none: any).
    queue: Mutex<VecDeque<(Option<String>, Reply)>>,
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Notify,
    hold: watch::Sender<bool>,
    /// Values the vendor module remembers between requests (Gemini's thought signatures).
    pub(crate) issued: Mutex<BTreeMap<String, String>>,
    format: Box<dyn WireFormat>,
}

/// A running local model server; stops when dropped.
pub struct ModelServer {
    vendor: Vendor,
    addr: SocketAddr,
    state: Arc<ServerState>,
    stop: CancellationToken,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ModelServer {
    /// Starts a server for `vendor` that accepts `api_key`.
    pub async fn start(vendor: Vendor, api_key: &str) -> anyhow::Result<ModelServer> {
        let format: Box<dyn WireFormat> = match vendor {
            Vendor::Gemini => Box::new(gemini::Gemini),
            Vendor::Anthropic => Box::new(anthropic::Anthropic),
            Vendor::OpenAi => Box::new(openai::OpenAi),
        };
        let (hold, _) = watch::channel(false);
        let state = Arc::new(ServerState {
            api_key: api_key.to_owned(),
            queue: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            hold,
            issued: Mutex::new(BTreeMap::new()),
            format,
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(ModelServer {
            vendor,
            addr,
            state,
            stop,
        })
    }

    /// A Gemini server.
    pub async fn gemini(api_key: &str) -> anyhow::Result<ModelServer> {
        ModelServer::start(Vendor::Gemini, api_key).await
    }

    /// An Anthropic server.
    pub async fn anthropic(api_key: &str) -> anyhow::Result<ModelServer> {
        ModelServer::start(Vendor::Anthropic, api_key).await
    }

    /// An OpenAI server.
    pub async fn openai(api_key: &str) -> anyhow::Result<ModelServer> {
        ModelServer::start(Vendor::OpenAi, api_key).await
    }

    /// The vendor it speaks.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// The base URL to configure clients with (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a reply (replies are used in order, one per accepted request).
    pub fn push(&self, reply: Reply) {
        if let Ok(mut q) = self.state.queue.lock() {
            q.push_back((None, reply));
        }
    }

    /// Queues a reply only a request whose body contains `needle` takes (the first such reply
    /// in order); for concurrent callers that must each get their own script (two agents asked
    /// at once).
    pub fn push_for(&self, needle: impl Into<String>, reply: Reply) {
        if let Ok(mut q) = self.state.queue.lock() {
            q.push_back((Some(needle.into()), reply));
        }
    }

    /// Replies not used yet.
    pub fn pending_replies(&self) -> usize {
        self.state.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Every request received so far, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Waits until at least `n` requests arrived; fails after `limit`.
    pub async fn wait_for_requests(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let wait = async {
            loop {
                let notified = self.state.arrived.notified();
                if self.request_count() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            anyhow::anyhow!("{} request(s) arrived, expected {n}", self.request_count())
        })
    }

    /// Holds replies: accepted requests wait until [`ModelServer::release_replies`].
    pub fn hold_replies(&self) {
        self.state.hold.send_replace(true);
    }

    /// Lets held requests (and later ones) be answered.
    pub fn release_replies(&self) {
        self.state.hold.send_replace(false);
    }
}

fn record(state: &ServerState, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: map,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        raw_body: String::from_utf8_lossy(body).into_owned(),
    };
    if let Ok(mut r) = state.requests.lock() {
        r.push(recorded);
    }
    state.arrived.notify_waiters();
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, &method, &uri, &headers, &body);
    let format = state.format.as_ref();
    let mut inc = Incoming {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: Value::Null,
    };
    if let Err(r) = format.route(&method, &inc) {
        return *r;
    }
    if let Err(r) = format.authenticate(&state.api_key, &inc) {
        return *r;
    }
    inc.body = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => return format.malformed(&e.to_string()),
    };
    if let Err(r) = format.validate(&inc, &state) {
        return *r;
    }
    let mut hold = state.hold.subscribe();
    // A closed channel cannot happen (the sender lives in the state); treat it as released.
    let _ = hold.wait_for(|held| !*held).await;
    let raw = String::from_utf8_lossy(&body);
    let (reply, seq) = match state.queue.lock() {
        Ok(mut q) => {
            let seq = state.requests.lock().map(|r| r.len() as u64).unwrap_or(0);
            let taken = q
                .iter()
                .position(|(needle, _)| needle.as_deref().is_none_or(|n| raw.contains(n)))
                .and_then(|i| q.remove(i))
                .map(|(_, reply)| reply);
            (taken, seq)
        }
        Err(_) => (None, 0),
    };
    let Some(reply) = reply else {
        return format.failure(
            500,
            "local model server: no scripted reply left for this request",
            None,
        );
    };
    let streaming = format.wants_stream(&inc);
    match reply {
        Reply::Failure {
            status,
            retry_after_secs,
            message,
            code,
        } => {
            let mut response = format.failure(status, &message, code.as_deref());
            if let Some(secs) = retry_after_secs
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
        Reply::Message(msg) if streaming => {
            let frames = format.stream_frames(&inc, &msg, seq, &state);
            format.stream_response(&inc, frames)
        }
        Reply::Message(msg) | Reply::BrokenStream(msg) if !streaming => {
            format.message(&inc, &msg, seq, &state)
        }
        Reply::BrokenStream(msg) => {
            let mut frames = format.stream_frames(&inc, &msg, seq, &state);
            frames.truncate(frames.len() / 2);
            // End mid-frame too, as a dropped connection would.
            if let Some(last) = frames.last_mut() {
                let cut = last.len() / 2;
                let cut = (0..=cut)
                    .rev()
                    .find(|&i| last.is_char_boundary(i))
                    .unwrap_or(0);
                last.truncate(cut);
            }
            format.stream_response(&inc, frames)
        }
        Reply::MidStreamError { kind, message, .. } if !streaming => {
            format.failure(500, &message, Some(&kind))
        }
        Reply::MidStreamError {
            text,
            kind,
            message,
        } => {
            let frames = format.error_frames(&inc, &text, &kind, &message, seq);
            format.stream_response(&inc, frames)
        }
        Reply::Message(msg) => format.message(&inc, &msg, seq, &state),
    }
}

/// Splits `text` into irregular pieces (some splitting UTF-8 characters and CRLF pairs), so
/// clients' incremental parsers are exercised.
pub(crate) fn irregular_pieces(text: String) -> Vec<Bytes> {
    const SIZES: [usize; 7] = [7, 13, 1, 29, 64, 3, 2];
    let bytes = Bytes::from(text);
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let end = (at + SIZES[i % SIZES.len()]).min(bytes.len());
        pieces.push(bytes.slice(at..end));
        at = end;
        i += 1;
    }
    pieces
}

/// A `text/event-stream` response made of `frames`, delivered in irregular pieces.
pub(crate) fn sse_response(frames: Vec<String>) -> Response {
    let pieces = irregular_pieces(frames.concat());
    let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A JSON response.
pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `text` cut into pieces of about `n` characters (streamed text deltas).
pub(crate) fn text_pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

/// Keys of `object` not in `allowed`.
pub(crate) fn unknown_keys<'a>(object: &'a Value, allowed: &[&str]) -> Vec<&'a str> {
    object
        .as_object()
        .map(|o| {
            o.keys()
                .map(String::as_str)
                .filter(|k| !allowed.contains(k))
                .collect()
        })
        .unwrap_or_default()
}
