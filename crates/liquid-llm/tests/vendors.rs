//! Each vendor client against a local server speaking that vendor's wire format over real
//! HTTP: text, tool calls and results, streaming assembly, usage and cost, retries, give-up
//! codes, bad keys.

mod common;

use std::time::Duration;

use common::{KEY, VENDORS, config, fast_transport, model, provider, router, server};
use futures_util::StreamExt;
use liquid_kit::HasErrorCode;
use liquid_llm::{
    ChatRequest, FinishReason, LlmError, Message, ModelClient, ModelRouter, StreamEvent,
    ToolDefinition, ToolResult, collect_stream,
};
use liquid_testkit::model_servers::{CannedMessage, Reply, Vendor};
use serde_json::json;

fn tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition {
            name: "read_file".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        },
        ToolDefinition {
            name: "list_dir".into(),
            description: "List a directory".into(),
            parameters: json!({"type": "object", "properties": {"dir": {"type": "string"}}}),
        },
    ]
}

#[tokio::test]
async fn text_answers_carry_usage_cost_and_the_vendor_headers() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::Message(
            CannedMessage::text("Hello from the model").with_usage(1_000, 500),
        ));
        let router = router(vendor, &server, 3);
        let mut request = ChatRequest::new(model(vendor), "Say hello");
        request.system = Some("You are terse.".into());
        request.params.max_tokens = Some(256);
        let response = router.complete(&request).await.unwrap();

        assert_eq!(response.text, "Hello from the model", "{vendor:?}");
        assert_eq!(response.provider, provider(vendor));
        assert!(!response.is_offline());
        assert_eq!(response.finish_reason, FinishReason::Stop);
        assert_eq!(response.usage.input_tokens, 1_000);
        assert_eq!(response.usage.output_tokens, 500);
        let price = router.prices().price(model(vendor)).unwrap();
        let expected =
            (1_000.0 * price.input_per_million_usd + 500.0 * price.output_per_million_usd) / 1e6;
        assert!(
            (response.cost_usd.unwrap() - expected).abs() < 1e-12,
            "{vendor:?}"
        );

        let requests = server.requests();
        assert_eq!(
            requests.len(),
            1,
            "exactly one upstream call for {vendor:?}"
        );
        let r = &requests[0];
        match vendor {
            Vendor::Gemini => {
                assert_eq!(r.path, "/v1beta/models/gemini-2.5-flash:generateContent");
                assert_eq!(r.header("x-goog-api-key"), Some(KEY));
                assert_eq!(
                    r.body["systemInstruction"]["parts"][0]["text"],
                    "You are terse."
                );
                assert_eq!(r.body["generationConfig"]["maxOutputTokens"], 256);
            }
            Vendor::Anthropic => {
                assert_eq!(r.path, "/v1/messages");
                assert_eq!(r.header("x-api-key"), Some(KEY));
                assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(r.body["system"], "You are terse.");
                assert_eq!(r.body["max_tokens"], 256);
            }
            Vendor::OpenAi => {
                assert_eq!(r.path, "/v1/chat/completions");
                assert_eq!(
                    r.header("authorization"),
                    Some(format!("Bearer {KEY}").as_str())
                );
                assert_eq!(r.body["messages"][0]["role"], "system");
                assert_eq!(r.body["max_completion_tokens"], 256);
            }
        }
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn tool_calls_and_their_results_round_trip() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::Message(
            CannedMessage::text("Reading both.")
                .with_tool_call("read_file", json!({"path": "src/main.rs"}))
                .with_tool_call("list_dir", json!({"dir": "src"})),
        ));
        server.push(Reply::text("main.rs prints hello; src has one file."));
        let router = router(vendor, &server, 1);
        let mut request = ChatRequest::new(model(vendor), "What does the project do?");
        request.tools = tools();

        let first = router.complete(&request).await.unwrap();
        assert_eq!(first.finish_reason, FinishReason::ToolCalls, "{vendor:?}");
        assert_eq!(first.text, "Reading both.");
        assert_eq!(first.tool_calls.len(), 2);
        assert_eq!(first.tool_calls[0].name, "read_file");
        assert_eq!(
            first.tool_calls[0].arguments,
            json!({"path": "src/main.rs"})
        );
        assert_eq!(first.tool_calls[1].arguments, json!({"dir": "src"}));
        assert_ne!(first.tool_calls[0].id, first.tool_calls[1].id);

        request.messages.push(first.to_message());
        request.messages.push(Message::tool_results(vec![
            ToolResult {
                call_id: first.tool_calls[0].id.clone(),
                name: "read_file".into(),
                content: "fn main() { println!(\"hello\"); }".into(),
                is_error: false,
            },
            ToolResult {
                call_id: first.tool_calls[1].id.clone(),
                name: "list_dir".into(),
                content: "permission denied".into(),
                is_error: true,
            },
        ]));
        // The local server rejects, as the vendor would, results that answer no call, calls
        // left unanswered and (Gemini) function calls returned without their signature.
        let second = router.complete(&request).await.unwrap();
        assert_eq!(second.text, "main.rs prints hello; src has one file.");
        assert!(second.tool_calls.is_empty());

        let sent = &server.requests()[1].body;
        match vendor {
            Vendor::Gemini => {
                let parts = &sent["contents"][2]["parts"];
                assert_eq!(parts[0]["functionResponse"]["name"], "read_file");
                assert_eq!(
                    parts[1]["functionResponse"]["response"]["error"],
                    "permission denied"
                );
                assert_eq!(
                    sent["contents"][1]["parts"][1]["thoughtSignature"],
                    "local-signature-1-0"
                );
            }
            Vendor::Anthropic => {
                let blocks = &sent["messages"][2]["content"];
                assert_eq!(blocks[0]["type"], "tool_result");
                assert_eq!(blocks[0]["tool_use_id"], first.tool_calls[0].id.as_str());
                assert_eq!(blocks[1]["is_error"], true);
            }
            Vendor::OpenAi => {
                let messages = sent["messages"].as_array().unwrap();
                assert_eq!(messages[2]["role"], "tool");
                assert_eq!(messages[2]["tool_call_id"], first.tool_calls[0].id.as_str());
                assert_eq!(messages[3]["content"], "error: permission denied");
            }
        }
    }
}

