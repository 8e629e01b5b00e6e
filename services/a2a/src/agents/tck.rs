//! The conformance agent: behaves as the A2A conformance kit (a2aproject/a2a-tck, branch
//! 1.0-dev) expects, driven by a prefix of the message id or of the first text part. Enabled by
//! the `tck` configuration profile; anything without a known prefix is echoed.

use std::time::Duration;

use async_trait::async_trait;
use liquid_a2a::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AgentEvent, AgentExecutor, Execution, agent_text, message_text, text_part};

/// Extension URI the `tck-required-extension` profile marks as required.
pub const REQUIRED_EXTENSION: &str = "urn:a2a:tck:required-extension";

/// What a message asks the conformance agent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// COMPLETED with status message "Hello from TCK".
    CompleteTask,
    /// INPUT_REQUIRED.
    InputRequired,
    /// AUTH_REQUIRED.
    AuthRequired,
    /// REJECTED.
    RejectTask,
    /// A direct Message and no task.
    MessageResponse,
    /// A text artifact.
    ArtifactText,
    /// A raw-bytes file artifact.
    ArtifactFile,
    /// A URL file artifact.
    ArtifactFileUrl,
    /// A data artifact.
    ArtifactData,
    /// Two appended chunks.
    StreamArtifactChunked,
    /// Straight to COMPLETED.
    StreamImmediate,
    /// WORKING, artifact, COMPLETED.
    Stream,
    /// WORKING for at least 4 s, then COMPLETED.
    Resubscribe,
    /// Echo.
    Echo,
}

/// Prefixes in match order (longer, more specific ones first).
const PREFIXES: &[(&str, Scenario)] = &[
    ("tck-complete-task", Scenario::CompleteTask),
    ("tck-input-required", Scenario::InputRequired),
    ("tck-auth-required", Scenario::AuthRequired),
    ("tck-reject-task", Scenario::RejectTask),
    ("tck-message-response", Scenario::MessageResponse),
    ("tck-artifact-text", Scenario::ArtifactText),
    ("tck-artifact-file-url", Scenario::ArtifactFileUrl),
    ("tck-artifact-file", Scenario::ArtifactFile),
    ("tck-artifact-data", Scenario::ArtifactData),
    (
        "tck-stream-artifact-chunked",
        Scenario::StreamArtifactChunked,
    ),
    ("tck-stream-002", Scenario::StreamImmediate),
    ("tck-stream-", Scenario::Stream),
    ("test-resubscribe-message-id", Scenario::Resubscribe),
];

/// The scenario a message selects (message id first, then its first text part).
pub fn scenario(message: &pb::Message) -> Scenario {
    let text = message_text(message);
    for candidate in [message.message_id.as_str(), text.trim()] {
        if let Some((_, s)) = PREFIXES.iter().find(|(p, _)| candidate.starts_with(p)) {
            return *s;
        }
    }
    Scenario::Echo
}

/// The conformance agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TckAgent;

fn artifact(name: &str, part: pb::Part) -> pb::Artifact {
    pb::Artifact {
        artifact_id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        parts: vec![part],
        ..Default::default()
    }
}

fn status(state: pb::TaskState, text: Option<&str>) -> AgentEvent {
    AgentEvent::Status {
        state,
        message: text.map(agent_text),
    }
}

fn whole(artifact: pb::Artifact) -> AgentEvent {
    AgentEvent::Artifact {
        artifact,
        append: false,
        last_chunk: true,
    }
}

