//! Cowork served as an A2A agent: `liquid.a2a.v1.AgentExecutorService`
//! (proto/liquid/a2a/v1/executor.proto), which the a2a service calls for its `cowork` agent
//! (`[a2a.remote_agents.cowork] executor_url = "http://cowork:9082"`).
//!
//! - A message that starts a task creates a session: its text is the request, a data part
//!   `{"workspace": "/abs/path", "strategy"?: "..."}` names the workspace (required). The task
//!   gets an artifact `cowork-session` (`{"session_id", "sandbox_id"}`), works while the plan
//!   is made, then asks for approval with `INPUT_REQUIRED`: the plan as text and as a data part.
//! - The follow-up message decides: text `approve` / `reject` (first word; `yes`/`ok`,
//!   `no` too) or a data part `{"decision": "approve" | "reject", "reason"?: "..."}`.
//!   Anything else asks again. Rejected: the task ends `REJECTED`. Approved: it works until the
//!   session ends: `COMPLETED` with the sandbox's diff as artifact `diff` (the changes wait in
//!   the staging sandbox for a person to apply), `FAILED` with the session's error, or
//!   `CANCELED`.
//! - Cancelling the task (the call is dropped) cancels the session.
//!
//! Calls must carry a token with scope `a2a:execute` (the a2a service's service token); the
//! request's tenant owns the session.

use std::sync::Arc;
use std::time::Duration;

use liquid_a2a::pb;
use liquid_proto::a2a::v1 as exec;
use liquid_proto::a2a::v1::agent_executor_service_server::{
    AgentExecutorService, AgentExecutorServiceServer,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::delegate::{data_value, message_text, state_name};
use crate::domain::plan::Strategy;
use crate::domain::schedule::SessionState;
use crate::sandbox::Caller;
use crate::sessions::{CoworkSessions, CreateSession};

/// Scope an executor call needs.
pub const SCOPE_EXECUTE: &str = "a2a:execute";
/// Name of the artifact linking a task to its session.
pub const SESSION_ARTIFACT: &str = "cowork-session";

/// The executor; see the module documentation.
#[derive(Clone)]
pub struct CoworkAgentExecutor {
    sessions: CoworkSessions,
    poll: Duration,
}

type Events = mpsc::Sender<Result<exec::ExecutorEvent, tonic::Status>>;

fn agent_message(text: &str, data: Option<Value>) -> pb::Message {
    let mut parts = vec![pb::Part {
        content: Some(pb::part::Content::Text(text.to_owned())),
        ..Default::default()
    }];
    if let Some(d) = data.and_then(data_value) {
        parts.push(pb::Part {
            content: Some(pb::part::Content::Data(d)),
            media_type: "application/json".into(),
            ..Default::default()
        });
    }
    pb::Message {
        message_id: Uuid::now_v7().to_string(),
        role: pb::Role::Agent as i32,
        parts,
        ..Default::default()
    }
}

fn status(state: pb::TaskState, text: &str, data: Option<Value>) -> exec::ExecutorEvent {
    let message = (!text.is_empty()).then(|| agent_message(text, data));
    exec::ExecutorEvent {
        event: Some(exec::executor_event::Event::Status(exec::StatusUpdate {
            state: state as i32,
            message: message.map(|m| m.encode_to_vec()).unwrap_or_default(),
        })),
    }
}

fn artifact(name: &str, parts: Vec<pb::Part>) -> exec::ExecutorEvent {
    let artifact = pb::Artifact {
        artifact_id: Uuid::now_v7().to_string(),
        name: name.into(),
        parts,
        ..Default::default()
    };
    exec::ExecutorEvent {
        event: Some(exec::executor_event::Event::Artifact(
            exec::ArtifactUpdate {
                artifact: artifact.encode_to_vec(),
                append: false,
                last_chunk: true,
            },
        )),
    }
}

fn data_part(v: Value) -> Option<pb::Part> {
    data_value(v).map(|d| pb::Part {
        content: Some(pb::part::Content::Data(d)),
        media_type: "application/json".into(),
        ..Default::default()
    })
}

/// The JSON objects of a message's data parts.
fn data_of(message: &pb::Message) -> Vec<Value> {
    message
        .parts
        .iter()
        .filter_map(|p| match &p.content {
            Some(pb::part::Content::Data(d)) => serde_json::to_value(d).ok(),
            _ => None,
        })
        .collect()
}

/// A reviewer's decision on a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it.
    Approve,
    /// Do not, with an optional reason.
    Reject(Option<String>),
}

