//! Running a step on a remote A2A agent.
//!
//! The step's title and instructions go out as a text part, its key, domain, file scopes and
//! expected artifacts as a data part (`{"cowork": {...}}`). With a card that offers streaming
//! the step follows SendStreamingMessage; otherwise it sends SendMessage (`returnImmediately`)
//! and polls GetTask every `a2a.poll_interval_ms`. Task states and artifact updates become
//! `subtask:progress` events (`kind = "a2a"`). When the task completes, GetTask gives the
//! final artifacts, and each part is mapped back:
//!
//! - a part with a `filename` carrying bytes or text is a file the agent wrote: it is written
//!   at that workspace-relative path through the permission pipeline into the session's
//!   staging sandbox (never straight to the source);
//! - a data part `{"path": "...", "content": "..."}` writes text the same way, and
//!   `{"path": "...", "delete": true}` deletes;
//! - every other part is kept as a step artifact (`kind = "a2a"`; a URL is kept as text, not
//!   fetched).
//!
//! Then, as for the built-in agent, the patch of what changed and a log are kept. A task that
//! fails, is rejected or canceled, or asks for input (which a delegated step cannot give) fails
//! the step with the agent's words; a change the pipeline refuses fails it with the refusal.
//! Cancelling the step (or its timeout) sends CancelTask for the remote task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use liquid_a2a::client::{A2aClient, event_state, is_final_state};
use liquid_a2a::pb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::directory::RemoteAgent;
use crate::config::A2aBridgeSection;
use crate::domain::plan::PlanStep;
use crate::error::CoworkError;
use crate::events::EventKind;
use crate::executor::{StepResult, changes_since, snapshot};
use crate::permission::AgentContext;
use crate::sandbox::Caller;
use crate::sessions::CoworkSessions;
use crate::store::sessions::AgentRow;

