//! One A2A client over the three bindings.
//!
//! [`A2aClient`] speaks JSON-RPC, HTTP+JSON or gRPC with the same methods and the same
//! [`A2aError`] results, sends `A2A-Version: 1.0` (and `A2A-Extensions` when set) on every
//! call, reads SSE streams, and [`A2aClient::follow_task`] re-subscribes when a task stream
//! drops before the task reached a final state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::error::A2aError;
use crate::handler::{Binding, EventStream};
use crate::jsonrpc::methods;
use crate::params::{A2A_JSON, EXTENSIONS_HEADER, PROTOCOL_VERSION, VERSION_HEADER};
use crate::pb;
use crate::pb::a2a_service_client::A2aServiceClient;
use crate::sse;

#[derive(Clone)]
enum Transport {
    JsonRpc { url: String },
    HttpJson { base: String },
    Grpc { client: A2aServiceClient<Channel> },
}

/// A client for one agent interface.
#[derive(Clone)]
pub struct A2aClient {
    transport: Transport,
    http: reqwest::Client,
    headers: HeaderMap,
    next_id: Arc<AtomicU64>,
}

fn transport_error(e: impl std::fmt::Display) -> A2aError {
    A2aError::Internal {
        reason: format!("transport: {e}"),
    }
}

fn decode_error(e: impl std::fmt::Display) -> A2aError {
    A2aError::InvalidAgentResponse {
        reason: e.to_string(),
    }
}

/// Whether a task state ends a task's stream: terminal (completed, failed, canceled, rejected)
/// or interrupted (input or auth required).
pub fn is_final_state(state: i32) -> bool {
    use pb::TaskState::*;
    matches!(
        pb::TaskState::try_from(state),
        Ok(Completed | Failed | Canceled | Rejected | InputRequired | AuthRequired)
    )
}

/// The task state an event reports, if it reports one.
pub fn event_state(event: &pb::StreamResponse) -> Option<i32> {
    use pb::stream_response::Payload;
    match event.payload.as_ref()? {
        Payload::Task(t) => t.status.as_ref().map(|s| s.state),
        Payload::StatusUpdate(u) => u.status.as_ref().map(|s| s.state),
        _ => None,
    }
}

