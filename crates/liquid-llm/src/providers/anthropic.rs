//! Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`.
//!
//! Wire facts this module relies on: `system` is top level; `messages[]` alternate `user` and
//! `assistant` with content blocks (`text`, `tool_use{id,name,input}`, and `tool_result
//! {tool_use_id,content,is_error}` inside the next `user` turn); empty text blocks are
//! rejected, so none are sent; `max_tokens` is required; tools carry `input_schema`;
//! `tool_choice` is `{type: auto|any|tool|none}`. With `stream: true` the answer is SSE:
//! `message_start` (id, model, input usage), `content_block_start` / `content_block_delta`
//! (`text_delta`, `input_json_delta` with `partial_json`, thinking deltas ignored) /
//! `content_block_stop` per block index, `message_delta` (stop reason, cumulative output
//! usage), `message_stop`, plus `ping` and `error` events at any point. Cache read/creation
//! tokens count as input tokens.

use async_trait::async_trait;
use liquid_kit::ErrorCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::assemble::{Assembler, ChatStream, Flow, StreamDecoder};
use crate::client::ModelClient;
use crate::config::ProviderConfig;
use crate::error::LlmError;
use crate::sse::SseEvent;
use crate::transport::{Transport, secret_header};
use crate::types::{
    ChatRequest, ChatResponse, DEFAULT_MAX_TOKENS, FinishReason, Message, ToolChoice, Usage,
};

use super::endpoint;

/// The API version header value this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for one Anthropic provider entry.
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    name: String,
    url: String,
    headers: HeaderMap,
    transport: Transport,
}

impl AnthropicClient {
    /// A client named `name` for `config`.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        transport: Transport,
    ) -> Result<Self, LlmError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", secret_header(&config.api_key)?);
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        Ok(AnthropicClient {
            name: name.to_owned(),
            url: endpoint(config.base_url.trim_end_matches('/'), "/v1/messages"),
            headers,
            transport,
        })
    }
}

