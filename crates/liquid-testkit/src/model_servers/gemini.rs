//! Gemini API wire format: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (`?alt=sse` for SSE with CRLF framing, otherwise a JSON array),
//! `x-goog-api-key` (or `?key=`), `google.rpc.Status` error bodies.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    CannedFinish, CannedMessage, Checked, Incoming, ServerState, WireFormat, json_response, reject,
    text_pieces, unknown_keys,
};

pub(crate) struct Gemini;

const TOP_LEVEL: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
];

const GENERATION: &[&str] = &[
    "temperature",
    "topP",
    "top_p",
    "topK",
    "top_k",
    "maxOutputTokens",
    "max_output_tokens",
    "stopSequences",
    "stop_sequences",
    "candidateCount",
    "candidate_count",
    "responseMimeType",
    "response_mime_type",
    "responseSchema",
    "response_schema",
    "thinkingConfig",
    "thinking_config",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
];

const PART_KINDS: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
];

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn error(status: u16, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": status, "message": message, "status": status_name(status)}}),
    )
}

fn invalid(message: String) -> Checked {
    reject(error(400, &message))
}

/// `(model, method)` from the path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((model, method))
}

fn signature_key(name: &str, args: &Value) -> String {
    format!("{name}\u{0}{args}")
}

impl WireFormat for Gemini {
    fn route(&self, method: &Method, inc: &Incoming) -> Checked {
        match split_path(&inc.path) {
            Some((_, "generateContent" | "streamGenerateContent")) if method == Method::POST => {
                Ok(())
            }
            Some((model, m)) => reject(error(
                404,
                &format!(
                    "models/{model} is not found for API version v1beta, or {m} is not supported"
                ),
            )),
            None => reject(error(
                404,
                &format!(
                    "the requested URL {} was not found on this server",
                    inc.path
                ),
            )),
        }
    }