/// The events of a scenario, in order, with a pause before the final one for `Resubscribe`.
pub fn script(scenario: Scenario, message: &pb::Message) -> (Vec<AgentEvent>, Option<Duration>) {
    use pb::TaskState::*;
    let done = status(Completed, None);
    let events = match scenario {
        Scenario::CompleteTask => vec![status(Completed, Some("Hello from TCK"))],
        Scenario::InputRequired => vec![status(InputRequired, Some("Input required by TCK"))],
        Scenario::AuthRequired => {
            vec![status(AuthRequired, Some("Authentication required by TCK"))]
        }
        Scenario::RejectTask => vec![status(Rejected, Some("Task rejected by TCK"))],
        Scenario::MessageResponse => {
            vec![AgentEvent::Message(agent_text("Direct message response"))]
        }
        Scenario::ArtifactText => vec![
            whole(artifact("text", text_part("Generated text content"))),
            done,
        ],
        Scenario::ArtifactFile => vec![
            whole(artifact(
                "file",
                pb::Part {
                    content: Some(pb::part::Content::Raw(b"tck".to_vec())),
                    filename: "output.txt".into(),
                    media_type: "text/plain".into(),
                    ..Default::default()
                },
            )),
            done,
        ],
        Scenario::ArtifactFileUrl => vec![
            whole(artifact(
                "file-url",
                pb::Part {
                    content: Some(pb::part::Content::Url(
                        "https://example.com/output.txt".into(),
                    )),
                    filename: "output.txt".into(),
                    media_type: "text/plain".into(),
                    ..Default::default()
                },
            )),
            done,
        ],
        Scenario::ArtifactData => {
            let data = serde_json::json!({"key": "value", "count": 42});
            let value: pbjson_types::Value = serde_json::from_value(data).unwrap_or_default();
            vec![
                whole(artifact(
                    "data",
                    pb::Part {
                        content: Some(pb::part::Content::Data(value)),
                        media_type: "application/json".into(),
                        ..Default::default()
                    },
                )),
                done,
            ]
        }
        Scenario::StreamArtifactChunked => {
            let id = uuid::Uuid::now_v7().to_string();
            let chunk = |text: &str| pb::Artifact {
                artifact_id: id.clone(),
                name: "chunked".into(),
                parts: vec![text_part(text)],
                ..Default::default()
            };
            vec![
                status(Working, None),
                AgentEvent::Artifact {
                    artifact: chunk("chunk-1 "),
                    append: false,
                    last_chunk: false,
                },
                AgentEvent::Artifact {
                    artifact: chunk("chunk-2"),
                    append: true,
                    last_chunk: true,
                },
                done,
            ]
        }
        Scenario::StreamImmediate => vec![done],
        Scenario::Stream => vec![
            status(Working, None),
            whole(artifact("stream", text_part("Streaming content from TCK"))),
            done,
        ],
        Scenario::Resubscribe => {
            return (
                vec![status(Working, None), done],
                Some(Duration::from_secs(4)),
            );
        }
        Scenario::Echo => vec![
            whole(artifact("echo", text_part(&message_text(message)))),
            done,
        ],
    };
    (events, None)
}

#[async_trait]
impl AgentExecutor for TckAgent {
    async fn execute(
        &self,
        execution: Execution,
        events: mpsc::Sender<AgentEvent>,
        cancel: CancellationToken,
    ) {
        let (script, pause) = script(scenario(&execution.message), &execution.message);
        let last = script.len().saturating_sub(1);
        for (i, event) in script.into_iter().enumerate() {
            if i == last
                && let Some(pause) = pause
            {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = cancel.cancelled() => return,
                }
            }
            if cancel.is_cancelled() || events.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn msg(id: &str, text: &str) -> pb::Message {
        pb::Message {
            message_id: id.into(),
            parts: vec![text_part(text)],
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_select_scenarios() {
        assert_eq!(
            scenario(&msg("tck-complete-task-1", "x")),
            Scenario::CompleteTask
        );
        assert_eq!(
            scenario(&msg("m", "tck-input-required please")),
            Scenario::InputRequired
        );
        assert_eq!(
            scenario(&msg("tck-artifact-file-url-9", "")),
            Scenario::ArtifactFileUrl
        );
        assert_eq!(
            scenario(&msg("tck-artifact-file-9", "")),
            Scenario::ArtifactFile
        );
        assert_eq!(
            scenario(&msg("tck-stream-002", "")),
            Scenario::StreamImmediate
        );
        assert_eq!(
            scenario(&msg("tck-stream-artifact-chunked-1", "")),
            Scenario::StreamArtifactChunked
        );
        assert_eq!(scenario(&msg("tck-stream-001", "")), Scenario::Stream);
        assert_eq!(
            scenario(&msg("test-resubscribe-message-id", "")),
            Scenario::Resubscribe
        );
        assert_eq!(scenario(&msg("m", "hello")), Scenario::Echo);
    }

    #[test]
    fn chunked_stream_appends_the_second_chunk() {
        let (events, _) = script(Scenario::StreamArtifactChunked, &msg("m", ""));
        let chunks: Vec<(bool, bool)> = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Artifact {
                    append, last_chunk, ..
                } => Some((*append, *last_chunk)),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, [(false, false), (true, true)]);
    }
}
