//! The JSON-RPC 2.0 binding (spec §9) as an axum handler.
//!
//! One POST handler serves every method at the interface URL; the two streaming methods answer
//! with Server-Sent Events whose `data` lines are JSON-RPC responses carrying a
//! `StreamResponse`. The Content-Type is checked before the body is read (a non-JSON type is
//! answered with -32005), then the envelope, then the method's params (ProtoJSON).

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::A2aError;
use crate::handler::{A2aEndpoint, Binding, EventStream, RequestContext};
use crate::params::ServiceParams;
use crate::pb;

/// Largest JSON-RPC request body read (bytes).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// JSON-RPC method names (spec §5.3).
pub mod methods {
    /// SendMessage.
    pub const SEND_MESSAGE: &str = "SendMessage";
    /// SendStreamingMessage.
    pub const SEND_STREAMING_MESSAGE: &str = "SendStreamingMessage";
    /// GetTask.
    pub const GET_TASK: &str = "GetTask";
    /// ListTasks.
    pub const LIST_TASKS: &str = "ListTasks";
    /// CancelTask.
    pub const CANCEL_TASK: &str = "CancelTask";
    /// SubscribeToTask.
    pub const SUBSCRIBE_TO_TASK: &str = "SubscribeToTask";
    /// CreateTaskPushNotificationConfig.
    pub const CREATE_PUSH_CONFIG: &str = "CreateTaskPushNotificationConfig";
    /// GetTaskPushNotificationConfig.
    pub const GET_PUSH_CONFIG: &str = "GetTaskPushNotificationConfig";
    /// ListTaskPushNotificationConfigs.
    pub const LIST_PUSH_CONFIGS: &str = "ListTaskPushNotificationConfigs";
    /// DeleteTaskPushNotificationConfig.
    pub const DELETE_PUSH_CONFIG: &str = "DeleteTaskPushNotificationConfig";
    /// GetExtendedAgentCard.
    pub const GET_EXTENDED_CARD: &str = "GetExtendedAgentCard";
}

/// The POST handler for an interface URL; mount it on every path the interface answers on.
pub fn method_router(endpoint: A2aEndpoint) -> MethodRouter {
    post(handle).with_state(endpoint)
}

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a T,
}

#[derive(Serialize)]
struct Failure<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: Value,
}

/// Serialises a JSON-RPC success response.
pub fn success_body<T: Serialize>(id: &Value, result: &T) -> Vec<u8> {
    let body = Success {
        jsonrpc: "2.0",
        id,
        result,
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| failure_body(id, &A2aError::internal("encode")))
}

/// Serialises a JSON-RPC error response.
pub fn failure_body(id: &Value, error: &A2aError) -> Vec<u8> {
    let body = Failure {
        jsonrpc: "2.0",
        id,
        error: error.to_jsonrpc(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn json_response(body: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(id: &Value, error: &A2aError) -> Response {
    if matches!(error, A2aError::Internal { .. }) {
        tracing::error!(%error, reason = ?error, "a2a request failed");
    }
    json_response(failure_body(id, error))
}

/// Whether a Content-Type header names JSON (`application/json`, `application/a2a+json` or any
/// `+json` type).
pub fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn params<T: DeserializeOwned + Default>(params: Option<Value>) -> Result<T, A2aError> {
    match params {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v @ Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| A2aError::invalid_params(e.to_string()))
        }
        Some(_) => Err(A2aError::invalid_params("params must be an object")),
    }
}

async fn handle(State(endpoint): State<A2aEndpoint>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !is_json_content_type(parts.headers.get(header::CONTENT_TYPE)) {
        let media_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        return failure(
            &Value::Null,
            &A2aError::ContentTypeNotSupported { media_type },
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return failure(
                &Value::Null,
                &A2aError::InvalidRequest {
                    reason: e.to_string(),
                },
            );
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return failure(
                &Value::Null,
                &A2aError::ParseError {
                    reason: e.to_string(),
                },
            );
        }
    };
    let Value::Object(mut envelope) = value else {
        return failure(
            &Value::Null,
            &A2aError::InvalidRequest {
                reason: "the request must be a JSON object".into(),
            },
        );
    };
    let id = envelope.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::String(_) | Value::Number(_) | Value::Null) {
        return failure(
            &Value::Null,
            &A2aError::InvalidRequest {
                reason: "id must be a string, a number or null".into(),
            },
        );
    }
    if envelope.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return failure(
            &id,
            &A2aError::InvalidRequest {
                reason: "jsonrpc must be \"2.0\"".into(),
            },
        );
    }
    let Some(Value::String(method)) = envelope.remove("method") else {
        return failure(
            &id,
            &A2aError::InvalidRequest {
                reason: "method must be a string".into(),
            },
        );
    };
    let raw_params = envelope.remove("params");
    let ctx = RequestContext::new(
        Binding::JsonRpc,
        ServiceParams::from_http(&parts.headers, parts.uri.query()),
        parts.extensions,
    );
    dispatch(&endpoint, ctx, &id, &method, raw_params).await
}

