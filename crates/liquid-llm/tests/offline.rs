//! The offline provider as users without keys meet it: through the router, labelled in every
//! answer, deterministic, and able to drive a tool-using agent loop with `@tool` directives.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use liquid_llm::{
    ChatRequest, FinishReason, LlmConfig, Message, ModelClient, ModelRouter, OFFLINE_MARKER,
    StreamEvent, ToolChoice, ToolDefinition, ToolResult, collect_stream,
};
use serde_json::json;

fn file_tools() -> Vec<ToolDefinition> {
    ["read_file", "write_file"]
        .into_iter()
        .map(|name| ToolDefinition {
            name: name.into(),
            description: format!("{name} in the workspace"),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        })
        .collect()
}

#[tokio::test]
async fn without_keys_every_model_answers_offline_and_says_so() {
    let router = ModelRouter::from_config(&LlmConfig::default()).unwrap();
    for model in [
        "gemini-2.5-flash",
        "claude-sonnet-4-5",
        "gpt-4o-mini",
        "offline",
        "",
    ] {
        let response = router
            .complete(&ChatRequest::new(model, "What is the capital of France?"))
            .await
            .unwrap();
        assert!(response.is_offline(), "{model}");
        assert_eq!(response.provider, "offline");
        assert_eq!(response.model, "offline");
        assert!(
            response.text.starts_with(OFFLINE_MARKER),
            "{}",
            response.text
        );
        assert!(response.text.contains("What is the capital of France?"));
        assert_eq!(response.cost_usd, Some(0.0));
        assert!(response.usage.input_tokens > 0);
    }
    let stood_in = router
        .complete(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap();
    assert!(
        stood_in.text.contains("provider `anthropic`"),
        "{}",
        stood_in.text
    );
}

#[tokio::test]
async fn offline_answers_are_deterministic_streamed_or_not() {
    let router = ModelRouter::from_config(&LlmConfig::default()).unwrap();
    let mut request = ChatRequest::new(
        "gpt-4o-mini",
        "@tool write_file {\"path\": \"a.txt\", \"content\": \"hi\"}",
    );
    request.tools = file_tools();
    let a = router.complete(&request).await.unwrap();
    let b = router.complete(&request).await.unwrap();
    assert_eq!(a, b);
    let mut stream = router.stream(&request).await.unwrap();
    let mut args = String::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::ToolCallDelta { arguments, .. } => args.push_str(&arguments),
            StreamEvent::Completed { response } => completed = Some(response),
            _ => {}
        }
    }
    assert_eq!(completed.unwrap(), a);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&args).unwrap(),
        a.tool_calls[0].arguments
    );
}

#[tokio::test]
async fn an_agent_loop_runs_offline_through_tool_directives() {
    let router = ModelRouter::from_config(&LlmConfig::default()).unwrap();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    files.insert("notes.txt".into(), "buy milk".into());
    let mut request = ChatRequest {
        model: "claude-sonnet-4-5".into(),
        system: Some("You are a file agent.".into()),
        messages: vec![Message::user(
            "Copy the notes.\n@tool read_file {\"path\": \"notes.txt\"}\n@tool write_file {\"path\": \"copy.txt\", \"content\": \"buy milk\"}",
        )],
        tools: file_tools(),
        ..ChatRequest::default()
    };
    let mut executed = Vec::new();
    let final_answer = loop {
        let response = router.complete(&request).await.unwrap();
        assert!(response.is_offline());
        if response.tool_calls.is_empty() {
            break response;
        }
        assert_eq!(response.finish_reason, FinishReason::ToolCalls);
        let mut results = Vec::new();
        for call in &response.tool_calls {
            let path = call.arguments["path"].as_str().unwrap().to_owned();
            let content = match call.name.as_str() {
                "read_file" => files.get(&path).cloned().unwrap_or_default(),
                "write_file" => {
                    let body = call.arguments["content"].as_str().unwrap_or_default();
                    files.insert(path.clone(), body.to_owned());
                    format!("wrote {} bytes", body.len())
                }
                other => panic!("unexpected tool {other}"),
            };
            executed.push(call.name.clone());
            results.push(ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
                is_error: false,
            });
        }
        request.messages.push(response.to_message());
        request.messages.push(Message::tool_results(results));
        assert!(executed.len() <= 2, "the loop must end");
    };
    assert_eq!(executed, ["read_file", "write_file"]);
    assert_eq!(files["copy.txt"], "buy milk");
    assert!(
        final_answer.text.contains("read_file (ok): buy milk"),
        "{}",
        final_answer.text
    );
    assert!(final_answer.text.contains("write_file (ok): wrote 8 bytes"));
}

#[tokio::test]
async fn a_planner_gets_its_plan_through_a_tool_call_offline() {
    let router = ModelRouter::from_config(&LlmConfig::default()).unwrap();
    let plan = json!({"steps": [{"title": "Write tests", "depends_on": []}]});
    let mut request = ChatRequest::new(
        "gemini-2.5-flash",
        format!("Plan the work.\n@tool submit_plan {plan}"),
    );
    request.tools = vec![ToolDefinition {
        name: "submit_plan".into(),
        description: "Submit the plan".into(),
        parameters: json!({"type": "object"}),
    }];
    request.tool_choice = ToolChoice::Tool("submit_plan".into());
    let response = collect_stream(router.stream(&request).await.unwrap())
        .await
        .unwrap();
    assert_eq!(response.tool_calls[0].name, "submit_plan");
    assert_eq!(response.tool_calls[0].arguments, plan);
}

#[tokio::test]
async fn offline_fallback_can_be_turned_off() {
    let config = LlmConfig {
        offline_fallback: false,
        ..LlmConfig::default()
    };
    let router = ModelRouter::from_config(&config).unwrap();
    let err = router
        .complete(&ChatRequest::new("gpt-4o-mini", "hi"))
        .await
        .unwrap_err();
    assert_eq!(
        liquid_kit::HasErrorCode::error_code(&err).as_str(),
        "failed_precondition"
    );
    assert!(err.to_string().contains("openai"));
}
