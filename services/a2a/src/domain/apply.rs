//! How an agent's events change a task (the snapshot GetTask returns) and the `StreamResponse`
//! each becomes in the task's event log.

use liquid_a2a::pb::{self, stream_response::Payload};
use liquid_a2a::timestamp::Timestamp;

/// What an agent (executor) reports while it works on a message.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A new status, optionally with an agent message (kept in the task's history).
    Status {
        /// The new state.
        state: pb::TaskState,
        /// Message to the client (for example the question of INPUT_REQUIRED).
        message: Option<pb::Message>,
    },
    /// An artifact or a chunk of one.
    Artifact {
        /// The artifact (or chunk).
        artifact: pb::Artifact,
        /// Append the parts to the artifact with the same id instead of replacing it.
        append: bool,
        /// The last chunk of this artifact.
        last_chunk: bool,
    },
    /// A direct reply without a task; only meaningful as the first event of a new message.
    Message(pb::Message),
}

/// Applies `event` to `task` and returns the stream event to log and broadcast. `now` stamps
/// status changes. Agent messages get the task's ids filled in.
pub fn apply_event(task: &mut pb::Task, event: AgentEvent, now: Timestamp) -> pb::StreamResponse {
    match event {
        AgentEvent::Status { state, message } => {
            let message = message.map(|mut m| {
                m.task_id = task.id.clone();
                m.context_id = task.context_id.clone();
                m
            });
            if let Some(m) = &message {
                task.history.push(m.clone());
            }
            let status = pb::TaskStatus {
                state: state as i32,
                message,
                timestamp: Some(now),
            };
            task.status = Some(status.clone());
            pb::StreamResponse {
                payload: Some(Payload::StatusUpdate(pb::TaskStatusUpdateEvent {
                    task_id: task.id.clone(),
                    context_id: task.context_id.clone(),
                    status: Some(status),
                    metadata: None,
                })),
            }
        }
        AgentEvent::Artifact {
            artifact,
            append,
            last_chunk,
        } => {
            match task
                .artifacts
                .iter_mut()
                .find(|a| a.artifact_id == artifact.artifact_id)
            {
                Some(existing) if append => existing.parts.extend(artifact.parts.iter().cloned()),
                Some(existing) => *existing = artifact.clone(),
                None => task.artifacts.push(artifact.clone()),
            }
            pb::StreamResponse {
                payload: Some(Payload::ArtifactUpdate(pb::TaskArtifactUpdateEvent {
                    task_id: task.id.clone(),
                    context_id: task.context_id.clone(),
                    artifact: Some(artifact),
                    append,
                    last_chunk,
                    metadata: None,
                })),
            }
        }
        AgentEvent::Message(mut m) => {
            m.task_id = task.id.clone();
            m.context_id = task.context_id.clone();
            task.history.push(m.clone());
            pb::StreamResponse {
                payload: Some(Payload::Message(m)),
            }
        }
    }
}

/// Applies the `historyLength` rule (§3.2.4): unset keeps all, 0 none, n the n most recent.
pub fn trim_history(task: &mut pb::Task, history_length: Option<i32>) {
    if let Some(n) = history_length {
        let keep = usize::try_from(n.max(0)).unwrap_or(0);
        let len = task.history.len();
        if keep < len {
            task.history.drain(..len - keep);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn task() -> pb::Task {
        pb::Task {
            id: "t".into(),
            context_id: "c".into(),
            status: Some(pb::TaskStatus {
                state: pb::TaskState::Submitted as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn artifact(id: &str, text: &str) -> pb::Artifact {
        pb::Artifact {
            artifact_id: id.into(),
            parts: vec![pb::Part {
                content: Some(pb::part::Content::Text(text.into())),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_updates_set_status_and_record_agent_messages() {
        let mut t = task();
        let now = Timestamp::parse("2026-05-01T00:00:00Z").unwrap();
        let question = pb::Message {
            message_id: "q".into(),
            role: pb::Role::Agent as i32,
            ..Default::default()
        };
        let ev = apply_event(
            &mut t,
            AgentEvent::Status {
                state: pb::TaskState::InputRequired,
                message: Some(question),
            },
            now,
        );
        let status = t.status.as_ref().unwrap();
        assert_eq!(status.state, pb::TaskState::InputRequired as i32);
        assert_eq!(status.timestamp, Some(now));
        assert_eq!(t.history.len(), 1);
        assert_eq!(t.history[0].task_id, "t");
        let Some(Payload::StatusUpdate(u)) = ev.payload else {
            panic!()
        };
        assert_eq!((u.task_id.as_str(), u.context_id.as_str()), ("t", "c"));
    }

    #[test]
    fn artifact_chunks_append_and_full_artifacts_replace() {
        let mut t = task();
        let now = Timestamp::now();
        apply_event(
            &mut t,
            AgentEvent::Artifact {
                artifact: artifact("a", "chunk-1 "),
                append: false,
                last_chunk: false,
            },
            now,
        );
        apply_event(
            &mut t,
            AgentEvent::Artifact {
                artifact: artifact("a", "chunk-2"),
                append: true,
                last_chunk: true,
            },
            now,
        );
        assert_eq!(t.artifacts.len(), 1);
        assert_eq!(t.artifacts[0].parts.len(), 2);
        apply_event(
            &mut t,
            AgentEvent::Artifact {
                artifact: artifact("a", "whole"),
                append: false,
                last_chunk: true,
            },
            now,
        );
        assert_eq!(t.artifacts[0].parts.len(), 1);
        apply_event(
            &mut t,
            AgentEvent::Artifact {
                artifact: artifact("b", "other"),
                append: true,
                last_chunk: true,
            },
            now,
        );
        assert_eq!(t.artifacts.len(), 2);
    }

    #[test]
    fn history_length_semantics() {
        let mut t = task();
        t.history = (0..5)
            .map(|i| pb::Message {
                message_id: i.to_string(),
                ..Default::default()
            })
            .collect();
        let mut all = t.clone();
        trim_history(&mut all, None);
        assert_eq!(all.history.len(), 5);
        let mut two = t.clone();
        trim_history(&mut two, Some(2));
        assert_eq!(
            two.history
                .iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>(),
            ["3", "4"]
        );
        let mut none = t.clone();
        trim_history(&mut none, Some(0));
        assert!(none.history.is_empty());
        let mut more = t;
        trim_history(&mut more, Some(50));
        assert_eq!(more.history.len(), 5);
    }
}
