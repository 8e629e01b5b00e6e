//! What cowork keeps for deep-work sessions: sessions, their plans (every version), steps,
//! agents (the durable priority queue: one row per attempt at a step, leased to a replica with
//! `FOR UPDATE SKIP LOCKED` on Postgres and under `BEGIN IMMEDIATE` on SQLite), artifacts, the
//! session's event log and per-tenant queue pauses. One trait, one SQL text for both databases
//! (`sessions_sql.rs`); one suite (`tests/session_store.rs`) runs against both. Every read and
//! change of a tenant's data filters on the tenant.
//!
//! Why not `liquid_store::job_queue`: the agent manager re-prioritises queued work, holds the
//! queue per tenant and per session without spending attempts, and terminates one queued agent,
//! none of which that queue offers; the lease-and-claim discipline here is the same. Times are
//! milliseconds since the epoch (UTC) in both databases, so due-time comparisons are integer
//! comparisons everywhere; the API shows them as RFC 3339.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::plan::StepState;
use crate::domain::schedule::{AgentState, Priority, SessionState};
use crate::error::CoworkError;

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 (UTC, milliseconds) of a stored time.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Id (UUIDv7).
    pub session_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// Who created it (token subject).
    pub created_by: String,
    /// Where it is.
    pub state: SessionState,
    /// Short title.
    pub title: String,
    /// What the person asked for.
    pub request: String,
    /// The source workspace (canonical path).
    pub workspace: String,
    /// The session's staging sandbox.
    pub sandbox_id: Uuid,
    /// Requested decomposition strategy.
    pub strategy: String,
    /// Current plan version (0 before the first plan).
    pub plan_version: i32,
    /// `model:<name>` or `offline` once planned.
    pub planner: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The creating request's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Created (ms).
    pub created_ms: i64,
    /// Last changed (ms).
    pub updated_ms: i64,
    /// Reached a final state (ms).
    pub finished_ms: Option<i64>,
}

/// A plan version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    /// The session.
    pub session_id: Uuid,
    /// 1, 2, ...
    pub version: i32,
    /// `model`, `offline` or `edited`.
    pub source: String,
    /// The plan as JSON text.
    pub body: String,
    /// Why it was made (re-plan feedback), if given.
    pub feedback: Option<String>,
    /// Created (ms).
    pub created_ms: i64,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// Id (UUIDv7).
    pub step_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// The plan version it belongs to.
    pub plan_version: i32,
    /// Its id in the plan.
    pub plan_key: String,
    /// Position in the plan.
    pub position: i32,
    /// Where it is.
    pub state: StepState,
    /// The plan step as JSON text.
    pub body: String,
    /// Agents started for it so far.
    pub attempts: i32,
    /// Why it failed.
    pub error: Option<String>,
    /// The runner of its last agent (`platform`, `claude`, ...).
    pub runner: Option<String>,
    /// The agent's closing words.
    pub summary: Option<String>,
    /// First started (ms).
    pub started_ms: Option<i64>,
    /// Finished (ms).
    pub finished_ms: Option<i64>,
    /// Last changed (ms).
    pub updated_ms: i64,
}

/// An agent (one attempt at one step) as stored: also the queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// Id (UUIDv7).
    pub agent_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// The session.
    pub session_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// Which attempt at the step (1-based).
    pub attempt: i32,
    /// Attempts the step gets.
    pub max_attempts: i32,
    /// The specialist.
    pub domain: String,
    /// Queue priority.
    pub priority: Priority,
    /// Where it is.
    pub state: AgentState,
    /// Not before (ms).
    pub run_at_ms: i64,
    /// The replica holding it.
    pub lease_owner: Option<String>,
    /// When the lease ends unless renewed (ms).
    pub lease_expires_ms: Option<i64>,
    /// Last heartbeat (ms).
    pub heartbeat_ms: Option<i64>,
    /// The container-pool claim it works in.
    pub claim_id: Option<String>,
    /// `platform` or the CLI that ran.
    pub runner: Option<String>,
    /// Why it failed, died or was terminated.
    pub error: Option<String>,
    /// Created (ms).
    pub created_ms: i64,
    /// Last changed (ms).
    pub updated_ms: i64,
    /// Finished (ms).
    pub finished_ms: Option<i64>,
}

