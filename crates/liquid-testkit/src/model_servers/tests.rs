//! The local servers reject what the vendors reject, with the vendors' statuses and shapes.

use std::time::Duration;

use serde_json::{Value, json};

use super::{CannedMessage, ModelServer, Reply, Vendor};

const KEY: &str = "k-123";

async fn post(
    server: &ModelServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("{}{path}", server.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn path(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Gemini => "/v1beta/models/gemini-2.5-flash:generateContent",
        Vendor::Anthropic => "/v1/messages",
        Vendor::OpenAi => "/v1/chat/completions",
    }
}

fn auth(vendor: Vendor, key: &'static str) -> Vec<(&'static str, String)> {
    match vendor {
        Vendor::Gemini => vec![("x-goog-api-key", key.to_owned())],
        Vendor::Anthropic => vec![
            ("x-api-key", key.to_owned()),
            ("anthropic-version", "2023-06-01".to_owned()),
        ],
        Vendor::OpenAi => vec![("authorization", format!("Bearer {key}"))],
    }
}

async fn call(
    server: &ModelServer,
    headers: &[(&'static str, String)],
    body: &Value,
) -> (u16, Value) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(server, path(server.vendor()), &h, &body.to_string()).await
}

fn minimal(vendor: Vendor) -> Value {
    match vendor {
        Vendor::Gemini => json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        Vendor::Anthropic => {
            json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        }
        Vendor::OpenAi => {
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        }
    }
}

#[tokio::test]
async fn missing_and_wrong_keys_get_each_vendors_answer() {
    for vendor in [Vendor::Gemini, Vendor::Anthropic, Vendor::OpenAi] {
        let server = ModelServer::start(vendor, KEY).await.unwrap();
        server.push(Reply::text("unused"));
        let body = minimal(vendor);
        let (missing, missing_body) = call(&server, &[], &body).await;
        let (wrong, wrong_body) = call(&server, &auth(vendor, "wrong-key-value"), &body).await;
        match vendor {
            Vendor::Gemini => {
                assert_eq!(missing, 403);
                assert_eq!(missing_body["error"]["status"], "PERMISSION_DENIED");
                assert_eq!(wrong, 400);
                assert_eq!(
                    wrong_body["error"]["details"][0]["reason"],
                    "API_KEY_INVALID"
                );
            }
            Vendor::Anthropic => {
                assert_eq!((missing, wrong), (401, 401));
                assert_eq!(wrong_body["error"]["type"], "authentication_error");
                assert_eq!(wrong_body["error"]["message"], "invalid x-api-key");
            }
            Vendor::OpenAi => {
                assert_eq!((missing, wrong), (401, 401));
                assert_eq!(wrong_body["error"]["code"], "invalid_api_key");
                assert!(!wrong_body.to_string().contains("wrong-key-value"));
            }
        }
        assert_eq!(
            server.request_count(),
            2,
            "rejected requests are recorded too"
        );
        assert_eq!(server.pending_replies(), 1, "and use no reply");
        let (ok, _) = call(&server, &auth(vendor, KEY), &body).await;
        assert_eq!(ok, 200);
    }
}

#[tokio::test]
async fn malformed_bodies_are_rejected_with_400() {
    for vendor in [Vendor::Gemini, Vendor::Anthropic, Vendor::OpenAi] {
        let server = ModelServer::start(vendor, KEY).await.unwrap();
        let headers = auth(vendor, KEY);
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _) = post(&server, path(vendor), &h, "{not json").await;
        assert_eq!(status, 400, "{vendor:?}");
        let mut unknown = minimal(vendor);
        unknown["generation_confg"] = json!({});
        let (status, body) = call(&server, &headers, &unknown).await;
        assert_eq!(status, 400, "{vendor:?}");
        assert!(body.to_string().contains("generation_confg"), "{body}");
        assert_eq!(server.pending_replies(), 0);
    }
    let server = ModelServer::anthropic(KEY).await.unwrap();
    let mut no_max = minimal(Vendor::Anthropic);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let (status, body) = call(&server, &auth(Vendor::Anthropic, KEY), &no_max).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    let no_version = vec![("x-api-key", KEY.to_owned())];
    let (status, body) = call(&server, &no_version, &minimal(Vendor::Anthropic)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "anthropic-version: header is required"
    );
}

#[tokio::test]
async fn tool_results_must_answer_the_previous_calls() {
    let anthropic = ModelServer::anthropic(KEY).await.unwrap();
    let orphan = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]},
    ]});
    let (status, body) = call(&anthropic, &auth(Vendor::Anthropic, KEY), &orphan).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected `tool_use_id`")
    );
    let unanswered = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
        {"role": "user", "content": "next"},
    ]});
    let (status, body) = call(&anthropic, &auth(Vendor::Anthropic, KEY), &unanswered).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without `tool_result`")
    );

    let openai = ModelServer::openai(KEY).await.unwrap();
    let orphan = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_x", "content": "r"},
    ]});
    let (status, _) = call(&openai, &auth(Vendor::OpenAi, KEY), &orphan).await;
    assert_eq!(status, 400);

    let gemini = ModelServer::gemini(KEY).await.unwrap();
    let mismatch = json!({"contents": [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "a", "response": {"output": "x"}}}]},
    ]});
    let (status, body) = call(&gemini, &auth(Vendor::Gemini, KEY), &mismatch).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("number of function response parts")
    );
}

