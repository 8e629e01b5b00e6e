//! Agents are executors: given a message (and the task it continues), they report
//! [`AgentEvent`]s until they are done. The engine owns tasks, logs and streams; an executor
//! owns only what to answer. Echo and the conformance agent run in-process; [`remote`] runs
//! agents hosted by other services over the contract of `proto/liquid/a2a/v1/executor.proto`.

pub mod echo;
pub mod remote;
pub mod tck;

use async_trait::async_trait;
use liquid_a2a::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::domain::AgentEvent;

/// What an executor is asked to work on.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The caller's tenant.
    pub tenant: String,
    /// The task (new or continued).
    pub task_id: String,
    /// Its context.
    pub context_id: String,
    /// The message that triggered this execution (ids filled in).
    pub message: pb::Message,
    /// The task as it was before this message, for continuations.
    pub previous: Option<pb::Task>,
}

/// An agent's behaviour.
#[async_trait]
pub trait AgentExecutor: Send + Sync + 'static {
    /// Works on `execution`, sending events until done; returns when finished or when `cancel`
    /// fires. Dropping the sender ends the task's event stream.
    async fn execute(
        &self,
        execution: Execution,
        events: mpsc::Sender<AgentEvent>,
        cancel: CancellationToken,
    );
}

/// The text of a message's parts, joined.
pub fn message_text(message: &pb::Message) -> String {
    message
        .parts
        .iter()
        .filter_map(|p| match &p.content {
            Some(pb::part::Content::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

/// A text part.
pub fn text_part(text: &str) -> pb::Part {
    pb::Part {
        content: Some(pb::part::Content::Text(text.to_owned())),
        ..Default::default()
    }
}

/// An agent message with one text part.
pub fn agent_text(text: &str) -> pb::Message {
    pb::Message {
        message_id: uuid::Uuid::now_v7().to_string(),
        role: pb::Role::Agent as i32,
        parts: vec![text_part(text)],
        ..Default::default()
    }
}
