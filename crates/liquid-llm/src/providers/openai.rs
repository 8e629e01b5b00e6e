//! OpenAI chat completions: `POST {base}/v1/chat/completions` with `Authorization: Bearer`.
//! OpenAI-compatible servers (vLLM, Ollama, LM Studio) speak the same format: configure a
//! provider of kind `openai` with their base URL.
//!
//! Wire facts this module relies on: the system prompt is a `system` message; an assistant
//! turn carries `tool_calls[]` (`{id, type: "function", function: {name, arguments}}` with the
//! arguments as a JSON *string*); each result is its own `tool` message with `tool_call_id`
//! (there is no error flag, so failures are prefixed `error: `); tools are `{type: "function",
//! function: {name, description, parameters}}`; `tool_choice` is `auto`/`none`/`required` or
//! a named function; the output limit is `max_completion_tokens`. With `stream: true` the
//! answer is SSE `data:` chunks of `chat.completion.chunk`, tool calls arriving as
//! `delta.tool_calls[]` keyed by `index` (id and name in the first fragment, `arguments`
//! text in pieces), `finish_reason` on the last choice chunk, then — because
//! `stream_options.include_usage` is set — one chunk with empty `choices` and the `usage`,
//! then `data: [DONE]`.

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::assemble::{Assembler, ChatStream, Flow, StreamDecoder};
use crate::client::ModelClient;
use crate::config::ProviderConfig;
use crate::error::LlmError;
use crate::sse::SseEvent;
use crate::transport::Transport;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolChoice, Usage};

use super::endpoint;

/// A client for one OpenAI (or compatible) provider entry.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    name: String,
    url: String,
    headers: HeaderMap,
    transport: Transport,
}

impl OpenAiClient {
    /// A client named `name` for `config`.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        transport: Transport,
    ) -> Result<Self, LlmError> {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose()))
            .map_err(|_| LlmError::InvalidRequest {
                reason: "the api key contains characters not allowed in a header".into(),
            })?;
        bearer.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, bearer);
        Ok(OpenAiClient {
            name: name.to_owned(),
            url: endpoint(
                config.base_url.trim_end_matches('/'),
                "/v1/chat/completions",
            ),
            headers,
            transport,
        })
    }
}

/// The chat completions body for `request`.
pub fn request_body(request: &ChatRequest, stream: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        match message {
            Message::User { content } => {
                messages.push(json!({"role": "user", "content": content}));
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut m = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    if content.is_empty() {
                        m["content"] = Value::Null;
                    }
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function", "function": {
                                "name": c.name, "arguments": c.arguments.to_string(),
                            }})
                        })
                        .collect();
                }
                messages.push(m);
            }
            Message::Tool { results } => {
                for r in results {
                    let content = if r.is_error {
                        format!("error: {}", r.content)
                    } else {
                        r.content.clone()
                    };
                    messages.push(
                        json!({"role": "tool", "tool_call_id": r.call_id, "content": content}),
                    );
                }
            }
        }
    }
    let p = &request.params;
    let mut body = json!({"model": request.model, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        body["tool_choice"] = match &request.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if let Some(m) = p.max_tokens {
        body["max_completion_tokens"] = json!(m);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: WireFunction,
}

#[derive(Debug, Default, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Default, Deserialize)]
struct WireChoice {
    #[serde(default, alias = "delta")]
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireCompletion {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// Feeds a completion or a chunk into the assembler.
fn absorb(c: WireCompletion, asm: &mut Assembler) -> Result<(), LlmError> {
    if let Some(id) = c.id {
        asm.id = Some(id);
    }
    if let Some(m) = c.model {
        asm.model = m;
    }
    if let Some(u) = c.usage {
        asm.usage = u.into();
    }
    if let Some(choice) = c.choices.into_iter().next() {
        let m = choice.message;
        if let Some(text) = m.content {
            asm.text(&text);
        }
        if let Some(refusal) = m.refusal {
            asm.text(&refusal);
        }
        for (position, call) in m.tool_calls.into_iter().enumerate() {
            let index = call.index.unwrap_or(position as u64);
            if !asm.has_tool(index) {
                asm.tool_start(
                    index,
                    call.id.as_deref().unwrap_or_default(),
                    call.function.name.as_deref().unwrap_or_default(),
                    None,
                );
            }
            if let Some(args) = call.function.arguments {
                asm.tool_arguments(index, &args)?;
            }
        }
        if let Some(reason) = choice.finish_reason {
            asm.finish = Some(finish_reason(&reason));
        }
    }
    Ok(())
}

struct OpenAiDecoder;

impl StreamDecoder for OpenAiDecoder {
    fn event(&mut self, event: SseEvent, asm: &mut Assembler) -> Result<Flow, LlmError> {
        if event.data.trim() == "[DONE]" {
            return Ok(Flow::Done);
        }
        let v: Value = serde_json::from_str(&event.data)
            .map_err(|e| LlmError::protocol(asm.provider(), format!("chunk is not JSON: {e}")))?;
        if let Some(err) = v.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_owned();
            let kind = err
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned();
            return Err(LlmError::StreamError {
                provider: asm.provider().to_owned(),
                kind,
                message,
                code: liquid_kit::ErrorCode::Unavailable,
            });
        }
        let chunk: WireCompletion = serde_json::from_value(v)
            .map_err(|e| LlmError::protocol(asm.provider(), format!("chunk: {e}")))?;
        absorb(chunk, asm)?;
        Ok(Flow::Continue)
    }

    fn end_of_body(&mut self, asm: &Assembler) -> Result<(), LlmError> {
        Err(LlmError::protocol(
            asm.provider(),
            "stream ended before data: [DONE]",
        ))
    }
}

#[async_trait]
impl ModelClient for OpenAiClient {
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
        let completion: WireCompletion = serde_json::from_slice(&body).map_err(|e| {
            LlmError::protocol(&self.name, format!("response is not a completion: {e}"))
        })?;
        if completion.choices.is_empty() {
            return Err(LlmError::protocol(&self.name, "completion without choices"));
        }
        let mut asm = Assembler::new(&self.name, &request.model);
        absorb(completion, &mut asm)?;
        asm.finish()
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        self.transport
            .post_sse(
                &self.name,
                &self.url,
                &self.headers,
                &request_body(request, true),
                OpenAiDecoder,
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
    fn body_sends_arguments_as_a_string_and_one_tool_message_per_result() {
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            system: Some("sys".into()),
            messages: vec![
                Message::user("go"),
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![
                        ToolCall {
                            id: "call_a".into(),
                            name: "read".into(),
                            arguments: json!({"p": 1}),
                            signature: None,
                        },
                        ToolCall {
                            id: "call_b".into(),
                            name: "read".into(),
                            arguments: json!({"p": 2}),
                            signature: None,
                        },
                    ],
                },
                Message::tool_results(vec![
                    ToolResult {
                        call_id: "call_a".into(),
                        name: "read".into(),
                        content: "1".into(),
                        is_error: false,
                    },
                    ToolResult {
                        call_id: "call_b".into(),
                        name: "read".into(),
                        content: "no such file".into(),
                        is_error: true,
                    },
                ]),
            ],
            ..ChatRequest::default()
        };
        let body = request_body(&request, true);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 5);
        assert_eq!(messages[0]["role"], "system");
        assert!(messages[2]["content"].is_null());
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            "{\"p\":1}"
        );
        assert_eq!(messages[4]["content"], "error: no such file");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
}
