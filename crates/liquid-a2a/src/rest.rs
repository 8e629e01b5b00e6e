//! The HTTP+JSON binding (spec §11) as an axum router.
//!
//! The route table of `A2AService`'s HTTP annotations, with and without a leading `/{tenant}`
//! segment: `POST /message:send`, `POST /message:stream`, `GET /tasks`, `GET /tasks/{id}`,
//! `POST /tasks/{id}:cancel`, `GET|POST /tasks/{id}:subscribe` (the proto says GET, the spec
//! text POST), `POST|GET /tasks/{id}/pushNotificationConfigs`,
//! `GET|DELETE /tasks/{id}/pushNotificationConfigs/{configId}` and `GET /extendedAgentCard`.
//! The custom verbs (`:send`, `:cancel`) do not fit axum's path syntax, so one catch-all handler
//! matches segments itself. Bodies are accepted as `application/json` or `application/a2a+json`;
//! answers are `application/json` (§11.1), or `application/a2a+json` (§14.1) when the request's
//! `Accept` names it; errors are `google.rpc.Status` JSON (§11.6).

use std::convert::Infallible;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::StreamExt;
use http::{HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::A2aError;
use crate::handler::{A2aEndpoint, Binding, EventStream, RequestContext};
use crate::jsonrpc::{MAX_BODY_BYTES, is_json_content_type};
use crate::params::{A2A_JSON, ServiceParams, percent_decode, query_pairs};
use crate::pb;
use crate::timestamp::Timestamp;

/// One operation of the route table with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /message:send`.
    SendMessage,
    /// `POST /message:stream`.
    SendStreamingMessage,
    /// `GET /tasks`.
    ListTasks,
    /// `GET /tasks/{id}`.
    GetTask(String),
    /// `POST /tasks/{id}:cancel`.
    CancelTask(String),
    /// `GET|POST /tasks/{id}:subscribe`.
    SubscribeToTask(String),
    /// `POST /tasks/{id}/pushNotificationConfigs`.
    CreatePushConfig(String),
    /// `GET /tasks/{id}/pushNotificationConfigs`.
    ListPushConfigs(String),
    /// `GET /tasks/{id}/pushNotificationConfigs/{configId}`.
    GetPushConfig(String, String),
    /// `DELETE /tasks/{id}/pushNotificationConfigs/{configId}`.
    DeletePushConfig(String, String),
    /// `GET /extendedAgentCard`.
    ExtendedAgentCard,
}

/// Why a path did not resolve to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    /// No such resource.
    NotFound,
    /// The resource exists but not with this method.
    MethodNotAllowed,
}

fn match_route(method: &Method, segments: &[String]) -> Result<Route, RouteMiss> {
    use RouteMiss::*;
    let only = |allowed: &[Method], route: Route| {
        if allowed.contains(method) {
            Ok(route)
        } else {
            Err(MethodNotAllowed)
        }
    };
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["message:send"] => only(&[Method::POST], Route::SendMessage),
        ["message:stream"] => only(&[Method::POST], Route::SendStreamingMessage),
        ["extendedAgentCard"] => only(&[Method::GET], Route::ExtendedAgentCard),
        ["tasks"] => only(&[Method::GET], Route::ListTasks),
        ["tasks", task] => {
            if let Some(id) = task.strip_suffix(":cancel") {
                only(&[Method::POST], Route::CancelTask(id.to_owned()))
            } else if let Some(id) = task.strip_suffix(":subscribe") {
                only(
                    &[Method::GET, Method::POST],
                    Route::SubscribeToTask(id.to_owned()),
                )
            } else {
                only(&[Method::GET], Route::GetTask((*task).to_owned()))
            }
        }
        ["tasks", task, "pushNotificationConfigs"] => {
            if method == Method::POST {
                Ok(Route::CreatePushConfig((*task).to_owned()))
            } else {
                only(&[Method::GET], Route::ListPushConfigs((*task).to_owned()))
            }
        }
        ["tasks", task, "pushNotificationConfigs", config] => {
            if method == Method::DELETE {
                Ok(Route::DeletePushConfig(
                    (*task).to_owned(),
                    (*config).to_owned(),
                ))
            } else {
                only(
                    &[Method::GET],
                    Route::GetPushConfig((*task).to_owned(), (*config).to_owned()),
                )
            }
        }
        _ => Err(NotFound),
    }
}

