//! One hosted agent as an [`A2aHandler`]: the engine does task work, the executor decides the
//! answers, this module maps the eleven operations onto them and scopes everything to the
//! caller's tenant (from the verified token).

use std::sync::Arc;

use async_trait::async_trait;
use liquid_a2a::pb::{self, send_message_response, stream_response::Payload};
use liquid_a2a::{A2aError, A2aHandler, EventStream, RequestContext};
use liquid_auth::Claims;

use crate::agents::AgentExecutor;
use crate::domain::cursor::Cursor;
use crate::domain::state::is_terminal;
use crate::domain::trim_history;
use crate::engine::{Started, TaskEngine};
use crate::push::PushPolicy;

/// An agent served over A2A.
pub struct AgentHost {
    name: String,
    executor: Arc<dyn AgentExecutor>,
    engine: TaskEngine,
    extended_card: Option<pb::AgentCard>,
    push_policy: PushPolicy,
}

impl AgentHost {
    /// Hosts `executor` as agent `name`.
    pub fn new(
        name: &str,
        executor: Arc<dyn AgentExecutor>,
        engine: TaskEngine,
        extended_card: Option<pb::AgentCard>,
        push_policy: PushPolicy,
    ) -> AgentHost {
        AgentHost {
            name: name.to_owned(),
            executor,
            engine,
            extended_card,
            push_policy,
        }
    }
}

/// Scope reading tasks: GetTask, ListTasks, SubscribeToTask, GetExtendedAgentCard.
pub const SCOPE_READ: &str = "a2a:read";
/// Scope changing tasks: SendMessage, SendStreamingMessage, CancelTask and every push config
/// operation.
pub const SCOPE_WRITE: &str = "a2a:write";

/// ListTaskPushNotificationConfigs page size when the request has none.
const DEFAULT_PUSH_PAGE_SIZE: u32 = 50;

/// The caller's tenant (the verified token's tenant, or subject), once the token was found to
/// grant `scope` (wildcards such as `a2a:*` and `admin:*` included).
pub fn tenant(ctx: &RequestContext, scope: &str) -> Result<String, A2aError> {
    let claims = ctx
        .extensions
        .get::<Claims>()
        .ok_or_else(|| A2aError::Unauthenticated {
            reason: "a bearer token is required".into(),
        })?;
    if !claims.has_scope(scope) {
        return Err(A2aError::PermissionDenied {
            reason: format!("the token lacks the scope {scope}"),
        });
    }
    Ok(claims.tenant_id().to_owned())
}

fn trimmed(mut task: pb::Task, history_length: Option<i32>) -> pb::Task {
    trim_history(&mut task, history_length);
    task
}

impl AgentHost {
    async fn store_push_config(
        &self,
        tenant: &str,
        config: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        self.push_policy.check_url(&config.url)?;
        let task_id = config.task_id.clone();
        self.engine.attach_push(tenant, &task_id, config).await
    }

    /// The inline push config of a SendMessage, checked against the URL policy before any
    /// task exists.
    fn inline_push(
        &self,
        config: &mut pb::SendMessageConfiguration,
    ) -> Result<Option<pb::TaskPushNotificationConfig>, A2aError> {
        match config.task_push_notification_config.take() {
            Some(push) => {
                self.push_policy.check_url(&push.url)?;
                Ok(Some(push))
            }
            None => Ok(None),
        }
    }
}

#[async_trait]
impl A2aHandler for AgentHost {
    async fn send_message(
        &self,
        ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        let message = request.message.unwrap_or_default();
        let mut config = request.configuration.unwrap_or_default();
        let push = self.inline_push(&mut config)?;
        let started = self
            .engine
            .start(&tenant, &self.name, self.executor.clone(), message, push)
            .await?;
        let (task, progress) = match started {
            Started::Message(m) => {
                return Ok(pb::SendMessageResponse {
                    payload: Some(send_message_response::Payload::Message(m)),
                });
            }
            Started::Task { task, progress, .. } => (task, progress),
        };
        let task = if config.return_immediately {
            self.engine.load(&tenant, &self.name, &task.id).await?.task
        } else {
            self.engine
                .wait_final_started(&tenant, &self.name, &task.id, progress)
                .await?
        };
        Ok(pb::SendMessageResponse {
            payload: Some(send_message_response::Payload::Task(trimmed(
                task,
                config.history_length,
            ))),
        })
    }

