//! Deep-work sessions: the facade the REST API calls, and the glue between planner, store,
//! executor and agent manager.
//!
//! A session is created on a workspace (a staging sandbox of it is made at once), planned in
//! the background (`plan:generated`), reviewed (approve — optionally with an edited plan, which
//! is validated again — or reject, or re-plan with feedback), then run: [`CoworkSessions::advance`]
//! spawns an agent for every step whose dependencies succeeded, skips the steps behind a
//! failure, and closes the session (`session:completed`) when every step is final. Pause holds
//! the session's queued agents; cancel terminates its agents and stops their work.
//!
//! Everything is in the database, so another replica, or this one after a restart, picks up
//! where it stopped ([`CoworkSessions::recover`]): sessions still planning are planned again,
//! running ones advance, and agents whose lease ran out are declared dead and retried.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use liquid_llm::ModelRouter;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::agent::BuiltinAgent;
use crate::config::CoworkSettings;
use crate::directives::Directives;
use crate::domain::plan::{Plan, PlanStep, StepState, Strategy, progress};
use crate::domain::schedule::{AgentState, Priority, SessionMove, SessionState};
use crate::error::CoworkError;
use crate::events::{CoworkEvents, EventKind};
use crate::metrics;
use crate::permission::PermissionGate;
use crate::planner::{PlanRequest, Planner};
use crate::pool_client::PoolClient;
use crate::sandbox::{Caller, CreateSandbox, StagingSandboxes};
use crate::store::SessionStore;
use crate::store::sessions::{AgentRow, PlanRow, SessionRow, StepRow, StepUpdate, now_ms, rfc3339};

/// Longest request text.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A create request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// What to do, in words.
    pub request: String,
    /// The workspace (an absolute directory inside the tenant's workspace roots).
    pub workspace: String,
    /// Short title (default: the request's first line).
    #[serde(default)]
    pub title: Option<String>,
    /// Decomposition strategy (default `auto`).
    #[serde(default)]
    pub strategy: Strategy,
    /// The request's `Idempotency-Key`.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Id.
    pub session_id: Uuid,
    /// State.
    pub state: SessionState,
    /// Title.
    pub title: String,
    /// The request.
    pub request: String,
    /// The workspace.
    pub workspace: String,
    /// The staging sandbox (`/api/v1/sandbox/{id}`: diff, apply, rollback).
    pub sandbox_id: Uuid,
    /// Requested strategy.
    pub strategy: String,
    /// Current plan version (0: none yet).
    pub plan_version: i32,
    /// `model:<name>` or `offline`.
    pub planner: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, once final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Steps by state (once approved).
    pub steps: BTreeMap<String, usize>,
}

/// A plan version as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// The session.
    pub session_id: Uuid,
    /// Version.
    pub version: i32,
    /// `model`, `offline` or `edited`.
    pub source: String,
    /// Re-plan feedback it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// The plan.
    pub plan: Plan,
    /// Steps in waves that can run in parallel.
    pub waves: Vec<Vec<String>>,
    /// RFC 3339.
    pub created_at: String,
}

/// A step as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    /// Id.
    pub step_id: Uuid,
    /// Its id in the plan.
    pub key: String,
    /// State.
    pub state: StepState,
    /// The plan step.
    pub step: PlanStep,
    /// Agents started for it.
    pub attempts: i32,
    /// Runner of the last agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// The agent's closing words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Id.
    pub agent_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// Attempt at the step.
    pub attempt: i32,
    /// Attempts the step gets.
    pub max_attempts: i32,
    /// The specialist.
    pub domain: String,
    /// Priority.
    pub priority: Priority,
    /// State.
    pub state: AgentState,
    /// Not before (RFC 3339).
    pub run_at: String,
    /// Last heartbeat (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<String>,
    /// The replica running it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Container-pool claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// Runner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Why it failed, died or was terminated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<AgentRow> for AgentView {
    fn from(a: AgentRow) -> Self {
        AgentView {
            agent_id: a.agent_id,
            session_id: a.session_id,
            step_id: a.step_id,
            attempt: a.attempt,
            max_attempts: a.max_attempts,
            domain: a.domain,
            priority: a.priority,
            state: a.state,
            run_at: rfc3339(a.run_at_ms),
            heartbeat_at: a.heartbeat_ms.map(rfc3339),
            worker: a.lease_owner,
            claim_id: a.claim_id,
            runner: a.runner,
            error: a.error,
            created_at: rfc3339(a.created_ms),
        }
    }
}

