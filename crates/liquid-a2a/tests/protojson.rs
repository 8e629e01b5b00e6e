//! ProtoJSON round trips of the generated types against the JSON examples of the A2A v1.0.1
//! specification (§6, §8.5): parse the spec's JSON into the proto type, write it back, and
//! compare as JSON values (timestamps compared by instant, since the spec writes both `...Z`
//! and `....000Z`) and numbers by value (`google.protobuf.Value` numbers are doubles, so `42`
//! is written back as `42.0`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use liquid_a2a::pb;
use liquid_a2a::timestamp::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "timestamp"
                    && let Some(t) = child.as_str().and_then(Timestamp::parse)
                {
                    *child = Value::String(t.to_rfc3339().unwrap());
                } else {
                    normalize(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
                *n = f;
            }
        }
        _ => {}
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(spec_json: &str) -> (T, Value) {
    let parsed: T = serde_json::from_str(spec_json).unwrap();
    let mut written = serde_json::to_value(&parsed).unwrap();
    let mut expected: Value = serde_json::from_str(spec_json).unwrap();
    normalize(&mut written);
    normalize(&mut expected);
    assert_eq!(written, expected);
    (parsed, written)
}

#[test]
fn basic_task_execution_request_and_response() {
    let (req, _) = round_trip::<pb::SendMessageRequest>(
        r#"{"message": {"role": "ROLE_USER", "parts": [{"text": "What is the weather today?"}],
            "messageId": "msg-uuid"}}"#,
    );
    let m = req.message.unwrap();
    assert_eq!(m.role, pb::Role::User as i32);
    assert_eq!(
        m.parts[0].content,
        Some(pb::part::Content::Text("What is the weather today?".into()))
    );
    let (resp, _) = round_trip::<pb::SendMessageResponse>(
        r#"{"task": {"id": "task-uuid", "contextId": "context-uuid",
            "status": {"state": "TASK_STATE_COMPLETED"},
            "artifacts": [{"artifactId": "artifact-uuid", "name": "Weather Report",
              "parts": [{"text": "Today will be sunny with a high of 75°F"}]}]}}"#,
    );
    let Some(pb::send_message_response::Payload::Task(task)) = resp.payload else {
        panic!("expected a task");
    };
    assert_eq!(task.status.unwrap().state, pb::TaskState::Completed as i32);
}

#[test]
fn streaming_events_are_told_apart_by_member_name() {
    let lines = [
        r#"{"task": {"id": "task-uuid", "status": {"state": "TASK_STATE_WORKING"}}}"#,
        r##"{"artifactUpdate": {"taskId": "task-uuid", "artifact": {"parts": [{"text": "# Climate Change Report\n\n"}]}}}"##,
        r#"{"statusUpdate": {"taskId": "task-uuid", "status": {"state": "TASK_STATE_COMPLETED"}}}"#,
    ];
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| match round_trip::<pb::StreamResponse>(l).0.payload {
            Some(pb::stream_response::Payload::Task(_)) => "task",
            Some(pb::stream_response::Payload::ArtifactUpdate(_)) => "artifactUpdate",
            Some(pb::stream_response::Payload::StatusUpdate(_)) => "statusUpdate",
            Some(pb::stream_response::Payload::Message(_)) => "message",
            None => "none",
        })
        .collect();
    assert_eq!(kinds, ["task", "artifactUpdate", "statusUpdate"]);
}

#[test]
fn multi_turn_input_required() {
    round_trip::<pb::SendMessageResponse>(
        r#"{"task": {"id": "task-uuid", "status": {"state": "TASK_STATE_INPUT_REQUIRED",
            "message": {"role": "ROLE_AGENT",
              "parts": [{"text": "I need more details. Where would you like to fly from and to?"}]}}}}"#,
    );
    let (req, _) = round_trip::<pb::SendMessageRequest>(
        r#"{"message": {"taskId": "task-uuid", "role": "ROLE_USER",
            "parts": [{"text": "From San Francisco to New York"}], "messageId": "msg-2"}}"#,
    );
    assert_eq!(req.message.unwrap().task_id, "task-uuid");
}