#[tokio::test]
async fn a_dangling_tool_result_is_rejected_before_any_upstream_call() {
    let server = server(Vendor::OpenAi).await;
    let router = router(Vendor::OpenAi, &server, 1);
    let mut request = ChatRequest::new("gpt-4o-mini", "hi");
    request
        .messages
        .push(Message::tool_results(vec![ToolResult {
            call_id: "nope".into(),
            name: "x".into(),
            content: String::new(),
            is_error: false,
        }]));
    let err = router.complete(&request).await.unwrap_err();
    assert_eq!(err.error_code().as_str(), "invalid_argument");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn streams_assemble_into_the_same_answer_as_complete() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        let reply = CannedMessage::text("Grüße aus dem Stream ✓ — multi-byte text split anywhere.")
            .with_tool_call(
                "read_file",
                json!({"path": "docs/ü.md", "lines": [1, 2, 3]}),
            )
            .with_tool_call("list_dir", json!({"dir": "."}))
            .with_usage(123, 45);
        server.push(Reply::Message(reply.clone()));
        server.push(Reply::Message(reply.clone()));
        let router = router(vendor, &server, 1);
        let mut request = ChatRequest::new(model(vendor), "stream please");
        request.tools = tools();

        let mut stream = router.stream(&request).await.unwrap();
        let mut text = String::new();
        let mut args: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut completed = None;
        let mut text_deltas = 0;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::TextDelta { text: t } => {
                    text_deltas += 1;
                    text.push_str(&t);
                }
                StreamEvent::ToolCallStart { index, name, .. } => {
                    assert_eq!(index, names.len(), "tool calls numbered densely");
                    names.push(name);
                    args.push(String::new());
                }
                StreamEvent::ToolCallDelta { index, arguments } => args[index].push_str(&arguments),
                StreamEvent::Completed { response } => completed = Some(response),
            }
        }
        let streamed = completed.expect("a completed event");
        assert!(text_deltas > 1, "{vendor:?} text arrived in several deltas");
        assert_eq!(text, reply.text, "{vendor:?}");
        assert_eq!(streamed.text, reply.text);
        assert_eq!(names, ["read_file", "list_dir"]);
        let parsed: serde_json::Value = serde_json::from_str(&args[0]).unwrap();
        assert_eq!(parsed, json!({"path": "docs/ü.md", "lines": [1, 2, 3]}));
        assert_eq!(streamed.usage.input_tokens, 123, "{vendor:?}");
        assert_eq!(streamed.usage.output_tokens, 45, "{vendor:?}");
        assert!(streamed.cost_usd.is_some_and(|c| c > 0.0));

        let whole = router.complete(&request).await.unwrap();
        assert_eq!(whole.text, streamed.text);
        assert_eq!(whole.finish_reason, streamed.finish_reason);
        assert_eq!(whole.usage, streamed.usage);
        assert_eq!(whole.cost_usd, streamed.cost_usd);
        let strip = |r: &liquid_llm::ChatResponse| {
            r.tool_calls
                .iter()
                .map(|c| (c.name.clone(), c.arguments.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&whole), strip(&streamed));

        let sent = &server.requests()[0];
        match vendor {
            Vendor::Gemini => {
                assert_eq!(
                    sent.path,
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
                );
                assert_eq!(sent.query.as_deref(), Some("alt=sse"));
            }
            Vendor::Anthropic => assert_eq!(sent.body["stream"], true),
            Vendor::OpenAi => {
                assert_eq!(sent.body["stream"], true);
                assert_eq!(sent.body["stream_options"]["include_usage"], true);
            }
        }
        assert_eq!(sent.header("accept"), Some("text/event-stream"));
    }
}

