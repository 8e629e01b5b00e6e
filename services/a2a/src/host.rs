//! One hosted agent as an [`A2aHandler`]: the engine does task work, the executor decides the
//! answers, this module maps the eleven operations onto them and scopes everything to the
//! caller's tenant (from the verified token).

use std::sync::Arc;

use async_trait::async_trait;
use liquid_a2a::pb::{self, send_message_response, stream_response::Payload};
use liquid_a2a::{A2aError, A2aHandler, EventStream, RequestContext};
use liquid_auth::Claims;

use crate::agents::AgentExecutor;
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

/// The caller's tenant: the verified token's tenant (or subject).
pub fn tenant(ctx: &RequestContext) -> Result<String, A2aError> {
    ctx.extensions
        .get::<Claims>()
        .map(|c| c.tenant_id().to_owned())
        .ok_or_else(|| A2aError::Unauthenticated {
            reason: "a bearer token is required".into(),
        })
}

fn trimmed(mut task: pb::Task, history_length: Option<i32>) -> pb::Task {
    trim_history(&mut task, history_length);
    task
}

impl AgentHost {
    async fn store_push_config(
        &self,
        tenant: &str,
        mut config: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        self.push_policy.check_url(&config.url)?;
        if config.id.is_empty() {
            config.id = uuid::Uuid::now_v7().to_string();
        }
        let cap = self.engine.config().push_configs_per_task;
        let stored = self
            .engine
            .store()
            .put_push_config(tenant, &config, cap)
            .await
            .map_err(A2aError::internal)?;
        if !stored {
            return Err(A2aError::invalid_params(format!(
                "a task can have at most {cap} push notification configs"
            )));
        }
        Ok(config)
    }
}

#[async_trait]
impl A2aHandler for AgentHost {
    async fn send_message(
        &self,
        ctx: &RequestContext,
        request: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, A2aError> {
        let tenant = tenant(ctx)?;
        let message = request.message.unwrap_or_default();
        let config = request.configuration.unwrap_or_default();
        let started = self
            .engine
            .start(&tenant, &self.name, self.executor.clone(), message)
            .await?;
        let task = match started {
            Started::Message(m) => {
                return Ok(pb::SendMessageResponse {
                    payload: Some(send_message_response::Payload::Message(m)),
                });
            }
            Started::Task { task, .. } => task,
        };
        if let Some(mut push) = config.task_push_notification_config {
            push.task_id = task.id.clone();
            self.store_push_config(&tenant, push).await?;
        }
        let task = if config.return_immediately {
            self.engine.load(&tenant, &self.name, &task.id).await?.task
        } else {
            self.engine
                .wait_final(&tenant, &self.name, &task.id)
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
        let tenant = tenant(ctx)?;
        let message = request.message.unwrap_or_default();
        let config = request.configuration.unwrap_or_default();
        match self
            .engine
            .start(&tenant, &self.name, self.executor.clone(), message)
            .await?
        {
            Started::Message(m) => Ok(Box::pin(futures_util::stream::iter([Ok(
                pb::StreamResponse {
                    payload: Some(Payload::Message(m)),
                },
            )]))),
            Started::Task { task, .. } => {
                if let Some(mut push) = config.task_push_notification_config {
                    push.task_id = task.id.clone();
                    self.store_push_config(&tenant, push).await?;
                }
                self.engine
                    .follow(&tenant, &self.name, &task.id, true)
                    .await
            }
        }
    }

    async fn get_task(
        &self,
        ctx: &RequestContext,
        request: pb::GetTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        let tenant = tenant(ctx)?;
        let stored = self.engine.load(&tenant, &self.name, &request.id).await?;
        Ok(trimmed(stored.task, request.history_length))
    }

    async fn list_tasks(
        &self,
        ctx: &RequestContext,
        request: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        let tenant = tenant(ctx)?;
        self.engine.list(&tenant, &self.name, &request).await
    }

    async fn cancel_task(
        &self,
        ctx: &RequestContext,
        request: pb::CancelTaskRequest,
    ) -> Result<pb::Task, A2aError> {
        let tenant = tenant(ctx)?;
        self.engine.cancel(&tenant, &self.name, &request.id).await
    }

    async fn subscribe_to_task(
        &self,
        ctx: &RequestContext,
        request: pb::SubscribeToTaskRequest,
    ) -> Result<EventStream, A2aError> {
        let tenant = tenant(ctx)?;
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
        let tenant = tenant(ctx)?;
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
        let tenant = tenant(ctx)?;
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
        let tenant = tenant(ctx)?;
        self.engine
            .load(&tenant, &self.name, &request.task_id)
            .await?;
        let configs = self
            .engine
            .store()
            .list_push_configs(&tenant, &request.task_id)
            .await
            .map_err(A2aError::internal)?;
        Ok(pb::ListTaskPushNotificationConfigsResponse {
            configs,
            next_page_token: String::new(),
        })
    }

    async fn delete_task_push_notification_config(
        &self,
        ctx: &RequestContext,
        request: pb::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2aError> {
        let tenant = tenant(ctx)?;
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
        tenant(ctx)?;
        self.extended_card
            .clone()
            .ok_or(A2aError::ExtendedAgentCardNotConfigured)
    }
}
