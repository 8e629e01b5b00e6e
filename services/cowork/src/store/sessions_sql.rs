//! [`SessionStore`] on PostgreSQL and SQLite from one SQL text: a macro expands the same
//! statements for each pool type, so the two backends cannot drift apart. What differs is
//! passed in: how a writing transaction starts (`BEGIN IMMEDIATE` on SQLite, so claims queue on
//! the write lock instead of failing on an upgrade) and the row lock of a claim (`FOR UPDATE OF
//! a SKIP LOCKED` on Postgres, so replicas never wait for each other's rows). Placeholders are
//! `$n`, which both understand. Statements built with `format!` join only the column lists and
//! fragments defined in this file (hence `AssertSqlSafe`); every value is a bound parameter.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Row, SqlitePool};
use uuid::Uuid;

use super::sessions::{
    AgentRow, AgentSelector, ArtifactRow, EventRow, PlanRow, QueueCounts, SessionRow, SessionStore,
    StepRow, StepUpdate, corrupt, state_list,
};
use crate::domain::plan::StepState;
use crate::domain::schedule::{AgentState, Priority, QUEUE_ORDER_SQL, SessionState};
use crate::error::CoworkError;

/// Sessions on Postgres.
#[derive(Debug, Clone)]
pub struct PostgresSessionStore {
    pool: PgPool,
}

impl PostgresSessionStore {
    /// A store on `pool` (migrated).
    pub fn new(pool: PgPool) -> Self {
        PostgresSessionStore { pool }
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, CoworkError> {
        Ok(self.pool.begin().await?)
    }
}

/// Sessions on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    pool: SqlitePool,
}