#[tokio::test]
async fn a_stream_cut_off_midway_is_an_error_not_a_short_answer() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::BrokenStream(CannedMessage::text(
            "This answer will never arrive in full because the connection drops.",
        )));
        let router = router(vendor, &server, 3);
        let stream = router
            .stream(&ChatRequest::new(model(vendor), "go"))
            .await
            .unwrap();
        let err = collect_stream(stream).await.unwrap_err();
        assert_eq!(
            err.error_code().as_str(),
            "unavailable",
            "{vendor:?}: {err}"
        );
        assert_eq!(
            server.request_count(),
            1,
            "a started stream is never replayed"
        );
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_with_its_code() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        let kind = match vendor {
            Vendor::Anthropic => "overloaded_error",
            Vendor::OpenAi => "server_error",
            Vendor::Gemini => "UNAVAILABLE",
        };
        server.push(Reply::MidStreamError {
            text: "partial ".into(),
            kind: kind.into(),
            message: "Overloaded".into(),
        });
        let router = router(vendor, &server, 3);
        let mut stream = router
            .stream(&ChatRequest::new(model(vendor), "go"))
            .await
            .unwrap();
        let mut text = String::new();
        let mut error = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(StreamEvent::TextDelta { text: t }) => text.push_str(&t),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => error = Some(e),
            }
        }
        assert_eq!(text, "partial ");
        let error = error.expect("an error item");
        assert!(
            matches!(error, LlmError::StreamError { .. }),
            "{vendor:?}: {error}"
        );
        assert_eq!(error.error_code().as_str(), "unavailable");
        assert!(error.to_string().contains("Overloaded"));
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_until_success() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::failure(429, Some(0)));
        server.push(Reply::failure(500, None));
        server.push(Reply::failure(503, None));
        server.push(Reply::text("finally"));
        let router = router(vendor, &server, 4);
        let response = router
            .complete(&ChatRequest::new(model(vendor), "hi"))
            .await
            .unwrap();
        assert_eq!(response.text, "finally");
        assert_eq!(server.request_count(), 4, "{vendor:?}");
        let bodies: Vec<_> = server.requests().into_iter().map(|r| r.body).collect();
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "retries resend the same body"
        );
    }
}

#[tokio::test]
async fn a_stream_is_retried_when_it_fails_before_the_first_byte() {
    let server = server(Vendor::Anthropic).await;
    server.push(Reply::Failure {
        status: 529,
        retry_after_secs: None,
        message: "Overloaded".into(),
        code: None,
    });
    server.push(Reply::text("streamed after retry"));
    let router = router(Vendor::Anthropic, &server, 2);
    let stream = router
        .stream(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap();
    let response = collect_stream(stream).await.unwrap();
    assert_eq!(response.text, "streamed after retry");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn persistent_rate_limits_give_up_with_rate_limited() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        for _ in 0..3 {
            server.push(Reply::failure(429, Some(0)));
        }
        let router = router(vendor, &server, 3);
        let err = router
            .complete(&ChatRequest::new(model(vendor), "hi"))
            .await
            .unwrap_err();
        assert_eq!(err.error_code().as_str(), "rate_limited", "{vendor:?}");
        assert!(
            matches!(err, LlmError::RateLimited { attempts: 3, .. }),
            "{err:?}"
        );
        assert_eq!(server.request_count(), 3);
    }
}