/// Resolves a path (below the interface URL) to a route and its tenant (empty when the path has
/// no tenant segment).
pub fn resolve(method: &Method, path: &str) -> Result<(String, Route), RouteMiss> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode_path)
        .collect();
    match match_route(method, &segments) {
        Ok(route) => Ok((String::new(), route)),
        Err(RouteMiss::NotFound) if segments.len() > 1 => {
            match_route(method, &segments[1..]).map(|route| (segments[0].clone(), route))
        }
        Err(miss) => Err(miss),
    }
}

// Path segments decode `%XX` but keep `+` (it is not a space in paths).
fn percent_decode_path(segment: &str) -> String {
    percent_decode(&segment.replace('+', "%2B"))
}

/// The HTTP+JSON router; nest it under the interface URL.
pub fn router(endpoint: A2aEndpoint) -> Router {
    Router::new()
        .route("/", any(handle))
        .route("/{*path}", any(handle))
        .with_state(endpoint)
}

fn a2a_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(A2A_JSON));
            response
        }
        Err(e) => error_response(&A2aError::internal(e), crate::ErrorTable::default()),
    }
}

/// The `google.rpc.Status` JSON error response for `error` under `table`.
pub fn error_response(error: &A2aError, table: crate::ErrorTable) -> Response {
    if matches!(error, A2aError::Internal { .. }) {
        tracing::error!(%error, reason = ?error, "a2a request failed");
    }
    let (status, body) = error.to_http(table);
    a2a_json(status, &body)
}

fn query_error(field: &str, value: &str) -> A2aError {
    A2aError::invalid_params(format!(
        "query parameter {field} has an invalid value: {value}"
    ))
}

fn parse_i32(field: &str, value: &str) -> Result<i32, A2aError> {
    value.parse().map_err(|_| query_error(field, value))
}

fn parse_bool(field: &str, value: &str) -> Result<bool, A2aError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(query_error(field, value)),
    }
}

fn parse_state(value: &str) -> Result<i32, A2aError> {
    if let Some(state) = pb::TaskState::from_str_name(value) {
        return Ok(state as i32);
    }
    match value.parse::<i32>() {
        Ok(n) if pb::TaskState::try_from(n).is_ok() => Ok(n),
        _ => Err(query_error("status", value)),
    }
}

fn list_tasks_query(tenant: String, query: &str) -> Result<pb::ListTasksRequest, A2aError> {
    let mut request = pb::ListTasksRequest {
        tenant,
        ..Default::default()
    };
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "contextId" | "context_id" => request.context_id = value,
            "status" => request.status = parse_state(&value)?,
            "pageSize" | "page_size" => request.page_size = Some(parse_i32(&key, &value)?),
            "pageToken" | "page_token" => request.page_token = value,
            "historyLength" | "history_length" => {
                request.history_length = Some(parse_i32(&key, &value)?)
            }
            "statusTimestampAfter" | "status_timestamp_after" => {
                request.status_timestamp_after =
                    Some(Timestamp::parse(&value).ok_or_else(|| query_error(&key, &value))?)
            }
            "includeArtifacts" | "include_artifacts" => {
                request.include_artifacts = Some(parse_bool(&key, &value)?)
            }
            _ => {}
        }
    }
    Ok(request)
}

async fn read_body<T: DeserializeOwned + Default>(
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, A2aError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| A2aError::InvalidRequest {
            reason: e.to_string(),
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json_content_type(headers.get(header::CONTENT_TYPE)) {
        return Err(A2aError::ContentTypeNotSupported {
            media_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| A2aError::ParseError {
        reason: e.to_string(),
    })
}

/// Whether a request's `Accept` asks for `application/a2a+json` by name.
fn accepts_a2a_json(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(A2A_JSON))
        })
}

