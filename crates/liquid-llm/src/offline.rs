//! The offline provider: answers when no API key is configured, deterministically, and says
//! so in every answer. It is not a language model and never pretends to be one.
//!
//! Labelling: the response's `provider` and `model` are both `offline`
//! ([`crate::ChatResponse::is_offline`]), its text starts with [`OFFLINE_MARKER`], tool call
//! ids start with `offline_call_`, and it costs nothing (`cost_usd = 0`). Token counts are an
//! estimate of one token per four characters, since nothing was tokenised.
//!
//! Behaviour, all derived from the request alone:
//! - Plain prompts get a reply that states why it is offline and quotes the last user message,
//!   with the tools on offer, so a demo shows the whole round trip.
//! - **Tool directives**: every line of the latest user message of the form
//!   `@tool <name> <JSON object>` (arguments optional, default `{}`) is one tool call. The
//!   directives run one per turn, in order: the first answer calls the first directive's tool;
//!   after its result comes back, the next answer calls the second; after the last result the
//!   answer lists every result. A directive naming a tool the request does not offer, or with
//!   arguments that are not a JSON object, gets a text answer saying so instead of a call. This
//!   lets cowork's agent loop run offline (`@tool write_file {"path":"a.txt","content":"hi"}`)
//!   and a planner that asks for its plan through a tool (`@tool submit_plan {...}`) receive a
//!   structured plan.
//! - `tool_choice = none` disables directives.

use async_trait::async_trait;
use serde_json::Value;

use crate::assemble::ChatStream;
use crate::client::ModelClient;
use crate::error::LlmError;
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, Message, StreamEvent, ToolCall, ToolChoice, Usage,
};

/// Provider name of offline answers.
pub const OFFLINE_PROVIDER: &str = "offline";
/// Model name of offline answers (and the model name that routes here explicitly).
pub const OFFLINE_MODEL: &str = "offline";
/// Every offline answer's text starts with this.
pub const OFFLINE_MARKER: &str = "[offline]";
/// The directive prefix that asks for a tool call.
pub const TOOL_DIRECTIVE: &str = "@tool";

/// The deterministic offline provider.
#[derive(Debug, Clone, Default)]
pub struct OfflineClient;

struct Directive {
    name: String,
    arguments: Result<Value, String>,
}

fn directives(text: &str) -> Vec<Directive> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix(TOOL_DIRECTIVE)?;
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                return None;
            }
            let rest = rest.trim();
            let (name, args) = match rest.find(char::is_whitespace) {
                Some(i) => (&rest[..i], rest[i..].trim()),
                None => (rest, ""),
            };
            if name.is_empty() {
                return None;
            }
            let arguments = if args.is_empty() {
                Ok(Value::Object(serde_json::Map::new()))
            } else {
                match serde_json::from_str::<Value>(args) {
                    Ok(v) if v.is_object() => Ok(v),
                    Ok(_) => Err("the arguments are not a JSON object".to_owned()),
                    Err(e) => Err(format!("the arguments are not valid JSON ({e})")),
                }
            };
            Some(Directive {
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}

fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max_chars).collect();
        s.push('…');
        s
    }
}

