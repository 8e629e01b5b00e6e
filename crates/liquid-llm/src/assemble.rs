//! Turning vendor deltas into [`StreamEvent`]s and one final [`ChatResponse`].
//!
//! Every provider's decoder feeds an [`Assembler`]: text fragments, tool-call starts and
//! argument fragments (keyed by the vendor's own index, which for Anthropic counts text blocks
//! too), usage and the finish reason. The assembler numbers tool calls densely in order of
//! appearance, concatenates argument fragments per call and parses them once complete, so a
//! stream and a non-streaming call of the same answer produce the same [`ChatResponse`].
//! [`sse_stream`] drives a decoder over an HTTP body.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use crate::error::LlmError;
use crate::sse::{SseEvent, SseParser};
use crate::types::{ChatResponse, FinishReason, StreamEvent, ToolCall, Usage};

/// The stream every [`crate::ModelClient::stream`] returns.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
}

/// Collects one answer's pieces.
#[derive(Debug)]
pub(crate) struct Assembler {
    provider: String,
    pub(crate) model: String,
    pub(crate) id: Option<String>,
    text: String,
    calls: Vec<PartialCall>,
    by_vendor_index: HashMap<u64, usize>,
    pub(crate) usage: Usage,
    pub(crate) finish: Option<FinishReason>,
    pending: VecDeque<StreamEvent>,
}

impl Assembler {
    pub(crate) fn new(provider: &str, model: &str) -> Self {
        Assembler {
            provider: provider.to_owned(),
            model: model.to_owned(),
            id: None,
            text: String::new(),
            calls: Vec::new(),
            by_vendor_index: HashMap::new(),
            usage: Usage::default(),
            finish: None,
            pending: VecDeque::new(),
        }
    }

    pub(crate) fn provider(&self) -> &str {
        &self.provider
    }

    pub(crate) fn text(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.text.push_str(delta);
        self.pending.push_back(StreamEvent::TextDelta {
            text: delta.to_owned(),
        });
    }

    /// A tool call starts at the vendor's `vendor_index`; `id` may be empty (Gemini without
    /// ids), then a deterministic one is made up.
    pub(crate) fn tool_start(
        &mut self,
        vendor_index: u64,
        id: &str,
        name: &str,
        signature: Option<String>,
    ) {
        let index = self.calls.len();
        let id = if id.is_empty() {
            format!("call_{index}")
        } else {
            id.to_owned()
        };
        self.by_vendor_index.insert(vendor_index, index);
        self.calls.push(PartialCall {
            id: id.clone(),
            name: name.to_owned(),
            arguments: String::new(),
            signature,
        });
        self.pending.push_back(StreamEvent::ToolCallStart {
            index,
            id,
            name: name.to_owned(),
        });
    }

    pub(crate) fn has_tool(&self, vendor_index: u64) -> bool {
        self.by_vendor_index.contains_key(&vendor_index)
    }

    pub(crate) fn tool_arguments(
        &mut self,
        vendor_index: u64,
        delta: &str,
    ) -> Result<(), LlmError> {
        let Some(&index) = self.by_vendor_index.get(&vendor_index) else {
            return Err(LlmError::protocol(
                &self.provider,
                format!("arguments for tool call {vendor_index}, which never started"),
            ));
        };
        if delta.is_empty() {
            return Ok(());
        }
        if let Some(call) = self.calls.get_mut(index) {
            call.arguments.push_str(delta);
        }
        self.pending.push_back(StreamEvent::ToolCallDelta {
            index,
            arguments: delta.to_owned(),
        });
        Ok(())
    }

    pub(crate) fn take_events(&mut self) -> impl Iterator<Item = StreamEvent> + '_ {
        self.pending.drain(..)
    }

    /// The final response; fails when tool arguments are not a JSON object.
    pub(crate) fn finish(&mut self) -> Result<ChatResponse, LlmError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for call in self.calls.drain(..) {
            let arguments = if call.arguments.trim().is_empty() {
                serde_json::Value::Object(serde_json::Map::new())
            } else {
                serde_json::from_str::<serde_json::Value>(&call.arguments).map_err(|e| {
                    LlmError::protocol(
                        &self.provider,
                        format!("tool call {} arguments are not JSON: {e}", call.id),
                    )
                })?
            };
            if !arguments.is_object() {
                return Err(LlmError::protocol(
                    &self.provider,
                    format!("tool call {} arguments are not a JSON object", call.id),
                ));
            }
            tool_calls.push(ToolCall {
                id: call.id,
                name: call.name,
                arguments,
                signature: call.signature,
            });
        }
        let finish_reason = match self.finish.take() {
            // Some vendors say "stop" even when the turn ends in tool calls.
            Some(FinishReason::Stop) | None if !tool_calls.is_empty() => FinishReason::ToolCalls,
            Some(reason) => reason,
            None => FinishReason::Stop,
        };
        Ok(ChatResponse {
            id: self.id.take(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            text: std::mem::take(&mut self.text),
            tool_calls,
            finish_reason,
            usage: self.usage,
            cost_usd: None,
        })
    }
}