/// The decision a follow-up message states, if it states one.
pub fn decision_of(message: &pb::Message) -> Option<Decision> {
    for d in data_of(message) {
        let reason = d["reason"].as_str().map(str::to_owned);
        match d["decision"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("approve") => return Some(Decision::Approve),
            Some("reject") => return Some(Decision::Reject(reason)),
            _ => {}
        }
    }
    let text = message_text(Some(message));
    let first = text
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?
        .to_ascii_lowercase();
    match first.as_str() {
        "approve" | "approved" | "yes" | "ok" => Some(Decision::Approve),
        "reject" | "rejected" | "no" => {
            let rest = text.trim().split_once(char::is_whitespace).map(|(_, r)| r);
            Some(Decision::Reject(
                rest.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()),
            ))
        }
        _ => None,
    }
}

const ASK: &str = "Reply \"approve\" to run this plan or \"reject\" (optionally with a reason), \
    or send a data part {\"decision\": \"approve\" | \"reject\", \"reason\": \"...\"}.";

/// Why an execution stopped early: a message for the task, or the client went away.
enum Stop {
    Failed(String),
    Gone,
}

impl CoworkAgentExecutor {
    /// An executor creating sessions in `sessions`.
    pub fn new(sessions: CoworkSessions) -> CoworkAgentExecutor {
        CoworkAgentExecutor {
            sessions,
            poll: Duration::from_millis(200),
        }
    }

    /// Its gRPC routes, callers verified by `verifier`.
    pub fn routes(self, verifier: Arc<liquid_auth::Verifier>) -> tonic::service::Routes {
        let service = tonic::service::interceptor::InterceptedService::new(
            AgentExecutorServiceServer::new(self),
            liquid_auth::AuthInterceptor::new(verifier),
        );
        // A plain router without a fallback: the runtime merges it with its own services.
        tonic::service::Routes::from(axum::Router::new().route_service(
            &format!(
                "/{}/{{*rest}}",
                <AgentExecutorServiceServer<CoworkAgentExecutor> as tonic::server::NamedService>::NAME
            ),
            service,
        ))
    }

    async fn send(tx: &Events, event: exec::ExecutorEvent) -> Result<(), Stop> {
        tx.send(Ok(event)).await.map_err(|_| Stop::Gone)
    }

    /// Polls the session until `done` holds for its state; the client leaving cancels it.
    async fn wait_for(
        &self,
        caller: &Caller,
        id: Uuid,
        tx: &Events,
        done: impl Fn(SessionState) -> bool,
    ) -> Result<crate::sessions::SessionView, Stop> {
        let mut last_steps = None;
        loop {
            let view = self
                .sessions
                .get(caller, id)
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?;
            if done(view.state) {
                return Ok(view);
            }
            if view.state == SessionState::Running && last_steps.as_ref() != Some(&view.steps) {
                let succeeded = view.steps.get("succeeded").copied().unwrap_or(0);
                let total: usize = view.steps.values().sum();
                Self::send(
                    tx,
                    status(
                        pb::TaskState::Working,
                        &format!("{succeeded} of {total} steps done"),
                        Some(json!({"session_id": id, "steps": view.steps})),
                    ),
                )
                .await?;
                last_steps = Some(view.steps.clone());
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = tx.closed() => {
                    if let Err(error) = self.sessions.cancel(caller, id).await {
                        tracing::info!(%error, session = %id, "cancelling the session of a cancelled task");
                    }
                    return Err(Stop::Gone);
                }
            }
        }
    }

    async fn ask_approval(&self, caller: &Caller, id: Uuid, tx: &Events) -> Result<(), Stop> {
        let plan = self
            .sessions
            .plan(caller, id, None)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let mut text = format!(
            "Plan v{} ({} steps): {}\n",
            plan.version,
            plan.plan.steps.len(),
            plan.plan.summary
        );
        for (i, s) in plan.plan.steps.iter().enumerate() {
            text.push_str(&format!("{}. {} [{}]\n", i + 1, s.title, s.domain));
        }
        text.push_str(ASK);
        let data = serde_json::to_value(&plan).ok();
        Self::send(tx, status(pb::TaskState::InputRequired, &text, data)).await
    }