async fn handle(State(endpoint): State<A2aEndpoint>, request: Request) -> Response {
    // §11.1 names `application/json` for responses; a client that asks for
    // `application/a2a+json` (§14.1) by name gets that.
    let a2a_json = accepts_a2a_json(request.headers());
    let mut response = handle_request(endpoint, request).await;
    if !a2a_json
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == A2A_JSON)
    {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

async fn handle_request(endpoint: A2aEndpoint, request: Request) -> Response {
    let table = endpoint.error_table();
    let (parts, body) = request.into_parts();
    let (tenant, route) = match resolve(&parts.method, parts.uri.path()) {
        Ok(r) => r,
        Err(RouteMiss::NotFound) => {
            return error_response(
                &A2aError::MethodNotFound {
                    method: format!("{} {}", parts.method, parts.uri.path()),
                },
                table,
            );
        }
        Err(RouteMiss::MethodNotAllowed) => {
            return a2a_json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": {"code": 405, "status": "UNIMPLEMENTED",
                    "message": "method not allowed", "details": []}}),
            );
        }
    };
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let ctx = RequestContext::new(
        Binding::HttpJson,
        ServiceParams::from_http(&parts.headers, Some(&query)),
        parts.extensions,
    );
    let headers = parts.headers;
    let result = async {
        Ok::<Response, A2aError>(match route {
            Route::SendMessage => {
                let mut r: pb::SendMessageRequest = read_body(&headers, body).await?;
                set_tenant(&mut r.tenant, &tenant);
                ok(&endpoint.send_message(ctx, r).await?)
            }
            Route::SendStreamingMessage => {
                let mut r: pb::SendMessageRequest = read_body(&headers, body).await?;
                set_tenant(&mut r.tenant, &tenant);
                sse(endpoint.send_streaming_message(ctx, r).await?, table)
            }
            Route::GetTask(id) => {
                let mut r = pb::GetTaskRequest {
                    tenant,
                    id,
                    history_length: None,
                };
                for (k, v) in query_pairs(&query) {
                    if k == "historyLength" || k == "history_length" {
                        r.history_length = Some(parse_i32(&k, &v)?);
                    }
                }
                ok(&endpoint.get_task(ctx, r).await?)
            }
            Route::ListTasks => ok(&crate::handler::list_tasks_json(
                &endpoint
                    .list_tasks(ctx, list_tasks_query(tenant, &query)?)
                    .await?,
            )),
            Route::CancelTask(id) => {
                let mut r: pb::CancelTaskRequest = read_body(&headers, body).await?;
                r.id = id;
                set_tenant(&mut r.tenant, &tenant);
                ok(&endpoint.cancel_task(ctx, r).await?)
            }
            Route::SubscribeToTask(id) => {
                let mut r: pb::SubscribeToTaskRequest = read_body(&headers, body).await?;
                r.id = id;
                set_tenant(&mut r.tenant, &tenant);
                sse(endpoint.subscribe_to_task(ctx, r).await?, table)
            }
            Route::CreatePushConfig(task_id) => {
                let mut r: pb::TaskPushNotificationConfig = read_body(&headers, body).await?;
                r.task_id = task_id;
                set_tenant(&mut r.tenant, &tenant);
                ok(&endpoint
                    .create_task_push_notification_config(ctx, r)
                    .await?)
            }
            Route::ListPushConfigs(task_id) => {
                let mut r = pb::ListTaskPushNotificationConfigsRequest {
                    tenant,
                    task_id,
                    ..Default::default()
                };
                for (k, v) in query_pairs(&query) {
                    match k.as_str() {
                        "pageSize" | "page_size" => r.page_size = parse_i32(&k, &v)?,
                        "pageToken" | "page_token" => r.page_token = v,
                        _ => {}
                    }
                }
                ok(&endpoint.list_task_push_notification_configs(ctx, r).await?)
            }
            Route::GetPushConfig(task_id, id) => {
                let r = pb::GetTaskPushNotificationConfigRequest {
                    tenant,
                    task_id,
                    id,
                };
                ok(&endpoint.get_task_push_notification_config(ctx, r).await?)
            }
            Route::DeletePushConfig(task_id, id) => {
                let r = pb::DeleteTaskPushNotificationConfigRequest {
                    tenant,
                    task_id,
                    id,
                };
                endpoint
                    .delete_task_push_notification_config(ctx, r)
                    .await?;
                ok(&serde_json::json!({}))
            }
            Route::ExtendedAgentCard => {
                let r = pb::GetExtendedAgentCardRequest { tenant };
                ok(&endpoint.get_extended_agent_card(ctx, r).await?)
            }
        })
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e, table))
}

