//! Google Gemini API: `POST {base}/v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, authenticated by the `x-goog-api-key` header.
//!
//! Wire facts this module relies on: conversation turns are `contents[]` with role `user` or
//! `model` and `parts[]` (`text`, `functionCall{name,args,id}`, `functionResponse{name,
//! response,id}`); function results go back in a `user` turn, the output under `response.output`
//! (failures under `response.error`), as the FunctionResponse reference asks; the system prompt
//! is `systemInstruction`; tools are `tools[].functionDeclarations[]`; sampling is
//! `generationConfig`; tool mode is `toolConfig.functionCallingConfig` (`AUTO`, `ANY`, `NONE`,
//! `allowedFunctionNames`). A part's `thoughtSignature` must be returned with the function call
//! it came with, so it is kept in [`ToolCall::signature`]. Streaming sends whole
//! `GenerateContentResponse` objects as SSE `data:` events separated by CRLF; each carries
//! cumulative `usageMetadata`, the last one a `finishReason`. Thinking tokens
//! (`thoughtsTokenCount`) are billed as output and counted as output here.

use async_trait::async_trait;
use liquid_kit::ErrorCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::assemble::{Assembler, ChatStream, Flow, StreamDecoder};
use crate::client::ModelClient;
use crate::config::ProviderConfig;
use crate::error::LlmError;
use crate::sse::SseEvent;
use crate::transport::{Transport, secret_header};
use crate::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolChoice, Usage};

use super::{check_model_name, endpoint};

/// A client for one Gemini provider entry.
#[derive(Debug, Clone)]
pub struct GeminiClient {
    name: String,
    base_url: String,
    headers: HeaderMap,
    transport: Transport,
}

impl GeminiClient {
    /// A client named `name` for `config`.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        transport: Transport,
    ) -> Result<Self, LlmError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-api-key", secret_header(&config.api_key)?);
        Ok(GeminiClient {
            name: name.to_owned(),
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            headers,
            transport,
        })
    }

    fn url(&self, model: &str, stream: bool) -> String {
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        endpoint(&self.base_url, &format!("/v1beta/models/{model}:{method}"))
    }
}

/// The `generateContent` body for `request`.
pub fn request_body(request: &ChatRequest) -> Value {
    let mut contents = Vec::new();
    for message in &request.messages {
        match message {
            Message::User { content } => {
                contents.push(json!({"role": "user", "parts": [{"text": content}]}));
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut parts = Vec::new();
                if !content.is_empty() {
                    parts.push(json!({"text": content}));
                }
                for call in tool_calls {
                    let mut part = json!({"functionCall": {
                        "id": call.id, "name": call.name, "args": call.arguments,
                    }});
                    if let Some(sig) = &call.signature {
                        part["thoughtSignature"] = json!(sig);
                    }
                    parts.push(part);
                }
                if !parts.is_empty() {
                    contents.push(json!({"role": "model", "parts": parts}));
                }
            }
            Message::Tool { results } => {
                let parts: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        let key = if r.is_error { "error" } else { "output" };
                        json!({"functionResponse": {
                            "id": r.call_id, "name": r.name, "response": {key: r.content},
                        }})
                    })
                    .collect();
                contents.push(json!({"role": "user", "parts": parts}));
            }
        }
    }
    let mut body = json!({"contents": contents});
    if let Some(system) = &request.system {
        body["systemInstruction"] = json!({"parts": [{"text": system}]});
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        body["tools"] = json!([{"functionDeclarations": declarations}]);
        let config = match &request.tool_choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body["toolConfig"] = json!({"functionCallingConfig": config});
    }
    let p = &request.params;
    let mut generation = serde_json::Map::new();
    if let Some(t) = p.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(t) = p.top_p {
        generation.insert("topP".into(), json!(t));
    }
    if let Some(m) = p.max_tokens {
        generation.insert("maxOutputTokens".into(), json!(m));
    }
    if !p.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(p.stop));
    }
    if !generation.is_empty() {
        body["generationConfig"] = Value::Object(generation);
    }
    body
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<FunctionCall>,
    #[serde(default)]
    thought_signature: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// Feeds one response (or stream chunk) into the assembler.
fn absorb(chunk: GenerateContentResponse, asm: &mut Assembler, next_call: &mut u64) {
    if let Some(id) = chunk.response_id {
        asm.id = Some(id);
    }
    if let Some(v) = chunk.model_version {
        asm.model = v;
    }
    if let Some(u) = chunk.usage_metadata {
        // Cumulative in every chunk: the last one wins.
        asm.usage = Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
        };
    }
    if chunk.candidates.is_empty() && chunk.prompt_feedback.and_then(|f| f.block_reason).is_some() {
        asm.finish = Some(FinishReason::ContentFilter);
    }
    if let Some(candidate) = chunk.candidates.into_iter().next() {
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                let index = *next_call;
                *next_call += 1;
                asm.tool_start(
                    index,
                    call.id.as_deref().unwrap_or_default(),
                    &call.name,
                    part.thought_signature,
                );
                let args = call.args.unwrap_or_else(|| json!({}));
                // Serialising a parsed value cannot fail and the call was just started.
                let _ = asm.tool_arguments(index, &args.to_string());
            } else if let Some(text) = part.text
                && !part.thought
            {
                asm.text(&text);
            }
        }
        if let Some(reason) = candidate.finish_reason {
            asm.finish = Some(finish_reason(&reason));
        }
    }
}