impl SqliteSessionStore {
    /// A store on `pool` (migrated).
    pub fn new(pool: SqlitePool) -> Self {
        SqliteSessionStore { pool }
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, CoworkError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

const SESSION_COLS: &str = "session_id, tenant, created_by, state, title, request, workspace, \
    sandbox_id, strategy, plan_version, planner, error, idempotency_key, created_ms, updated_ms, \
    finished_ms";
const STEP_COLS: &str = "step_id, session_id, tenant, plan_version, plan_key, position, state, \
    body, attempts, error, runner, summary, started_ms, finished_ms, updated_ms";
const AGENT_COLS: &str = "agent_id, tenant, session_id, step_id, attempt, max_attempts, domain, \
    priority, state, run_at_ms, lease_owner, lease_expires_ms, heartbeat_ms, claim_id, runner, \
    error, created_ms, updated_ms, finished_ms";
const ARTIFACT_COLS: &str = "artifact_id, tenant, session_id, step_id, agent_id, kind, name, \
    media_type, encoding, size, sha256, content, truncated, created_ms";
const PLAN_COLS: &str = "session_id, version, source, body, feedback, created_ms";

/// A `WHERE` test that `state` is in the comma-joined list bound at `$n`.
fn state_in(n: usize) -> String {
    format!("(',' || ${n} || ',') LIKE ('%,' || state || ',%')")
}

macro_rules! decoders {
    ($row:ty) => {
        pub(super) fn session_row(r: &$row) -> Result<SessionRow, CoworkError> {
            let state: String = r.try_get("state")?;
            Ok(SessionRow {
                session_id: r.try_get("session_id")?,
                tenant: r.try_get("tenant")?,
                created_by: r.try_get("created_by")?,
                state: SessionState::parse(&state)
                    .ok_or_else(|| corrupt("session state", &state))?,
                title: r.try_get("title")?,
                request: r.try_get("request")?,
                workspace: r.try_get("workspace")?,
                sandbox_id: r.try_get("sandbox_id")?,
                strategy: r.try_get("strategy")?,
                plan_version: r.try_get("plan_version")?,
                planner: r.try_get("planner")?,
                error: r.try_get("error")?,
                idempotency_key: r.try_get("idempotency_key")?,
                created_ms: r.try_get("created_ms")?,
                updated_ms: r.try_get("updated_ms")?,
                finished_ms: r.try_get("finished_ms")?,
            })
        }

        pub(super) fn plan_row(r: &$row) -> Result<PlanRow, CoworkError> {
            Ok(PlanRow {
                session_id: r.try_get("session_id")?,
                version: r.try_get("version")?,
                source: r.try_get("source")?,
                body: r.try_get("body")?,
                feedback: r.try_get("feedback")?,
                created_ms: r.try_get("created_ms")?,
            })
        }

        pub(super) fn step_row(r: &$row) -> Result<StepRow, CoworkError> {
            let state: String = r.try_get("state")?;
            Ok(StepRow {
                step_id: r.try_get("step_id")?,
                session_id: r.try_get("session_id")?,
                tenant: r.try_get("tenant")?,
                plan_version: r.try_get("plan_version")?,
                plan_key: r.try_get("plan_key")?,
                position: r.try_get("position")?,
                state: StepState::parse(&state).ok_or_else(|| corrupt("step state", &state))?,
                body: r.try_get("body")?,
                attempts: r.try_get("attempts")?,
                error: r.try_get("error")?,
                runner: r.try_get("runner")?,
                summary: r.try_get("summary")?,
                started_ms: r.try_get("started_ms")?,
                finished_ms: r.try_get("finished_ms")?,
                updated_ms: r.try_get("updated_ms")?,
            })
        }

        pub(super) fn agent_row(r: &$row) -> Result<AgentRow, CoworkError> {
            let state: String = r.try_get("state")?;
            let priority: i32 = r.try_get("priority")?;
            Ok(AgentRow {
                agent_id: r.try_get("agent_id")?,
                tenant: r.try_get("tenant")?,
                session_id: r.try_get("session_id")?,
                step_id: r.try_get("step_id")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                domain: r.try_get("domain")?,
                priority: Priority::from_rank(priority)
                    .ok_or_else(|| corrupt("priority", &priority.to_string()))?,
                state: AgentState::parse(&state).ok_or_else(|| corrupt("agent state", &state))?,
                run_at_ms: r.try_get("run_at_ms")?,
                lease_owner: r.try_get("lease_owner")?,
                lease_expires_ms: r.try_get("lease_expires_ms")?,
                heartbeat_ms: r.try_get("heartbeat_ms")?,
                claim_id: r.try_get("claim_id")?,
                runner: r.try_get("runner")?,
                error: r.try_get("error")?,
                created_ms: r.try_get("created_ms")?,
                updated_ms: r.try_get("updated_ms")?,
                finished_ms: r.try_get("finished_ms")?,
            })
        }

        pub(super) fn artifact_row(r: &$row) -> Result<ArtifactRow, CoworkError> {
            Ok(ArtifactRow {
                artifact_id: r.try_get("artifact_id")?,
                tenant: r.try_get("tenant")?,
                session_id: r.try_get("session_id")?,
                step_id: r.try_get("step_id")?,
                agent_id: r.try_get("agent_id")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                media_type: r.try_get("media_type")?,
                encoding: r.try_get("encoding")?,
                size: r.try_get("size")?,
                sha256: r.try_get("sha256")?,
                content: r.try_get("content")?,
                truncated: r.try_get("truncated")?,
                created_ms: r.try_get("created_ms")?,
            })
        }

        pub(super) fn event_row(r: &$row) -> Result<EventRow, CoworkError> {
            Ok(EventRow {
                event_id: r.try_get("event_id")?,
                tenant: r.try_get("tenant")?,
                session_id: r.try_get("session_id")?,
                kind: r.try_get("kind")?,
                data: r.try_get("data")?,
                at_ms: r.try_get("at_ms")?,
            })
        }
    };
}

mod pg_rows {
    use super::*;
    decoders!(PgRow);
}

mod sqlite_rows {
    use super::*;
    decoders!(SqliteRow);
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn selector_sql(which: AgentSelector, n: usize) -> String {
    match which {
        AgentSelector::Agent(_) => format!("agent_id = ${n}"),
        AgentSelector::Session(_) => format!("session_id = ${n}"),
        AgentSelector::All => format!("(${n} IS NULL OR TRUE)"),
    }
}

fn selector_id(which: AgentSelector) -> Option<Uuid> {
    match which {
        AgentSelector::Agent(id) | AgentSelector::Session(id) => Some(id),
        AgentSelector::All => None,
    }
}

macro_rules! session_store {
    ($store:ty, $rows:ident, $lock:literal) => {
        #[async_trait]
        impl SessionStore for $store {
            async fn insert_session(&self, r: &SessionRow) -> Result<bool, CoworkError> {
                let q = format!(
                    "INSERT INTO cowork_sessions ({SESSION_COLS}) VALUES \
                     ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
                );
                let res = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(r.session_id)
                    .bind(&r.tenant)
                    .bind(&r.created_by)
                    .bind(r.state.as_str())
                    .bind(&r.title)
                    .bind(&r.request)
                    .bind(&r.workspace)
                    .bind(r.sandbox_id)
                    .bind(&r.strategy)
                    .bind(r.plan_version)
                    .bind(&r.planner)
                    .bind(&r.error)
                    .bind(&r.idempotency_key)
                    .bind(r.created_ms)
                    .bind(r.updated_ms)
                    .bind(r.finished_ms)
                    .execute(&self.pool)
                    .await;
                match res {
                    Ok(_) => Ok(true),
                    Err(e) if is_unique_violation(&e) && r.idempotency_key.is_some() => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }

            async fn session_by_key(
                &self,
                tenant: &str,
                key: &str,
            ) -> Result<Option<SessionRow>, CoworkError> {
                let q = format!(
                    "SELECT {SESSION_COLS} FROM cowork_sessions WHERE tenant = $1 AND idempotency_key = $2"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(key).fetch_optional(&self.pool).await?;
                row.as_ref().map($rows::session_row).transpose()
            }

            async fn session(
                &self,
                tenant: &str,
                id: Uuid,
            ) -> Result<Option<SessionRow>, CoworkError> {
                let q = format!(
                    "SELECT {SESSION_COLS} FROM cowork_sessions WHERE tenant = $1 AND session_id = $2"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map($rows::session_row).transpose()
            }

            async fn sessions(
                &self,
                tenant: &str,
                state: Option<SessionState>,
                before: Option<Uuid>,
                limit: i64,
            ) -> Result<Vec<SessionRow>, CoworkError> {
                let q = format!(
                    "SELECT {SESSION_COLS} FROM cowork_sessions WHERE tenant = $1 \
                     AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR session_id < $3) \
                     ORDER BY session_id DESC LIMIT $4"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(tenant)
                    .bind(state.map(|s| s.as_str()))
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($rows::session_row).collect()
            }

            async fn sessions_in_state(
                &self,
                state: SessionState,
                limit: i64,
            ) -> Result<Vec<SessionRow>, CoworkError> {
                let q = format!(
                    "SELECT {SESSION_COLS} FROM cowork_sessions WHERE state = $1 \
                     ORDER BY session_id LIMIT $2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(state.as_str()).bind(limit).fetch_all(&self.pool).await?;
                rows.iter().map($rows::session_row).collect()
            }

            async fn transition_session(
                &self,
                tenant: &str,
                id: Uuid,
                from: &[SessionState],
                to: SessionState,
                error: Option<&str>,
                at_ms: i64,
            ) -> Result<bool, CoworkError> {
                let q = format!(
                    "UPDATE cowork_sessions SET state = $1, error = COALESCE($2, error), updated_ms = $3, \
                     finished_ms = CASE WHEN $4 THEN $3 ELSE finished_ms END \
                     WHERE tenant = $5 AND session_id = $6 AND {}",
                    state_in(7)
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(to.as_str())
                    .bind(error)
                    .bind(at_ms)
                    .bind(to.is_final())
                    .bind(tenant)
                    .bind(id)
                    .bind(state_list(from.iter().map(|s| s.as_str())))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn store_plan(
                &self,
                tenant: &str,
                plan: &PlanRow,
                planner: &str,
                from: SessionState,
                to: SessionState,
            ) -> Result<bool, CoworkError> {
                let mut tx = self.write_tx().await?;
                let moved = sqlx::query(
                    "UPDATE cowork_sessions SET state = $1, plan_version = $2, planner = $3, \
                     error = NULL, updated_ms = $4 WHERE tenant = $5 AND session_id = $6 AND state = $7",
                )
                .bind(to.as_str())
                .bind(plan.version)
                .bind(planner)
                .bind(plan.created_ms)
                .bind(tenant)
                .bind(plan.session_id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Ok(false);
                }
                let q = format!("INSERT INTO cowork_plans ({PLAN_COLS}) VALUES ($1,$2,$3,$4,$5,$6)");
                sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(plan.session_id)
                    .bind(plan.version)
                    .bind(&plan.source)
                    .bind(&plan.body)
                    .bind(&plan.feedback)
                    .bind(plan.created_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn plan(
                &self,
                tenant: &str,
                session: Uuid,
                version: i32,
            ) -> Result<Option<PlanRow>, CoworkError> {
                let q = format!(
                    "SELECT p.session_id, p.version, p.source, p.body, p.feedback, p.created_ms \
                     FROM cowork_plans p JOIN cowork_sessions s ON s.session_id = p.session_id \
                     WHERE s.tenant = $1 AND p.session_id = $2 AND p.version = $3"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(tenant)
                    .bind(session)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($rows::plan_row).transpose()
            }

            async fn approve(
                &self,
                tenant: &str,
                session: Uuid,
                version: i32,
                edited: Option<&PlanRow>,
                steps: &[StepRow],
                at_ms: i64,
            ) -> Result<bool, CoworkError> {
                let mut tx = self.write_tx().await?;
                let new_version = edited.map_or(version, |p| p.version);
                let moved = sqlx::query(
                    "UPDATE cowork_sessions SET state = 'running', plan_version = $1, updated_ms = $2 \
                     WHERE tenant = $3 AND session_id = $4 AND state = 'awaiting_approval' \
                     AND plan_version = $5",
                )
                .bind(new_version)
                .bind(at_ms)
                .bind(tenant)
                .bind(session)
                .bind(version)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Ok(false);
                }
                if let Some(p) = edited {
                    let q = format!("INSERT INTO cowork_plans ({PLAN_COLS}) VALUES ($1,$2,$3,$4,$5,$6)");
                    sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                        .bind(p.session_id)
                        .bind(p.version)
                        .bind(&p.source)
                        .bind(&p.body)
                        .bind(&p.feedback)
                        .bind(p.created_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                let q = format!(
                    "INSERT INTO cowork_steps ({STEP_COLS}) VALUES \
                     ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
                );
                for s in steps {
                    sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                        .bind(s.step_id)
                        .bind(s.session_id)
                        .bind(&s.tenant)
                        .bind(s.plan_version)
                        .bind(&s.plan_key)
                        .bind(s.position)
                        .bind(s.state.as_str())
                        .bind(&s.body)
                        .bind(s.attempts)
                        .bind(&s.error)
                        .bind(&s.runner)
                        .bind(&s.summary)
                        .bind(s.started_ms)
                        .bind(s.finished_ms)
                        .bind(s.updated_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn steps(&self, tenant: &str, session: Uuid) -> Result<Vec<StepRow>, CoworkError> {
                let q = format!(
                    "SELECT {STEP_COLS} FROM cowork_steps WHERE tenant = $1 AND session_id = $2 \
                     AND plan_version = (SELECT plan_version FROM cowork_sessions \
                                         WHERE session_id = $2 AND tenant = $1) \
                     ORDER BY position"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(session).fetch_all(&self.pool).await?;
                rows.iter().map($rows::step_row).collect()
            }

            async fn step(&self, tenant: &str, step: Uuid) -> Result<Option<StepRow>, CoworkError> {
                let q = format!("SELECT {STEP_COLS} FROM cowork_steps WHERE tenant = $1 AND step_id = $2");
                let row = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(step).fetch_optional(&self.pool).await?;
                row.as_ref().map($rows::step_row).transpose()
            }

            async fn update_step(&self, step: Uuid, u: &StepUpdate) -> Result<bool, CoworkError> {
                let q = format!(
                    "UPDATE cowork_steps SET state = $1, error = COALESCE($2, error), \
                     runner = COALESCE($3, runner), summary = COALESCE($4, summary), updated_ms = $5, \
                     finished_ms = CASE WHEN $6 THEN $5 ELSE finished_ms END \
                     WHERE step_id = $7 AND {}",
                    state_in(8)
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(u.to.as_str())
                    .bind(&u.error)
                    .bind(&u.runner)
                    .bind(&u.summary)
                    .bind(u.at_ms)
                    .bind(u.to.is_final())
                    .bind(step)
                    .bind(state_list(u.from.iter().map(|s| s.as_str())))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn spawn_agents(
                &self,
                agents: &[AgentRow],
                step_from: &[StepState],
            ) -> Result<Vec<AgentRow>, CoworkError> {
                let mut tx = self.write_tx().await?;
                let from = state_list(step_from.iter().map(|s| s.as_str()));
                let move_step = format!(
                    "UPDATE cowork_steps SET state = 'queued', updated_ms = $1, error = NULL \
                     WHERE step_id = $2 AND tenant = $3 AND {}",
                    state_in(4)
                );
                let insert = format!(
                    "INSERT INTO cowork_agents ({AGENT_COLS}) VALUES \
                     ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
                );
                let mut out = Vec::new();
                for a in agents {
                    let moved = sqlx::query(sqlx::AssertSqlSafe(move_step.clone()))
                        .bind(a.created_ms)
                        .bind(a.step_id)
                        .bind(&a.tenant)
                        .bind(&from)
                        .execute(&mut *tx)
                        .await?;
                    if moved.rows_affected() != 1 {
                        continue;
                    }
                    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                        .bind(a.agent_id)
                        .bind(&a.tenant)
                        .bind(a.session_id)
                        .bind(a.step_id)
                        .bind(a.attempt)
                        .bind(a.max_attempts)
                        .bind(&a.domain)
                        .bind(a.priority.rank())
                        .bind(a.state.as_str())
                        .bind(a.run_at_ms)
                        .bind(&a.lease_owner)
                        .bind(a.lease_expires_ms)
                        .bind(a.heartbeat_ms)
                        .bind(&a.claim_id)
                        .bind(&a.runner)
                        .bind(&a.error)
                        .bind(a.created_ms)
                        .bind(a.updated_ms)
                        .bind(a.finished_ms)
                        .execute(&mut *tx)
                        .await?;
                    out.push(a.clone());
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn claim_agents(
                &self,
                worker: &str,
                lease_ms: i64,
                max: i64,
                now_ms: i64,
            ) -> Result<Vec<AgentRow>, CoworkError> {
                if max <= 0 {
                    return Ok(Vec::new());
                }
                let mut tx = self.write_tx().await?;
                let q = format!(
                    "UPDATE cowork_agents SET state = 'running', lease_owner = $1, lease_expires_ms = $2, \
                     heartbeat_ms = $3, updated_ms = $3 \
                     WHERE agent_id IN ( \
                       SELECT a.agent_id FROM cowork_agents a \
                       WHERE a.state = 'queued' AND a.run_at_ms <= $3 \
                         AND NOT EXISTS (SELECT 1 FROM cowork_queue_pauses p WHERE p.tenant = a.tenant) \
                         AND EXISTS (SELECT 1 FROM cowork_sessions s \
                                     WHERE s.session_id = a.session_id AND s.state = 'running') \
                       ORDER BY a.{order} LIMIT $4 {lock}) \
                     RETURNING {AGENT_COLS}",
                    order = QUEUE_ORDER_SQL.replace(", ", ", a."),
                    lock = $lock,
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(worker)
                    .bind(now_ms.saturating_add(lease_ms))
                    .bind(now_ms)
                    .bind(max)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut agents: Vec<AgentRow> =
                    rows.iter().map($rows::agent_row).collect::<Result<_, _>>()?;
                for a in &agents {
                    sqlx::query(
                        "UPDATE cowork_steps SET state = 'running', attempts = $1, \
                         started_ms = COALESCE(started_ms, $2), updated_ms = $2 WHERE step_id = $3",
                    )
                    .bind(a.attempt)
                    .bind(now_ms)
                    .bind(a.step_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                agents.sort_by_key(|a| crate::domain::schedule::QueueKey {
                    priority: a.priority,
                    run_at_ms: a.run_at_ms,
                    agent_id: a.agent_id,
                });
                Ok(agents)
            }

            async fn heartbeat(
                &self,
                agent: Uuid,
                worker: &str,
                lease_ms: i64,
                now_ms: i64,
            ) -> Result<bool, CoworkError> {
                let done = sqlx::query(
                    "UPDATE cowork_agents SET heartbeat_ms = $1, lease_expires_ms = $2, updated_ms = $1 \
                     WHERE agent_id = $3 AND lease_owner = $4 AND state = 'running'",
                )
                .bind(now_ms)
                .bind(now_ms.saturating_add(lease_ms))
                .bind(agent)
                .bind(worker)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_agent_claim(
                &self,
                agent: Uuid,
                claim_id: Option<&str>,
                runner: Option<&str>,
            ) -> Result<(), CoworkError> {
                sqlx::query(
                    "UPDATE cowork_agents SET claim_id = COALESCE($1, claim_id), \
                     runner = COALESCE($2, runner) WHERE agent_id = $3",
                )
                .bind(claim_id)
                .bind(runner)
                .bind(agent)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn finish_agent(
                &self,
                agent: Uuid,
                worker: &str,
                to: AgentState,
                error: Option<&str>,
                now_ms: i64,
            ) -> Result<bool, CoworkError> {
                let done = sqlx::query(
                    "UPDATE cowork_agents SET state = $1, error = $2, updated_ms = $3, finished_ms = $3, \
                     lease_expires_ms = NULL WHERE agent_id = $4 AND lease_owner = $5 AND state = 'running'",
                )
                .bind(to.as_str())
                .bind(error)
                .bind(now_ms)
                .bind(agent)
                .bind(worker)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn expired_agents(&self, now_ms: i64, limit: i64) -> Result<Vec<AgentRow>, CoworkError> {
                let q = format!(
                    "SELECT {AGENT_COLS} FROM cowork_agents WHERE state = 'running' \
                     AND lease_expires_ms < $1 ORDER BY agent_id LIMIT $2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(now_ms).bind(limit).fetch_all(&self.pool).await?;
                rows.iter().map($rows::agent_row).collect()
            }

            async fn mark_dead(&self, agent: Uuid, now_ms: i64, reason: &str) -> Result<bool, CoworkError> {
                let done = sqlx::query(
                    "UPDATE cowork_agents SET state = 'dead', error = $1, updated_ms = $2, finished_ms = $2, \
                     lease_expires_ms = NULL WHERE agent_id = $3 AND state = 'running' AND lease_expires_ms < $2",
                )
                .bind(reason)
                .bind(now_ms)
                .bind(agent)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn terminate_agents(
                &self,
                tenant: &str,
                which: AgentSelector,
                reason: &str,
                now_ms: i64,
            ) -> Result<Vec<AgentRow>, CoworkError> {
                let mut tx = self.write_tx().await?;
                let q = format!(
                    "SELECT {AGENT_COLS} FROM cowork_agents WHERE tenant = $1 \
                     AND state IN ('queued', 'running') AND {} ORDER BY agent_id",
                    selector_sql(which, 2)
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(tenant)
                    .bind(selector_id(which))
                    .fetch_all(&mut *tx)
                    .await?;
                let before: Vec<AgentRow> = rows.iter().map($rows::agent_row).collect::<Result<_, _>>()?;
                for a in &before {
                    sqlx::query(
                        "UPDATE cowork_agents SET state = 'terminated', error = $1, updated_ms = $2, \
                         finished_ms = $2, lease_expires_ms = NULL \
                         WHERE agent_id = $3 AND state IN ('queued', 'running')",
                    )
                    .bind(reason)
                    .bind(now_ms)
                    .bind(a.agent_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(before)
            }

            async fn reprioritize(
                &self,
                tenant: &str,
                which: AgentSelector,
                priority: Priority,
                now_ms: i64,
            ) -> Result<u64, CoworkError> {
                let q = format!(
                    "UPDATE cowork_agents SET priority = $1, updated_ms = $2 \
                     WHERE tenant = $3 AND state = 'queued' AND {}",
                    selector_sql(which, 4)
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(priority.rank())
                    .bind(now_ms)
                    .bind(tenant)
                    .bind(selector_id(which))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn agent(&self, tenant: &str, id: Uuid) -> Result<Option<AgentRow>, CoworkError> {
                let q = format!("SELECT {AGENT_COLS} FROM cowork_agents WHERE tenant = $1 AND agent_id = $2");
                let row = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map($rows::agent_row).transpose()
            }

            async fn agents(
                &self,
                tenant: &str,
                session: Option<Uuid>,
                state: Option<AgentState>,
                after: Option<Uuid>,
                limit: i64,
            ) -> Result<Vec<AgentRow>, CoworkError> {
                let q = format!(
                    "SELECT {AGENT_COLS} FROM cowork_agents WHERE tenant = $1 \
                     AND ($2 IS NULL OR session_id = $2) AND ($3 IS NULL OR state = $3) \
                     AND ($4 IS NULL OR agent_id > $4) ORDER BY agent_id LIMIT $5"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(tenant)
                    .bind(session)
                    .bind(state.map(|s| s.as_str()))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($rows::agent_row).collect()
            }

            async fn queued(&self, tenant: &str, limit: i64) -> Result<Vec<AgentRow>, CoworkError> {
                let q = format!(
                    "SELECT {AGENT_COLS} FROM cowork_agents WHERE tenant = $1 AND state = 'queued' \
                     ORDER BY {QUEUE_ORDER_SQL} LIMIT $2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(tenant).bind(limit).fetch_all(&self.pool).await?;
                rows.iter().map($rows::agent_row).collect()
            }

            async fn queue_counts(&self, tenant: &str) -> Result<QueueCounts, CoworkError> {
                let rows = sqlx::query(
                    "SELECT state, priority, COUNT(*) AS n FROM cowork_agents \
                     WHERE tenant = $1 AND state IN ('queued', 'running') GROUP BY state, priority",
                )
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
                let mut out = QueueCounts::default();
                for p in Priority::ALL {
                    out.queued_by_priority.insert(p.as_str().to_owned(), 0);
                }
                for r in &rows {
                    let state: String = r.try_get("state")?;
                    let rank: i32 = r.try_get("priority")?;
                    let n: i64 = r.try_get("n")?;
                    if state == "queued" {
                        out.queued += n;
                        if let Some(p) = Priority::from_rank(rank) {
                            *out.queued_by_priority.entry(p.as_str().to_owned()).or_default() += n;
                        }
                    } else {
                        out.running += n;
                    }
                }
                let paused = sqlx::query("SELECT 1 AS one FROM cowork_queue_pauses WHERE tenant = $1")
                    .bind(tenant)
                    .fetch_optional(&self.pool)
                    .await?;
                out.paused = paused.is_some();
                Ok(out)
            }

            async fn set_queue_paused(
                &self,
                tenant: &str,
                paused: bool,
                now_ms: i64,
            ) -> Result<(), CoworkError> {
                if paused {
                    sqlx::query(
                        "INSERT INTO cowork_queue_pauses (tenant, paused_ms) VALUES ($1, $2) \
                         ON CONFLICT (tenant) DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                } else {
                    sqlx::query("DELETE FROM cowork_queue_pauses WHERE tenant = $1")
                        .bind(tenant)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

            async fn count_agents(&self) -> Result<Vec<(String, i64)>, CoworkError> {
                let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM cowork_agents GROUP BY state")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
                    .collect()
            }

            async fn count_sessions(&self) -> Result<Vec<(String, i64)>, CoworkError> {
                let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM cowork_sessions GROUP BY state")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
                    .collect()
            }

            async fn insert_artifacts(&self, rows: &[ArtifactRow]) -> Result<(), CoworkError> {
                let mut tx = self.write_tx().await?;
                let q = format!(
                    "INSERT INTO cowork_artifacts ({ARTIFACT_COLS}) VALUES \
                     ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
                );
                for a in rows {
                    sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                        .bind(a.artifact_id)
                        .bind(&a.tenant)
                        .bind(a.session_id)
                        .bind(a.step_id)
                        .bind(a.agent_id)
                        .bind(&a.kind)
                        .bind(&a.name)
                        .bind(&a.media_type)
                        .bind(&a.encoding)
                        .bind(a.size)
                        .bind(&a.sha256)
                        .bind(&a.content)
                        .bind(a.truncated)
                        .bind(a.created_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn artifacts(
                &self,
                tenant: &str,
                session: Uuid,
                step: Option<Uuid>,
            ) -> Result<Vec<ArtifactRow>, CoworkError> {
                let q = format!(
                    "SELECT {ARTIFACT_COLS} FROM cowork_artifacts WHERE tenant = $1 AND session_id = $2 \
                     AND ($3 IS NULL OR step_id = $3) ORDER BY artifact_id"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                    .bind(tenant)
                    .bind(session)
                    .bind(step)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($rows::artifact_row).collect()
            }

            async fn insert_event(&self, e: &EventRow) -> Result<(), CoworkError> {
                sqlx::query(
                    "INSERT INTO cowork_events (event_id, tenant, session_id, kind, data, at_ms) \
                     VALUES ($1,$2,$3,$4,$5,$6)",
                )
                .bind(e.event_id)
                .bind(&e.tenant)
                .bind(e.session_id)
                .bind(&e.kind)
                .bind(&e.data)
                .bind(e.at_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn events(
                &self,
                tenant: &str,
                session: Uuid,
                after: Option<Uuid>,
                limit: i64,
            ) -> Result<Vec<EventRow>, CoworkError> {
                let rows = sqlx::query(
                    "SELECT event_id, tenant, session_id, kind, data, at_ms FROM cowork_events \
                     WHERE tenant = $1 AND session_id = $2 AND ($3 IS NULL OR event_id > $3) \
                     ORDER BY event_id LIMIT $4",
                )
                .bind(tenant)
                .bind(session)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($rows::event_row).collect()
            }
        }
    };
}

session_store!(PostgresSessionStore, pg_rows, "FOR UPDATE OF a SKIP LOCKED");
session_store!(SqliteSessionStore, sqlite_rows, "");