impl A2aClient {
    fn with_transport(transport: Transport) -> A2aClient {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(VERSION_HEADER),
            HeaderValue::from_static(PROTOCOL_VERSION),
        );
        A2aClient {
            transport,
            http: reqwest::Client::new(),
            headers,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A JSON-RPC client posting to `url`.
    pub fn jsonrpc(url: impl Into<String>) -> A2aClient {
        A2aClient::with_transport(Transport::JsonRpc { url: url.into() })
    }

    /// An HTTP+JSON client for the interface at `base` (routes are appended to it).
    pub fn http_json(base: impl Into<String>) -> A2aClient {
        let base: String = base.into();
        A2aClient::with_transport(Transport::HttpJson {
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// A gRPC client for `uri`: `http://host:port`, `https://host:port` or a gRPC target
    /// `host:port` (plaintext, the form gRPC libraries and the conformance kit dial); connects
    /// on first use.
    pub fn grpc(uri: impl Into<String>) -> Result<A2aClient, A2aError> {
        let uri: String = uri.into();
        let uri = if uri.contains("://") {
            uri
        } else {
            format!("http://{}", uri.trim_start_matches("dns:///"))
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(transport_error)?
            .connect_lazy();
        Ok(A2aClient::with_transport(Transport::Grpc {
            client: A2aServiceClient::new(channel)
                .max_decoding_message_size(crate::jsonrpc::MAX_BODY_BYTES),
        }))
    }

    /// A client for the first interface of `card` whose binding is in `preferred` (in the
    /// caller's order of preference).
    pub fn from_card(card: &pb::AgentCard, preferred: &[Binding]) -> Result<A2aClient, A2aError> {
        for binding in preferred {
            if let Some(i) = card
                .supported_interfaces
                .iter()
                .find(|i| i.protocol_binding.eq_ignore_ascii_case(binding.as_str()))
            {
                return match binding {
                    Binding::JsonRpc => Ok(A2aClient::jsonrpc(i.url.clone())),
                    Binding::HttpJson => Ok(A2aClient::http_json(i.url.clone())),
                    Binding::Grpc => A2aClient::grpc(i.url.clone()),
                };
            }
        }
        Err(A2aError::unsupported(
            "the agent card offers none of the preferred bindings",
        ))
    }

    /// Fetches the public card at `base` + `/.well-known/agent-card.json`.
    pub async fn fetch_card(base: &str) -> Result<pb::AgentCard, A2aError> {
        let url = format!(
            "{}{}",
            base.trim_end_matches('/'),
            crate::card::WELL_KNOWN_PATH
        );
        let response = reqwest::get(url).await.map_err(transport_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(A2aError::from_http(status, &body));
        }
        serde_json::from_slice(&body).map_err(decode_error)
    }

    /// Sends `Authorization: Bearer <token>` on every call.
    pub fn with_bearer(mut self, token: &str) -> A2aClient {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            self.headers.insert(header::AUTHORIZATION, v);
        }
        self
    }

    /// Sends this `A2A-Version` (`None`: send none, as a 0.3 client would).
    pub fn with_version(mut self, version: Option<&str>) -> A2aClient {
        let name = HeaderName::from_static(VERSION_HEADER);
        match version.and_then(|v| HeaderValue::from_str(v).ok()) {
            Some(v) => {
                self.headers.insert(name, v);
            }
            None => {
                self.headers.remove(name);
            }
        }
        self
    }

    /// Declares these extensions in `A2A-Extensions`.
    pub fn with_extensions(mut self, uris: &[&str]) -> A2aClient {
        if let Ok(v) = HeaderValue::from_str(&uris.join(",")) {
            self.headers
                .insert(HeaderName::from_static(EXTENSIONS_HEADER), v);
        }
        self
    }

    /// Uses `http` for the HTTP bindings (timeouts, TLS, pooling).
    pub fn with_http_client(mut self, http: reqwest::Client) -> A2aClient {
        self.http = http;
        self
    }

    fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (name, value) in &self.headers {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        request
    }

    async fn jsonrpc_call<P: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        method: &str,
        params: &P,
    ) -> Result<R, A2aError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self
            .http
            .post(url)
            .headers(self.headers.clone())
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            // Refused before JSON-RPC (authentication, body limits): an HTTP error.
            return Err(A2aError::from_http(status, &bytes));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(decode_error)?;
        jsonrpc_result(value)
    }

    fn jsonrpc_stream<P: Serialize>(
        &self,
        url: &str,
        method: &str,
        params: &P,
    ) -> reqwest::RequestBuilder {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.http
            .post(url)
            .headers(self.headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .json(&body)
    }

    fn rest_url(base: &str, tenant: &str, path: &str) -> String {
        if tenant.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}/{}{path}", encode_segment(tenant))
        }
    }

    async fn rest_call<R: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<R, A2aError> {
        let response = builder
            .headers(self.headers.clone())
            .header(header::ACCEPT, A2A_JSON)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(A2aError::from_http(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(decode_error)
    }

    fn rest_json<P: Serialize>(
        &self,
        method: http::Method,
        url: String,
        body: &P,
    ) -> reqwest::RequestBuilder {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.http
            .request(method, url)
            .header(header::CONTENT_TYPE, A2A_JSON)
            .body(bytes)
    }

    /// SendMessage.
    pub async fn send_message(
        &self,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::SEND_MESSAGE, &request)
                    .await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(base, &request.tenant, "/message:send");
                self.rest_call(self.rest_json(http::Method::POST, url, &request))
                    .await
            }
            Transport::Grpc { client } => client
                .clone()
                .send_message(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// SendStreamingMessage.
    pub async fn send_streaming_message(
        &self,
        request: pb::SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                let builder = self.jsonrpc_stream(url, methods::SEND_STREAMING_MESSAGE, &request);
                jsonrpc_sse(builder).await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(base, &request.tenant, "/message:stream");
                let builder = self
                    .rest_json(http::Method::POST, url, &request)
                    .headers(self.headers.clone());
                rest_sse(builder).await
            }
            Transport::Grpc { client } => {
                let stream = client
                    .clone()
                    .send_streaming_message(self.grpc_request(request))
                    .await
                    .map_err(|s| A2aError::from_grpc(&s))?
                    .into_inner();
                Ok(Box::pin(
                    stream.map(|r| r.map_err(|s| A2aError::from_grpc(&s))),
                ))
            }
        }
    }

    /// GetTask.
    pub async fn get_task(&self, request: pb::GetTaskRequest) -> Result<pb::Task, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => self.jsonrpc_call(url, methods::GET_TASK, &request).await,
            Transport::HttpJson { base } => {
                let mut url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!("/tasks/{}", encode_segment(&request.id)),
                );
                if let Some(n) = request.history_length {
                    url.push_str(&format!("?historyLength={n}"));
                }
                self.rest_call(self.http.get(url)).await
            }
            Transport::Grpc { client } => client
                .clone()
                .get_task(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// ListTasks.
    pub async fn list_tasks(
        &self,
        request: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::LIST_TASKS, &request).await
            }
            Transport::HttpJson { base } => {
                let mut query = Vec::new();
                if !request.context_id.is_empty() {
                    query.push(format!("contextId={}", encode_segment(&request.context_id)));
                }
                if request.status != 0
                    && let Ok(s) = pb::TaskState::try_from(request.status)
                {
                    query.push(format!("status={}", s.as_str_name()));
                }
                if let Some(n) = request.page_size {
                    query.push(format!("pageSize={n}"));
                }
                if !request.page_token.is_empty() {
                    query.push(format!("pageToken={}", encode_segment(&request.page_token)));
                }
                if let Some(n) = request.history_length {
                    query.push(format!("historyLength={n}"));
                }
                if let Some(t) = request.status_timestamp_after.and_then(|t| t.to_rfc3339()) {
                    query.push(format!("statusTimestampAfter={}", encode_segment(&t)));
                }
                if let Some(b) = request.include_artifacts {
                    query.push(format!("includeArtifacts={b}"));
                }
                let mut url = Self::rest_url(base, &request.tenant, "/tasks");
                if !query.is_empty() {
                    url.push('?');
                    url.push_str(&query.join("&"));
                }
                self.rest_call(self.http.get(url)).await
            }
            Transport::Grpc { client } => client
                .clone()
                .list_tasks(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// CancelTask.
    pub async fn cancel_task(&self, request: pb::CancelTaskRequest) -> Result<pb::Task, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::CANCEL_TASK, &request).await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!("/tasks/{}:cancel", encode_segment(&request.id)),
                );
                self.rest_call(self.rest_json(http::Method::POST, url, &request))
                    .await
            }
            Transport::Grpc { client } => client
                .clone()
                .cancel_task(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// SubscribeToTask.
    pub async fn subscribe_to_task(
        &self,
        request: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                jsonrpc_sse(self.jsonrpc_stream(url, methods::SUBSCRIBE_TO_TASK, &request)).await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!("/tasks/{}:subscribe", encode_segment(&request.id)),
                );
                let builder = self
                    .rest_json(http::Method::POST, url, &request)
                    .headers(self.headers.clone());
                rest_sse(builder).await
            }
            Transport::Grpc { client } => {
                let stream = client
                    .clone()
                    .subscribe_to_task(self.grpc_request(request))
                    .await
                    .map_err(|s| A2aError::from_grpc(&s))?
                    .into_inner();
                Ok(Box::pin(
                    stream.map(|r| r.map_err(|s| A2aError::from_grpc(&s))),
                ))
            }
        }
    }

    /// CreateTaskPushNotificationConfig.
    pub async fn create_task_push_notification_config(
        &self,
        request: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::CREATE_PUSH_CONFIG, &request)
                    .await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!(
                        "/tasks/{}/pushNotificationConfigs",
                        encode_segment(&request.task_id)
                    ),
                );
                self.rest_call(self.rest_json(http::Method::POST, url, &request))
                    .await
            }
            Transport::Grpc { client } => client
                .clone()
                .create_task_push_notification_config(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// GetTaskPushNotificationConfig.
    pub async fn get_task_push_notification_config(
        &self,
        request: pb::GetTaskPushNotificationConfigRequest,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::GET_PUSH_CONFIG, &request)
                    .await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!(
                        "/tasks/{}/pushNotificationConfigs/{}",
                        encode_segment(&request.task_id),
                        encode_segment(&request.id)
                    ),
                );
                self.rest_call(self.http.get(url)).await
            }
            Transport::Grpc { client } => client
                .clone()
                .get_task_push_notification_config(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// ListTaskPushNotificationConfigs.
    pub async fn list_task_push_notification_configs(
        &self,
        request: pb::ListTaskPushNotificationConfigsRequest,
    ) -> Result<pb::ListTaskPushNotificationConfigsResponse, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::LIST_PUSH_CONFIGS, &request)
                    .await
            }
            Transport::HttpJson { base } => {
                let mut url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!(
                        "/tasks/{}/pushNotificationConfigs",
                        encode_segment(&request.task_id)
                    ),
                );
                let mut query = Vec::new();
                if request.page_size > 0 {
                    query.push(format!("pageSize={}", request.page_size));
                }
                if !request.page_token.is_empty() {
                    query.push(format!("pageToken={}", encode_segment(&request.page_token)));
                }
                if !query.is_empty() {
                    url.push('?');
                    url.push_str(&query.join("&"));
                }
                self.rest_call(self.http.get(url)).await
            }
            Transport::Grpc { client } => client
                .clone()
                .list_task_push_notification_configs(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// DeleteTaskPushNotificationConfig.
    pub async fn delete_task_push_notification_config(
        &self,
        request: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                let _: Value = self
                    .jsonrpc_call(url, methods::DELETE_PUSH_CONFIG, &request)
                    .await?;
                Ok(())
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(
                    base,
                    &request.tenant,
                    &format!(
                        "/tasks/{}/pushNotificationConfigs/{}",
                        encode_segment(&request.task_id),
                        encode_segment(&request.id)
                    ),
                );
                let response = self
                    .http
                    .delete(url)
                    .headers(self.headers.clone())
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let body = response.bytes().await.map_err(transport_error)?;
                Err(A2aError::from_http(status, &body))
            }
            Transport::Grpc { client } => client
                .clone()
                .delete_task_push_notification_config(self.grpc_request(request))
                .await
                .map(|_| ())
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// GetExtendedAgentCard.
    pub async fn get_extended_agent_card(
        &self,
        request: pb::GetExtendedAgentCardRequest,
    ) -> Result<pb::AgentCard, A2aError> {
        match &self.transport {
            Transport::JsonRpc { url } => {
                self.jsonrpc_call(url, methods::GET_EXTENDED_CARD, &request)
                    .await
            }
            Transport::HttpJson { base } => {
                let url = Self::rest_url(base, &request.tenant, "/extendedAgentCard");
                self.rest_call(self.http.get(url)).await
            }
            Transport::Grpc { client } => client
                .clone()
                .get_extended_agent_card(self.grpc_request(request))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| A2aError::from_grpc(&s)),
        }
    }

    /// Follows a task to its final state: subscribes, and when the stream drops before a final
    /// state was seen, subscribes again (each new subscription starts with the Task snapshot,
    /// so nothing of the task's state is lost) up to `max_resubscribes` times with a short,
    /// growing pause. If the task finished while disconnected, the last item is the Task from
    /// GetTask.
    pub fn follow_task(&self, task_id: &str, tenant: &str, max_resubscribes: u32) -> EventStream {
        let client = self.clone();
        let task_id = task_id.to_owned();
        let tenant = tenant.to_owned();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                let request = pb::SubscribeToTaskRequest {
                    tenant: tenant.clone(),
                    id: task_id.clone(),
                };
                let mut finished = false;
                match client.subscribe_to_task(request).await {
                    Ok(mut stream) => {
                        while let Some(item) = stream.next().await {
                            match item {
                                Ok(event) => {
                                    finished |= event_state(&event).is_some_and(is_final_state);
                                    if tx.send(Ok(event)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(A2aError::Internal { .. }) => break,
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            }
                        }
                    }
                    Err(A2aError::UnsupportedOperation { .. }) => {
                        // The task reached a terminal state while we were away.
                        let task = client
                            .get_task(pb::GetTaskRequest {
                                tenant: tenant.clone(),
                                id: task_id.clone(),
                                history_length: None,
                            })
                            .await
                            .map(|t| pb::StreamResponse {
                                payload: Some(pb::stream_response::Payload::Task(t)),
                            });
                        let _ = tx.send(task).await;
                        return;
                    }
                    Err(A2aError::Internal { .. }) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if finished {
                    return;
                }
                attempt += 1;
                if attempt > max_resubscribes {
                    let _ = tx
                        .send(Err(A2aError::Internal {
                            reason: "task stream dropped too often".into(),
                        }))
                        .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20)))).await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn jsonrpc_result<R: DeserializeOwned>(mut value: Value) -> Result<R, A2aError> {
    if let Some(error) = value.get("error") {
        return Err(A2aError::from_jsonrpc(error));
    }
    match value.get_mut("result") {
        Some(result) => serde_json::from_value(result.take()).map_err(decode_error),
        None => Err(decode_error(
            "a JSON-RPC response needs a result or an error",
        )),
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

async fn jsonrpc_sse(builder: reqwest::RequestBuilder) -> Result<EventStream, A2aError> {
    let response = builder.send().await.map_err(transport_error)?;
    let status = response.status();
    if !status.is_success() {
        let bytes = response.bytes().await.map_err(transport_error)?;
        return Err(A2aError::from_http(status, &bytes));
    }
    if !is_event_stream(response.headers()) {
        let bytes = response.bytes().await.map_err(transport_error)?;
        return match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Err(jsonrpc_result::<Value>(v)
                .err()
                .unwrap_or_else(|| decode_error("expected an event stream"))),
            Err(_) => Err(A2aError::from_http(status, &bytes)),
        };
    }
    let events = sse::events(response).map(|item| {
        let event = item?;
        let value: Value = serde_json::from_str(&event.data).map_err(decode_error)?;
        jsonrpc_result::<pb::StreamResponse>(value)
    });
    Ok(Box::pin(until_error(events)))
}

async fn rest_sse(builder: reqwest::RequestBuilder) -> Result<EventStream, A2aError> {
    let response = builder
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    if status != StatusCode::OK || !is_event_stream(response.headers()) {
        let bytes = response.bytes().await.map_err(transport_error)?;
        return Err(A2aError::from_http(
            if status.is_success() {
                StatusCode::BAD_GATEWAY
            } else {
                status
            },
            &bytes,
        ));
    }
    let events = sse::events(response).map(|item| {
        let event = item?;
        if event.event == "error" {
            return Err(A2aError::from_http(
                StatusCode::BAD_REQUEST,
                event.data.as_bytes(),
            ));
        }
        serde_json::from_str::<pb::StreamResponse>(&event.data).map_err(decode_error)
    });
    Ok(Box::pin(until_error(events)))
}

/// Ends a stream after its first error item.
fn until_error<S>(
    stream: S,
) -> impl futures_util::Stream<Item = Result<pb::StreamResponse, A2aError>> + Send
where
    S: futures_util::Stream<Item = Result<pb::StreamResponse, A2aError>> + Send,
{
    stream.scan(false, |failed, item| {
        if *failed {
            return futures_util::future::ready(None);
        }
        *failed = item.is_err();
        futures_util::future::ready(Some(item))
    })
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
