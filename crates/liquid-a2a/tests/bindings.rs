//! The three bindings and the client against each other over real sockets: the same calls on
//! JSON-RPC, HTTP+JSON and gRPC give the same results and the same errors, and the wire forms
//! (status codes, content types, JSON-RPC codes) are the spec's.
//!
//! The agent behind the endpoint is a small in-memory handler written for these tests: every
//! message creates a task that completes with an echo artifact; streaming emits working,
//! artifact, completed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use liquid_a2a::client::A2aClient;
use liquid_a2a::pb::{self, stream_response::Payload};
use liquid_a2a::{
    A2aEndpoint, A2aError, A2aErrorKind, A2aHandler, ErrorTable, EventStream, RequestContext,
};
use serde_json::{Value, json};

#[derive(Default)]
struct EchoAgent {
    tasks: Mutex<HashMap<String, pb::Task>>,
    /// Subscriptions that end before the task's final state (to exercise re-subscription).
    drop_first_subscriptions: Mutex<u32>,
}

fn text_part(t: &str) -> pb::Part {
    pb::Part {
        content: Some(pb::part::Content::Text(t.into())),
        ..Default::default()
    }
}

fn status(state: pb::TaskState) -> Option<pb::TaskStatus> {
    Some(pb::TaskStatus {
        state: state as i32,
        message: None,
        timestamp: Some(liquid_a2a::timestamp::Timestamp::now()),
    })
}

impl EchoAgent {
    fn create(&self, request: &pb::SendMessageRequest, state: pb::TaskState) -> pb::Task {
        let message = request.message.clone().unwrap_or_default();
        let text = match message.parts.first().and_then(|p| p.content.clone()) {
            Some(pb::part::Content::Text(t)) => t,
            _ => String::new(),
        };
        let id = format!("task-{}", self.tasks.lock().unwrap().len() + 1);
        let task = pb::Task {
            id: id.clone(),
            context_id: "ctx-1".into(),
            status: status(state),
            artifacts: vec![pb::Artifact {
                artifact_id: "a1".into(),
                parts: vec![text_part(&format!("echo: {text}"))],
                ..Default::default()
            }],
            history: vec![message],
            metadata: None,
        };
        self.tasks.lock().unwrap().insert(id, task.clone());
        task
    }

    fn find(&self, id: &str) -> Result<pb::Task, A2aError> {
        self.tasks
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| A2aError::TaskNotFound { task_id: id.into() })
    }
}