fn step_view(s: StepRow) -> Result<StepView, CoworkError> {
    let step: PlanStep = serde_json::from_str(&s.body)
        .map_err(|e| CoworkError::Corrupt(format!("step {}: {e}", s.step_id)))?;
    Ok(StepView {
        step_id: s.step_id,
        key: s.plan_key,
        state: s.state,
        step,
        attempts: s.attempts,
        runner: s.runner,
        summary: s.summary,
        error: s.error,
        started_at: s.started_ms.map(rfc3339),
        finished_at: s.finished_ms.map(rfc3339),
    })
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) sandboxes: StagingSandboxes,
    pub(crate) gate: PermissionGate,
    pub(crate) events: CoworkEvents,
    pub(crate) planner: Planner,
    pub(crate) pool: Result<PoolClient, String>,
    pub(crate) agent: Option<BuiltinAgent>,
    pub(crate) settings: CoworkSettings,
    pub(crate) worker: String,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) running: Mutex<HashMap<Uuid, CancellationToken>>,
    pub(crate) wake: Notify,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// The sessions of this replica (cheap to clone).
#[derive(Clone)]
pub struct CoworkSessions {
    pub(crate) inner: Arc<Inner>,
}

/// Everything the sessions are built from.
pub struct SessionParts {
    /// The store.
    pub store: Arc<dyn SessionStore>,
    /// The staging sandboxes.
    pub sandboxes: StagingSandboxes,
    /// The events.
    pub events: CoworkEvents,
    /// The model router.
    pub router: Arc<ModelRouter>,
    /// Verified directives.
    pub directives: Arc<Directives>,
    /// The container-pool client, or why there is none.
    pub pool: Result<PoolClient, String>,
    /// Configuration.
    pub settings: CoworkSettings,
    /// This replica's worker name.
    pub worker: String,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

impl CoworkSessions {
    /// Assembles the sessions.
    pub fn new(parts: SessionParts) -> Self {
        let gate = parts.sandboxes.gate();
        let planner = Planner::new(
            parts.router.clone(),
            parts.settings.planner.clone(),
            parts.directives.clone(),
        );
        let agent = parts.pool.as_ref().ok().map(|pool| {
            BuiltinAgent::new(
                parts.router.clone(),
                gate.clone(),
                pool.clone(),
                parts.directives.clone(),
                parts.settings.executor.clone(),
            )
        });
        let slots = Arc::new(Semaphore::new(parts.settings.agents.max_concurrency));
        CoworkSessions {
            inner: Arc::new(Inner {
                store: parts.store,
                sandboxes: parts.sandboxes,
                gate,
                events: parts.events,
                planner,
                pool: parts.pool,
                agent,
                settings: parts.settings,
                worker: parts.worker,
                slots,
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                shutdown: parts.shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The staging sandboxes.
    pub fn sandboxes(&self) -> &StagingSandboxes {
        &self.inner.sandboxes
    }

    async fn session_row(&self, caller: &Caller, id: Uuid) -> Result<SessionRow, CoworkError> {
        self.inner
            .store
            .session(&caller.tenant, id)
            .await?
            .ok_or_else(|| CoworkError::not_found("session", id))
    }

    async fn view(&self, row: SessionRow) -> Result<SessionView, CoworkError> {
        let mut steps: BTreeMap<String, usize> = BTreeMap::new();
        for s in self.inner.store.steps(&row.tenant, row.session_id).await? {
            *steps.entry(s.state.as_str().to_owned()).or_default() += 1;
        }
        Ok(SessionView {
            session_id: row.session_id,
            state: row.state,
            title: row.title,
            request: row.request,
            workspace: row.workspace,
            sandbox_id: row.sandbox_id,
            strategy: row.strategy,
            plan_version: row.plan_version,
            planner: row.planner,
            error: row.error,
            created_by: row.created_by,
            created_at: rfc3339(row.created_ms),
            updated_at: rfc3339(row.updated_ms),
            finished_at: row.finished_ms.map(rfc3339),
            steps,
        })
    }

    /// Creates a session: a staging sandbox of the workspace, then planning in the background.
    /// With an `Idempotency-Key` seen before, returns that session (`created = false`).
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateSession,
    ) -> Result<(SessionView, bool), CoworkError> {
        if req.request.trim().is_empty() || req.request.len() > MAX_REQUEST_BYTES {
            return Err(CoworkError::invalid(
                "request",
                format!("1 to {MAX_REQUEST_BYTES} bytes of text"),
            ));
        }
        if req.request.contains('\0') {
            return Err(CoworkError::invalid("request", "no NUL characters"));
        }
        let title = match req.title.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            Some(_) => return Err(CoworkError::invalid("title", "must not be blank")),
            None => req
                .request
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("@tool"))
                .unwrap_or("cowork session")
                .chars()
                .take(120)
                .collect(),
        };
        if title.chars().count() > 200 || title.chars().any(char::is_control) {
            return Err(CoworkError::invalid(
                "title",
                "at most 200 printable characters",
            ));
        }
        if let Some(key) = &req.idempotency_key
            && let Some(existing) = self.inner.store.session_by_key(&caller.tenant, key).await?
        {
            return Ok((self.view(existing).await?, false));
        }
        let session_id = Uuid::now_v7();
        let sandbox = self
            .inner
            .sandboxes
            .create(
                caller,
                CreateSandbox {
                    source: req.workspace.clone(),
                    session_id: Some(session_id),
                    label: Some(format!("cowork session {session_id}")),
                    ttl_secs: None,
                    idempotency_key: None,
                },
            )
            .await?;
        let now = now_ms();
        let row = SessionRow {
            session_id,
            tenant: caller.tenant.clone(),
            created_by: caller.actor.clone(),
            state: SessionState::Planning,
            title,
            request: req.request,
            workspace: sandbox.row.source_path.clone(),
            sandbox_id: sandbox.row.sandbox_id,
            strategy: req.strategy.as_str().to_owned(),
            plan_version: 0,
            planner: String::new(),
            error: None,
            idempotency_key: req.idempotency_key.clone(),
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
        };
        if !self.inner.store.insert_session(&row).await? {
            // Another request with the same key won the race: drop our sandbox.
            let _ = self
                .inner
                .sandboxes
                .discard(caller, sandbox.row.sandbox_id)
                .await;
            let key = req.idempotency_key.unwrap_or_default();
            let existing = self
                .inner
                .store
                .session_by_key(&caller.tenant, &key)
                .await?
                .ok_or_else(|| CoworkError::Corrupt("idempotency key without a session".into()))?;
            return Ok((self.view(existing).await?, false));
        }
        ::metrics::counter!(metrics::SESSIONS_CREATED).increment(1);
        self.inner
            .events
            .emit(
                &row.tenant,
                session_id,
                EventKind::SessionCreated,
                json!({"title": row.title, "workspace": row.workspace, "sandbox_id": row.sandbox_id, "strategy": row.strategy}),
            )
            .await;
        self.spawn_planning(row.tenant.clone(), session_id, None);
        Ok((self.view(row).await?, true))
    }

    /// A session.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<SessionView, CoworkError> {
        let row = self.session_row(caller, id).await?;
        self.view(row).await
    }