    async fn send_streaming_message(
        &self,
        ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        let message = request.message.unwrap_or_default();
        let mut config = request.configuration.unwrap_or_default();
        let push = self.inline_push(&mut config)?;
        match self
            .engine
            .start(&tenant, &self.name, self.executor.clone(), message, push)
            .await?
        {
            Started::Message(m) => Ok(Box::pin(futures_util::stream::iter([Ok(
                pb::StreamResponse {
                    payload: Some(Payload::Message(m)),
                },
            )]))),
            Started::Task { task, seq, .. } => {
                let id = task.id.clone();
                self.engine
                    .follow_from(&tenant, &self.name, &id, true, Some((task, seq)))
                    .await
            }
        }
    }

    async fn get_task(
        &self,
        ctx: &RequestContext,
        request: pb::GetTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        let tenant = tenant(ctx, SCOPE_READ)?;
        let stored = self.engine.load(&tenant, &self.name, &request.id).await?;
        Ok(trimmed(stored.task, request.history_length))
    }

    async fn list_tasks(
        &self,
        ctx: &RequestContext,
        request: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        let tenant = tenant(ctx, SCOPE_READ)?;
        self.engine.list(&tenant, &self.name, &request).await
    }

    async fn cancel_task(
        &self,
        ctx: &RequestContext,
        request: pb::CancelTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        self.engine.cancel(&tenant, &self.name, &request.id).await
    }

    async fn subscribe_to_task(
        &self,
        ctx: &RequestContext,
        request: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError> {
        let tenant = tenant(ctx, SCOPE_READ)?;
        let stored = self.engine.load(&tenant, &self.name, &request.id).await?;
        if is_terminal(
            stored
                .task
                .status
                .as_ref()
                .map(|s| s.state)
                .unwrap_or_default(),
        ) {
            return Err(A2aError::unsupported(
                "the task is in a terminal state; use GetTask",
            ));
        }
        self.engine
            .follow(&tenant, &self.name, &request.id, false)
            .await
    }

    async fn create_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        self.engine
            .load(&tenant, &self.name, &request.task_id)
            .await?;
        self.store_push_config(&tenant, request).await
    }

    async fn get_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::GetTaskPushNotificationConfigRequest,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        self.engine
            .load(&tenant, &self.name, &request.task_id)
            .await?;
        self.engine
            .store()
            .get_push_config(&tenant, &request.task_id, &request.id)
            .await
            .map_err(A2aError::internal)?
            .ok_or(A2aError::TaskNotFound {
                task_id: request.task_id,
            })
    }

    async fn list_task_push_notification_configs(
        &self,
        ctx: &RequestContext,
        request: pb::ListTaskPushNotificationConfigsRequest,
    ) -> Result<pb::ListTaskPushNotificationConfigsResponse, A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        self.engine
            .load(&tenant, &self.name, &request.task_id)
            .await?;
        let page_size = match request.page_size {
            0 => DEFAULT_PUSH_PAGE_SIZE,
            n => u32::try_from(n).unwrap_or(DEFAULT_PUSH_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                Cursor::decode(&request.page_token)
                    .ok_or_else(|| A2aError::invalid_params("pageToken is not valid"))?,
            )
        };
        let mut page = self
            .engine
            .store()
            .list_push_configs_page(&tenant, &request.task_id, after.as_ref(), page_size + 1)
            .await
            .map_err(A2aError::internal)?;
        let more = page.len() > page_size as usize;
        page.truncate(page_size as usize);
        let next_page_token = if more {
            page.last().map(|(_, c)| c.encode()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTaskPushNotificationConfigsResponse {
            configs: page.into_iter().map(|(c, _)| c).collect(),
            next_page_token,
        })
    }

    async fn delete_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError> {
        let tenant = tenant(ctx, SCOPE_WRITE)?;
        self.engine
            .load(&tenant, &self.name, &request.task_id)
            .await?;
        self.engine
            .store()
            .delete_push_config(&tenant, &request.task_id, &request.id)
            .await
            .map_err(A2aError::internal)?;
        Ok(())
    }

    async fn get_extended_agent_card(
        &self,
        ctx: &RequestContext,
        _request: pb::GetExtendedAgentCardRequest,
    ) -> Result<pb::AgentCard, A2aError> {
        tenant(ctx, SCOPE_READ)?;
        self.extended_card
            .clone()
            .ok_or(A2aError::ExtendedAgentCardNotConfigured)
    }
}