#[async_trait]
impl A2aHandler for EchoAgent {
    async fn send_message(
        &self,
        _ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError> {
        let task = self.create(&request, pb::TaskState::Completed);
        Ok(pb::SendMessageResponse {
            payload: Some(pb::send_message_response::Payload::Task(task)),
        })
    }

    async fn send_streaming_message(
        &self,
        _ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        let task = self.create(&request, pb::TaskState::Completed);
        let mut first = task.clone();
        first.status = status(pb::TaskState::Submitted);
        first.artifacts.clear();
        let update = |state| pb::StreamResponse {
            payload: Some(Payload::StatusUpdate(pb::TaskStatusUpdateEvent {
                task_id: task.id.clone(),
                context_id: task.context_id.clone(),
                status: status(state),
                metadata: None,
            })),
        };
        let events = vec![
            pb::StreamResponse {
                payload: Some(Payload::Task(first)),
            },
            update(pb::TaskState::Working),
            pb::StreamResponse {
                payload: Some(Payload::ArtifactUpdate(pb::TaskArtifactUpdateEvent {
                    task_id: task.id.clone(),
                    context_id: task.context_id.clone(),
                    artifact: task.artifacts.first().cloned(),
                    append: false,
                    last_chunk: true,
                    metadata: None,
                })),
            },
            update(pb::TaskState::Completed),
        ];
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }

    async fn get_task(
        &self,
        _ctx: &RequestContext,
        r: pb::GetTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        self.find(&r.id)
    }

    async fn list_tasks(
        &self,
        _ctx: &RequestContext,
        _r: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        let tasks: Vec<pb::Task> = self.tasks.lock().unwrap().values().cloned().collect();
        Ok(pb::ListTasksResponse {
            total_size: tasks.len() as i32,
            page_size: 50,
            tasks,
            next_page_token: String::new(),
        })
    }

    async fn cancel_task(
        &self,
        _ctx: &RequestContext,
        r: pb::CancelTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        let task = self.find(&r.id)?;
        Err(A2aError::TaskNotCancelable { task_id: task.id })
    }

    async fn subscribe_to_task(
        &self,
        _ctx: &RequestContext,
        r: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError> {
        let mut task = self.find(&r.id)?;
        let mut drops = self.drop_first_subscriptions.lock().unwrap();
        if *drops > 0 {
            // The connection "drops" right after the snapshot, with the task still working.
            *drops -= 1;
            task.status = status(pb::TaskState::Working);
            let only = pb::StreamResponse {
                payload: Some(Payload::Task(task)),
            };
            return Ok(Box::pin(futures_util::stream::iter([Ok(only)])));
        }
        Ok(Box::pin(futures_util::stream::iter([Ok(
            pb::StreamResponse {
                payload: Some(Payload::Task(task)),
            },
        )])))
    }

    async fn create_task_push_notification_config(
        &self,
        _ctx: &RequestContext,
        mut r: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        self.find(&r.task_id)?;
        r.id = "cfg-1".into();
        Ok(r)
    }

    async fn get_task_push_notification_config(
        &self,
        _ctx: &RequestContext,
        r: pb::GetTaskPushNotificationConfigRequest,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        Err(A2aError::TaskNotFound { task_id: r.task_id })
    }

    async fn list_task_push_notification_configs(
        &self,
        _ctx: &RequestContext,
        _r: pb::ListTaskPushNotificationConfigsRequest,
    ) -> Result<pb::ListTaskPushNotificationConfigsResponse, A2aError> {
        Ok(Default::default())
    }

    async fn delete_task_push_notification_config(
        &self,
        _ctx: &RequestContext,
        _r: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError> {
        Ok(())
    }

    async fn get_extended_agent_card(
        &self,
        _ctx: &RequestContext,
        _r: pb::GetExtendedAgentCardRequest,
    ) -> Result<pb::AgentCard, A2aError> {
        Err(A2aError::ExtendedAgentCardNotConfigured)
    }
}

struct Served {
    http: SocketAddr,
    grpc: SocketAddr,
    agent: Arc<EchoAgent>,
}

impl Served {
    fn clients(&self) -> Vec<(&'static str, A2aClient)> {
        vec![
            (
                "jsonrpc",
                A2aClient::jsonrpc(format!("http://{}/a2a", self.http)),
            ),
            (
                "rest",
                A2aClient::http_json(format!("http://{}/rest", self.http)),
            ),
            (
                "grpc",
                A2aClient::grpc(format!("http://{}", self.grpc)).unwrap(),
            ),
        ]
    }
}

fn card(streaming: bool, push: bool, extended: bool, required_ext: Option<&str>) -> pb::AgentCard {
    pb::AgentCard {
        name: "echo".into(),
        description: "echoes".into(),
        version: "1".into(),
        capabilities: Some(pb::AgentCapabilities {
            streaming: Some(streaming),
            push_notifications: Some(push),
            extended_agent_card: Some(extended),
            extensions: required_ext
                .map(|uri| pb::AgentExtension {
                    uri: uri.into(),
                    required: true,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
        }),
        default_input_modes: vec!["text/plain".into(), "application/json".into()],
        default_output_modes: vec!["text/plain".into()],
        ..Default::default()
    }
}

async fn serve(card: pb::AgentCard, table: ErrorTable) -> Served {
    let agent = Arc::new(EchoAgent::default());
    let endpoint = A2aEndpoint::new(agent.clone(), card, table);
    let router = axum::Router::new()
        .route("/a2a", liquid_a2a::jsonrpc::method_router(endpoint.clone()))
        .nest("/rest", liquid_a2a::rest::router(endpoint.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let service =
        liquid_a2a::grpc::GrpcBinding::new(liquid_a2a::grpc::TenantRouter::single(endpoint))
            .into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                grpc_listener,
            ))
            .await
            .unwrap()
    });
    Served { http, grpc, agent }
}

fn send(text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        message: Some(pb::Message {
            message_id: format!("m-{text}"),
            role: pb::Role::User as i32,
            parts: vec![text_part(text)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_of(r: pb::SendMessageResponse) -> pb::Task {
    match r.payload {
        Some(pb::send_message_response::Payload::Task(t)) => t,
        other => panic!("expected a task, got {other:?}"),
    }
}

#[tokio::test]
async fn same_results_on_every_binding() {
    let s = serve(card(true, true, true, None), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let task = task_of(client.send_message(send(name)).await.unwrap());
        assert_eq!(
            task.status.as_ref().unwrap().state,
            pb::TaskState::Completed as i32,
            "{name}"
        );
        assert_eq!(
            task.artifacts[0].parts[0],
            text_part(&format!("echo: {name}")),
            "{name}"
        );
        let fetched = client
            .get_task(pb::GetTaskRequest {
                id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(fetched, task, "{name}");
        let listed = client.list_tasks(Default::default()).await.unwrap();
        assert!(listed.tasks.iter().any(|t| t.id == task.id), "{name}");
        let cfg = client
            .create_task_push_notification_config(pb::TaskPushNotificationConfig {
                task_id: task.id.clone(),
                url: "https://client.example/hook".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (cfg.id.as_str(), cfg.task_id.as_str()),
            ("cfg-1", task.id.as_str()),
            "{name}"
        );
        client
            .delete_task_push_notification_config(pb::DeleteTaskPushNotificationConfigRequest {
                task_id: task.id.clone(),
                id: "cfg-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn same_errors_on_every_binding() {
    let s = serve(card(true, true, true, None), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let e = client
            .get_task(pb::GetTaskRequest {
                id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e,
            A2aError::TaskNotFound {
                task_id: "nope".into()
            },
            "{name}"
        );
        let task = task_of(client.send_message(send("x")).await.unwrap());
        let e = client
            .cancel_task(pb::CancelTaskRequest {
                id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::TaskNotCancelable, "{name}");
        let e = client
            .get_extended_agent_card(Default::default())
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            A2aErrorKind::ExtendedAgentCardNotConfigured,
            "{name}"
        );
        let mut no_parts = send("x");
        no_parts.message.as_mut().unwrap().parts.clear();
        let e = client.send_message(no_parts).await.unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::InvalidParams, "{name}");
        let mut pdf = send("x");
        pdf.message.as_mut().unwrap().parts[0].media_type = "application/pdf".into();
        let e = client.send_message(pdf).await.unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::ContentTypeNotSupported, "{name}");
        let e = client
            .list_tasks(pb::ListTasksRequest {
                page_size: Some(150),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::InvalidParams, "{name}");
        let e = client
            .clone()
            .with_version(Some("2.0"))
            .get_task(pb::GetTaskRequest {
                id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e,
            A2aError::VersionNotSupported {
                version: "2.0".into()
            },
            "{name}"
        );
        // No version at all is a 0.3 client by the spec's rule; it still gets an answer.
        client
            .clone()
            .with_version(None)
            .get_task(pb::GetTaskRequest {
                id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn streaming_events_arrive_in_order_on_every_binding() {
    let s = serve(card(true, true, true, None), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let events: Vec<pb::StreamResponse> = client
            .send_streaming_message(send(name))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e.payload.as_ref().unwrap() {
                Payload::Task(t) => format!("task:{}", t.status.as_ref().unwrap().state),
                Payload::StatusUpdate(u) => format!("status:{}", u.status.as_ref().unwrap().state),
                Payload::ArtifactUpdate(_) => "artifact".into(),
                Payload::Message(_) => "message".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            ["task:1", "status:2", "artifact", "status:3"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn capabilities_that_are_off_are_refused() {
    let s = serve(card(false, false, false, None), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let e = client
            .send_streaming_message(send("x"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), A2aErrorKind::UnsupportedOperation, "{name}");
        let e = client
            .subscribe_to_task(pb::SubscribeToTaskRequest {
                id: "t".into(),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), A2aErrorKind::UnsupportedOperation, "{name}");
        let e = client
            .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
                task_id: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e, A2aError::PushNotificationNotSupported, "{name}");
        let e = client
            .get_extended_agent_card(Default::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::UnsupportedOperation, "{name}");
    }
}

#[tokio::test]
async fn required_extension_must_be_declared() {
    let uri = "urn:a2a:tck:required-extension";
    let s = serve(card(true, true, true, Some(uri)), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let e = client.send_message(send("x")).await.unwrap_err();
        assert_eq!(
            e,
            A2aError::ExtensionSupportRequired { uri: uri.into() },
            "{name}"
        );
        let ok = client.clone().with_extensions(&["urn:other", uri]);
        task_of(ok.send_message(send("x")).await.unwrap());
    }
}

#[tokio::test]
async fn follow_task_resubscribes_until_a_final_state() {
    let s = serve(card(true, true, true, None), ErrorTable::V1_0_1).await;
    for (name, client) in s.clients() {
        let task = task_of(client.send_message(send(name)).await.unwrap());
        *s.agent.drop_first_subscriptions.lock().unwrap() = 2;
        let events: Vec<pb::StreamResponse> = client
            .follow_task(&task.id, "", 5)
            .map(Result::unwrap)
            .collect()
            .await;
        let states: Vec<i32> = events
            .iter()
            .filter_map(liquid_a2a::client::event_state)
            .collect();
        assert_eq!(
            states,
            [
                pb::TaskState::Working as i32,
                pb::TaskState::Working as i32,
                pb::TaskState::Completed as i32
            ],
            "{name}"
        );
    }
}

async fn post_raw(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("a2a-version", "1.0")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        ct,
    )
}

#[tokio::test]
async fn jsonrpc_wire_errors() {
    let s = serve(card(true, true, true, None), ErrorTable::V1_0_1).await;
    // Content-Type is checked before the body is parsed: not JSON, not even valid JSON.
    let (_, v, _) = post_raw(s.http, "/a2a", "text/plain", "not json at all").await;
    assert_eq!(v["error"]["code"], -32005);
    assert_eq!(v["id"], Value::Null);
    let (_, v, _) = post_raw(s.http, "/a2a", "application/json", "{oops").await;
    assert_eq!(v["error"]["code"], -32700);
    let (_, v, _) = post_raw(
        s.http,
        "/a2a",
        "application/json",
        r#"{"jsonrpc":"2.0","id":7,"method":"Nope"}"#,
    )
    .await;
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32601), json!(7))
    );
    let (_, v, _) = post_raw(
        s.http,
        "/a2a",
        "application/json",
        r#"{"jsonrpc":"1.0","id":"a","method":"GetTask"}"#,
    )
    .await;
    assert_eq!(v["error"]["code"], -32600);
    let (_, v, _) = post_raw(
        s.http,
        "/a2a",
        "application/json",
        r#"{"jsonrpc":"2.0","id":"a","method":"GetTask","params":{"id":"x","historyLength":"many"}}"#,
    )
    .await;
    assert_eq!(v["error"]["code"], -32602);
    let (status, v, ct) = post_raw(
        s.http,
        "/a2a",
        "application/json",
        r#"{"jsonrpc":"2.0","id":"a","method":"GetTask","params":{"id":"missing"}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"));
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["data"][0]["reason"], "TASK_NOT_FOUND");
    assert_eq!(v["error"]["data"][0]["metadata"]["taskId"], "missing");
}

#[tokio::test]
async fn rest_wire_forms_under_both_tables() {
    for (table, cancel_status) in [(ErrorTable::V1_0_1, 400), (ErrorTable::V1_0_0, 409)] {
        let s = serve(card(true, true, true, None), table).await;
        let (status, v, ct) = post_raw(
            s.http,
            "/rest/acme/message:send",
            "application/a2a+json",
            r#"{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"hi"}]}}"#,
        )
        .await;
        assert_eq!(status, 200);
        // §11.1: application/json unless the client asks for application/a2a+json by name.
        assert_eq!(ct, "application/json");
        let id = v["task"]["id"].as_str().unwrap().to_owned();
        let r = reqwest::Client::new()
            .get(format!("http://{}/rest/tasks/{id}", s.http))
            .header("a2a-version", "1.0")
            .header("accept", "application/a2a+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "application/a2a+json");
        assert_eq!(v["task"]["status"]["state"], "TASK_STATE_COMPLETED");
        let (status, v, _) = post_raw(
            s.http,
            &format!("/rest/tasks/{id}:cancel"),
            "application/json",
            "",
        )
        .await;
        assert_eq!(status, cancel_status);
        assert_eq!(
            v["error"]["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(v["error"]["details"][0]["reason"], "TASK_NOT_CANCELABLE");
        let r = reqwest::get(format!(
            "http://{}/rest/tasks/{id}?historyLength=-1",
            s.http
        ))
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let r = reqwest::get(format!("http://{}/rest/tasks/nothing", s.http))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // Subscribe answers on GET as well as POST.
        let r = reqwest::get(format!("http://{}/rest/tasks/{id}:subscribe", s.http))
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let r = reqwest::Client::new()
            .delete(format!("http://{}/rest/message:send", s.http))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let (status, _, _) = post_raw(s.http, "/rest/message:send", "text/xml", "<m/>").await;
        assert_eq!(
            status,
            if table == ErrorTable::V1_0_0 {
                415
            } else {
                400
            }
        );
    }
}