    async fn start(
        &self,
        caller: &Caller,
        task_id: &str,
        message: &pb::Message,
        tx: &Events,
    ) -> Result<(), Stop> {
        let data = data_of(message);
        let workspace = data
            .iter()
            .find_map(|d| d["workspace"].as_str())
            .ok_or_else(|| {
                Stop::Failed(
                    "name the workspace in a data part {\"workspace\": \"/abs/path\"}".into(),
                )
            })?
            .to_owned();
        let strategy: Strategy = match data.iter().find_map(|d| d.get("strategy")) {
            Some(s) => serde_json::from_value(s.clone())
                .map_err(|e| Stop::Failed(format!("strategy: {e}")))?,
            None => Strategy::default(),
        };
        let (view, _) = self
            .sessions
            .create(
                caller,
                CreateSession {
                    request: message_text(Some(message)),
                    workspace,
                    title: None,
                    strategy,
                    idempotency_key: Some(format!("a2a-{task_id}")),
                },
            )
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let link = json!({"session_id": view.session_id, "sandbox_id": view.sandbox_id});
        Self::send(
            tx,
            artifact(SESSION_ARTIFACT, data_part(link).into_iter().collect()),
        )
        .await?;
        Self::send(tx, status(pb::TaskState::Working, "planning", None)).await?;
        let view = self
            .wait_for(caller, view.session_id, tx, |s| s != SessionState::Planning)
            .await?;
        match view.state {
            SessionState::AwaitingApproval => self.ask_approval(caller, view.session_id, tx).await,
            _ => Err(Stop::Failed(view.error.unwrap_or_else(|| {
                format!("planning ended in state {}", view.state.as_str())
            }))),
        }
    }

    async fn resume(
        &self,
        caller: &Caller,
        message: &pb::Message,
        previous: &pb::Task,
        tx: &Events,
    ) -> Result<(), Stop> {
        let id = linked(&previous.artifacts, "session_id")
            .ok_or_else(|| Stop::Failed("this task has no cowork session".into()))?;
        match decision_of(message) {
            None => self.ask_approval(caller, id, tx).await,
            Some(Decision::Reject(reason)) => {
                self.sessions
                    .reject(caller, id, reason.clone())
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                let text = match reason {
                    Some(r) => format!("the plan was rejected: {r}"),
                    None => "the plan was rejected".to_owned(),
                };
                Self::send(tx, status(pb::TaskState::Rejected, &text, None)).await
            }
            Some(Decision::Approve) => {
                self.sessions
                    .approve(caller, id, None)
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                Self::send(
                    tx,
                    status(pb::TaskState::Working, "plan approved; steps run", None),
                )
                .await?;
                let view = self
                    .wait_for(caller, id, tx, |s| {
                        matches!(
                            s,
                            SessionState::Completed
                                | SessionState::Failed
                                | SessionState::Cancelled
                                | SessionState::Rejected
                        )
                    })
                    .await?;
                match view.state {
                    SessionState::Completed => self.complete(caller, &view, tx).await,
                    SessionState::Cancelled => {
                        Self::send(
                            tx,
                            status(pb::TaskState::Canceled, "the session was cancelled", None),
                        )
                        .await
                    }
                    _ => Err(Stop::Failed(view.error.unwrap_or_else(|| {
                        format!("the session ended {}", view.state.as_str())
                    }))),
                }
            }
        }
    }

    async fn complete(
        &self,
        caller: &Caller,
        view: &crate::sessions::SessionView,
        tx: &Events,
    ) -> Result<(), Stop> {
        let diff = self
            .sessions
            .sandboxes()
            .diff(caller, view.sandbox_id)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let mut patch = String::new();
        for c in &diff.changes {
            match &c.diff {
                Some(d) => patch.push_str(d),
                None => {
                    patch.push_str(&format!("Binary or large file {} {:?}\n", c.path, c.change))
                }
            }
        }
        let changes: Vec<Value> = diff
            .changes
            .iter()
            .map(|c| json!({"path": c.path, "change": c.change}))
            .collect();
        let mut parts = vec![pb::Part {
            content: Some(pb::part::Content::Text(patch)),
            filename: "session.patch".into(),
            media_type: "text/x-diff".into(),
            ..Default::default()
        }];
        parts.extend(data_part(
            json!({"sandbox_id": view.sandbox_id, "changes": changes}),
        ));
        Self::send(tx, artifact("diff", parts)).await?;
        let text = format!(
            "done: {} files changed, staged in sandbox {} (apply with POST /api/v1/sandbox/{}/apply)",
            diff.changes.len(),
            view.sandbox_id,
            view.sandbox_id
        );
        Self::send(tx, status(pb::TaskState::Completed, &text, None)).await
    }
}

/// The sandbox a task's `cowork-session` artifact names.
fn linked_sandbox(task: &pb::Task) -> Option<Uuid> {
    linked(&task.artifacts, "sandbox_id")
}

fn linked(artifacts: &[pb::Artifact], key: &str) -> Option<Uuid> {
    artifacts
        .iter()
        .filter(|a| a.name == SESSION_ARTIFACT)
        .flat_map(|a| &a.parts)
        .find_map(|p| match &p.content {
            Some(pb::part::Content::Data(d)) => serde_json::to_value(d)
                .ok()
                .and_then(|v| v[key].as_str().and_then(|s| s.parse::<Uuid>().ok())),
            _ => None,
        })
}