#[test]
fn push_notification_setup_and_payload() {
    let (req, _) = round_trip::<pb::SendMessageRequest>(
        r#"{"message": {"role": "ROLE_USER", "parts": [{"text": "Generate the Q1 sales report."}],
            "messageId": "6dbc13b5-bd57-4c2b-b503-24e381b6c8d6"},
            "configuration": {"taskPushNotificationConfig": {
              "url": "https://client.example.com/webhook/a2a-notifications",
              "authentication": {"scheme": "Bearer", "credentials": "secure-client-token-for-task-aaa"}}}}"#,
    );
    let push = req
        .configuration
        .unwrap()
        .task_push_notification_config
        .unwrap();
    assert_eq!(push.authentication.unwrap().scheme, "Bearer");
    let (event, written) = round_trip::<pb::StreamResponse>(
        r#"{"statusUpdate": {"taskId": "43667960-d455-4453-b0cf-1bae4955270d",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2024-03-15T18:30:00Z"}}}"#,
    );
    assert!(event.payload.is_some());
    // Written timestamps are UTC with a Z suffix and millisecond precision (§5.6.1).
    assert_eq!(
        written["statusUpdate"]["status"]["timestamp"],
        "2024-03-15T18:30:00.000Z"
    );
}

#[test]
fn file_parts_raw_bytes_are_base64_and_url_parts_keep_metadata() {
    let (req, written) = round_trip::<pb::SendMessageRequest>(
        r#"{"message": {"role": "ROLE_USER", "messageId": "m",
            "parts": [{"text": "Analyze this image and highlight any faces."},
                      {"raw": "iVBORw0KGgo=", "filename": "input_image.png", "mediaType": "image/png"}]}}"#,
    );
    let part = &req.message.unwrap().parts[1];
    assert_eq!(
        part.content,
        Some(pb::part::Content::Raw(vec![
            0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'
        ]))
    );
    assert_eq!(written["message"]["parts"][1]["raw"], "iVBORw0KGgo=");
    round_trip::<pb::SendMessageResponse>(
        r#"{"task": {"id": "43667960-d455-4453-b0cf-1bae4955270d",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2024-03-15T12:05:00Z"},
            "artifacts": [{"artifactId": "9b6934dd-37e3-4eb1-8766-962efaab63a1",
              "name": "processed_image_with_faces.png",
              "parts": [{"url": "https://storage.example.com/processed/task-bbb/output.png?token=xyz",
                         "filename": "output.png", "mediaType": "image/png"}]}]}}"#,
    );
}

#[test]
fn structured_data_parts_and_metadata_are_plain_json() {
    let (req, _) = round_trip::<pb::SendMessageRequest>(
        r#"{"message": {"role": "ROLE_USER", "messageId": "85b26db5-ffbb-4278-a5da-a7b09dea1b47",
            "parts": [{"text": "Show me a list of my open IT tickets",
              "metadata": {"mediaType": "application/json",
                "schema": {"type": "array", "items": {"type": "object",
                  "properties": {"ticketNumber": {"type": "string"}}}}}},
              {"data": {"key": "value", "count": 42, "nested": [1, "two", null, true]}}]}}"#,
    );
    assert!(matches!(
        req.message.unwrap().parts[1].content,
        Some(pb::part::Content::Data(_))
    ));
    round_trip::<pb::SendMessageResponse>(
        r#"{"task": {"id": "d8c6243f-5f7a-4f6f-821d-957ce51e856c",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2025-04-17T17:47:09.680794Z"},
            "artifacts": [{"artifactId": "c5e0382f-b57f-4da7-87d8-b85171fad17c",
              "parts": [{"text": "[{\"ticketNumber\":\"REQ12312\"}]"}]}]}}"#,
    );
}

#[test]
fn list_tasks_response_keeps_required_fields() {
    let (resp, written) = round_trip::<pb::ListTasksResponse>(
        r#"{"tasks": [{"id": "t", "status": {"state": "TASK_STATE_WORKING"}}],
            "totalSize": 15, "pageSize": 10, "nextPageToken": "base64-encoded-next-cursor-token"}"#,
    );
    assert_eq!((resp.total_size, resp.page_size), (15, 10));
    assert!(written["tasks"].is_array());
    // The last page still carries `nextPageToken: ""` (§3.1.4), which ProtoJSON would omit.
    let last = pb::ListTasksResponse {
        page_size: 50,
        ..Default::default()
    };
    assert_eq!(
        liquid_a2a::handler::list_tasks_json(&last),
        json!({"tasks": [], "nextPageToken": "", "pageSize": 50, "totalSize": 0})
    );
}

