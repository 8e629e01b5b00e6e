//! Interoperability with the official A2A Python SDK (`a2a-sdk` 1.3.0, installed by
//! `make deps`), in both directions and on all three bindings:
//!
//! - its client (tests/python/sdk_client.py) against this service: card resolution, blocking
//!   and streaming sends, GetTask, ListTasks, CancelTask, SubscribeToTask, push config CRUD,
//!   the extended card and error mapping, over JSON-RPC, HTTP+JSON and gRPC;
//! - this crate's client against its server (tests/python/sdk_server.py, an echo agent behind
//!   the SDK's DefaultRequestHandler), found through its card.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use liquid_a2a::client::{A2aClient, event_state};
use liquid_a2a::pb::{self, send_message_response, stream_response::Payload};
use liquid_a2a::{A2aErrorKind, Binding};
use liquid_a2a_service::config::{A2aSettings, Profile};
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_runtime::ServiceConfig;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Fails with what to do when the SDK is missing, rather than with a Python traceback.
async fn require_sdk() {
    let out = Command::new("python3")
        .args(["-c", "import a2a, uvicorn, grpc; print(__import__('importlib.metadata').metadata.version('a2a-sdk'))"])
        .output()
        .await
        .expect("python3 is needed for the interoperability tests; run `make deps`");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1.3.0",
        "a2a-sdk 1.3.0 is not installed; run `make deps` ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn python_sdk_client_against_this_service() {
    require_sdk().await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let mut c = ServiceConfig::<A2aSettings>::defaults_for(&liquid_a2a_service::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = format!("sqlite://{}/a2a.db", dir.path().display());
    c.bus.url = "memory://".into();
    c.cache.url = "memory://".into();
    c.auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    c.settings.a2a.profile = Profile::Tck;
    let running = liquid_runtime::start::<liquid_a2a_service::A2a>(&c, CancellationToken::new())
        .await
        .unwrap();
    let token = key
        .mint(
            &TokenRequest::user("sdk", ["a2a:read", "a2a:write"])
                .tenant("interop")
                .issuer("liquid-test")
                .audience("liquid"),
        )
        .unwrap();
    let base = format!("http://{}", running.http_addr());
    let grpc = running.grpc_addr().unwrap().to_string();
    // The three bindings at once: each run waits about 4 s on the resubscribe scenario.
    let runs = ["JSONRPC", "HTTP+JSON", "GRPC"].map(|binding| {
        Command::new("python3")
            .arg(script("sdk_client.py"))
            .args([base.as_str(), binding, token.as_str(), grpc.as_str()])
            .kill_on_drop(true)
            .output()
    });
    let outputs = futures_util::future::join_all(runs).await;
    for (binding, out) in ["JSONRPC", "HTTP+JSON", "GRPC"].iter().zip(outputs) {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "{binding}: the SDK client failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds = |key: &str| -> Vec<Value> {
            seen[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| json!([e["kind"], e.get("state").cloned().unwrap_or(Value::Null)]))
                .collect()
        };
        assert_eq!(seen["card"]["name"], "tck", "{binding}");
        assert_eq!(
            seen["card"]["bindings"],
            json!(["JSONRPC", "HTTP+JSON", "GRPC"]),
            "{binding}"
        );
        assert_eq!(
            kinds("send"),
            [json!(["task", "TASK_STATE_COMPLETED"])],
            "{binding}"
        );
        assert_eq!(seen["sendStatusText"], "Hello from TCK", "{binding}");
        assert_eq!(
            seen["get"],
            json!({"id": true, "state": "TASK_STATE_COMPLETED", "history": 1}),
            "{binding}"
        );
        assert_eq!(
            seen["messageResponse"],
            json!([{"kind": "message", "text": "Direct message response"}]),
            "{binding}"
        );
        assert_eq!(
            kinds("stream"),
            [
                json!(["task", "TASK_STATE_SUBMITTED"]),
                json!(["status", "TASK_STATE_WORKING"]),
                json!(["artifact", null]),
                json!(["status", "TASK_STATE_COMPLETED"]),
            ],
            "{binding}"
        );
        let chunks: Vec<Value> = seen["chunked"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "artifact")
            .map(|e| json!([e["text"], e["append"], e["lastChunk"]]))
            .collect();
        assert_eq!(
            chunks,
            [
                json!(["chunk-1 ", false, false]),
                json!(["chunk-2", true, true])
            ],
            "{binding}"
        );
        assert_eq!(
            seen["multiTurn"],
            json!(["TASK_STATE_INPUT_REQUIRED", "TASK_STATE_COMPLETED", true]),
            "{binding}"
        );
        assert_eq!(
            seen["cancel"],
            json!(["TASK_STATE_CANCELED", "TaskNotCancelableError"]),
            "{binding}"
        );
        assert_eq!(seen["list"]["tasks"], 2, "{binding}");
        assert_eq!(seen["list"]["next"], true, "{binding}");
        // The Task first (submitted or already working, depending on when the subscription
        // lands), then the remaining status changes up to COMPLETED.
        let subscribed = kinds("subscribe");
        assert_eq!(subscribed[0][0], "task", "{binding}: {subscribed:?}");
        assert_eq!(
            subscribed.last(),
            Some(&json!(["status", "TASK_STATE_COMPLETED"])),
            "{binding}"
        );
        assert_eq!(
            seen["push"],
            json!({"created": "sdk-config", "got": ["https://example.com/hook", "tok"],
                   "listed": ["sdk-config"], "after": 0}),
            "{binding}"
        );
        assert_eq!(
            seen["extended"],
            json!(["tck", "tck-extended"]),
            "{binding}"
        );
        assert_eq!(seen["missing"], "TaskNotFoundError", "{binding}");
    }
    running.stop().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(t: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        message: Some(pb::Message {
            message_id: uuid::Uuid::now_v7().to_string(),
            role: pb::Role::User as i32,
            parts: vec![pb::Part {
                content: Some(pb::part::Content::Text(t.into())),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_of(r: pb::SendMessageResponse) -> pb::Task {
    match r.payload {
        Some(send_message_response::Payload::Task(t)) => t,
        other => panic!("expected a task, got {other:?}"),
    }
}

fn state(t: &pb::Task) -> i32 {
    t.status.as_ref().unwrap().state
}

#[tokio::test]
async fn this_client_against_the_python_sdk_server() {
    require_sdk().await;
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut server = Command::new("python3")
        .arg(script("sdk_server.py"))
        .args([http_port.to_string(), grpc_port.to_string()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let mut card = None;
    for _ in 0..300 {
        if let Ok(c) = A2aClient::fetch_card(&base).await {
            card = Some(c);
            break;
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "the SDK server exited before it served its card"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let card = card.expect("the SDK server did not serve its card within 30 s");
    assert_eq!(card.name, "echo");
    for binding in [Binding::JsonRpc, Binding::HttpJson, Binding::Grpc] {
        let name = binding.as_str();
        let client = A2aClient::from_card(&card, &[binding]).unwrap();
        // Blocking send: the echo artifact and COMPLETED.
        let t = task_of(client.send_message(text("hello sdk")).await.unwrap());
        assert_eq!(state(&t), pb::TaskState::Completed as i32, "{name}");
        assert_eq!(
            t.artifacts[0].parts[0].content,
            Some(pb::part::Content::Text("hello sdk".into())),
            "{name}"
        );
        // GetTask with historyLength.
        let got = client
            .get_task(pb::GetTaskRequest {
                id: t.id.clone(),
                history_length: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (got.id.as_str(), got.history.len()),
            (t.id.as_str(), 1),
            "{name}"
        );
        // Streaming: the task first, ending COMPLETED, with the artifact on the way.
        let events: Vec<pb::StreamResponse> = client
            .send_streaming_message(text("streamed"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(
            matches!(events[0].payload, Some(Payload::Task(_))),
            "{name}: {events:?}"
        );
        assert_eq!(
            events.iter().filter_map(event_state).next_back(),
            Some(pb::TaskState::Completed as i32),
            "{name}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e.payload, Some(Payload::ArtifactUpdate(_)))),
            "{name}"
        );
        // Multi-turn and cancel: input-required, then canceled; a second cancel is refused.
        let waiting = task_of(client.send_message(text("input please")).await.unwrap());
        assert_eq!(
            state(&waiting),
            pb::TaskState::InputRequired as i32,
            "{name}"
        );
        let canceled = client
            .cancel_task(pb::CancelTaskRequest {
                id: waiting.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(state(&canceled), pb::TaskState::Canceled as i32, "{name}");
        let again = client
            .cancel_task(pb::CancelTaskRequest {
                id: waiting.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(again.kind(), A2aErrorKind::TaskNotCancelable, "{name}");
        // ListTasks.
        let page = client
            .list_tasks(pb::ListTasksRequest {
                page_size: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.tasks.len(), 2, "{name}");
        // Its errors come back as the same kinds.
        let missing = client
            .get_task(pb::GetTaskRequest {
                id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), A2aErrorKind::TaskNotFound, "{name}");
        let push = client
            .create_task_push_notification_config(pb::TaskPushNotificationConfig {
                task_id: t.id.clone(),
                url: "https://example.com/hook".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            push.kind(),
            A2aErrorKind::PushNotificationNotSupported,
            "{name}"
        );
    }
    server.kill().await.unwrap();
}
