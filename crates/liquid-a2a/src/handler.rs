//! The one request path shared by the three bindings.
//!
//! A binding (JSON-RPC, HTTP+JSON, gRPC) decodes a request into the generated `lf.a2a.v1` type,
//! builds a [`RequestContext`] and calls [`A2aEndpoint`]; the endpoint applies every protocol
//! rule that does not depend on the agent (version negotiation, required extensions, capability
//! gating, required fields, input media types) and then calls the agent's [`A2aHandler`]. So a
//! rule is written once and behaves identically on every binding. This module does no I/O.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;

use crate::error::{A2aError, ErrorTable};
use crate::params::{NegotiatedVersion, ServiceParams};
use crate::pb;

/// A stream of `StreamResponse` events; an `Err` item ends the stream with that error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, A2aError>> + Send>>;

/// The binding a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// JSON-RPC 2.0 over HTTP.
    JsonRpc,
    /// HTTP+JSON (REST).
    HttpJson,
    /// gRPC.
    Grpc,
}

impl Binding {
    /// The `protocolBinding` string of agent-card interfaces.
    pub const fn as_str(self) -> &'static str {
        match self {
            Binding::JsonRpc => "JSONRPC",
            Binding::HttpJson => "HTTP+JSON",
            Binding::Grpc => "GRPC",
        }
    }
}

/// What the endpoint knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Where it came from.
    pub binding: Binding,
    /// `A2A-Version` and `A2A-Extensions`.
    pub params: ServiceParams,
    /// The negotiated version (set by the endpoint before the handler runs).
    pub version: NegotiatedVersion,
    /// The HTTP / gRPC request extensions (verified caller identity from the auth layer, ...).
    pub extensions: http::Extensions,
}

impl RequestContext {
    /// A context for `binding` with `params` and `extensions`.
    pub fn new(binding: Binding, params: ServiceParams, extensions: http::Extensions) -> Self {
        RequestContext {
            binding,
            params,
            version: NegotiatedVersion::Unspecified,
            extensions,
        }
    }
}