#[tokio::test]
async fn gemini_requires_the_thought_signature_it_issued() {
    let server = ModelServer::gemini(KEY).await.unwrap();
    server.push(Reply::Message(
        CannedMessage::text("").with_tool_call("read", json!({"path": "a"})),
    ));
    server.push(Reply::text("done"));
    let headers = auth(Vendor::Gemini, KEY);
    let (status, first) = call(&server, &headers, &minimal(Vendor::Gemini)).await;
    assert_eq!(status, 200);
    let part = &first["candidates"][0]["content"]["parts"][0];
    let signature = part["thoughtSignature"].as_str().unwrap().to_owned();
    let history = |with_signature: bool| {
        let mut call_part = json!({"functionCall": {"name": "read", "args": {"path": "a"}}});
        if with_signature {
            call_part["thoughtSignature"] = json!(signature);
        }
        json!({"contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [call_part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "read", "response": {"output": "x"}}}]},
        ]})
    };
    let (status, body) = call(&server, &headers, &history(false)).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("thought_signature"));
    let (status, body) = call(&server, &headers, &history(true)).await;
    assert_eq!(status, 200);
    assert_eq!(body["candidates"][0]["content"]["parts"][0]["text"], "done");
}

#[tokio::test]
async fn gemini_without_alt_sse_streams_one_json_array() {
    let server = ModelServer::gemini(KEY).await.unwrap();
    server.push(Reply::text("one two three four five six"));
    let headers = auth(Vendor::Gemini, KEY);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = post(
        &server,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        &h,
        &minimal(Vendor::Gemini).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let chunks = body.as_array().unwrap();
    assert!(chunks.len() > 1);
    let text: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(text, "one two three four five six");
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );
}

#[tokio::test]
async fn an_exhausted_script_says_so() {
    let server = ModelServer::openai(KEY).await.unwrap();
    let (status, body) = call(
        &server,
        &auth(Vendor::OpenAi, KEY),
        &minimal(Vendor::OpenAi),
    )
    .await;
    assert_eq!(status, 500);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no scripted reply")
    );
}

#[tokio::test]
async fn held_replies_wait_for_release() {
    let server = ModelServer::openai(KEY).await.unwrap();
    server.push(Reply::text("released"));
    server.hold_replies();
    let base = server.base_url();
    let task = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(minimal(Vendor::OpenAi).to_string())
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    server
        .wait_for_requests(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(server.pending_replies(), 1, "a held request takes no reply");
    server.release_replies();
    let body = task.await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "released");
    assert_eq!(server.pending_replies(), 0);
}

#[tokio::test]
async fn a_routed_reply_goes_to_the_request_that_names_it() {
    let server = ModelServer::openai(KEY).await.unwrap();
    server.push_for("for-b", Reply::text("to b"));
    server.push(Reply::text("to anyone"));
    let ask = |marker: &'static str| {
        let base = server.base_url();
        async move {
            let mut body = minimal(Vendor::OpenAi);
            body["messages"][0]["content"] = Value::from(marker);
            let v: Value = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["choices"][0]["message"]["content"].clone()
        }
    };
    assert_eq!(
        ask("for-a").await,
        "to anyone",
        "a routed reply is skipped by others"
    );
    assert_eq!(ask("for-b").await, "to b");
    assert_eq!(server.pending_replies(), 0);
}
