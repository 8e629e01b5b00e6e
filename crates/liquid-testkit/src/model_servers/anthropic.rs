//! Anthropic Messages wire format: `POST /v1/messages`, `x-api-key`, `anthropic-version`,
//! `{"type":"error","error":{"type","message"}}` error bodies, SSE events `message_start`,
//! `content_block_start/delta/stop`, `message_delta`, `message_stop`, `ping`, `error`.

use std::collections::BTreeSet;

use axum::http::{HeaderValue, Method};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    CannedFinish, CannedMessage, Checked, Incoming, ServerState, WireFormat, json_response, reject,
    text_pieces, unknown_keys,
};

pub(crate) struct Anthropic;

const TOP_LEVEL: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
    "service_tier",
];

const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];

fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let mut r = json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    );
    r.headers_mut()
        .insert("request-id", HeaderValue::from_static("req_local"));
    r
}

fn invalid(message: String) -> Checked {
    reject(error(400, "invalid_request_error", &message))
}

impl WireFormat for Anthropic {
    fn route(&self, method: &Method, inc: &Incoming) -> Checked {
        if inc.path == "/v1/messages" && method == Method::POST {
            Ok(())
        } else {
            reject(error(404, "not_found_error", "Not Found"))
        }
    }

    fn authenticate(&self, key: &str, inc: &Incoming) -> Checked {
        match inc.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            None => reject(error(
                401,
                "authentication_error",
                "x-api-key header is required",
            )),
            Some(given) if given == key => {
                if inc.headers.get("anthropic-version").is_none() {
                    return invalid("anthropic-version: header is required".into());
                }
                Ok(())
            }
            Some(_) => reject(error(401, "authentication_error", "invalid x-api-key")),
        }
    }

    fn malformed(&self, reason: &str) -> Response {
        error(
            400,
            "invalid_request_error",
            &format!("There was an error parsing the body: {reason}"),
        )
    }

    fn validate(&self, inc: &Incoming, _state: &ServerState) -> Checked {
        let body = &inc.body;
        if !body.is_object() {
            return invalid("body: Input should be an object".into());
        }
        if let Some(k) = unknown_keys(body, TOP_LEVEL).first() {
            return invalid(format!("{k}: Extra inputs are not permitted"));
        }
        if !body.get("model").is_some_and(Value::is_string) {
            return invalid("model: Field required".into());
        }
        match body.get("max_tokens").and_then(Value::as_u64) {
            Some(n) if n >= 1 => {}
            Some(_) => {
                return invalid("max_tokens: Input should be greater than or equal to 1".into());
            }
            None => return invalid("max_tokens: Field required".into()),
        }
        if let Some(system) = body.get("system") {
            let ok = system.is_string()
                || system.as_array().is_some_and(|blocks| {
                    blocks
                        .iter()
                        .all(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                });
            if !ok {
                return invalid(
                    "system: Input should be a valid string or a list of text blocks".into(),
                );
            }
        }
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return invalid("messages: Field required".into());
        };
        if messages.is_empty() {
            return invalid("messages: at least one message is required".into());
        }
        let mut previous_tool_uses: BTreeSet<String> = BTreeSet::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            if role != "user" && role != "assistant" {
                return invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
            let blocks: Vec<Value> = match m.get("content") {
                Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
                Some(Value::Array(b)) => b.clone(),
                _ => return invalid(format!("messages.{i}.content: Field required")),
            };
            if blocks.is_empty() && i + 1 < messages.len() {
                return invalid(format!(
                    "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
                ));
            }
            let mut tool_uses = BTreeSet::new();
            let mut results = BTreeSet::new();
            for (j, block) in blocks.iter().enumerate() {
                let kind = block
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !BLOCK_TYPES.contains(&kind) {
                    return invalid(format!(
                        "messages.{i}.content.{j}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags"
                    ));
                }
                match kind {
                    "text"
                        if block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .is_empty() =>
                    {
                        return invalid(format!(
                            "messages: text content blocks must be non-empty (messages.{i}.content.{j})"
                        ));
                    }
                    "tool_use" => {
                        if role != "assistant" {
                            return invalid(format!(
                                "messages.{i}.content.{j}: tool_use blocks are only allowed in assistant messages"
                            ));
                        }
                        if !block.get("input").is_some_and(Value::is_object) {
                            return invalid(format!(
                                "messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary"
                            ));
                        }
                        let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                        tool_uses.insert(id.to_owned());
                    }
                    "tool_result" => {
                        let id = block
                            .get("tool_use_id")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if role != "user" || !previous_tool_uses.contains(id) {
                            return invalid(format!(
                                "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                            ));
                        }
                        results.insert(id.to_owned());
                    }
                    _ => {}
                }
            }
            if !previous_tool_uses.is_empty() {
                let missing: Vec<&String> = previous_tool_uses.difference(&results).collect();
                if !missing.is_empty() {
                    let ids: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                    return invalid(format!(
                        "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                        i - 1,
                        ids.join(", ")
                    ));
                }
            }
            previous_tool_uses = tool_uses;
        }
        if let Some(tools) = body.get("tools") {
            let Some(tools) = tools.as_array() else {
                return invalid("tools: Input should be a valid list".into());
            };
            for (i, t) in tools.iter().enumerate() {
                if t.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty()
                {
                    return invalid(format!("tools.{i}.custom.name: Field required"));
                }
                if !t.get("input_schema").is_some_and(Value::is_object) {
                    return invalid(format!("tools.{i}.custom.input_schema: Field required"));
                }
            }
        }
        Ok(())
    }

    fn wants_stream(&self, inc: &Incoming) -> bool {
        inc.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    fn failure(&self, status: u16, message: &str, code: Option<&str>) -> Response {
        error(status, code.unwrap_or_else(|| error_type(status)), message)
    }

    fn message(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        _state: &ServerState,
    ) -> Response {
        let mut content = Vec::new();
        if !msg.text.is_empty() {
            content.push(json!({"type": "text", "text": msg.text}));
        }
        for (i, call) in msg.tool_calls.iter().enumerate() {
            content.push(json!({
                "type": "tool_use", "id": tool_id(seq, i), "name": call.name, "input": call.arguments,
            }));
        }
        json_response(
            200,
            &json!({
                "id": format!("msg_local{seq}"),
                "type": "message",
                "role": "assistant",
                "model": model(inc),
                "content": content,
                "stop_reason": stop_reason(msg),
                "stop_sequence": null,
                "usage": {"input_tokens": msg.input_tokens, "output_tokens": msg.output_tokens},
            }),
        )
    }

    fn stream_frames(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        _state: &ServerState,
    ) -> Vec<String> {
        let mut frames = vec![
            start(inc, msg.input_tokens, seq),
            event("ping", &json!({"type": "ping"})),
        ];
        let mut index = 0;
        if !msg.text.is_empty() {
            frames.push(event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in text_pieces(&msg.text, 6) {
                frames.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            frames.push(stop(index));
            index += 1;
        }
        for (i, call) in msg.tool_calls.iter().enumerate() {
            frames.push(event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": tool_id(seq, i), "name": call.name, "input": {},
                }}),
            ));
            let args = call.arguments.to_string();
            for piece in text_pieces(&args, 5) {
                frames.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            frames.push(stop(index));
            index += 1;
        }
        frames.push(event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(msg), "stop_sequence": null}, "usage": {"output_tokens": msg.output_tokens}}),
        ));
        frames.push(event("message_stop", &json!({"type": "message_stop"})));
        frames
    }

    fn error_frames(
        &self,
        inc: &Incoming,
        text: &str,
        kind: &str,
        message: &str,
        seq: u64,
    ) -> Vec<String> {
        let mut frames = vec![start(inc, 1, seq)];
        frames.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        for piece in text_pieces(text, 6) {
            frames.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        frames.push(event(
            "error",
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        ));
        frames
    }
}

fn model(inc: &Incoming) -> String {
    inc.body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn tool_id(seq: u64, i: usize) -> String {
    format!("toolu_local{seq}_{i}")
}

fn stop_reason(msg: &CannedMessage) -> &'static str {
    if !msg.tool_calls.is_empty() {
        return "tool_use";
    }
    match msg.finish {
        CannedFinish::Stop => "end_turn",
        CannedFinish::Length => "max_tokens",
    }
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn start(inc: &Incoming, input_tokens: u64, seq: u64) -> String {
    event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_local{seq}"), "type": "message", "role": "assistant",
            "model": model(inc), "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }}),
    )
}

fn stop(index: usize) -> String {
    event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )
}
