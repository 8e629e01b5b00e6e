//! The vendor-neutral request and response vocabulary every client speaks.
//!
//! A [`ChatRequest`] is what the platform asks a model; a [`ChatResponse`] is what came back,
//! with the provider that really answered, token usage and cost. Streaming yields
//! [`StreamEvent`]s that end in one `Completed` event carrying the same [`ChatResponse`] a
//! non-streaming call would have returned. These types (de)serialise so the gateway can cache
//! responses and hash requests; they must not know about any vendor's wire format.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One turn of a conversation (the system prompt is separate: [`ChatRequest::system`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// What the person (or calling agent) said.
    User {
        /// Plain text.
        content: String,
    },
    /// What the model said earlier: text and/or the tools it asked to call.
    Assistant {
        /// Text (may be empty when the turn was only tool calls).
        #[serde(default)]
        content: String,
        /// Tool calls the model made in this turn, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The results of the tool calls of the preceding assistant turn.
    Tool {
        /// One result per call, matched by [`ToolResult::call_id`].
        results: Vec<ToolResult>,
    },
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::Assistant {
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }

    /// Tool results answering the previous assistant turn.
    pub fn tool_results(results: Vec<ToolResult>) -> Self {
        Message::Tool { results }
    }
}

/// A tool the model may call, described by a JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Name the model uses to call it (`[A-Za-z0-9_-]{1,64}` works with every vendor).
    pub name: String,
    /// What it does; models choose tools by this text.
    #[serde(default)]
    pub description: String,
    /// JSON schema (an `object` schema) of the arguments.
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Identifier to echo back in [`ToolResult::call_id`].
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments, a JSON object.
    pub arguments: serde_json::Value,
    /// Opaque vendor token that must travel back with this call in later history (Gemini's
    /// `thoughtSignature`); `None` for vendors without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The outcome of running one tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The [`ToolCall::id`] this answers.
    pub call_id: String,
    /// The tool's name (Gemini matches results by name).
    pub name: String,
    /// The output (or the error text when `is_error`).
    pub content: String,
    /// True when the tool failed; the model sees the failure.
    #[serde(default)]
    pub is_error: bool,
}

/// Whether and how the model may call tools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "name")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call, any tool.
    Required,
    /// A call to this tool.
    Tool(String),
}

/// Sampling and length parameters; `None` leaves the vendor's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Largest number of output tokens. Anthropic requires one; its client sends
    /// [`DEFAULT_MAX_TOKENS`] when this is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sequences that end generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Output limit sent to vendors that require one when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// One request to a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name as configured (`gemini-2.5-flash`, `claude-sonnet-4-5`, `gpt-4o-mini`,
    /// `offline`); empty means the configured default model.
    #[serde(default)]
    pub model: String,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    /// Tool-calling mode.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// Sampling and length parameters.
    #[serde(default)]
    pub params: Parameters,
}

impl ChatRequest {
    /// A request for `model` with one user message.
    pub fn new(model: impl Into<String>, user: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            messages: vec![Message::user(user)],
            ..ChatRequest::default()
        }
    }

    /// Stable key for coalescing identical requests: SHA-256 (hex) over the tenant and the
    /// request's canonical JSON (model, system, every message, tools, tool choice, parameters).
    /// JSON objects inside tool schemas hash by sorted key, so key order does not matter.
    pub fn coalescing_key(&self, tenant: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update((tenant.len() as u64).to_be_bytes());
        hasher.update(tenant.as_bytes());
        // Serialising plain data structs cannot fail; the fallback only keeps the signature total.
        let canonical = serde_json::to_value(self)
            .map(canonical_json)
            .unwrap_or_default();
        hasher.update(canonical.as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Checks what every vendor would reject, before spending a network round trip.
    pub fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        let mut open_calls: Vec<&str> = Vec::new();
        for (i, message) in self.messages.iter().enumerate() {
            match message {
                Message::User { .. } => open_calls.clear(),
                Message::Assistant { tool_calls, .. } => {
                    open_calls = tool_calls.iter().map(|c| c.id.as_str()).collect();
                    for call in tool_calls {
                        if !call.arguments.is_object() {
                            return Err(format!(
                                "messages[{i}]: tool call {} has arguments that are not a JSON object",
                                call.id
                            ));
                        }
                    }
                }
                Message::Tool { results } => {
                    if results.is_empty() {
                        return Err(format!("messages[{i}]: tool message without results"));
                    }
                    for r in results {
                        if !open_calls.contains(&r.call_id.as_str()) {
                            return Err(format!(
                                "messages[{i}]: tool result for {} answers no call of the previous assistant turn",
                                r.call_id
                            ));
                        }
                    }
                    open_calls.clear();
                }
            }
        }
        for tool in &self.tools {
            let name_ok = !tool.name.is_empty()
                && tool.name.len() <= 64
                && tool
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!(
                    "tool name {:?} must be 1-64 characters of letters, digits, _ or -",
                    tool.name
                ));
            }
            if !tool.parameters.is_object() {
                return Err(format!(
                    "tool {}: parameters must be a JSON schema object",
                    tool.name
                ));
            }
        }
        if let ToolChoice::Tool(name) = &self.tool_choice
            && !self.tools.iter().any(|t| &t.name == name)
        {
            return Err(format!(
                "tool_choice names {name}, which is not among the tools"
            ));
        }
        Ok(())
    }
}