/// An artifact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    /// Id (UUIDv7).
    pub artifact_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// The session.
    pub session_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// The agent that produced it.
    pub agent_id: Uuid,
    /// `patch`, `file` or `log`.
    pub kind: String,
    /// A file's path, `step.patch`, `step.log`.
    pub name: String,
    /// `text/x-diff`, `text/plain`, `application/octet-stream`.
    pub media_type: String,
    /// `utf-8` or `base64`.
    pub encoding: String,
    /// Bytes of the original content.
    pub size: i64,
    /// SHA-256 of the original content.
    pub sha256: String,
    /// The content (cut at `executor.max_artifact_bytes`, see `truncated`).
    pub content: String,
    /// The content was cut.
    pub truncated: bool,
    /// Created (ms).
    pub created_ms: i64,
}

/// One entry of a session's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// Id (UUIDv7; the bus event id too; the cursor).
    pub event_id: Uuid,
    /// Owning tenant.
    #[serde(skip)]
    pub tenant: String,
    /// The session.
    pub session_id: Uuid,
    /// `session:created`, `subtask:progress`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's data as JSON text.
    #[serde(skip)]
    pub data: String,
    /// When (ms).
    #[serde(skip)]
    pub at_ms: i64,
}

/// Queue sizes of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Agents waiting, by priority name.
    pub queued_by_priority: std::collections::BTreeMap<String, i64>,
    /// Agents waiting in total.
    pub queued: i64,
    /// Agents working.
    pub running: i64,
    /// The tenant's queue is paused.
    pub paused: bool,
}

/// Which agents a termination or re-prioritisation applies to (always within one tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSelector {
    /// One agent.
    Agent(Uuid),
    /// Every agent of a session.
    Session(Uuid),
    /// Every agent of the tenant.
    All,
}

/// A step's state change, applied only from the listed states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpdate {
    /// States the step may be in.
    pub from: Vec<StepState>,
    /// The new state.
    pub to: StepState,
    /// Error text to record.
    pub error: Option<String>,
    /// Runner to record.
    pub runner: Option<String>,
    /// Summary to record.
    pub summary: Option<String>,
    /// When (ms).
    pub at_ms: i64,
}

/// Joins states for the `(',' || $n || ',') LIKE ('%,' || state || ',%')` test both databases
/// understand.
pub fn state_list<I: IntoIterator<Item = &'static str>>(states: I) -> String {
    states.into_iter().collect::<Vec<_>>().join(",")
}