impl OfflineClient {
    /// Answers `request`; `why` says which provider lacked a key (shown in the answer).
    pub fn respond(&self, request: &ChatRequest, why: Option<&str>) -> ChatResponse {
        let last_user = request
            .messages
            .iter()
            .rposition(|m| matches!(m, Message::User { .. }));
        let (user_text, after) = match last_user {
            Some(i) => match &request.messages[i] {
                Message::User { content } => (content.as_str(), &request.messages[i + 1..]),
                _ => ("", &request.messages[..0]),
            },
            None => ("", &request.messages[..0]),
        };
        let calls_made = after
            .iter()
            .filter(
                |m| matches!(m, Message::Assistant { tool_calls, .. } if !tool_calls.is_empty()),
            )
            .count();
        let found = if request.tool_choice == ToolChoice::None {
            Vec::new()
        } else {
            directives(user_text)
        };
        let reason = why.map_or_else(
            || "the `offline` model was requested".to_owned(),
            |w| format!("no API key is configured for {w}"),
        );
        let mut tool_calls = Vec::new();
        let (text, finish) = if let Some(d) = found.get(calls_made) {
            let step = format!("directive {} of {}", calls_made + 1, found.len());
            let offered = request.tools.iter().any(|t| t.name == d.name);
            match (&d.arguments, offered) {
                (Err(why), _) => (
                    format!(
                        "{OFFLINE_MARKER} Cannot run {step} `@tool {}`: {why}.",
                        d.name
                    ),
                    FinishReason::Stop,
                ),
                (Ok(_), false) => (
                    format!(
                        "{OFFLINE_MARKER} {step} asks for tool `{}`, which this request does not offer (tools offered: {}).",
                        d.name,
                        tool_names(request)
                    ),
                    FinishReason::Stop,
                ),
                (Ok(arguments), true) => {
                    tool_calls.push(ToolCall {
                        id: format!("offline_call_{calls_made}"),
                        name: d.name.clone(),
                        arguments: arguments.clone(),
                        signature: None,
                    });
                    (
                        format!("{OFFLINE_MARKER} Calling tool `{}` ({step}).", d.name),
                        FinishReason::ToolCalls,
                    )
                }
            }
        } else if calls_made > 0 {
            let mut text = format!(
                "{OFFLINE_MARKER} Ran {calls_made} tool call(s) as the prompt asked. Results:"
            );
            for m in after {
                if let Message::Tool { results } = m {
                    for r in results {
                        let status = if r.is_error { "failed" } else { "ok" };
                        text.push_str(&format!(
                            "\n- {} ({status}): {}",
                            r.name,
                            truncate(&r.content, 200)
                        ));
                    }
                }
            }
            (text, FinishReason::Stop)
        } else {
            let words = user_text.split_whitespace().count();
            let mut text = format!(
                "{OFFLINE_MARKER} This answer comes from Liquid's offline provider because {reason}. \
                 It is deterministic and does not understand language. You wrote ({words} words): «{}».",
                truncate(user_text.trim(), 500)
            );
            if !request.tools.is_empty() {
                text.push_str(&format!(
                    " Tools offered: {}. To call one offline, add a line `{TOOL_DIRECTIVE} <name> {{json arguments}}`.",
                    tool_names(request)
                ));
            }
            (text, FinishReason::Stop)
        };
        let input_chars = request.system.as_deref().map_or(0, str::len)
            + request
                .messages
                .iter()
                .map(|m| match m {
                    Message::User { content } => content.len(),
                    Message::Assistant {
                        content,
                        tool_calls,
                    } => {
                        content.len()
                            + tool_calls
                                .iter()
                                .map(|c| c.name.len() + c.arguments.to_string().len())
                                .sum::<usize>()
                    }
                    Message::Tool { results } => results.iter().map(|r| r.content.len()).sum(),
                })
                .sum::<usize>();
        let output_chars = text.len()
            + tool_calls
                .iter()
                .map(|c| c.arguments.to_string().len())
                .sum::<usize>();
        ChatResponse {
            id: None,
            provider: OFFLINE_PROVIDER.to_owned(),
            model: OFFLINE_MODEL.to_owned(),
            text,
            tool_calls,
            finish_reason: finish,
            usage: Usage {
                input_tokens: estimate_tokens(input_chars),
                output_tokens: estimate_tokens(output_chars),
            },
            cost_usd: Some(0.0),
        }
    }