fn set_tenant(field: &mut String, from_path: &str) {
    if !from_path.is_empty() {
        *field = from_path.to_owned();
    }
}

fn ok<T: Serialize>(value: &T) -> Response {
    a2a_json(StatusCode::OK, value)
}

fn sse(stream: EventStream, table: crate::ErrorTable) -> Response {
    let events = stream.scan(false, move |failed, item| {
        if *failed {
            return futures_util::future::ready(None);
        }
        // An error is sent as `event: error` carrying the HTTP error body, then the stream ends.
        let event = match item {
            Ok(event) => Event::default().data(serde_json::to_string(&event).unwrap_or_default()),
            Err(e) => {
                *failed = true;
                Event::default()
                    .event("error")
                    .data(e.to_http(table).1.to_string())
            }
        };
        futures_util::future::ready(Some(Ok::<_, Infallible>(event)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn r(method: Method, path: &str) -> Result<(String, Route), RouteMiss> {
        resolve(&method, path)
    }

    #[test]
    fn route_table_with_and_without_tenant() {
        assert_eq!(
            r(Method::POST, "/message:send"),
            Ok((String::new(), Route::SendMessage))
        );
        assert_eq!(
            r(Method::POST, "/acme/message:stream"),
            Ok(("acme".into(), Route::SendStreamingMessage))
        );
        assert_eq!(
            r(Method::GET, "/tasks"),
            Ok((String::new(), Route::ListTasks))
        );
        assert_eq!(
            r(Method::GET, "/t1/tasks"),
            Ok(("t1".into(), Route::ListTasks))
        );
        assert_eq!(
            r(Method::GET, "/tasks/abc"),
            Ok((String::new(), Route::GetTask("abc".into())))
        );
        assert_eq!(
            r(Method::POST, "/tasks/abc:cancel"),
            Ok((String::new(), Route::CancelTask("abc".into())))
        );
        for m in [Method::GET, Method::POST] {
            assert_eq!(
                r(m, "/x/tasks/abc:subscribe"),
                Ok(("x".into(), Route::SubscribeToTask("abc".into())))
            );
        }
        assert_eq!(
            r(Method::POST, "/tasks/abc/pushNotificationConfigs"),
            Ok((String::new(), Route::CreatePushConfig("abc".into())))
        );
        assert_eq!(
            r(Method::GET, "/tasks/abc/pushNotificationConfigs"),
            Ok((String::new(), Route::ListPushConfigs("abc".into())))
        );
        assert_eq!(
            r(Method::GET, "/tasks/abc/pushNotificationConfigs/c1"),
            Ok((
                String::new(),
                Route::GetPushConfig("abc".into(), "c1".into())
            ))
        );
        assert_eq!(
            r(Method::DELETE, "/ten/tasks/abc/pushNotificationConfigs/c1"),
            Ok((
                "ten".into(),
                Route::DeletePushConfig("abc".into(), "c1".into())
            ))
        );
        assert_eq!(
            r(Method::GET, "/extendedAgentCard"),
            Ok((String::new(), Route::ExtendedAgentCard))
        );
        assert_eq!(
            r(Method::GET, "/message:send"),
            Err(RouteMiss::MethodNotAllowed)
        );
        assert_eq!(
            r(Method::GET, "/nothing/here/at/all/x"),
            Err(RouteMiss::NotFound)
        );
    }

    #[test]
    fn list_query_parsing() {
        let q = list_tasks_query(
            String::new(),
            "contextId=c1&status=TASK_STATE_WORKING&pageSize=10&includeArtifacts=true\
             &statusTimestampAfter=2025-01-01T00%3A00%3A00Z",
        )
        .unwrap();
        assert_eq!(q.context_id, "c1");
        assert_eq!(q.status, pb::TaskState::Working as i32);
        assert_eq!(q.page_size, Some(10));
        assert_eq!(q.include_artifacts, Some(true));
        assert!(q.status_timestamp_after.is_some());
        assert!(list_tasks_query(String::new(), "status=TASK_STATE_RUNNING").is_err());
    }
}