/// The Messages API body for `request`.
pub fn request_body(request: &ChatRequest, stream: bool) -> Value {
    let mut messages = Vec::new();
    for message in &request.messages {
        match message {
            Message::User { content } => {
                let blocks = if content.is_empty() {
                    Vec::new()
                } else {
                    vec![json!({"type": "text", "text": content})]
                };
                messages.push(json!({"role": "user", "content": blocks}));
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for call in tool_calls {
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments,
                    }));
                }
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
            Message::Tool { results } => {
                let blocks: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        json!({
                            "type": "tool_result", "tool_use_id": r.call_id,
                            "content": r.content, "is_error": r.is_error,
                        })
                    })
                    .collect();
                messages.push(json!({"role": "user", "content": blocks}));
            }
        }
    }
    let p = &request.params;
    let mut body = json!({
        "model": request.model,
        "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if let Some(system) = &request.system {
        body["system"] = json!(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body["tool_choice"] = match &request.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
    }
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if !p.stop.is_empty() {
        body["stop_sequences"] = json!(p.stop);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Applies reported counts (message_delta repeats only what changed).
    fn apply(&self, usage: &mut Usage) {
        let cache = self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0);
        if let Some(i) = self.input_tokens {
            usage.input_tokens = i + cache;
        }
        if let Some(o) = self.output_tokens {
            usage.output_tokens = o;
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Code of an `error` event's type, as the HTTP error of the same type would map.
fn stream_error_code(kind: &str) -> ErrorCode {
    match kind {
        "rate_limit_error" => ErrorCode::RateLimited,
        "authentication_error" => ErrorCode::Unauthenticated,
        "permission_error" => ErrorCode::PermissionDenied,
        "not_found_error" => ErrorCode::NotFound,
        "request_too_large" => ErrorCode::PayloadTooLarge,
        "invalid_request_error" => ErrorCode::InvalidArgument,
        _ => ErrorCode::Unavailable,
    }
}

fn start_block(asm: &mut Assembler, index: u64, block: &Value) {
    match str_field(block, "type") {
        "text" => asm.text(str_field(block, "text")),
        "tool_use" => {
            asm.tool_start(
                index,
                str_field(block, "id"),
                str_field(block, "name"),
                None,
            );
            // A non-streamed block carries its whole input; a streamed one starts with `{}`
            // and sends the input as `input_json_delta`s.
            if let Some(input) = block.get("input")
                && input.as_object().is_some_and(|o| !o.is_empty())
            {
                let _ = asm.tool_arguments(index, &input.to_string());
            }
        }
        _ => {}
    }
}

struct AnthropicDecoder;

impl StreamDecoder for AnthropicDecoder {
    fn event(&mut self, event: SseEvent, asm: &mut Assembler) -> Result<Flow, LlmError> {
        let v: Value = serde_json::from_str(&event.data).map_err(|e| {
            LlmError::protocol(asm.provider(), format!("event data is not JSON: {e}"))
        })?;
        let kind = if event.event.is_empty() {
            str_field(&v, "type").to_owned()
        } else {
            event.event
        };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind.as_str() {
            "message_start" => {
                let message: WireMessage =
                    serde_json::from_value(v.get("message").cloned().unwrap_or(Value::Null))
                        .map_err(|e| {
                            LlmError::protocol(asm.provider(), format!("message_start: {e}"))
                        })?;
                asm.id = message.id;
                if let Some(m) = message.model {
                    asm.model = m;
                }
                message.usage.apply(&mut asm.usage);
            }
            "content_block_start" => {
                start_block(asm, index, v.get("content_block").unwrap_or(&Value::Null));
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match str_field(delta, "type") {
                    "text_delta" => asm.text(str_field(delta, "text")),
                    "input_json_delta" => {
                        asm.tool_arguments(index, str_field(delta, "partial_json"))?;
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    asm.finish = Some(finish_reason(reason));
                }
                if let Some(u) = v.get("usage") {
                    let usage: WireUsage = serde_json::from_value(u.clone()).unwrap_or_default();
                    usage.apply(&mut asm.usage);
                }
            }
            "message_stop" => return Ok(Flow::Done),
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                let kind = str_field(err, "type").to_owned();
                return Err(LlmError::StreamError {
                    provider: asm.provider().to_owned(),
                    code: stream_error_code(&kind),
                    kind,
                    message: str_field(err, "message").to_owned(),
                });
            }
            // ping, content_block_stop and event types added later.
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn end_of_body(&mut self, asm: &Assembler) -> Result<(), LlmError> {
        Err(LlmError::protocol(
            asm.provider(),
            "stream ended before message_stop",
        ))
    }
}

#[async_trait]
impl ModelClient for AnthropicClient {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let sent = self
            .transport
            .post_json(
                &self.name,
                &self.url,
                &self.headers,
                &request_body(request, false),
                false,
            )
            .await?;
        let body = sent.body.unwrap_or_default();
        let message: WireMessage = serde_json::from_slice(&body).map_err(|e| {
            LlmError::protocol(&self.name, format!("response is not a message: {e}"))
        })?;
        let mut asm = Assembler::new(&self.name, &request.model);
        asm.id = message.id;
        if let Some(m) = message.model {
            asm.model = m;
        }
        message.usage.apply(&mut asm.usage);
        for (i, block) in message.content.iter().enumerate() {
            start_block(&mut asm, i as u64, block);
        }
        asm.finish = message.stop_reason.as_deref().map(finish_reason);
        asm.finish()
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        self.transport
            .post_sse(
                &self.name,
                &self.url,
                &self.headers,
                &request_body(request, true),
                AnthropicDecoder,
                &request.model,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ToolCall, ToolResult};

    #[test]
    fn body_has_required_max_tokens_and_tool_blocks() {
        let request = ChatRequest {
            model: "claude-sonnet-4-5".into(),
            system: Some("sys".into()),
            messages: vec![
                Message::user("go"),
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "toolu_1".into(),
                        name: "read".into(),
                        arguments: json!({"p": 1}),
                        signature: None,
                    }],
                },
                Message::tool_results(vec![ToolResult {
                    call_id: "toolu_1".into(),
                    name: "read".into(),
                    content: "boom".into(),
                    is_error: true,
                }]),
            ],
            ..ChatRequest::default()
        };
        let body = request_body(&request, true);
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][1]["content"].as_array().unwrap().len(), 1);
        assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(body["messages"][2]["role"], "user");
        assert_eq!(body["messages"][2]["content"][0]["is_error"], true);
        assert!(body.get("tools").is_none());
    }
}