/// Cowork's persistent session state.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a new session. `false` when its idempotency key is already used.
    async fn insert_session(&self, row: &SessionRow) -> Result<bool, CoworkError>;
    /// The tenant's session created with `key`.
    async fn session_by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<SessionRow>, CoworkError>;
    /// A session of `tenant`.
    async fn session(&self, tenant: &str, id: Uuid) -> Result<Option<SessionRow>, CoworkError>;
    /// The tenant's sessions, newest first, older than the cursor, optionally in one state.
    async fn sessions(
        &self,
        tenant: &str,
        state: Option<SessionState>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionRow>, CoworkError>;
    /// Every tenant's sessions in `state` (start-up recovery), oldest first.
    async fn sessions_in_state(
        &self,
        state: SessionState,
        limit: i64,
    ) -> Result<Vec<SessionRow>, CoworkError>;
    /// Moves a session from one of `from` to `to` (recording `error`); `false` when it was in
    /// none of them.
    async fn transition_session(
        &self,
        tenant: &str,
        id: Uuid,
        from: &[SessionState],
        to: SessionState,
        error: Option<&str>,
        at_ms: i64,
    ) -> Result<bool, CoworkError>;
    /// Stores plan version `plan.version` and moves the session from `from` to `to` with that
    /// version current, in one transaction; `false` (nothing stored) when it was not in `from`.
    async fn store_plan(
        &self,
        tenant: &str,
        plan: &PlanRow,
        planner: &str,
        from: SessionState,
        to: SessionState,
    ) -> Result<bool, CoworkError>;
    /// A plan version of the tenant's session.
    async fn plan(
        &self,
        tenant: &str,
        session: Uuid,
        version: i32,
    ) -> Result<Option<PlanRow>, CoworkError>;
    /// Approves: moves the session from `awaiting_approval` to `running`, stores `edited` as a
    /// new current plan version when given, and inserts the steps, in one transaction;
    /// `false` (nothing changed) when the session was not awaiting approval of `version`.
    async fn approve(
        &self,
        tenant: &str,
        session: Uuid,
        version: i32,
        edited: Option<&PlanRow>,
        steps: &[StepRow],
        at_ms: i64,
    ) -> Result<bool, CoworkError>;
    /// The steps of the session's current plan, in plan order.
    async fn steps(&self, tenant: &str, session: Uuid) -> Result<Vec<StepRow>, CoworkError>;
    /// A step of the tenant.
    async fn step(&self, tenant: &str, step: Uuid) -> Result<Option<StepRow>, CoworkError>;
    /// Applies `update` when the step is in one of `update.from`; `false` otherwise.
    async fn update_step(&self, step: Uuid, update: &StepUpdate) -> Result<bool, CoworkError>;
    /// Spawns agents in one transaction: for each, its step moves from one of `step_from` to
    /// `queued` and the agent is inserted; an agent whose step was elsewhere is left out.
    /// Returns the agents inserted.
    async fn spawn_agents(
        &self,
        agents: &[AgentRow],
        step_from: &[StepState],
    ) -> Result<Vec<AgentRow>, CoworkError>;
    /// Leases up to `max` due agents to `worker` (highest priority, earliest due, oldest),
    /// skipping paused tenants and sessions that are not running; their steps become running.
    async fn claim_agents(
        &self,
        worker: &str,
        lease_ms: i64,
        max: i64,
        now_ms: i64,
    ) -> Result<Vec<AgentRow>, CoworkError>;
    /// Renews a held lease; `false` when the agent is no longer running under `worker`
    /// (terminated, declared dead): the worker must stop.
    async fn heartbeat(
        &self,
        agent: Uuid,
        worker: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, CoworkError>;
    /// Records the container claim and runner of a running agent.
    async fn set_agent_claim(
        &self,
        agent: Uuid,
        claim_id: Option<&str>,
        runner: Option<&str>,
    ) -> Result<(), CoworkError>;
    /// Ends a running agent held by `worker` in `to`; `false` when it was not.
    async fn finish_agent(
        &self,
        agent: Uuid,
        worker: &str,
        to: AgentState,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, CoworkError>;
    /// Running agents whose lease ended before `now_ms` (every tenant).
    async fn expired_agents(&self, now_ms: i64, limit: i64) -> Result<Vec<AgentRow>, CoworkError>;
    /// Declares a running agent whose lease ended dead; `false` when another replica did, or
    /// it renewed in time.
    async fn mark_dead(&self, agent: Uuid, now_ms: i64, reason: &str) -> Result<bool, CoworkError>;
    /// Terminates the selected queued or running agents; returns them as they were.
    async fn terminate_agents(
        &self,
        tenant: &str,
        which: AgentSelector,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<AgentRow>, CoworkError>;
    /// Sets the priority of the selected queued agents; returns how many changed.
    async fn reprioritize(
        &self,
        tenant: &str,
        which: AgentSelector,
        priority: Priority,
        now_ms: i64,
    ) -> Result<u64, CoworkError>;
    /// An agent of the tenant.
    async fn agent(&self, tenant: &str, id: Uuid) -> Result<Option<AgentRow>, CoworkError>;
    /// The tenant's agents (of one session, in one state), oldest first after the cursor.
    async fn agents(
        &self,
        tenant: &str,
        session: Option<Uuid>,
        state: Option<AgentState>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, CoworkError>;
    /// The tenant's queued agents in claim order.
    async fn queued(&self, tenant: &str, limit: i64) -> Result<Vec<AgentRow>, CoworkError>;
    /// The tenant's queue sizes.
    async fn queue_counts(&self, tenant: &str) -> Result<QueueCounts, CoworkError>;
    /// Pauses or resumes the tenant's queue.
    async fn set_queue_paused(
        &self,
        tenant: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<(), CoworkError>;
    /// Agents of every tenant by state (metrics).
    async fn count_agents(&self) -> Result<Vec<(String, i64)>, CoworkError>;
    /// Sessions of every tenant by state (metrics).
    async fn count_sessions(&self) -> Result<Vec<(String, i64)>, CoworkError>;
    /// Stores artifacts.
    async fn insert_artifacts(&self, rows: &[ArtifactRow]) -> Result<(), CoworkError>;
    /// The session's artifacts (of one step), oldest first.
    async fn artifacts(
        &self,
        tenant: &str,
        session: Uuid,
        step: Option<Uuid>,
    ) -> Result<Vec<ArtifactRow>, CoworkError>;
    /// Appends to the session's event log.
    async fn insert_event(&self, row: &EventRow) -> Result<(), CoworkError>;
    /// The session's events after the cursor, oldest first.
    async fn events(
        &self,
        tenant: &str,
        session: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<EventRow>, CoworkError>;
}

pub(crate) fn corrupt(what: &str, value: &str) -> CoworkError {
    CoworkError::Corrupt(format!("{what} `{value}`"))
}