/// An agent's implementation of the eleven A2A operations. Protocol rules are already applied
/// when these are called (see [`A2aEndpoint`]); implementations own task semantics.
#[async_trait]
pub trait A2aHandler: Send + Sync + 'static {
    /// SendMessage.
    async fn send_message(
        &self,
        ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError>;
    /// SendStreamingMessage: the first item is the Task or the only Message.
    async fn send_streaming_message(
        &self,
        ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<EventStream, A2aError>;
    /// GetTask.
    async fn get_task(
        &self,
        ctx: &RequestContext,
        request: pb::GetTaskRequest,
    ) -> Result<pb::Task, A2aError>;
    /// ListTasks.
    async fn list_tasks(
        &self,
        ctx: &RequestContext,
        request: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError>;
    /// CancelTask.
    async fn cancel_task(
        &self,
        ctx: &RequestContext,
        request: pb::CancelTaskRequest,
    ) -> Result<pb::Task, A2aError>;
    /// SubscribeToTask: the first item is the Task.
    async fn subscribe_to_task(
        &self,
        ctx: &RequestContext,
        request: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError>;
    /// CreateTaskPushNotificationConfig.
    async fn create_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError>;
    /// GetTaskPushNotificationConfig.
    async fn get_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::GetTaskPushNotificationConfigRequest,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError>;
    /// ListTaskPushNotificationConfigs.
    async fn list_task_push_notification_configs(
        &self,
        ctx: &RequestContext,
        request: pb::ListTaskPushNotificationConfigsRequest,
    ) -> Result<pb::ListTaskPushNotificationConfigsResponse, A2aError>;
    /// DeleteTaskPushNotificationConfig (idempotent).
    async fn delete_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError>;
    /// GetExtendedAgentCard; `ExtendedAgentCardNotConfigured` when there is none.
    async fn get_extended_agent_card(
        &self,
        ctx: &RequestContext,
        request: pb::GetExtendedAgentCardRequest,
    ) -> Result<pb::AgentCard, A2aError>;
}

/// The largest `pageSize` ListTasks accepts (proto comment on `ListTasksRequest.page_size`).
pub const MAX_PAGE_SIZE: i32 = 100;

struct EndpointInner {
    handler: Arc<dyn A2aHandler>,
    card: pb::AgentCard,
    error_table: ErrorTable,
}

/// One agent's A2A endpoint: its public card, its handler and the error table its bindings
/// answer with. Cheap to clone.
#[derive(Clone)]
pub struct A2aEndpoint {
    inner: Arc<EndpointInner>,
}

impl A2aEndpoint {
    /// An endpoint serving `handler` as described by `card`.
    pub fn new(handler: Arc<dyn A2aHandler>, card: pb::AgentCard, error_table: ErrorTable) -> Self {
        A2aEndpoint {
            inner: Arc::new(EndpointInner {
                handler,
                card,
                error_table,
            }),
        }
    }

    /// The public agent card.
    pub fn card(&self) -> &pb::AgentCard {
        &self.inner.card
    }

    /// The error mapping table.
    pub fn error_table(&self) -> ErrorTable {
        self.inner.error_table
    }

    fn capability(&self, pick: impl Fn(&pb::AgentCapabilities) -> Option<bool>) -> bool {
        self.inner
            .card
            .capabilities
            .as_ref()
            .and_then(pick)
            .unwrap_or(false)
    }

    /// Version negotiation and required extensions (§3.6.2, §3.3.4).
    fn admit(&self, ctx: &mut RequestContext) -> Result<(), A2aError> {
        ctx.version = ctx.params.negotiate()?;
        if let Some(caps) = self.inner.card.capabilities.as_ref() {
            for ext in caps.extensions.iter().filter(|e| e.required) {
                if !ctx.params.declares_extension(&ext.uri) {
                    return Err(A2aError::ExtensionSupportRequired {
                        uri: ext.uri.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_send(&self, request: &pb::SendMessageRequest) -> Result<(), A2aError> {
        let Some(message) = request.message.as_ref() else {
            return Err(A2aError::invalid_params("message is required"));
        };
        if message.message_id.is_empty() {
            return Err(A2aError::invalid_params("message.messageId is required"));
        }
        if message.role == pb::Role::Unspecified as i32 {
            return Err(A2aError::invalid_params("message.role is required"));
        }
        if message.parts.is_empty() {
            return Err(A2aError::invalid_params(
                "message.parts must hold at least one part",
            ));
        }
        if message.parts.iter().any(|p| p.content.is_none()) {
            return Err(A2aError::invalid_params(
                "every part needs one of text, raw, url or data",
            ));
        }
        if let Some(config) = request.configuration.as_ref() {
            check_history_length(config.history_length)?;
            if config.task_push_notification_config.is_some()
                && !self.capability(|c| c.push_notifications)
            {
                return Err(A2aError::PushNotificationNotSupported);
            }
        }
        let modes = &self.inner.card.default_input_modes;
        if !modes.is_empty() {
            for part in &message.parts {
                if !part.media_type.is_empty() && !media_type_accepted(&part.media_type, modes) {
                    return Err(A2aError::ContentTypeNotSupported {
                        media_type: part.media_type.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn require_streaming(&self) -> Result<(), A2aError> {
        if self.capability(|c| c.streaming) {
            Ok(())
        } else {
            Err(A2aError::unsupported(
                "streaming is not supported by this agent",
            ))
        }
    }

    fn require_push(&self) -> Result<(), A2aError> {
        if self.capability(|c| c.push_notifications) {
            Ok(())
        } else {
            Err(A2aError::PushNotificationNotSupported)
        }
    }

    /// SendMessage.
    pub async fn send_message(
        &self,
        mut ctx: RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError> {
        self.admit(&mut ctx)?;
        self.check_send(&request)?;
        self.inner.handler.send_message(&ctx, request).await
    }

    /// SendStreamingMessage.
    pub async fn send_streaming_message(
        &self,
        mut ctx: RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        self.admit(&mut ctx)?;
        self.require_streaming()?;
        self.check_send(&request)?;
        self.inner
            .handler
            .send_streaming_message(&ctx, request)
            .await
    }

    /// GetTask.
    pub async fn get_task(
        &self,
        mut ctx: RequestContext,
        request: pb::GetTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        self.admit(&mut ctx)?;
        require_id(&request.id, "id")?;
        check_history_length(request.history_length)?;
        self.inner.handler.get_task(&ctx, request).await
    }

    /// ListTasks.
    pub async fn list_tasks(
        &self,
        mut ctx: RequestContext,
        request: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        self.admit(&mut ctx)?;
        if let Some(size) = request.page_size
            && !(1..=MAX_PAGE_SIZE).contains(&size)
        {
            return Err(A2aError::invalid_params(format!(
                "pageSize must be between 1 and {MAX_PAGE_SIZE} inclusive, got {size}"
            )));
        }
        check_history_length(request.history_length)?;
        if pb::TaskState::try_from(request.status).is_err() {
            return Err(A2aError::invalid_params("status is not a task state"));
        }
        self.inner.handler.list_tasks(&ctx, request).await
    }

    /// CancelTask.
    pub async fn cancel_task(
        &self,
        mut ctx: RequestContext,
        request: pb::CancelTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        self.admit(&mut ctx)?;
        require_id(&request.id, "id")?;
        self.inner.handler.cancel_task(&ctx, request).await
    }

    /// SubscribeToTask.
    pub async fn subscribe_to_task(
        &self,
        mut ctx: RequestContext,
        request: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError> {
        self.admit(&mut ctx)?;
        self.require_streaming()?;
        require_id(&request.id, "id")?;
        self.inner.handler.subscribe_to_task(&ctx, request).await
    }

    /// CreateTaskPushNotificationConfig.
    pub async fn create_task_push_notification_config(
        &self,
        mut ctx: RequestContext,
        request: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        self.admit(&mut ctx)?;
        self.require_push()?;
        require_id(&request.task_id, "taskId")?;
        require_id(&request.url, "url")?;
        self.inner
            .handler
            .create_task_push_notification_config(&ctx, request)
            .await
    }

    /// GetTaskPushNotificationConfig.
    pub async fn get_task_push_notification_config(
        &self,
        mut ctx: RequestContext,
        request: pb::GetTaskPushNotificationConfigRequest,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        self.admit(&mut ctx)?;
        self.require_push()?;
        require_id(&request.task_id, "taskId")?;
        require_id(&request.id, "id")?;
        self.inner
            .handler
            .get_task_push_notification_config(&ctx, request)
            .await
    }

    /// ListTaskPushNotificationConfigs.
    pub async fn list_task_push_notification_configs(
        &self,
        mut ctx: RequestContext,
        request: pb::ListTaskPushNotificationConfigsRequest,
    ) -> Result<pb::ListTaskPushNotificationConfigsResponse, A2aError> {
        self.admit(&mut ctx)?;
        self.require_push()?;
        require_id(&request.task_id, "taskId")?;
        if request.page_size < 0 {
            return Err(A2aError::invalid_params("pageSize must not be negative"));
        }
        self.inner
            .handler
            .list_task_push_notification_configs(&ctx, request)
            .await
    }

    /// DeleteTaskPushNotificationConfig.
    pub async fn delete_task_push_notification_config(
        &self,
        mut ctx: RequestContext,
        request: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError> {
        self.admit(&mut ctx)?;
        self.require_push()?;
        require_id(&request.task_id, "taskId")?;
        require_id(&request.id, "id")?;
        self.inner
            .handler
            .delete_task_push_notification_config(&ctx, request)
            .await
    }

    /// GetExtendedAgentCard.
    pub async fn get_extended_agent_card(
        &self,
        mut ctx: RequestContext,
        request: pb::GetExtendedAgentCardRequest,
    ) -> Result<pb::AgentCard, A2aError> {
        self.admit(&mut ctx)?;
        if !self.capability(|c| c.extended_agent_card) {
            return Err(A2aError::unsupported(
                "this agent has no authenticated extended card",
            ));
        }
        self.inner
            .handler
            .get_extended_agent_card(&ctx, request)
            .await
    }
}

fn require_id(value: &str, field: &str) -> Result<(), A2aError> {
    if value.is_empty() {
        Err(A2aError::invalid_params(format!("{field} is required")))
    } else {
        Ok(())
    }
}

fn check_history_length(length: Option<i32>) -> Result<(), A2aError> {
    match length {
        Some(n) if n < 0 => Err(A2aError::invalid_params(format!(
            "historyLength must be a non-negative integer, got {n}"
        ))),
        _ => Ok(()),
    }
}

/// The JSON of a ListTasks response with the fields the spec requires even when they hold
/// default values (§3.1.4: `nextPageToken` is always present, `""` on the last page), which
/// plain ProtoJSON would omit.
pub fn list_tasks_json(response: &pb::ListTasksResponse) -> serde_json::Value {
    let mut value = serde_json::to_value(response).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.entry("tasks").or_insert_with(|| serde_json::json!([]));
        map.entry("nextPageToken")
            .or_insert_with(|| serde_json::json!(""));
        map.entry("pageSize")
            .or_insert_with(|| serde_json::json!(response.page_size));
        map.entry("totalSize")
            .or_insert_with(|| serde_json::json!(response.total_size));
    }
    value
}

/// Whether `media_type` matches one of `accepted` (exact, `type/*` or `*/*`; parameters and
/// case ignored).
pub fn media_type_accepted(media_type: &str, accepted: &[String]) -> bool {
    let essence = |m: &str| {
        m.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let wanted = essence(media_type);
    let (wanted_type, _) = wanted.split_once('/').unwrap_or((wanted.as_str(), ""));
    accepted.iter().any(|a| {
        let a = essence(a);
        a == "*/*"
            || a == "*"
            || a == wanted
            || a.strip_suffix("/*").is_some_and(|t| t == wanted_type)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn media_type_matching() {
        let accepted = vec!["text/plain".to_owned(), "image/*".to_owned()];
        assert!(media_type_accepted("text/plain; charset=utf-8", &accepted));
        assert!(media_type_accepted("IMAGE/PNG", &accepted));
        assert!(!media_type_accepted("application/pdf", &accepted));
        assert!(media_type_accepted("application/pdf", &["*/*".to_owned()]));
    }
}