#[test]
fn sample_agent_card() {
    // The spec's sample still names `security`, which the proto calls `securityRequirements`:
    // an unknown field, ignored on input as §5.7 asks.
    let spec_card = json!({
      "name": "GeoSpatial Route Planner Agent",
      "description": "Provides advanced route planning.",
      "supportedInterfaces": [
        {"url": "https://georoute-agent.example.com/a2a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
        {"url": "https://georoute-agent.example.com/a2a/grpc", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
        {"url": "https://georoute-agent.example.com/a2a/json", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"}
      ],
      "provider": {"organization": "Example Geo Services Inc.", "url": "https://www.examplegeoservices.com"},
      "iconUrl": "https://georoute-agent.example.com/icon.png",
      "version": "1.2.0",
      "documentationUrl": "https://docs.examplegeoservices.com/georoute-agent/api",
      "capabilities": {"streaming": true, "pushNotifications": true, "extendedAgentCard": true},
      "securitySchemes": {"google": {"openIdConnectSecurityScheme": {
        "openIdConnectUrl": "https://accounts.google.com/.well-known/openid-configuration"}}},
      "security": [{"google": ["openid", "profile", "email"]}],
      "defaultInputModes": ["application/json", "text/plain"],
      "defaultOutputModes": ["application/json", "image/png"],
      "skills": [{"id": "route-optimizer-traffic", "name": "Traffic-Aware Route Optimizer",
        "description": "Calculates the optimal driving route.",
        "tags": ["maps", "routing"], "examples": ["Plan a route"],
        "inputModes": ["application/json", "text/plain"], "outputModes": ["application/json"]}],
      "signatures": [{"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "QFdkNLNszlGj3z3u0YQGt"}]
    });
    let card: pb::AgentCard = serde_json::from_value(spec_card.clone()).unwrap();
    assert_eq!(card.supported_interfaces.len(), 3);
    assert_eq!(card.capabilities.as_ref().unwrap().streaming, Some(true));
    let mut written = serde_json::to_value(&card).unwrap();
    let mut expected = spec_card;
    expected.as_object_mut().unwrap().remove("security");
    normalize(&mut written);
    assert_eq!(written, expected);
    let with_requirements = json!({"name": "a", "securityRequirements": [
        {"schemes": {"google": {"list": ["openid"]}}}]});
    let card: pb::AgentCard = serde_json::from_value(with_requirements).unwrap();
    assert_eq!(
        card.security_requirements[0].schemes["google"].list,
        ["openid"]
    );
}

#[test]
fn unknown_fields_are_ignored_and_null_means_default() {
    let req: pb::SendMessageRequest = serde_json::from_str(
        r#"{"message": {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "hi", "future": 1}],
            "extensions": null, "referenceTaskIds": null, "kind": "message"},
            "configuration": {"acceptedOutputModes": null, "historyLength": 3},
            "somethingNew": {"x": [1, 2]}}"#,
    )
    .unwrap();
    let m = req.message.unwrap();
    assert!(m.extensions.is_empty());
    assert_eq!(req.configuration.unwrap().history_length, Some(3));
}

#[test]
fn enums_accept_names_and_reject_unknown_names() {
    let s: pb::TaskStatus =
        serde_json::from_str(r#"{"state": "TASK_STATE_AUTH_REQUIRED"}"#).unwrap();
    assert_eq!(s.state, pb::TaskState::AuthRequired as i32);
    let s: pb::TaskStatus = serde_json::from_str(r#"{"state": 7}"#).unwrap();
    assert_eq!(s.state, pb::TaskState::Rejected as i32);
    assert!(serde_json::from_str::<pb::TaskStatus>(r#"{"state": "TASK_STATE_RUNNING"}"#).is_err());
    // Proto field names are accepted too (ProtoJSON parsers must accept both).
    let m: pb::Message = serde_json::from_str(r#"{"message_id": "x", "context_id": "c"}"#).unwrap();
    assert_eq!((m.message_id.as_str(), m.context_id.as_str()), ("x", "c"));
}

#[test]
fn defaults_are_omitted_and_names_are_camel_case() {
    let task = pb::Task {
        id: "t".into(),
        context_id: "c".into(),
        status: Some(pb::TaskStatus {
            state: pb::TaskState::Submitted as i32,
            message: None,
            timestamp: Some(Timestamp::parse("2025-10-28T10:30:00Z").unwrap()),
        }),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&task).unwrap(),
        json!({"id": "t", "contextId": "c", "status": {"state": "TASK_STATE_SUBMITTED",
               "timestamp": "2025-10-28T10:30:00.000Z"}})
    );
}
