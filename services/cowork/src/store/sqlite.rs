//! [`SandboxStore`] on SQLite (embedded mode; ids as UUID text, times as RFC 3339 text).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{
    AuditFilter, AuditRecord, SandboxRow, SandboxStore, detail_of, printable, state_of, to_i64,
};
use crate::domain::state::SandboxState;
use crate::error::CoworkError;

/// Cowork's sandbox tables on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteSandboxStore {
    pool: SqlitePool,
}

impl SqliteSandboxStore {
    /// A store on `pool` (migrated).
    pub fn new(pool: SqlitePool) -> Self {
        SqliteSandboxStore { pool }
    }
}

const COLUMNS: &str = "sandbox_id, tenant, session_id, state, label, source_path, work_path, \
    file_count, total_bytes, copy_summary, container_id, container_attached_at, a2a_task_id, \
    a2a_task_state, a2a_updated_at, live_instance, idempotency_key, created_at, updated_at, \
    expires_at, applied_at";

fn uuid_of(text: String) -> Result<Uuid, CoworkError> {
    Uuid::parse_str(&text).map_err(|e| CoworkError::Corrupt(format!("uuid `{text}`: {e}")))
}

fn uuid_opt(text: Option<String>) -> Result<Option<Uuid>, CoworkError> {
    text.map(uuid_of).transpose()
}