    fn authenticate(&self, key: &str, inc: &Incoming) -> Checked {
        let header = inc
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok());
        let query = inc
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")));
        match header.or(query) {
            None => reject(error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            )),
            Some(given) if given == key => Ok(()),
            Some(_) => reject(json_response(
                400,
                &json!({"error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }],
                }}),
            )),
        }
    }

    fn malformed(&self, reason: &str) -> Response {
        error(400, &format!("Invalid JSON payload received. {reason}"))
    }

    fn validate(&self, inc: &Incoming, state: &ServerState) -> Checked {
        let body = &inc.body;
        if !body.is_object() {
            return invalid("Invalid JSON payload received. Expected an object.".into());
        }
        if let Some(k) = unknown_keys(body, TOP_LEVEL).first() {
            return invalid(format!(
                "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
            ));
        }
        let Some(contents) = body.get("contents").and_then(Value::as_array) else {
            return invalid("* GenerateContentRequest.contents: contents is not specified".into());
        };
        if contents.is_empty() {
            return invalid("* GenerateContentRequest.contents: contents is not specified".into());
        }
        let issued = state.issued.lock().map(|m| m.clone()).unwrap_or_default();
        let mut pending_calls = 0usize;
        for (i, content) in contents.iter().enumerate() {
            let role = content
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("user");
            if role != "user" && role != "model" {
                return invalid(format!(
                    "Please use a valid role: user, model. (contents[{i}].role = {role})"
                ));
            }
            let Some(parts) = content.get("parts").and_then(Value::as_array) else {
                return invalid(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
                ));
            };
            if parts.is_empty() {
                return invalid(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
                ));
            }
            let mut calls = 0;
            let mut responses = 0;
            for (j, part) in parts.iter().enumerate() {
                let kinds: Vec<&str> = PART_KINDS
                    .iter()
                    .copied()
                    .filter(|k| part.get(*k).is_some())
                    .collect();
                if kinds.len() != 1 {
                    return invalid(format!(
                        "* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field 'data' must have one initialized field"
                    ));
                }
                if let Some(call) = part.get("functionCall") {
                    calls += 1;
                    let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return invalid(format!(
                            "* GenerateContentRequest.contents[{i}].parts[{j}].function_call.name: Name cannot be empty."
                        ));
                    }
                    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
                    if let Some(sig) = issued.get(&signature_key(name, &args)) {
                        let given = part.get("thoughtSignature").and_then(Value::as_str);
                        if given != Some(sig.as_str()) {
                            return invalid(format!(
                                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly. Additional data, function call `{name}` , position {}.",
                                j + 1
                            ));
                        }
                    }
                }
                if let Some(resp) = part.get("functionResponse") {
                    responses += 1;
                    let name = resp.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return invalid(format!(
                            "* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: Name cannot be empty."
                        ));
                    }
                    if !resp.get("response").is_some_and(Value::is_object) {
                        return invalid(format!(
                            "* GenerateContentRequest.contents[{i}].parts[{j}].function_response.response: must be an object"
                        ));
                    }
                }
            }
            if responses > 0 && (role != "user" || responses != pending_calls) {
                return invalid(
                    "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".into(),
                );
            }
            pending_calls = if role == "model" { calls } else { 0 };
        }
        if let Some(tools) = body.get("tools") {
            let Some(tools) = tools.as_array() else {
                return invalid("* GenerateContentRequest.tools: must be a list".into());
            };
            for (i, tool) in tools.iter().enumerate() {
                for (j, decl) in tool
                    .get("functionDeclarations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if decl
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                    {
                        return invalid(format!(
                            "* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Name cannot be empty."
                        ));
                    }
                    if decl.get("parameters").is_some_and(|p| !p.is_object()) {
                        return invalid(format!(
                            "* GenerateContentRequest.tools[{i}].function_declarations[{j}].parameters: must be a schema object"
                        ));
                    }
                }
            }
        }
        for key in ["generationConfig", "generation_config"] {
            if let Some(config) = body.get(key)
                && let Some(k) = unknown_keys(config, GENERATION).first()
            {
                return invalid(format!(
                    "Invalid JSON payload received. Unknown name \"{k}\" at 'generation_config': Cannot find field."
                ));
            }
        }
        Ok(())
    }

    fn wants_stream(&self, inc: &Incoming) -> bool {
        split_path(&inc.path).is_some_and(|(_, m)| m == "streamGenerateContent")
    }

    fn failure(&self, status: u16, message: &str, code: Option<&str>) -> Response {
        let status_text = code.unwrap_or_else(|| status_name(status));
        json_response(
            status,
            &json!({"error": {"code": status, "message": message, "status": status_text}}),
        )
    }

    fn message(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        state: &ServerState,
    ) -> Response {
        let model = split_path(&inc.path).map(|(m, _)| m).unwrap_or_default();
        let mut parts = Vec::new();
        if !msg.text.is_empty() {
            parts.push(json!({"text": msg.text}));
        }
        parts.extend(call_parts(msg, seq, state));
        json_response(
            200,
            &json!({
                "candidates": [{
                    "content": {"parts": parts, "role": "model"},
                    "finishReason": finish(msg),
                    "index": 0,
                }],
                "usageMetadata": usage(msg.input_tokens, msg.output_tokens),
                "modelVersion": model,
                "responseId": format!("local-{seq}"),
            }),
        )
    }

    fn stream_frames(
        &self,
        inc: &Incoming,
        msg: &CannedMessage,
        seq: u64,
        state: &ServerState,
    ) -> Vec<String> {
        let model = split_path(&inc.path).map(|(m, _)| m).unwrap_or_default();
        let mut chunks: Vec<Vec<Value>> = text_pieces(&msg.text, 8)
            .into_iter()
            .map(|t| vec![json!({"text": t})])
            .collect();
        let calls = call_parts(msg, seq, state);
        if !calls.is_empty() {
            chunks.push(calls);
        }
        if chunks.is_empty() {
            chunks.push(vec![json!({"text": ""})]);
        }
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, parts)| {
                let last = i + 1 == n;
                let mut candidate =
                    json!({"content": {"parts": parts, "role": "model"}, "index": 0});
                if last {
                    candidate["finishReason"] = json!(finish(msg));
                }
                // Cumulative usage in every chunk, complete in the last.
                let out = if last {
                    msg.output_tokens
                } else {
                    (i as u64 + 1).min(msg.output_tokens)
                };
                frame(&json!({
                    "candidates": [candidate],
                    "usageMetadata": usage(msg.input_tokens, out),
                    "modelVersion": model,
                    "responseId": format!("local-{seq}"),
                }))
            })
            .collect()
    }

    fn error_frames(
        &self,
        _inc: &Incoming,
        text: &str,
        kind: &str,
        message: &str,
        _seq: u64,
    ) -> Vec<String> {
        let mut frames: Vec<String> = text_pieces(text, 8)
            .into_iter()
            .map(|t| {
                frame(&json!({"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}]}))
            })
            .collect();
        frames.push(frame(
            &json!({"error": {"code": 503, "message": message, "status": kind}}),
        ));
        frames
    }

    fn stream_response(&self, inc: &Incoming, frames: Vec<String>) -> Response {
        let sse = inc
            .query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
        if sse {
            return super::sse_response(frames);
        }
        // Without alt=sse Gemini streams one JSON array of the same objects.
        let objects: Vec<&str> = frames
            .iter()
            .filter_map(|f| f.strip_prefix("data: ")?.strip_suffix("\r\n\r\n"))
            .collect();
        let body = format!("[{}]", objects.join(",\r\n"));
        (
            axum::http::StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(futures_util::stream::iter(
                super::irregular_pieces(body)
                    .into_iter()
                    .map(Ok::<_, std::io::Error>),
            )),
        )
            .into_response()
    }
}

fn frame(v: &Value) -> String {
    format!("data: {v}\r\n\r\n")
}

fn finish(msg: &CannedMessage) -> &'static str {
    match msg.finish {
        CannedFinish::Stop => "STOP",
        CannedFinish::Length => "MAX_TOKENS",
    }
}

fn usage(input: u64, output: u64) -> Value {
    json!({"promptTokenCount": input, "candidatesTokenCount": output, "totalTokenCount": input + output})
}

/// Function-call parts with thought signatures, remembered so the next request must echo them.
fn call_parts(msg: &CannedMessage, seq: u64, state: &ServerState) -> Vec<Value> {
    msg.tool_calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let sig = format!("local-signature-{seq}-{i}");
            if let Ok(mut issued) = state.issued.lock() {
                issued.insert(signature_key(&call.name, &call.arguments), sig.clone());
            }
            json!({"functionCall": {"name": call.name, "args": call.arguments}, "thoughtSignature": sig})
        })
        .collect()
}