macro_rules! unary {
    ($endpoint:expr, $ctx:expr, $id:expr, $params:expr, $call:ident) => {
        match params($params) {
            Ok(p) => match $endpoint.$call($ctx, p).await {
                Ok(result) => json_response(success_body($id, &result)),
                Err(e) => failure($id, &e),
            },
            Err(e) => failure($id, &e),
        }
    };
}

async fn dispatch(
    endpoint: &A2aEndpoint,
    ctx: RequestContext,
    id: &Value,
    method: &str,
    raw: Option<Value>,
) -> Response {
    use methods::*;
    match method {
        SEND_MESSAGE => unary!(endpoint, ctx, id, raw, send_message),
        GET_TASK => unary!(endpoint, ctx, id, raw, get_task),
        LIST_TASKS => match params(raw) {
            Ok(p) => match endpoint.list_tasks(ctx, p).await {
                Ok(result) => {
                    json_response(success_body(id, &crate::handler::list_tasks_json(&result)))
                }
                Err(e) => failure(id, &e),
            },
            Err(e) => failure(id, &e),
        },
        CANCEL_TASK => unary!(endpoint, ctx, id, raw, cancel_task),
        CREATE_PUSH_CONFIG => unary!(endpoint, ctx, id, raw, create_task_push_notification_config),
        GET_PUSH_CONFIG => unary!(endpoint, ctx, id, raw, get_task_push_notification_config),
        LIST_PUSH_CONFIGS => unary!(endpoint, ctx, id, raw, list_task_push_notification_configs),
        GET_EXTENDED_CARD => unary!(endpoint, ctx, id, raw, get_extended_agent_card),
        DELETE_PUSH_CONFIG => match params::<pb::DeleteTaskPushNotificationConfigRequest>(raw) {
            Ok(p) => match endpoint.delete_task_push_notification_config(ctx, p).await {
                Ok(()) => json_response(success_body(id, &Value::Null)),
                Err(e) => failure(id, &e),
            },
            Err(e) => failure(id, &e),
        },
        SEND_STREAMING_MESSAGE => match params(raw) {
            Ok(p) => match endpoint.send_streaming_message(ctx, p).await {
                Ok(stream) => sse(id.clone(), stream),
                Err(e) => failure(id, &e),
            },
            Err(e) => failure(id, &e),
        },
        SUBSCRIBE_TO_TASK => match params(raw) {
            Ok(p) => match endpoint.subscribe_to_task(ctx, p).await {
                Ok(stream) => sse(id.clone(), stream),
                Err(e) => failure(id, &e),
            },
            Err(e) => failure(id, &e),
        },
        other => failure(
            id,
            &A2aError::MethodNotFound {
                method: other.to_owned(),
            },
        ),
    }
}

fn sse(id: Value, stream: EventStream) -> Response {
    // After an error item the stream ends: the error is the last event the client sees.
    let events = stream
        .scan(false, move |failed, item| {
            if *failed {
                return futures_util::future::ready(None);
            }
            let body = match item {
                Ok(event) => success_body(&id, &event),
                Err(e) => {
                    *failed = true;
                    failure_body(&id, &e)
                }
            };
            futures_util::future::ready(Some(body))
        })
        .map(|body| Ok::<_, Infallible>(Event::default().data(String::from_utf8_lossy(&body))));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