#[tokio::test]
async fn persistent_server_errors_give_up_with_unavailable() {
    let server = server(Vendor::Anthropic).await;
    for _ in 0..2 {
        server.push(Reply::Failure {
            status: 529,
            retry_after_secs: None,
            message: "Overloaded".into(),
            code: None,
        });
    }
    let router = router(Vendor::Anthropic, &server, 2);
    let err = router
        .complete(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code().as_str(), "unavailable");
    assert!(err.to_string().contains("Overloaded"), "{err}");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_is_returned_not_waited_for() {
    let server = server(Vendor::Gemini).await;
    server.push(Reply::failure(429, Some(120)));
    server.push(Reply::text("never reached"));
    let router = router(Vendor::Gemini, &server, 4);
    let err = router
        .complete(&ChatRequest::new("gemini-2.5-flash", "hi"))
        .await
        .unwrap_err();
    match err {
        LlmError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn an_overloaded_vendor_s_retry_after_counts_too() {
    // 503 (and Anthropic's 529) with a `Retry-After` past the limit: the caller gets the error
    // at once instead of a retry that ignores the vendor's request to wait.
    for vendor in VENDORS {
        let status = if vendor == Vendor::Anthropic {
            529
        } else {
            503
        };
        for streaming in [false, true] {
            let server = server(vendor).await;
            server.push(Reply::failure(status, Some(120)));
            server.push(Reply::text("never reached"));
            let router = router(vendor, &server, 4);
            let request = ChatRequest::new(model(vendor), "hi");
            let err = if streaming {
                router.stream(&request).await.err().unwrap()
            } else {
                router.complete(&request).await.unwrap_err()
            };
            assert_eq!(err.error_code().as_str(), "unavailable", "{vendor:?}");
            assert!(err.to_string().contains(&format!("http {status}")), "{err}");
            assert_eq!(
                server.request_count(),
                1,
                "{vendor:?} streaming: {streaming}"
            );
        }
    }
    // A short one is waited for, then the request goes through.
    let server = server(Vendor::Anthropic).await;
    server.push(Reply::failure(529, Some(1)));
    server.push(Reply::text("after the overload"));
    let router = router(Vendor::Anthropic, &server, 2);
    let response = router
        .complete(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap();
    assert_eq!(response.text, "after the overload");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn retry_after_is_waited_for_before_the_next_attempt() {
    let server = server(Vendor::OpenAi).await;
    server.push(Reply::failure(429, Some(1)));
    server.push(Reply::text("after waiting"));
    let router = router(Vendor::OpenAi, &server, 2);
    let response = router
        .complete(&ChatRequest::new("gpt-4o-mini", "hi"))
        .await
        .unwrap();
    assert_eq!(response.text, "after waiting");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn an_exhausted_quota_is_not_retried() {
    let server = server(Vendor::OpenAi).await;
    server.push(Reply::Failure {
        status: 429,
        retry_after_secs: None,
        message: "You exceeded your current quota".into(),
        code: Some("insufficient_quota".into()),
    });
    let router = router(Vendor::OpenAi, &server, 4);
    let err = router
        .complete(&ChatRequest::new("gpt-4o-mini", "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code().as_str(), "failed_precondition");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_bad_key_is_unauthenticated_and_not_retried() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::text("must not be used"));
        let config = config(vendor, &server.base_url(), "wrong-key");
        let router = ModelRouter::with_transport(&config, fast_transport(4)).unwrap();
        for streaming in [false, true] {
            let request = ChatRequest::new(model(vendor), "hi");
            let err = if streaming {
                router.stream(&request).await.err().unwrap()
            } else {
                router.complete(&request).await.unwrap_err()
            };
            assert_eq!(err.error_code().as_str(), "unauthenticated", "{vendor:?}");
            assert!(
                !err.to_string().contains("wrong-key"),
                "the key never shows: {err}"
            );
        }
        assert_eq!(
            server.request_count(),
            2,
            "{vendor:?}: one call per request"
        );
        assert_eq!(server.pending_replies(), 1);
    }
}

#[tokio::test]
async fn an_unreachable_provider_is_retried_then_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = config(Vendor::OpenAi, &format!("http://{addr}"), KEY);
    let router = ModelRouter::with_transport(&config, fast_transport(3)).unwrap();
    let err = router
        .complete(&ChatRequest::new("gpt-4o-mini", "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code().as_str(), "unavailable");
    assert!(
        matches!(err, LlmError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slow_provider_hits_the_request_timeout() {
    let server = server(Vendor::OpenAi).await;
    server.hold_replies();
    server.push(Reply::text("too late"));
    let config = config(Vendor::OpenAi, &server.base_url(), KEY);
    let transport = liquid_llm::transport::Transport::with_settings(
        liquid_llm::RetryConfig {
            max_attempts: 1,
            ..liquid_llm::RetryConfig::default()
        },
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .unwrap();
    let router = ModelRouter::with_transport(&config, transport).unwrap();
    let err = router
        .complete(&ChatRequest::new("gpt-4o-mini", "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code().as_str(), "deadline_exceeded");
    server.release_replies();
}

#[tokio::test]
async fn a_length_limit_is_reported_as_length() {
    for vendor in VENDORS {
        let server = server(vendor).await;
        server.push(Reply::Message(CannedMessage::text("cut").truncated()));
        let router = router(vendor, &server, 1);
        let r = router
            .complete(&ChatRequest::new(model(vendor), "hi"))
            .await
            .unwrap();
        assert_eq!(r.finish_reason, FinishReason::Length, "{vendor:?}");
    }
}
