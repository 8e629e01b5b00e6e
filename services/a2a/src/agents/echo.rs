//! The echo agent: completes every task with an artifact repeating the user's text. The
//! platform's default agent until real agents are hosted.

use async_trait::async_trait;
use liquid_a2a::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AgentEvent, AgentExecutor, Execution, message_text, text_part};

/// Echoes the message text back as an artifact.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent;

#[async_trait]
impl AgentExecutor for EchoAgent {
    async fn execute(
        &self,
        execution: Execution,
        events: mpsc::Sender<AgentEvent>,
        _cancel: CancellationToken,
    ) {
        let text = message_text(&execution.message);
        let artifact = pb::Artifact {
            artifact_id: uuid::Uuid::now_v7().to_string(),
            name: "echo".into(),
            parts: vec![text_part(&text)],
            ..Default::default()
        };
        let _ = events
            .send(AgentEvent::Artifact {
                artifact,
                append: false,
                last_chunk: true,
            })
            .await;
        let _ = events
            .send(AgentEvent::Status {
                state: pb::TaskState::Completed,
                message: None,
            })
            .await;
    }
}