fn sandbox(row: &SqliteRow) -> Result<SandboxRow, CoworkError> {
    Ok(SandboxRow {
        sandbox_id: uuid_of(row.try_get("sandbox_id")?)?,
        tenant: row.try_get("tenant")?,
        session_id: uuid_of(row.try_get("session_id")?)?,
        state: state_of(row.try_get::<&str, _>("state")?)?,
        label: row.try_get("label")?,
        source_path: row.try_get("source_path")?,
        work_path: row.try_get("work_path")?,
        file_count: row.try_get("file_count")?,
        total_bytes: row.try_get("total_bytes")?,
        copy_summary: row.try_get("copy_summary")?,
        container_id: row.try_get("container_id")?,
        container_attached_at: row.try_get("container_attached_at")?,
        a2a_task_id: row.try_get("a2a_task_id")?,
        a2a_task_state: row.try_get("a2a_task_state")?,
        a2a_updated_at: row.try_get("a2a_updated_at")?,
        live_instance: uuid_opt(row.try_get("live_instance")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        applied_at: row.try_get("applied_at")?,
    })
}

fn audit(row: &SqliteRow) -> Result<AuditRecord, CoworkError> {
    Ok(AuditRecord {
        audit_id: uuid_of(row.try_get("audit_id")?)?,
        tenant: row.try_get("tenant")?,
        sandbox_id: uuid_opt(row.try_get("sandbox_id")?)?,
        session_id: uuid_opt(row.try_get("session_id")?)?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        outcome: row.try_get("outcome")?,
        path: row.try_get("path")?,
        stage: row.try_get("stage")?,
        sha256_before: row.try_get("sha256_before")?,
        sha256_after: row.try_get("sha256_after")?,
        detail: detail_of(row.try_get::<&str, _>("detail")?),
        at: row.try_get("at")?,
    })
}

#[async_trait]
impl SandboxStore for SqliteSandboxStore {
    async fn insert(&self, r: &SandboxRow, baseline: &str) -> Result<(), CoworkError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sandboxes (sandbox_id, tenant, session_id, state, label, source_path, \
             work_path, file_count, total_bytes, copy_summary, container_id, \
             container_attached_at, a2a_task_id, a2a_task_state, a2a_updated_at, live_instance, \
             idempotency_key, created_at, updated_at, expires_at, applied_at) VALUES \
             (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21)",
        )
        .bind(r.sandbox_id.to_string())
        .bind(&r.tenant)
        .bind(r.session_id.to_string())
        .bind(r.state.as_str())
        .bind(&r.label)
        .bind(&r.source_path)
        .bind(&r.work_path)
        .bind(r.file_count)
        .bind(r.total_bytes)
        .bind(&r.copy_summary)
        .bind(&r.container_id)
        .bind(r.container_attached_at)
        .bind(&r.a2a_task_id)
        .bind(&r.a2a_task_state)
        .bind(r.a2a_updated_at)
        .bind(r.live_instance.map(|u| u.to_string()))
        .bind(&r.idempotency_key)
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(r.expires_at)
        .bind(r.applied_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sandbox_manifests (sandbox_id, kind, body) VALUES (?1, 'baseline', ?2)",
        )
        .bind(r.sandbox_id.to_string())
        .bind(baseline)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<SandboxRow>, CoworkError> {
        let q =
            format!("SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND idempotency_key = ?2");
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sandbox).transpose()
    }

    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<SandboxRow>, CoworkError> {
        let q = format!("SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND sandbox_id = ?2");
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sandbox).transpose()
    }

    async fn manifest(&self, id: Uuid, kind: &str) -> Result<Option<String>, CoworkError> {
        let row =
            sqlx::query("SELECT body FROM sandbox_manifests WHERE sandbox_id = ?1 AND kind = ?2")
                .bind(id.to_string())
                .bind(kind)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("body")).transpose()?)
    }

    async fn put_manifest(&self, id: Uuid, kind: &str, body: &str) -> Result<(), CoworkError> {
        sqlx::query(
            "INSERT INTO sandbox_manifests (sandbox_id, kind, body) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sandbox_id, kind) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(id.to_string())
        .bind(kind)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn transition(
        &self,
        tenant: &str,
        id: Uuid,
        from: SandboxState,
        to: SandboxState,
        at: DateTime<Utc>,
    ) -> Result<bool, CoworkError> {
        let applied = (to == SandboxState::Applied).then_some(at);
        let done = sqlx::query(
            "UPDATE sandboxes SET state = ?1, updated_at = ?2, applied_at = COALESCE(?3, applied_at) \
             WHERE tenant = ?4 AND sandbox_id = ?5 AND state = ?6",
        )
        .bind(to.as_str())
        .bind(at)
        .bind(applied)
        .bind(tenant)
        .bind(id.to_string())
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_container(
        &self,
        tenant: &str,
        id: Uuid,
        container: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError> {
        let attached = container.map(|_| at);
        sqlx::query(
            "UPDATE sandboxes SET container_id = ?1, container_attached_at = ?2, updated_at = ?3 \
             WHERE tenant = ?4 AND sandbox_id = ?5",
        )
        .bind(container)
        .bind(attached)
        .bind(at)
        .bind(tenant)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_a2a_task(
        &self,
        tenant: &str,
        id: Uuid,
        task_id: &str,
        task_state: &str,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError> {
        sqlx::query(
            "UPDATE sandboxes SET a2a_task_id = ?1, a2a_task_state = ?2, a2a_updated_at = ?3, \
             updated_at = ?3 WHERE tenant = ?4 AND sandbox_id = ?5",
        )
        .bind(task_id)
        .bind(task_state)
        .bind(at)
        .bind(tenant)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_live(
        &self,
        tenant: &str,
        id: Uuid,
        instance: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError> {
        sqlx::query(
            "UPDATE sandboxes SET live_instance = ?1, updated_at = ?2 WHERE tenant = ?3 AND sandbox_id = ?4",
        )
        .bind(instance.to_string())
        .bind(at)
        .bind(tenant)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_resume(
        &self,
        tenant: &str,
        instance: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SandboxRow>, CoworkError> {
        let q = format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND state = 'active' \
             AND (live_instance IS NULL OR live_instance <> ?2) \
             AND (?3 IS NULL OR sandbox_id > ?3) ORDER BY sandbox_id LIMIT ?4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .bind(instance.to_string())
            .bind(after.map(|u| u.to_string()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sandbox).collect()
    }

    async fn expired(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<SandboxRow>, CoworkError> {
        let q = format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE state IN ('active', 'applied') \
             AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sandbox).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(String, i64)>, CoworkError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM sandboxes GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    async fn session_charged(&self, tenant: &str, session: Uuid) -> Result<u64, CoworkError> {
        let row = sqlx::query(
            "SELECT charged_bytes FROM session_usage WHERE tenant = ?1 AND session_id = ?2",
        )
        .bind(tenant)
        .bind(session.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let n: i64 = match row {
            Some(r) => r.try_get("charged_bytes")?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn charge(
        &self,
        tenant: &str,
        session: Uuid,
        bytes: u64,
        limit: u64,
    ) -> Result<bool, CoworkError> {
        let row = sqlx::query(
            "INSERT INTO session_usage (tenant, session_id, charged_bytes) \
             SELECT ?1, ?2, ?3 WHERE ?3 <= ?4 \
             ON CONFLICT (tenant, session_id) DO UPDATE \
             SET charged_bytes = session_usage.charged_bytes + EXCLUDED.charged_bytes \
             WHERE session_usage.charged_bytes + EXCLUDED.charged_bytes <= ?4 \
             RETURNING charged_bytes",
        )
        .bind(tenant)
        .bind(session.to_string())
        .bind(to_i64(bytes))
        .bind(to_i64(limit))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn refund(&self, tenant: &str, session: Uuid, bytes: u64) -> Result<(), CoworkError> {
        sqlx::query(
            "UPDATE session_usage SET charged_bytes = MAX(charged_bytes - ?1, 0) \
             WHERE tenant = ?2 AND session_id = ?3",
        )
        .bind(to_i64(bytes))
        .bind(tenant)
        .bind(session.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), CoworkError> {
        let mut tx = self.pool.begin().await?;
        for a in records {
            sqlx::query(
                "INSERT INTO sandbox_audit (audit_id, tenant, sandbox_id, session_id, actor, \
                 action, outcome, path, stage, sha256_before, sha256_after, detail, at) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            )
            .bind(a.audit_id.to_string())
            .bind(&a.tenant)
            .bind(a.sandbox_id.map(|u| u.to_string()))
            .bind(a.session_id.map(|u| u.to_string()))
            .bind(printable(&a.actor))
            .bind(&a.action)
            .bind(&a.outcome)
            .bind(a.path.as_deref().map(printable))
            .bind(&a.stage)
            .bind(&a.sha256_before)
            .bind(&a.sha256_after)
            .bind(printable(&a.detail.to_string()))
            .bind(a.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, tenant: &str, f: &AuditFilter) -> Result<Vec<AuditRecord>, CoworkError> {
        let rows = sqlx::query(
            "SELECT audit_id, tenant, sandbox_id, session_id, actor, action, outcome, path, stage, \
             sha256_before, sha256_after, detail, at FROM sandbox_audit WHERE tenant = ?1 \
             AND (?2 IS NULL OR sandbox_id = ?2) AND (?3 IS NULL OR action = ?3) \
             AND (?4 IS NULL OR outcome = ?4) AND (?5 IS NULL OR at >= ?5) \
             AND (?6 IS NULL OR at < ?6) AND (?7 IS NULL OR audit_id > ?7) \
             ORDER BY audit_id LIMIT ?8",
        )
        .bind(tenant)
        .bind(f.sandbox_id.map(|u| u.to_string()))
        .bind(&f.action)
        .bind(&f.outcome)
        .bind(f.since)
        .bind(f.until)
        .bind(f.after.map(|u| u.to_string()))
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit).collect()
    }
}
