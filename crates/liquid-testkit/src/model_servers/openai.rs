//! OpenAI chat completions wire format: `POST /v1/chat/completions`, `Authorization: Bearer`,
//! `{"error":{"message","type","param","code"}}` error bodies, SSE `data:` chunks of
//! `chat.completion.chunk` ending in `data: [DONE]`, with a usage chunk (empty `choices`)
//! when `stream_options.include_usage` is set.

use std::collections::BTreeSet;

use axum::http::Method;
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    CannedFinish, CannedMessage, Checked, Incoming, ServerState, WireFormat, json_response, reject,
    text_pieces, unknown_keys,
};

pub(crate) struct OpenAi;

const TOP_LEVEL: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "stream",
    "stream_options",
    "n",
    "seed",
    "user",
    "response_format",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "metadata",
    "store",
];

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

fn error(status: u16, message: &str, kind: &str, code: Value, param: Value) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn invalid(message: String, param: Option<&str>) -> Checked {
    reject(error(
        400,
        &message,
        "invalid_request_error",
        Value::Null,
        param.map_or(Value::Null, |p| json!(p)),
    ))
}

impl WireFormat for OpenAi {
    fn route(&self, method: &Method, inc: &Incoming) -> Checked {
        if inc.path == "/v1/chat/completions" && method == Method::POST {
            Ok(())
        } else {
            reject(error(
                404,
                &format!("Invalid URL ({method} {})", inc.path),
                "invalid_request_error",
                Value::Null,
                Value::Null,
            ))
        }
    }