/// What a decoder says after an event.
pub(crate) enum Flow {
    Continue,
    Done,
}

/// A vendor's streaming protocol over SSE.
pub(crate) trait StreamDecoder: Send + 'static {
    /// Handles one SSE event, feeding `asm`.
    fn event(&mut self, event: SseEvent, asm: &mut Assembler) -> Result<Flow, LlmError>;

    /// The body ended without `Flow::Done`: return `Ok` if that is this vendor's normal end.
    fn end_of_body(&mut self, asm: &Assembler) -> Result<(), LlmError>;
}

struct StreamState<D> {
    body: Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>,
    parser: SseParser,
    events: Vec<SseEvent>,
    decoder: D,
    asm: Assembler,
    queue: VecDeque<Result<StreamEvent, LlmError>>,
    idle_timeout: Duration,
    finished: bool,
}

impl<D: StreamDecoder> StreamState<D> {
    /// Handles the parsed SSE events; returns true once the answer is complete or failed.
    fn drain_events(&mut self) -> bool {
        let events = std::mem::take(&mut self.events);
        for event in events {
            match self.decoder.event(event, &mut self.asm) {
                Ok(Flow::Continue) => self.flush(),
                Ok(Flow::Done) => {
                    self.flush();
                    self.complete();
                    return true;
                }
                Err(e) => {
                    self.flush();
                    self.queue.push_back(Err(e));
                    return true;
                }
            }
        }
        false
    }

    fn flush(&mut self) {
        let events: Vec<StreamEvent> = self.asm.take_events().collect();
        self.queue.extend(events.into_iter().map(Ok));
    }

    fn complete(&mut self) {
        let item = self
            .asm
            .finish()
            .map(|response| StreamEvent::Completed { response });
        self.queue.push_back(item);
    }

    fn fail(&mut self, err: LlmError) {
        self.queue.push_back(Err(err));
        self.finished = true;
    }

    async fn next_item(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let provider = self.asm.provider().to_owned();
            let chunk = match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Err(_) => {
                    self.fail(LlmError::Timeout {
                        provider,
                        timeout: self.idle_timeout,
                    });
                    continue;
                }
                Ok(chunk) => chunk,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    if let Err(e) = self.parser.feed(&bytes, &mut self.events) {
                        self.fail(LlmError::protocol(&provider, e.to_string()));
                        continue;
                    }
                    if self.drain_events() {
                        self.finished = true;
                    }
                }
                Some(Err(e)) => {
                    self.fail(LlmError::Unavailable {
                        provider,
                        attempts: 1,
                        reason: format!("stream broke: {e}"),
                    });
                }
                None => {
                    self.finished = true;
                    let partial = self.parser.finish();
                    match self.decoder.end_of_body(&self.asm) {
                        Ok(()) if !partial => self.complete(),
                        Ok(()) => self.queue.push_back(Err(LlmError::protocol(
                            &provider,
                            "stream ended inside an event",
                        ))),
                        Err(e) => self.queue.push_back(Err(e)),
                    }
                }
            }
        }
    }
}

/// Drives `decoder` over an SSE response body.
pub(crate) fn sse_stream<D: StreamDecoder>(
    response: reqwest::Response,
    decoder: D,
    asm: Assembler,
    idle_timeout: Duration,
) -> ChatStream {
    let state = StreamState {
        body: Box::pin(response.bytes_stream()),
        parser: SseParser::new(),
        events: Vec::new(),
        decoder,
        asm,
        queue: VecDeque::new(),
        idle_timeout,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move { state.next_item().await.map(|item| (item, state)) },
    ))
}

/// Reads a stream to its end and returns the final response (what `complete` would return).
pub async fn collect_stream(mut stream: ChatStream) -> Result<ChatResponse, LlmError> {
    let mut last = None;
    while let Some(item) = stream.next().await {
        if let StreamEvent::Completed { response } = item? {
            last = Some(response);
        }
    }
    last.ok_or_else(|| LlmError::protocol("stream", "stream ended without a completed answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_arguments_assemble_per_call_across_interleaved_deltas() {
        let mut a = Assembler::new("p", "m");
        a.text("Let me look.");
        a.tool_start(1, "t1", "read", None);
        a.tool_start(2, "", "list", None);
        a.tool_arguments(1, "{\"pa").unwrap();
        a.tool_arguments(2, "{}").unwrap();
        a.tool_arguments(1, "th\":\"a\"}").unwrap();
        assert!(a.tool_arguments(9, "x").is_err());
        let events: Vec<_> = a.take_events().collect();
        assert_eq!(events.len(), 6);
        let r = a.finish().unwrap();
        assert_eq!(r.text, "Let me look.");
        assert_eq!(r.tool_calls[0].arguments, serde_json::json!({"path": "a"}));
        assert_eq!(r.tool_calls[1].id, "call_1");
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn broken_tool_json_is_a_protocol_error() {
        let mut a = Assembler::new("p", "m");
        a.tool_start(0, "t", "x", None);
        a.tool_arguments(0, "{\"a\":").unwrap();
        assert!(matches!(a.finish(), Err(LlmError::Protocol { .. })));
    }
}