/// The text of a message's text parts.
pub fn message_text(message: Option<&pb::Message>) -> String {
    message
        .map(|m| {
            m.parts
                .iter()
                .filter_map(|p| match &p.content {
                    Some(pb::part::Content::Text(t)) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The name of a task state (`TASK_STATE_WORKING`).
pub fn state_name(state: i32) -> &'static str {
    pb::TaskState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("TASK_STATE_UNSPECIFIED")
}

/// A JSON value as an A2A data part value.
pub fn data_value(value: Value) -> Option<pbjson_types::Value> {
    serde_json::from_value(value).ok()
}

/// What one returned part means for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartEffect {
    /// Write these bytes at this workspace-relative path.
    Write(String, Vec<u8>),
    /// Delete this path.
    Delete(String),
    /// Keep as an artifact: media type and content.
    Keep(String, Vec<u8>),
}

/// Classifies one part; see the module documentation.
pub fn part_effect(part: &pb::Part) -> PartEffect {
    use pb::part::Content;
    let media = |default: &str| {
        if part.media_type.is_empty() {
            default.to_owned()
        } else {
            part.media_type.clone()
        }
    };
    match &part.content {
        Some(Content::Raw(bytes)) if !part.filename.is_empty() => {
            PartEffect::Write(part.filename.clone(), bytes.clone())
        }
        Some(Content::Text(text)) if !part.filename.is_empty() => {
            PartEffect::Write(part.filename.clone(), text.as_bytes().to_vec())
        }
        Some(Content::Data(value)) => {
            let json = serde_json::to_value(value).unwrap_or(Value::Null);
            match (&json["path"], &json["content"], &json["delete"]) {
                (Value::String(path), Value::String(content), _) => {
                    PartEffect::Write(path.clone(), content.as_bytes().to_vec())
                }
                (Value::String(path), _, Value::Bool(true)) => PartEffect::Delete(path.clone()),
                _ => PartEffect::Keep(
                    media("application/json"),
                    serde_json::to_vec_pretty(&json).unwrap_or_default(),
                ),
            }
        }
        Some(Content::Text(text)) => PartEffect::Keep(media("text/plain"), text.as_bytes().into()),
        Some(Content::Raw(bytes)) => {
            PartEffect::Keep(media("application/octet-stream"), bytes.clone())
        }
        Some(Content::Url(url)) => PartEffect::Keep("text/uri-list".into(), url.as_bytes().into()),
        None => PartEffect::Keep("text/plain".into(), Vec::new()),
    }
}

/// Cancels the remote task when dropped while armed: a cancelled or timed-out step does not
/// leave its remote task running.
struct CancelOnDrop {
    client: A2aClient,
    tenant: String,
    task_id: Arc<Mutex<Option<String>>>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let id = self.task_id.lock().ok().and_then(|id| id.clone());
        let (Some(id), true, Ok(handle)) = (id, self.armed, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (client, tenant) = (self.client.clone(), self.tenant.clone());
        let span = tracing::info_span!("cowork-a2a-cancel", task = %id);
        handle.spawn(tracing::Instrument::instrument(
            async move {
                let request = pb::CancelTaskRequest {
                    tenant,
                    id: id.clone(),
                    metadata: None,
                };
                if let Err(error) = client.cancel_task(request).await {
                    tracing::warn!(%error, task = %id, "cancelling a delegated step's remote task failed");
                }
            },
            span,
        ));
    }
}

/// How the remote exchange ended.
enum Outcome {
    /// A task in a final (terminal or interrupted) state.
    Task(pb::Task),
    /// A direct reply without a task.
    Message(pb::Message),
}

fn remote_error(agent: &str, e: liquid_a2a::A2aError) -> CoworkError {
    CoworkError::FailedPrecondition(format!("remote agent {agent}: {e}"))
}

impl CoworkSessions {
    /// Runs `agent`'s step on `remote`; see the module documentation.
    pub(crate) async fn run_delegated(
        &self,
        agent: &AgentRow,
        sandbox_id: Uuid,
        plan_step: &PlanStep,
        remote: RemoteAgent,
        skill: &str,
        cancel: &CancellationToken,
    ) -> Result<StepResult, CoworkError> {
        let inner = &self.inner;
        let section = &inner.settings.a2a;
        let name = remote.card.name.clone();
        let runner = format!("a2a:{name}");
        let caller = Caller {
            tenant: agent.tenant.clone(),
            actor: format!("agent:{}", agent.agent_id),
        };
        let before = snapshot(&inner.sandboxes.diff(&caller, sandbox_id).await?);
        let log = Mutex::new(format!(
            "step {} \"{}\" attempt {} delegated to A2A agent {name} ({}) for skill {skill}\n",
            plan_step.id, plan_step.title, agent.attempt, remote.url
        ));
        let agent_name = name.as_str();
        let progress = |data: Value| async move {
            let mut d = json!({"step_id": agent.step_id, "agent_id": agent.agent_id, "kind": "a2a", "agent": agent_name});
            if let (Value::Object(d), Value::Object(m)) = (&mut d, data) {
                d.extend(m);
            }
            inner
                .events
                .emit(
                    &agent.tenant,
                    agent.session_id,
                    EventKind::SubtaskProgress,
                    d,
                )
                .await;
        };
        let (client, tenant) = remote
            .client(section.token.expose())
            .map_err(|e| CoworkError::ExecutorUnavailable(format!("remote agent {name}: {e}")))?;
        progress(json!({"event": "delegated", "url": remote.url, "skill": skill, "streaming": remote.streams()})).await;

        let mut data = json!({"cowork": {
            "session_id": agent.session_id, "step": plan_step.id, "domain": agent.domain,
            "file_scopes": plan_step.file_scopes, "expected_artifacts": plan_step.expected_artifacts,
        }});
        let data = data_value(data.take());
        let mut parts = vec![pb::Part {
            content: Some(pb::part::Content::Text(format!(
                "{}\n\n{}",
                plan_step.title, plan_step.instructions
            ))),
            ..Default::default()
        }];
        if let Some(d) = data {
            parts.push(pb::Part {
                content: Some(pb::part::Content::Data(d)),
                media_type: "application/json".into(),
                ..Default::default()
            });
        }
        let request = pb::SendMessageRequest {
            tenant: tenant.clone(),
            message: Some(pb::Message {
                // One message per attempt: a retry is a new task, never a replay of the old one.
                message_id: format!("cowork-agent-{}", agent.agent_id),
                role: pb::Role::User as i32,
                parts,
                ..Default::default()
            }),
            configuration: Some(pb::SendMessageConfiguration {
                return_immediately: !remote.streams(),
                ..Default::default()
            }),
            metadata: None,
        };
        let task_id = Arc::new(Mutex::new(None::<String>));
        let mut guard = CancelOnDrop {
            client: client.clone(),
            tenant: tenant.clone(),
            task_id: task_id.clone(),
            armed: true,
        };
        let set_id = |id: &str| {
            if let Ok(mut t) = task_id.lock()
                && t.is_none()
                && !id.is_empty()
            {
                *t = Some(id.to_owned());
            }
        };
        // The remote task's id is the agent's claim while it runs, so the replica that declares
        // this agent dead (this one after a crash, or another) cancels it (see
        // [`cancel_remote`]) instead of leaving it working for nobody.
        let remembered = std::sync::atomic::AtomicBool::new(false);
        let (remembered, remote_url) = (&remembered, remote.url.as_str());
        let remember = move |id: Option<String>| async move {
            let Some(id) = id else { return };
            if remembered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let claim = remote_claim(remote_url, &id);
            if let Err(error) = inner
                .store
                .set_agent_claim(agent.agent_id, Some(&claim), None)
                .await
            {
                tracing::warn!(%error, task = %id, "the remote task could not be recorded as the agent's claim");
            }
        };
        let poll = Duration::from_millis(section.poll_interval_ms);
        let exchange = async {
            let mut last_state = None;
            if remote.streams() {
                let mut stream = client
                    .send_streaming_message(request)
                    .await
                    .map_err(|e| remote_error(&name, e))?;
                while let Some(event) = stream.next().await {
                    let event = event.map_err(|e| remote_error(&name, e))?;
                    use pb::stream_response::Payload;
                    match &event.payload {
                        Some(Payload::Message(m)) => {
                            return Ok::<Outcome, CoworkError>(Outcome::Message(m.clone()));
                        }
                        Some(Payload::Task(t)) => set_id(&t.id),
                        Some(Payload::StatusUpdate(u)) => {
                            set_id(&u.task_id);
                            let text =
                                message_text(u.status.as_ref().and_then(|s| s.message.as_ref()));
                            if !text.is_empty() {
                                progress(json!({"event": "message", "text": text})).await;
                            }
                        }
                        Some(Payload::ArtifactUpdate(a)) => {
                            set_id(&a.task_id);
                            let artifact = a
                                .artifact
                                .as_ref()
                                .map(|a| a.name.clone())
                                .unwrap_or_default();
                            progress(json!({"event": "artifact", "name": artifact})).await;
                        }
                        None => {}
                    }
                    if let Some(state) = event_state(&event)
                        && last_state != Some(state)
                    {
                        last_state = Some(state);
                        if let Ok(mut l) = log.lock() {
                            l.push_str(&format!("remote state {}\n", state_name(state)));
                        }
                        let id = task_id.lock().ok().and_then(|t| t.clone());
                        remember(id.clone()).await;
                        progress(
                            json!({"event": "state", "state": state_name(state), "task_id": id}),
                        )
                        .await;
                        if is_final_state(state) {
                            break;
                        }
                    }
                }
            } else {
                match client
                    .send_message(request)
                    .await
                    .map_err(|e| remote_error(&name, e))?
                    .payload
                {
                    Some(pb::send_message_response::Payload::Message(m)) => {
                        return Ok(Outcome::Message(m));
                    }
                    Some(pb::send_message_response::Payload::Task(t)) => set_id(&t.id),
                    None => {}
                }
            }
            let id = task_id.lock().ok().and_then(|t| t.clone()).ok_or_else(|| {
                CoworkError::FailedPrecondition(format!(
                    "remote agent {name} answered without a task or a message"
                ))
            })?;
            remember(Some(id.clone())).await;
            // The final task (the stream's last word, or polling until there is one).
            loop {
                let task = client
                    .get_task(pb::GetTaskRequest {
                        tenant: tenant.clone(),
                        id: id.clone(),
                        history_length: Some(0),
                    })
                    .await
                    .map_err(|e| remote_error(&name, e))?;
                let state = task.status.as_ref().map(|s| s.state).unwrap_or_default();
                if last_state != Some(state) {
                    last_state = Some(state);
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&format!("remote state {}\n", state_name(state)));
                    }
                    progress(json!({"event": "state", "state": state_name(state), "task_id": id}))
                        .await;
                }
                if is_final_state(state) {
                    return Ok(Outcome::Task(task));
                }
                tokio::time::sleep(poll).await;
            }
        };
        let outcome = tokio::select! {
            o = exchange => o?,
            () = cancel.cancelled() => {
                return Err(CoworkError::Cancelled(
                    "the step was cancelled (the remote task is cancelled too)".into(),
                ));
            }
        };
        let (artifacts_in, summary) = match outcome {
            Outcome::Message(m) => {
                guard.armed = false;
                let summary = message_text(Some(&m));
                let artifact = pb::Artifact {
                    artifact_id: m.message_id.clone(),
                    name: "reply".into(),
                    parts: m.parts,
                    ..Default::default()
                };
                (vec![artifact], summary)
            }
            Outcome::Task(task) => {
                let state = task.status.as_ref().map(|s| s.state).unwrap_or_default();
                let text = message_text(task.status.as_ref().and_then(|s| s.message.as_ref()));
                use pb::TaskState;
                match TaskState::try_from(state) {
                    Ok(TaskState::Completed) => {
                        guard.armed = false;
                        let summary = if text.is_empty() {
                            format!("remote agent {name} completed task {}", task.id)
                        } else {
                            text
                        };
                        (task.artifacts, summary)
                    }
                    Ok(TaskState::InputRequired | TaskState::AuthRequired) => {
                        // The guard cancels the interrupted task.
                        return Err(CoworkError::FailedPrecondition(format!(
                            "remote agent {name} asked for input, which a delegated step cannot give ({}): {text}",
                            state_name(state)
                        )));
                    }
                    _ => {
                        guard.armed = false;
                        return Err(CoworkError::FailedPrecondition(format!(
                            "remote agent {name} task {} ended {}: {}",
                            task.id,
                            state_name(state),
                            if text.is_empty() {
                                "no reason given"
                            } else {
                                &text
                            }
                        )));
                    }
                }
            }
        };
        drop(guard);

        // Map the artifacts back: file changes through the pipeline, the rest kept.
        let ctx = AgentContext {
            tenant: agent.tenant.clone(),
            session_id: agent.session_id,
            agent: agent.domain.clone(),
        };
        let mut artifacts = Vec::new();
        let mut log = log.into_inner().unwrap_or_default();
        for a in &artifacts_in {
            let name = if a.name.is_empty() {
                a.artifact_id.as_str()
            } else {
                a.name.as_str()
            };
            let mut kept: Option<(String, Vec<u8>)> = None;
            for part in &a.parts {
                match part_effect(part) {
                    PartEffect::Write(path, bytes) => {
                        log.push_str(&format!(
                            "write {path} ({} bytes) from artifact {name}\n",
                            bytes.len()
                        ));
                        inner
                            .gate
                            .write(&ctx, sandbox_id, &path, bytes)
                            .await
                            .map_err(|e| {
                                CoworkError::FailedPrecondition(format!(
                                    "remote agent {} wrote {path}, which was refused: {e}",
                                    remote.card.name
                                ))
                            })?;
                    }
                    PartEffect::Delete(path) => {
                        log.push_str(&format!("delete {path} from artifact {name}\n"));
                        inner
                            .gate
                            .delete(&ctx, sandbox_id, &path)
                            .await
                            .map_err(|e| {
                                CoworkError::FailedPrecondition(format!(
                                    "remote agent {} deleted {path}, which was refused: {e}",
                                    remote.card.name
                                ))
                            })?;
                    }
                    PartEffect::Keep(media, bytes) => match &mut kept {
                        Some((_, all)) => {
                            all.push(b'\n');
                            all.extend_from_slice(&bytes);
                        }
                        None => kept = Some((media, bytes)),
                    },
                }
            }
            if let Some((media, bytes)) = kept {
                artifacts.push(self.artifact(agent, "a2a", name, &media, &bytes));
            }
        }
        let after_report = inner.sandboxes.diff(&caller, sandbox_id).await?;
        let (changed, patch) = changes_since(&before, &after_report);
        if !patch.is_empty() {
            artifacts.push(self.artifact(
                agent,
                "patch",
                "step.patch",
                "text/x-diff",
                patch.as_bytes(),
            ));
        }
        log.push_str(&format!("summary: {summary}\n"));
        artifacts.push(self.artifact(agent, "log", "step.log", "text/plain", log.as_bytes()));
        inner
            .store
            .set_agent_claim(agent.agent_id, None, Some(&runner))
            .await?;
        inner.store.insert_artifacts(&artifacts).await?;
        Ok(StepResult {
            runner,
            summary,
            changed,
            artifacts: artifacts.len(),
            reverted: Vec::new(),
        })
    }
}

/// The claim an agent running a delegated step holds: the remote agent's URL and task id.
pub(crate) fn remote_claim(url: &str, task_id: &str) -> String {
    format!("a2a {url} {task_id}")
}

/// The remote agent's URL and task id of a claim [`remote_claim`] made.
pub(crate) fn parse_remote_claim(claim: &str) -> Option<(&str, &str)> {
    let mut parts = claim.strip_prefix("a2a ")?.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(url), Some(id), None) if !url.is_empty() && !id.is_empty() => Some((url, id)),
        _ => None,
    }
}

