//! Agents whose execution runs in another service, behind `liquid.a2a.v1.AgentExecutorService`
//! (proto/liquid/a2a/v1/executor.proto). This executor forwards each execution over gRPC and
//! turns the streamed events back into [`AgentEvent`]s; the engine stores and streams them as
//! for any in-process agent. Cancellation drops the call, which cancels it on the executor.
//! A failed call, an undecodable event or a stream that ends before a final state fails the
//! task with a message saying why, so no task is left working forever.

use async_trait::async_trait;
use liquid_a2a::pb;
use liquid_auth::ServiceTokenSource;
use liquid_proto::a2a::v1 as exec;
use liquid_proto::a2a::v1::agent_executor_service_client::AgentExecutorServiceClient;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use super::{AgentEvent, AgentExecutor, Execution, agent_text};
use crate::domain::state::is_final;

/// Adds the a2a service's service token to executor calls, when it has a key.
#[derive(Clone)]
pub struct OutboundAuth(Option<ServiceTokenSource>);

impl OutboundAuth {
    /// Calls carry tokens from `source` (none when `None`).
    pub fn new(source: Option<ServiceTokenSource>) -> OutboundAuth {
        OutboundAuth(source)
    }
}

impl tonic::service::Interceptor for OutboundAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(source) => source.call(request),
            None => Ok(request),
        }
    }
}

/// An agent executed by a remote `AgentExecutorService`.
#[derive(Clone)]
pub struct RemoteExecutor {
    agent: String,
    client: AgentExecutorServiceClient<InterceptedService<Channel, OutboundAuth>>,
}

impl RemoteExecutor {
    /// An executor for agent `agent` at `url` (`http://host:port`); connects on first use.
    pub fn new(agent: &str, url: &str, auth: OutboundAuth) -> Result<RemoteExecutor, String> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect_lazy();
        Ok(RemoteExecutor {
            agent: agent.to_owned(),
            client: AgentExecutorServiceClient::with_interceptor(channel, auth),
        })
    }
}

fn failed(reason: &str) -> AgentEvent {
    AgentEvent::Status {
        state: pb::TaskState::Failed,
        message: Some(agent_text(reason)),
    }
}

/// Decodes one streamed event.
pub fn decode_event(event: exec::ExecutorEvent) -> Result<AgentEvent, String> {
    use exec::executor_event::Event;
    let decode_message = |bytes: &[u8]| pb::Message::decode(bytes).map_err(|e| e.to_string());
    match event.event.ok_or("an executor event without content")? {
        Event::Status(s) => {
            let state = pb::TaskState::try_from(s.state)
                .ok()
                .filter(|s| *s != pb::TaskState::Unspecified)
                .ok_or_else(|| format!("unknown task state {}", s.state))?;
            let message = if s.message.is_empty() {
                None
            } else {
                Some(decode_message(&s.message)?)
            };
            Ok(AgentEvent::Status { state, message })
        }
        Event::Artifact(a) => Ok(AgentEvent::Artifact {
            artifact: pb::Artifact::decode(a.artifact.as_slice()).map_err(|e| e.to_string())?,
            append: a.append,
            last_chunk: a.last_chunk,
        }),
        Event::Message(m) => Ok(AgentEvent::Message(decode_message(&m)?)),
    }
}

/// Encodes an event as an executor sends it (for executors written in Rust, and tests).
pub fn encode_event(event: &AgentEvent) -> exec::ExecutorEvent {
    use exec::executor_event::Event;
    let event = match event {
        AgentEvent::Status { state, message } => Event::Status(exec::StatusUpdate {
            state: *state as i32,
            message: message
                .as_ref()
                .map(|m| m.encode_to_vec())
                .unwrap_or_default(),
        }),
        AgentEvent::Artifact {
            artifact,
            append,
            last_chunk,
        } => Event::Artifact(exec::ArtifactUpdate {
            artifact: artifact.encode_to_vec(),
            append: *append,
            last_chunk: *last_chunk,
        }),
        AgentEvent::Message(m) => Event::Message(m.encode_to_vec()),
    };
    exec::ExecutorEvent { event: Some(event) }
}

#[async_trait]
impl AgentExecutor for RemoteExecutor {
    async fn execute(
        &self,
        execution: Execution,
        events: mpsc::Sender<AgentEvent>,
        cancel: CancellationToken,
    ) {
        let request = exec::ExecuteRequest {
            agent: self.agent.clone(),
            tenant: execution.tenant.clone(),
            task_id: execution.task_id.clone(),
            context_id: execution.context_id.clone(),
            message: execution.message.encode_to_vec(),
            previous_task: execution
                .previous
                .as_ref()
                .map(|t| t.encode_to_vec())
                .unwrap_or_default(),
        };
        let mut client = self.client.clone();
        let call = tokio::select! {
            r = client.execute(request) => r,
            () = cancel.cancelled() => return,
        };
        let mut stream = match call {
            Ok(r) => r.into_inner(),
            Err(status) => {
                warn!(agent = %self.agent, code = ?status.code(), message = status.message(), "remote executor call failed");
                let _ = events
                    .send(failed(&format!(
                        "the agent's executor could not be reached: {}",
                        status.message()
                    )))
                    .await;
                return;
            }
        };
        let mut first = true;
        loop {
            let item = tokio::select! {
                item = stream.message() => item,
                // Dropping the stream cancels the call on the executor.
                () = cancel.cancelled() => return,
            };
            let event = match item {
                Ok(Some(e)) => match decode_event(e) {
                    Ok(e) => e,
                    Err(reason) => {
                        let _ = events
                            .send(failed(&format!(
                                "the agent's executor sent a bad event: {reason}"
                            )))
                            .await;
                        return;
                    }
                },
                Ok(None) => {
                    let _ = events
                        .send(failed("the agent's executor ended before the task did"))
                        .await;
                    return;
                }
                Err(status) => {
                    let _ = events
                        .send(failed(&format!(
                            "the agent's executor failed: {}",
                            status.message()
                        )))
                        .await;
                    return;
                }
            };
            let ends = match &event {
                AgentEvent::Status { state, .. } => is_final(*state as i32),
                AgentEvent::Message(_) => first,
                AgentEvent::Artifact { .. } => false,
            };
            first = false;
            if events.send(event).await.is_err() || ends {
                return;
            }
        }
    }
}