    /// The caller's sessions, newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        state: Option<SessionState>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionView>, CoworkError> {
        let rows = self
            .inner
            .store
            .sessions(&caller.tenant, state, before, limit)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.view(r).await?);
        }
        Ok(out)
    }

    fn spawn_planning(&self, tenant: String, session: Uuid, feedback: Option<String>) {
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            if let Err(error) = this.plan_now(&tenant, session, feedback.as_deref()).await {
                tracing::warn!(%error, %session, "planning failed");
            }
        });
    }

    async fn plan_now(
        &self,
        tenant: &str,
        session: Uuid,
        feedback: Option<&str>,
    ) -> Result<(), CoworkError> {
        let Some(row) = self.inner.store.session(tenant, session).await? else {
            return Ok(());
        };
        if row.state != SessionState::Planning {
            return Ok(());
        }
        let previous = match row.plan_version {
            0 => None,
            v => self
                .inner
                .store
                .plan(tenant, session, v)
                .await?
                .and_then(|p| serde_json::from_str::<Plan>(&p.body).ok()),
        };
        let caller = Caller {
            tenant: tenant.to_owned(),
            actor: "cowork:planner".into(),
        };
        let sandbox = self.inner.sandboxes.get(&caller, row.sandbox_id).await?;
        let work = std::path::PathBuf::from(&sandbox.work_path);
        let files: Vec<String> = tokio::task::spawn_blocking(move || {
            crate::fs::tree::walk(&work, "").map(|s| s.into_iter().collect())
        })
        .await
        .map_err(|e| CoworkError::io("workspace listing", std::io::Error::other(e)))?
        .map_err(|e| CoworkError::io("workspace listing", e))?;
        let strategy = serde_json::from_value::<Strategy>(json!(row.strategy)).unwrap_or_default();
        let outcome = self
            .inner
            .planner
            .plan(&PlanRequest {
                request: &row.request,
                strategy,
                files: &files,
                feedback,
                previous: previous.as_ref(),
            })
            .await;
        match outcome {
            Ok(o) => {
                let body = serde_json::to_string(&o.plan)
                    .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
                let plan = PlanRow {
                    session_id: session,
                    version: row.plan_version + 1,
                    source: o.source.to_owned(),
                    body,
                    feedback: feedback.map(str::to_owned),
                    created_ms: now_ms(),
                };
                if self
                    .inner
                    .store
                    .store_plan(
                        tenant,
                        &plan,
                        &o.planner,
                        SessionState::Planning,
                        SessionState::AwaitingApproval,
                    )
                    .await?
                {
                    ::metrics::counter!(metrics::PLANS, "source" => o.source).increment(1);
                    self.inner
                        .events
                        .emit(
                            tenant,
                            session,
                            EventKind::PlanGenerated,
                            json!({
                                "version": plan.version,
                                "source": o.source,
                                "planner": o.planner,
                                "plan": o.plan,
                                "waves": o.plan.waves().unwrap_or_default(),
                            }),
                        )
                        .await;
                }
                Ok(())
            }
            Err(error) => {
                let reason = format!("planning failed: {error}");
                if self
                    .inner
                    .store
                    .transition_session(
                        tenant,
                        session,
                        &[SessionState::Planning],
                        SessionState::Failed,
                        Some(&reason),
                        now_ms(),
                    )
                    .await?
                {
                    self.inner
                        .events
                        .emit(
                            tenant,
                            session,
                            EventKind::SessionCompleted,
                            json!({"state": "failed", "error": reason}),
                        )
                        .await;
                }
                Err(error)
            }
        }
    }

    /// The current plan (or version `version`).
    pub async fn plan(
        &self,
        caller: &Caller,
        id: Uuid,
        version: Option<i32>,
    ) -> Result<PlanView, CoworkError> {
        let row = self.session_row(caller, id).await?;
        let v = version.unwrap_or(row.plan_version);
        if v == 0 {
            return Err(CoworkError::FailedPrecondition(
                "the session has no plan yet; it is still planning".into(),
            ));
        }
        let p = self
            .inner
            .store
            .plan(&caller.tenant, id, v)
            .await?
            .ok_or_else(|| CoworkError::not_found("plan version", v))?;
        let plan: Plan =
            serde_json::from_str(&p.body).map_err(|e| CoworkError::Corrupt(e.to_string()))?;
        Ok(PlanView {
            session_id: id,
            version: p.version,
            source: p.source,
            feedback: p.feedback,
            waves: plan.waves().unwrap_or_default(),
            plan,
            created_at: rfc3339(p.created_ms),
        })
    }

    /// Approves the plan under review (optionally an edited one, validated again); steps start.
    pub async fn approve(
        &self,
        caller: &Caller,
        id: Uuid,
        edited: Option<Plan>,
    ) -> Result<SessionView, CoworkError> {
        let row = self.session_row(caller, id).await?;
        row.state
            .after(SessionMove::Approve)
            .map_err(CoworkError::FailedPrecondition)?;
        let current = self.plan(caller, id, None).await?;
        let (plan, edited_row) = match edited {
            None => (current.plan, None),
            Some(p) => {
                let p = self.inner.planner.check(p)?;
                let body =
                    serde_json::to_string(&p).map_err(|e| CoworkError::Corrupt(e.to_string()))?;
                let r = PlanRow {
                    session_id: id,
                    version: row.plan_version + 1,
                    source: "edited".into(),
                    body,
                    feedback: None,
                    created_ms: now_ms(),
                };
                (p, Some(r))
            }
        };
        let version = edited_row.as_ref().map_or(row.plan_version, |r| r.version);
        let now = now_ms();
        let steps: Vec<StepRow> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(StepRow {
                    step_id: Uuid::now_v7(),
                    session_id: id,
                    tenant: caller.tenant.clone(),
                    plan_version: version,
                    plan_key: s.id.clone(),
                    position: i32::try_from(i).unwrap_or(i32::MAX),
                    state: StepState::Pending,
                    body: serde_json::to_string(s)
                        .map_err(|e| CoworkError::Corrupt(e.to_string()))?,
                    attempts: 0,
                    error: None,
                    runner: None,
                    summary: None,
                    started_ms: None,
                    finished_ms: None,
                    updated_ms: now,
                })
            })
            .collect::<Result<_, CoworkError>>()?;
        if !self
            .inner
            .store
            .approve(
                &caller.tenant,
                id,
                row.plan_version,
                edited_row.as_ref(),
                &steps,
                now,
            )
            .await?
        {
            return Err(CoworkError::FailedPrecondition(
                "the session is no longer awaiting approval of this plan".into(),
            ));
        }
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::PlanApproved,
                json!({"version": version, "edited": edited_row.is_some(), "approved_by": caller.actor}),
            )
            .await;
        self.advance(&caller.tenant, id).await?;
        self.get(caller, id).await
    }

    /// Rejects the plan under review.
    pub async fn reject(
        &self,
        caller: &Caller,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<SessionView, CoworkError> {
        self.move_session(caller, id, SessionMove::Reject, reason.as_deref())
            .await?;
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::PlanRejected,
                json!({"reason": reason, "rejected_by": caller.actor}),
            )
            .await;
        self.get(caller, id).await
    }

    /// Plans again with the person's feedback (from review, rejection or failure).
    pub async fn replan(
        &self,
        caller: &Caller,
        id: Uuid,
        feedback: Option<String>,
    ) -> Result<SessionView, CoworkError> {
        if let Some(f) = &feedback
            && f.len() > MAX_REQUEST_BYTES
        {
            return Err(CoworkError::invalid(
                "feedback",
                format!("at most {MAX_REQUEST_BYTES} bytes"),
            ));
        }
        self.move_session(caller, id, SessionMove::Replan, None)
            .await?;
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::SessionUpdated,
                json!({"state": "planning", "feedback": feedback}),
            )
            .await;
        self.spawn_planning(caller.tenant.clone(), id, feedback);
        self.get(caller, id).await
    }

    async fn move_session(
        &self,
        caller: &Caller,
        id: Uuid,
        m: SessionMove,
        error: Option<&str>,
    ) -> Result<SessionState, CoworkError> {
        let row = self.session_row(caller, id).await?;
        let to = row
            .state
            .after(m)
            .map_err(CoworkError::FailedPrecondition)?;
        if !self
            .inner
            .store
            .transition_session(&caller.tenant, id, &[row.state], to, error, now_ms())
            .await?
        {
            return Err(CoworkError::FailedPrecondition(
                "the session changed meanwhile; read it again".into(),
            ));
        }
        Ok(to)
    }

    /// Holds the session: queued agents wait, running ones finish.
    pub async fn pause(&self, caller: &Caller, id: Uuid) -> Result<SessionView, CoworkError> {
        self.move_session(caller, id, SessionMove::Pause, None)
            .await?;
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::SessionUpdated,
                json!({"state": "paused"}),
            )
            .await;
        self.get(caller, id).await
    }

    /// Lets the session's agents run again.
    pub async fn resume(&self, caller: &Caller, id: Uuid) -> Result<SessionView, CoworkError> {
        self.move_session(caller, id, SessionMove::Resume, None)
            .await?;
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::SessionUpdated,
                json!({"state": "running"}),
            )
            .await;
        self.advance(&caller.tenant, id).await?;
        self.inner.wake.notify_one();
        self.get(caller, id).await
    }

    /// Cancels the session: its agents are terminated (running work is killed), its
    /// unfinished steps cancelled.
    pub async fn cancel(&self, caller: &Caller, id: Uuid) -> Result<SessionView, CoworkError> {
        self.move_session(
            caller,
            id,
            SessionMove::Cancel,
            Some("cancelled by a person"),
        )
        .await?;
        self.terminate(
            &caller.tenant,
            crate::store::sessions::AgentSelector::Session(id),
            "the session was cancelled",
        )
        .await?;
        let now = now_ms();
        for s in self.inner.store.steps(&caller.tenant, id).await? {
            if !s.state.is_final() {
                self.inner
                    .store
                    .update_step(
                        s.step_id,
                        &StepUpdate {
                            from: vec![s.state],
                            to: StepState::Cancelled,
                            error: Some("the session was cancelled".into()),
                            runner: None,
                            summary: None,
                            at_ms: now,
                        },
                    )
                    .await?;
            }
        }
        self.inner
            .events
            .emit(
                &caller.tenant,
                id,
                EventKind::SessionCompleted,
                json!({"state": "cancelled", "cancelled_by": caller.actor}),
            )
            .await;
        self.get(caller, id).await
    }

    /// The steps of the session's current plan.
    pub async fn steps(&self, caller: &Caller, id: Uuid) -> Result<Vec<StepView>, CoworkError> {
        self.session_row(caller, id).await?;
        self.inner
            .store
            .steps(&caller.tenant, id)
            .await?
            .into_iter()
            .map(step_view)
            .collect()
    }

    /// The session's plan and step states as the executor sees them.
    async fn plan_and_states(
        &self,
        tenant: &str,
        session: Uuid,
    ) -> Result<(Plan, Vec<StepRow>), CoworkError> {
        let rows = self.inner.store.steps(tenant, session).await?;
        let steps = rows
            .iter()
            .map(|r| {
                serde_json::from_str::<PlanStep>(&r.body)
                    .map_err(|e| CoworkError::Corrupt(format!("step {}: {e}", r.step_id)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            Plan {
                strategy: Strategy::Auto,
                summary: String::new(),
                steps,
            },
            rows,
        ))
    }

    /// Moves a running session on: skips steps behind failures, spawns agents for steps whose
    /// dependencies succeeded, and closes the session when every step is final. Safe to call
    /// from several places at once (every change is guarded by the state it expects).
    pub async fn advance(&self, tenant: &str, session: Uuid) -> Result<(), CoworkError> {
        let Some(row) = self.inner.store.session(tenant, session).await? else {
            return Ok(());
        };
        if !matches!(row.state, SessionState::Running | SessionState::Paused) {
            return Ok(());
        }
        let (plan, rows) = self.plan_and_states(tenant, session).await?;
        let states: BTreeMap<String, StepState> =
            rows.iter().map(|r| (r.plan_key.clone(), r.state)).collect();
        let next = progress(&plan, &states);
        let by_key: HashMap<&str, &StepRow> =
            rows.iter().map(|r| (r.plan_key.as_str(), r)).collect();
        let now = now_ms();
        for key in &next.skip {
            let Some(r) = by_key.get(key.as_str()) else {
                continue;
            };
            let done = self
                .inner
                .store
                .update_step(
                    r.step_id,
                    &StepUpdate {
                        from: vec![StepState::Pending],
                        to: StepState::Skipped,
                        error: Some("a step it depends on did not succeed".into()),
                        runner: None,
                        summary: None,
                        at_ms: now,
                    },
                )
                .await?;
            if done {
                self.inner
                    .events
                    .emit(
                        tenant,
                        session,
                        EventKind::SubtaskCompleted,
                        json!({"step_id": r.step_id, "key": key, "status": "skipped"}),
                    )
                    .await;
            }
        }
        let mut spawn = Vec::new();
        for key in &next.ready {
            let (Some(r), Some(step)) = (
                by_key.get(key.as_str()),
                plan.steps.iter().find(|s| &s.id == key),
            ) else {
                continue;
            };
            spawn.push(self.new_agent(r, step, 1, now));
        }
        if !spawn.is_empty() {
            self.spawn_agents(spawn, &[StepState::Pending]).await?;
        }
        if next.finished {
            let (to, error) = if next.all_succeeded {
                (SessionState::Completed, None)
            } else {
                let failed: Vec<String> = rows
                    .iter()
                    .filter(|r| r.state == StepState::Failed || r.state == StepState::Cancelled)
                    .map(|r| r.plan_key.clone())
                    .collect();
                (
                    SessionState::Failed,
                    Some(format!("steps that did not succeed: {}", failed.join(", "))),
                )
            };
            if self
                .inner
                .store
                .transition_session(
                    tenant,
                    session,
                    &[SessionState::Running, SessionState::Paused],
                    to,
                    error.as_deref(),
                    now,
                )
                .await?
            {
                let steps: BTreeMap<String, &str> = self
                    .inner
                    .store
                    .steps(tenant, session)
                    .await?
                    .iter()
                    .map(|r| (r.plan_key.clone(), r.state.as_str()))
                    .collect();
                self.inner
                    .events
                    .emit(
                        tenant,
                        session,
                        EventKind::SessionCompleted,
                        json!({"state": to.as_str(), "error": error, "steps": steps, "sandbox_id": row.sandbox_id}),
                    )
                    .await;
            }
        }
        Ok(())
    }

    pub(crate) fn new_agent(
        &self,
        step: &StepRow,
        plan_step: &PlanStep,
        attempt: i32,
        run_at_ms: i64,
    ) -> AgentRow {
        let now = now_ms();
        AgentRow {
            agent_id: Uuid::now_v7(),
            tenant: step.tenant.clone(),
            session_id: step.session_id,
            step_id: step.step_id,
            attempt,
            max_attempts: i32::try_from(self.inner.settings.agents.max_attempts)
                .unwrap_or(i32::MAX),
            domain: plan_step.domain.clone(),
            priority: plan_step.priority,
            state: AgentState::Queued,
            run_at_ms,
            lease_owner: None,
            lease_expires_ms: None,
            heartbeat_ms: None,
            claim_id: None,
            runner: None,
            error: None,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
        }
    }

    /// Waits for background planning tasks (shutdown).
    pub async fn wait_background(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Start-up recovery: sessions still planning are planned again, running ones advance,
    /// their sandboxes are watched by this replica again.
    pub async fn recover(&self) -> Result<(), CoworkError> {
        for s in self
            .inner
            .store
            .sessions_in_state(SessionState::Planning, 1_000)
            .await?
        {
            tracing::info!(session = %s.session_id, "planning again after a restart");
            self.spawn_planning(s.tenant.clone(), s.session_id, None);
        }
        for state in [SessionState::Running, SessionState::Paused] {
            for s in self.inner.store.sessions_in_state(state, 1_000).await? {
                let caller = Caller {
                    tenant: s.tenant.clone(),
                    actor: "cowork:recovery".into(),
                };
                if let Err(error) = self
                    .inner
                    .sandboxes
                    .prepare_for_containers(&caller, s.sandbox_id)
                    .await
                {
                    tracing::warn!(%error, session = %s.session_id, "sandbox not resumed");
                }
                self.advance(&s.tenant, s.session_id).await?;
            }
        }
        Ok(())
    }

    /// A JSON value of the session's queue for `queue:stats`.
    pub(crate) async fn queue_stats_value(&self, tenant: &str) -> Result<Value, CoworkError> {
        let c = self.inner.store.queue_counts(tenant).await?;
        Ok(json!({
            "queued": c.queued,
            "running": c.running,
            "paused": c.paused,
            "queued_by_priority": c.queued_by_priority,
            "max_concurrency": self.inner.settings.agents.max_concurrency,
            "free_slots_here": self.inner.slots.available_permits(),
        }))
    }
}