impl CoworkAgentExecutor {
    /// Passes the execution's events to the a2a service, recording each task state on the
    /// session's sandbox (its `a2a_task_id`/`a2a_task_state`); stops (and so signals the
    /// execution) when the a2a service drops the call.
    async fn forward(
        self,
        caller: Caller,
        task_id: String,
        mut sandbox: Option<Uuid>,
        mut events: mpsc::Receiver<Result<exec::ExecutorEvent, tonic::Status>>,
        out: Events,
    ) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                () = out.closed() => return,
            };
            let Some(event) = event else { return };
            let state = match &event {
                Ok(exec::ExecutorEvent {
                    event: Some(exec::executor_event::Event::Artifact(a)),
                }) => {
                    if let Ok(a) = pb::Artifact::decode(a.artifact.as_slice()) {
                        sandbox =
                            sandbox.or_else(|| linked(std::slice::from_ref(&a), "sandbox_id"));
                    }
                    None
                }
                Ok(exec::ExecutorEvent {
                    event: Some(exec::executor_event::Event::Status(st)),
                }) => Some(st.state),
                _ => None,
            };
            if let (Some(state), Some(sandbox)) = (state, sandbox)
                && let Err(error) = self
                    .sessions
                    .sandboxes()
                    .update_a2a_task(&caller, sandbox, &task_id, state_name(state))
                    .await
            {
                tracing::info!(%error, %sandbox, "recording the task state on the sandbox failed");
            }
            if out.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl AgentExecutorService for CoworkAgentExecutor {
    type ExecuteStream = ReceiverStream<Result<exec::ExecutorEvent, tonic::Status>>;

    async fn execute(
        &self,
        request: tonic::Request<exec::ExecuteRequest>,
    ) -> Result<tonic::Response<Self::ExecuteStream>, tonic::Status> {
        liquid_auth::require_scope(&request, SCOPE_EXECUTE)?;
        let request = request.into_inner();
        if request.tenant.is_empty() {
            return Err(tonic::Status::invalid_argument("tenant is empty"));
        }
        let message = pb::Message::decode(request.message.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(format!("message: {e}")))?;
        let previous = if request.previous_task.is_empty() {
            None
        } else {
            Some(
                pb::Task::decode(request.previous_task.as_slice())
                    .map_err(|e| tonic::Status::invalid_argument(format!("previous_task: {e}")))?,
            )
        };
        let (out, rx) = mpsc::channel(32);
        let (tx, events) = mpsc::channel(32);
        let sandbox = previous.as_ref().and_then(linked_sandbox);
        let me = self.clone();
        let caller = Caller {
            tenant: request.tenant.clone(),
            actor: format!("a2a:{}", request.task_id),
        };
        let span = tracing::info_span!("cowork-a2a-execute", task = %request.task_id);
        let forward = self.clone().forward(
            caller.clone(),
            request.task_id.clone(),
            sandbox,
            events,
            out,
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let ran = match &previous {
                    None => me.start(&caller, &request.task_id, &message, &tx).await,
                    Some(p) => me.resume(&caller, &message, p, &tx).await,
                };
                if let Err(Stop::Failed(why)) = ran {
                    let _ = tx.send(Ok(status(pb::TaskState::Failed, &why, None))).await;
                }
            },
            span.clone(),
        ));
        tokio::spawn(tracing::Instrument::instrument(forward, span));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str, data: Option<Value>) -> pb::Message {
        agent_message(text, data)
    }

    #[test]
    fn decisions_come_from_data_parts_or_the_first_word() {
        assert_eq!(decision_of(&msg("Approve.", None)), Some(Decision::Approve));
        assert_eq!(
            decision_of(&msg("yes please", None)),
            Some(Decision::Approve)
        );
        assert_eq!(
            decision_of(&msg("reject too risky", None)),
            Some(Decision::Reject(Some("too risky".into())))
        );
        assert_eq!(decision_of(&msg("no", None)), Some(Decision::Reject(None)));
        assert_eq!(decision_of(&msg("what does step 2 do?", None)), None);
        assert_eq!(
            decision_of(&msg(
                "",
                Some(json!({"decision": "reject", "reason": "later"}))
            )),
            Some(Decision::Reject(Some("later".into())))
        );
        assert_eq!(
            decision_of(&msg("reject", Some(json!({"decision": "approve"})))),
            Some(Decision::Approve)
        );
    }
}