    /// Streams the same answer as [`OfflineClient::respond`]: text word by word, each tool
    /// call's arguments in two pieces, then `Completed`.
    pub fn respond_stream(&self, request: &ChatRequest, why: Option<&str>) -> ChatStream {
        let response = self.respond(request, why);
        let mut events = Vec::new();
        for word in response.text.split_inclusive(' ') {
            events.push(Ok(StreamEvent::TextDelta {
                text: word.to_owned(),
            }));
        }
        for (index, call) in response.tool_calls.iter().enumerate() {
            events.push(Ok(StreamEvent::ToolCallStart {
                index,
                id: call.id.clone(),
                name: call.name.clone(),
            }));
            let args = call.arguments.to_string();
            let mid = args
                .char_indices()
                .map(|(i, _)| i)
                .find(|&i| i >= args.len() / 2)
                .unwrap_or(args.len());
            for piece in [&args[..mid], &args[mid..]] {
                if !piece.is_empty() {
                    events.push(Ok(StreamEvent::ToolCallDelta {
                        index,
                        arguments: piece.to_owned(),
                    }));
                }
            }
        }
        events.push(Ok(StreamEvent::Completed { response }));
        Box::pin(futures_util::stream::iter(events))
    }
}

fn tool_names(request: &ChatRequest) -> String {
    if request.tools.is_empty() {
        return "none".to_owned();
    }
    request
        .tools
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl ModelClient for OfflineClient {
    fn name(&self) -> &str {
        OFFLINE_PROVIDER
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        request
            .validate()
            .map_err(|reason| LlmError::InvalidRequest { reason })?;
        Ok(self.respond(request, None))
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        request
            .validate()
            .map_err(|reason| LlmError::InvalidRequest { reason })?;
        Ok(self.respond_stream(request, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ToolDefinition, ToolResult};
    use serde_json::json;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }
    }

    #[test]
    fn directives_parse_names_and_arguments() {
        let d = directives(
            "please\n  @tool read {\"path\": \"a\"}\n@tool list\n@toolbox x\n@tool w [1]",
        );
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].name, "read");
        assert_eq!(d[0].arguments, Ok(json!({"path": "a"})));
        assert_eq!(d[1].arguments, Ok(json!({})));
        assert!(d[2].arguments.is_err());
    }

    #[test]
    fn directives_run_one_per_turn_then_summarise() {
        let client = OfflineClient;
        let mut request = ChatRequest::new("offline", "@tool read {\"path\":\"a\"}\n@tool list");
        request.tools = vec![tool("read"), tool("list")];
        let first = client.respond(&request, None);
        assert!(first.text.starts_with(OFFLINE_MARKER));
        assert_eq!(first.tool_calls[0].name, "read");
        assert_eq!(first.finish_reason, FinishReason::ToolCalls);
        request.messages.push(first.to_message());
        request
            .messages
            .push(Message::tool_results(vec![ToolResult {
                call_id: first.tool_calls[0].id.clone(),
                name: "read".into(),
                content: "hello".into(),
                is_error: false,
            }]));
        let second = client.respond(&request, None);
        assert_eq!(second.tool_calls[0].name, "list");
        assert_eq!(second.tool_calls[0].id, "offline_call_1");
        request.messages.push(second.to_message());
        request
            .messages
            .push(Message::tool_results(vec![ToolResult {
                call_id: "offline_call_1".into(),
                name: "list".into(),
                content: "a b".into(),
                is_error: false,
            }]));
        let last = client.respond(&request, None);
        assert!(last.tool_calls.is_empty());
        assert!(last.text.contains("- read (ok): hello"), "{}", last.text);
        assert!(last.text.contains("- list (ok): a b"), "{}", last.text);
        assert_eq!(client.respond(&request, None), last, "deterministic");
    }

    #[test]
    fn an_unoffered_tool_is_refused_in_text() {
        let mut request = ChatRequest::new("offline", "@tool rm {}");
        request.tools = vec![tool("read")];
        let r = OfflineClient.respond(&request, Some("provider `openai`"));
        assert!(r.tool_calls.is_empty());
        assert!(r.text.contains("does not offer"), "{}", r.text);
    }
}