struct GeminiDecoder {
    next_call: u64,
}

impl StreamDecoder for GeminiDecoder {
    fn event(&mut self, event: SseEvent, asm: &mut Assembler) -> Result<Flow, LlmError> {
        let value: Value = serde_json::from_str(&event.data).map_err(|e| {
            LlmError::protocol(asm.provider(), format!("stream chunk is not JSON: {e}"))
        })?;
        // A failure after the stream began arrives as a google.rpc.Status object.
        if let Some(err) = value.get("error") {
            let kind = err
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_owned();
            let code = match kind.as_str() {
                "RESOURCE_EXHAUSTED" => ErrorCode::RateLimited,
                "INVALID_ARGUMENT" => ErrorCode::InvalidArgument,
                "PERMISSION_DENIED" => ErrorCode::PermissionDenied,
                "DEADLINE_EXCEEDED" => ErrorCode::DeadlineExceeded,
                _ => ErrorCode::Unavailable,
            };
            return Err(LlmError::StreamError {
                provider: asm.provider().to_owned(),
                kind,
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .to_owned(),
                code,
            });
        }
        let chunk: GenerateContentResponse = serde_json::from_value(value).map_err(|e| {
            LlmError::protocol(
                asm.provider(),
                format!("stream chunk is not a response: {e}"),
            )
        })?;
        absorb(chunk, asm, &mut self.next_call);
        Ok(Flow::Continue)
    }

    fn end_of_body(&mut self, asm: &Assembler) -> Result<(), LlmError> {
        if asm.finish.is_some() {
            Ok(())
        } else {
            Err(LlmError::protocol(
                asm.provider(),
                "stream ended before a finishReason",
            ))
        }
    }
}

#[async_trait]
impl ModelClient for GeminiClient {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        check_model_name(&request.model)?;
        let sent = self
            .transport
            .post_json(
                &self.name,
                &self.url(&request.model, false),
                &self.headers,
                &request_body(request),
                false,
            )
            .await?;
        let body = sent.body.unwrap_or_default();
        let parsed: GenerateContentResponse = serde_json::from_slice(&body)
            .map_err(|e| LlmError::protocol(&self.name, format!("response is not JSON: {e}")))?;
        let mut asm = Assembler::new(&self.name, &request.model);
        absorb(parsed, &mut asm, &mut 0);
        asm.finish()
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        check_model_name(&request.model)?;
        self.transport
            .post_sse(
                &self.name,
                &self.url(&request.model, true),
                &self.headers,
                &request_body(request),
                GeminiDecoder { next_call: 0 },
                &request.model,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ToolCall, ToolDefinition, ToolResult};

    #[test]
    fn body_maps_roles_tools_results_and_generation_config() {
        let request = ChatRequest {
            model: "gemini-2.5-flash".into(),
            system: Some("be brief".into()),
            messages: vec![
                Message::user("read a"),
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "read".into(),
                        arguments: json!({"path": "a"}),
                        signature: Some("sig".into()),
                    }],
                },
                Message::tool_results(vec![ToolResult {
                    call_id: "c1".into(),
                    name: "read".into(),
                    content: "hello".into(),
                    is_error: false,
                }]),
            ],
            tools: vec![ToolDefinition {
                name: "read".into(),
                description: "read a file".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Tool("read".into()),
            params: crate::types::Parameters {
                temperature: Some(0.5),
                max_tokens: Some(100),
                stop: vec!["END".into()],
                top_p: None,
            },
        };
        let body = request_body(&request);
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"]["args"]["path"],
            "a"
        );
        assert_eq!(body["contents"][1]["parts"][0]["thoughtSignature"], "sig");
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["response"]["output"],
            "hello"
        );
        assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "read");
        assert_eq!(
            body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
            "read"
        );
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 100);
        assert_eq!(body["generationConfig"]["stopSequences"][0], "END");
    }

    #[test]
    fn thoughts_are_not_text_but_are_billed_as_output() {
        let raw = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking...","thought":true},{"text":"4"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":1,"thoughtsTokenCount":20,"totalTokenCount":31},"modelVersion":"gemini-2.5-flash-001"}"#;
        let mut asm = Assembler::new("gemini", "gemini-2.5-flash");
        absorb(serde_json::from_str(raw).unwrap(), &mut asm, &mut 0);
        let r = asm.finish().unwrap();
        assert_eq!(r.text, "4");
        assert_eq!(r.usage.output_tokens, 21);
        assert_eq!(r.model, "gemini-2.5-flash-001");
    }
}