/// Cancels the remote task of a dead agent's delegated step (best effort: a remote that is
/// gone, or a task already finished, is logged).
pub(crate) async fn cancel_remote(section: &A2aBridgeSection, url: &str, task_id: &str) {
    let remotes = super::directory::discover(section).await;
    let Some(remote) = remotes.iter().find(|r| r.url == url) else {
        tracing::warn!(
            url,
            task = task_id,
            "a dead agent's remote agent is no longer configured or reachable; its task was not cancelled"
        );
        return;
    };
    let (client, tenant) = match remote.client(section.token.expose()) {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, url, "no client for a dead agent's remote agent");
            return;
        }
    };
    let request = pb::CancelTaskRequest {
        tenant,
        id: task_id.to_owned(),
        metadata: None,
    };
    match client.cancel_task(request).await {
        Ok(_) => tracing::info!(
            url,
            task = task_id,
            "a dead agent's remote task was cancelled"
        ),
        Err(error) => {
            tracing::info!(%error, url, task = task_id, "a dead agent's remote task was not cancelled")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(content: pb::part::Content, filename: &str) -> pb::Part {
        pb::Part {
            content: Some(content),
            filename: filename.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_remote_claim_round_trips_and_a_container_claim_is_not_one() {
        let c = remote_claim("http://a2a:8080/agents/coder", "01a2-task");
        assert_eq!(
            parse_remote_claim(&c),
            Some(("http://a2a:8080/agents/coder", "01a2-task"))
        );
        assert_eq!(
            parse_remote_claim("01a230c4-887a-707f-8209-4e44965fb70c"),
            None
        );
        assert_eq!(parse_remote_claim("a2a  x"), None);
        assert_eq!(parse_remote_claim("a2a u t extra"), None);
    }

    #[test]
    fn parts_with_a_filename_and_path_data_are_file_changes() {
        use pb::part::Content;
        assert_eq!(
            part_effect(&part(Content::Raw(b"x".to_vec()), "src/a.rs")),
            PartEffect::Write("src/a.rs".into(), b"x".to_vec())
        );
        assert_eq!(
            part_effect(&part(Content::Text("t".into()), "b.md")),
            PartEffect::Write("b.md".into(), b"t".to_vec())
        );
        let write = data_value(json!({"path": "c.txt", "content": "c"})).unwrap();
        assert_eq!(
            part_effect(&part(Content::Data(write), "")),
            PartEffect::Write("c.txt".into(), b"c".to_vec())
        );
        let delete = data_value(json!({"path": "d.txt", "delete": true})).unwrap();
        assert_eq!(
            part_effect(&part(Content::Data(delete), "")),
            PartEffect::Delete("d.txt".into())
        );
    }

    #[test]
    fn other_parts_are_kept() {
        use pb::part::Content;
        assert_eq!(
            part_effect(&part(Content::Text("hi".into()), "")),
            PartEffect::Keep("text/plain".into(), b"hi".to_vec())
        );
        assert_eq!(
            part_effect(&part(Content::Url("https://x/y".into()), "y.bin")),
            PartEffect::Keep("text/uri-list".into(), b"https://x/y".to_vec())
        );
        let other = data_value(json!({"path": 3})).unwrap();
        assert!(matches!(
            part_effect(&part(Content::Data(other), "")),
            PartEffect::Keep(m, _) if m == "application/json"
        ));
    }
}