    fn authenticate(&self, key: &str, inc: &Incoming) -> Checked {
        let auth = inc
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match auth.and_then(|a| a.strip_prefix("Bearer ")) {
            None => reject(error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            )),
            Some(given) if given == key => Ok(()),
            Some(given) => {
                let tail: String = given
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                reject(error(
                    401,
                    &format!(
                        "Incorrect API key provided: ****{tail}. You can find your API key at https://platform.openai.com/account/api-keys."
                    ),
                    "invalid_request_error",
                    json!("invalid_api_key"),
                    Value::Null,
                ))
            }
        }
    }

    fn malformed(&self, reason: &str) -> Response {
        error(
            400,
            &format!("We could not parse the JSON body of your request. ({reason})"),
            "invalid_request_error",
            Value::Null,
            Value::Null,
        )
    }

    fn validate(&self, inc: &Incoming, _state: &ServerState) -> Checked {
        let body = &inc.body;
        if !body.is_object() {
            return invalid("Invalid type for body: expected an object".into(), None);
        }
        if let Some(k) = unknown_keys(body, TOP_LEVEL).first() {
            return invalid(format!("Unrecognized request argument supplied: {k}"), None);
        }
        if !body.get("model").is_some_and(Value::is_string) {
            return invalid("you must provide a model parameter".into(), None);
        }
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return invalid(
                "Missing required parameter: 'messages'.".into(),
                Some("messages"),
            );
        };
        if messages.is_empty() {
            return invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".into(),
                Some("messages"),
            );
        }
        let mut open: BTreeSet<String> = BTreeSet::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            if !ROLES.contains(&role) {
                return invalid(
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', and 'developer'."
                    ),
                    Some(&format!("messages[{i}].role")),
                );
            }
            if role != "tool" && !open.is_empty() {
                let ids: Vec<&str> = open.iter().map(String::as_str).collect();
                return invalid(
                    format!(
                        "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                        ids.join(", ")
                    ),
                    Some("messages"),
                );
            }
            match role {
                "tool" => {
                    let id = m
                        .get("tool_call_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !open.remove(id) {
                        return invalid(
                            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into(),
                            Some(&format!("messages.[{i}].role")),
                        );
                    }
                    if !m.get("content").is_some_and(Value::is_string) {
                        return invalid(
                            format!("Invalid type for 'messages[{i}].content': expected a string"),
                            Some(&format!("messages[{i}].content")),
                        );
                    }
                }
                "assistant" => {
                    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                        for (j, c) in calls.iter().enumerate() {
                            let args = c
                                .get("function")
                                .and_then(|f| f.get("arguments"))
                                .and_then(Value::as_str);
                            if args.is_none() {
                                return invalid(
                                    format!(
                                        "Invalid type for 'messages[{i}].tool_calls[{j}].function.arguments': expected a string"
                                    ),
                                    None,
                                );
                            }
                            if let Some(id) = c.get("id").and_then(Value::as_str) {
                                open.insert(id.to_owned());
                            }
                        }
                    }
                }
                _ => {
                    if m.get("content").is_none() {
                        return invalid(
                            format!("Missing required parameter: 'messages[{i}].content'."),
                            Some(&format!("messages[{i}].content")),
                        );
                    }
                }
            }
        }
        if let Some(tools) = body.get("tools").and_then(Value::as_array) {
            for (i, t) in tools.iter().enumerate() {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return invalid(
                        format!("Missing required parameter: 'tools[{i}].type'."),
                        Some(&format!("tools[{i}].type")),
                    );
                }
                let name = t
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if name.is_empty() {
                    return invalid(
                        format!("Missing required parameter: 'tools[{i}].function.name'."),
                        Some(&format!("tools[{i}].function.name")),
                    );
                }
            }
        }
        let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
        if body.get("stream_options").is_some() && !streaming {
            return invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
                Some("stream_options"),
            );
        }
        Ok(())
    }

    fn wants_stream(&self, inc: &Incoming) -> bool {
        inc.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    fn failure(&self, status: u16, message: &str, code: Option<&str>) -> Response {
        let (kind, default_code) = match status {
            429 => ("requests", "rate_limit_exceeded"),
            400 => ("invalid_request_error", ""),
            _ => ("server_error", ""),
        };
        let code = code.unwrap_or(default_code);
        let kind = if code == "insufficient_quota" {
            code
        } else {
            kind
        };
        error(
            status,
            message,
            kind,
            if code.is_empty() {
                Value::Null
            } else {
                json!(code)
            },
            Value::Null,
        )
    }

    fn message(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        _state: &ServerState,
    ) -> Response {
        let mut message = json!({
            "role": "assistant",
            "content": if msg.text.is_empty() { Value::Null } else { json!(msg.text) },
            "refusal": null,
        });
        if !msg.tool_calls.is_empty() {
            message["tool_calls"] = msg
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"id": call_id(seq, i), "type": "function", "function": {
                        "name": c.name, "arguments": c.arguments.to_string(),
                    }})
                })
                .collect();
        }
        json_response(
            200,
            &json!({
                "id": format!("chatcmpl-local{seq}"),
                "object": "chat.completion",
                "created": 1_700_000_000u64 + seq,
                "model": model(inc),
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish(msg)}],
                "usage": usage(msg),
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
        let include_usage = inc
            .body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let usage_field = if include_usage {
            Some(Value::Null)
        } else {
            None
        };
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({
                "id": format!("chatcmpl-local{seq}"),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64 + seq,
                "model": model(inc),
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if let Some(u) = &usage_field {
                c["usage"] = u.clone();
            }
            data(&c)
        };
        let mut frames = vec![chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        )];
        for piece in text_pieces(&msg.text, 5) {
            frames.push(chunk(json!({"content": piece}), Value::Null));
        }
        for (i, call) in msg.tool_calls.iter().enumerate() {
            frames.push(chunk(
                json!({"tool_calls": [{"index": i, "id": call_id(seq, i), "type": "function", "function": {"name": call.name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in text_pieces(&call.arguments.to_string(), 4) {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
        frames.push(chunk(json!({}), json!(finish(msg))));
        if include_usage {
            frames.push(data(&json!({
                "id": format!("chatcmpl-local{seq}"),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64 + seq,
                "model": model(inc),
                "choices": [],
                "usage": usage(msg),
            })));
        }
        frames.push("data: [DONE]\n\n".to_owned());
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
        let mut frames = Vec::new();
        for piece in text_pieces(text, 5) {
            frames.push(data(&json!({
                "id": format!("chatcmpl-local{seq}"),
                "object": "chat.completion.chunk",
                "model": model(inc),
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}],
            })));
        }
        frames.push(data(
            &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        ));
        frames
    }
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn model(inc: &Incoming) -> String {
    inc.body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn call_id(seq: u64, i: usize) -> String {
    format!("call_local{seq}_{i}")
}

fn finish(msg: &CannedMessage) -> &'static str {
    if !msg.tool_calls.is_empty() {
        return "tool_calls";
    }
    match msg.finish {
        CannedFinish::Stop => "stop",
        CannedFinish::Length => "length",
    }
}

fn usage(msg: &CannedMessage) -> Value {
    json!({
        "prompt_tokens": msg.input_tokens,
        "completion_tokens": msg.output_tokens,
        "total_tokens": msg.input_tokens + msg.output_tokens,
    })
}