/// JSON text with object keys sorted at every level (serde_json's map may preserve insertion
/// order when another crate in the tree enables `preserve_order`).
fn canonical_json(value: serde_json::Value) -> String {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    sort(value).to_string()
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end of the turn or a stop sequence.
    Stop,
    /// The output token limit was reached.
    Length,
    /// The model is waiting for tool results.
    ToolCalls,
    /// The vendor's safety system stopped or refused the output.
    ContentFilter,
    /// A vendor reason without an equivalent here (kept verbatim).
    Other(String),
}

/// Tokens a request consumed, as the vendor reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (system, history, tools).
    pub input_tokens: u64,
    /// Generated tokens, including reasoning/"thinking" tokens, which every vendor bills as
    /// output.
    pub output_tokens: u64,
}

impl Usage {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds another request's usage.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// A complete model answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The vendor's response id when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The provider that really answered (`gemini`, `anthropic`, `openai` or `offline`, or the
    /// configured name of another provider entry).
    pub provider: String,
    /// The model that answered (the vendor's own version string when it reports one).
    pub model: String,
    /// Generated text (concatenated text parts).
    pub text: String,
    /// Tool calls, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Token usage.
    pub usage: Usage,
    /// Cost in US dollars from the configured price table; `None` when the model has no price
    /// there (unknown is not zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl ChatResponse {
    /// True when the deterministic offline provider answered instead of a real model.
    pub fn is_offline(&self) -> bool {
        self.provider == crate::offline::OFFLINE_PROVIDER
    }

    /// The assistant message to append to the history for this answer.
    pub fn to_message(&self) -> Message {
        Message::Assistant {
            content: self.text.clone(),
            tool_calls: self.tool_calls.clone(),
        }
    }
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// More text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// A tool call began.
    ToolCallStart {
        /// Position of the call in [`ChatResponse::tool_calls`].
        index: usize,
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// More of a tool call's JSON arguments (concatenate the deltas of one index).
    ToolCallDelta {
        /// Position of the call.
        index: usize,
        /// The next fragment of the arguments' JSON text.
        arguments: String,
    },
    /// The answer is complete; always the last event of a successful stream.
    Completed {
        /// The assembled answer, equal to what a non-streaming call returns.
        response: ChatResponse,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "read_file".into(),
            arguments: json!({"path": "a"}),
            signature: None,
        }
    }

    #[test]
    fn coalescing_key_ignores_schema_key_order_but_not_content_or_tenant() {
        let mut a = ChatRequest::new("gpt-4o-mini", "hi");
        a.tools.push(ToolDefinition {
            name: "t".into(),
            description: String::new(),
            parameters: serde_json::from_str(r#"{"type":"object","properties":{}}"#).unwrap(),
        });
        let mut b = a.clone();
        b.tools[0].parameters =
            serde_json::from_str(r#"{"properties":{},"type":"object"}"#).unwrap();
        assert_eq!(a.coalescing_key("t1"), b.coalescing_key("t1"));
        assert_ne!(a.coalescing_key("t1"), a.coalescing_key("t2"));
        b.params.temperature = Some(0.5);
        assert_ne!(a.coalescing_key("t1"), b.coalescing_key("t1"));
    }

    #[test]
    fn validate_rejects_what_vendors_reject() {
        assert!(ChatRequest::default().validate().is_err());
        let ok = ChatRequest {
            messages: vec![
                Message::user("go"),
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![call("c1")],
                },
                Message::tool_results(vec![ToolResult {
                    call_id: "c1".into(),
                    name: "read_file".into(),
                    content: "x".into(),
                    is_error: false,
                }]),
            ],
            ..ChatRequest::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let mut orphan = ok.clone();
        orphan.messages.remove(1);
        assert!(orphan.validate().unwrap_err().contains("answers no call"));
        let mut bad_tool = ok.clone();
        bad_tool.tools.push(ToolDefinition {
            name: "has space".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        });
        assert!(bad_tool.validate().is_err());
        let mut bad_choice = ok;
        bad_choice.tool_choice = ToolChoice::Tool("nope".into());
        assert!(bad_choice.validate().is_err());
    }

    #[test]
    fn messages_serialise_with_a_role_tag() {
        let v = serde_json::to_value(Message::user("hi")).unwrap();
        assert_eq!(v, json!({"role": "user", "content": "hi"}));
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, Message::user("hi"));
    }
}
