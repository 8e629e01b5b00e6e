//! [`PoolStore`] on SQLite (embedded mode; ids and JSON as text).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use liquid_bus::Event;

use super::{
    ClaimRow, IdempotencyState, PoolStore, ReleaseEvent, ReplicaRow, event_json, event_of, json_err,
};
use crate::config::TemplateConfig;
use crate::error::PoolError;

/// The pool's tables on SQLite.
#[derive(Debug, Clone)]
pub struct SqlitePoolStore {
    pool: SqlitePool,
}

impl SqlitePoolStore {
    /// A store on `pool` (migrated).
    pub fn new(pool: SqlitePool) -> Self {
        SqlitePoolStore { pool }
    }
}

fn uuid_of(text: String) -> Result<Uuid, PoolError> {
    Uuid::parse_str(&text).map_err(|e| PoolError::io("stored uuid", std::io::Error::other(e)))
}

async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[Event],
) -> Result<(), PoolError> {
    for e in events {
        sqlx::query(
            "INSERT INTO pool_outbox (event_id, event) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(e.id.to_string())
        .bind(event_json(e)?)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn claim(row: &sqlx::sqlite::SqliteRow) -> Result<ClaimRow, PoolError> {
    Ok(ClaimRow {
        claim_id: uuid_of(row.try_get("claim_id")?)?,
        tenant: row.try_get("tenant")?,
        template: row.try_get("template")?,
        container_id: row.try_get("container_id")?,
        host: row.try_get("host")?,
        runtime: row.try_get("runtime")?,
        replica_id: uuid_of(row.try_get("replica_id")?)?,
        served: row.try_get("served")?,
        workdir: row.try_get("workdir")?,
        env: serde_json::from_str(&row.try_get::<String, _>("env")?).map_err(json_err)?,
        secrets: serde_json::from_str(&row.try_get::<String, _>("secrets")?).map_err(json_err)?,
        acquired_at: row.try_get("acquired_at")?,
        released_at: row.try_get("released_at")?,
    })
}

#[async_trait]
impl PoolStore for SqlitePoolStore {
    async fn heartbeat(&self, r: &ReplicaRow) -> Result<(), PoolError> {
        sqlx::query(
            "INSERT INTO pool_replicas (replica_id, hostname, process, started_at, heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
        )
        .bind(r.replica_id.to_string())
        .bind(&r.hostname)
        .bind(&r.process)
        .bind(r.started_at)
        .bind(r.heartbeat_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRow>, PoolError> {
        let rows = sqlx::query(
            "SELECT replica_id, hostname, process, started_at, heartbeat_at FROM pool_replicas
             ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaRow {
                    replica_id: uuid_of(r.try_get("replica_id")?)?,
                    hostname: r.try_get("hostname")?,
                    process: r.try_get("process")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                })
            })
            .collect()
    }

    async fn delete_replica(&self, replica_id: Uuid) -> Result<(), PoolError> {
        sqlx::query("DELETE FROM pool_replicas WHERE replica_id = ?1")
            .bind(replica_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_claim(
        &self,
        c: &ClaimRow,
        events: &[Event],
        idempotency_key: Option<&str>,
    ) -> Result<(), PoolError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pool_claims (claim_id, tenant, template, container_id, host, runtime,
               replica_id, served, workdir, env, secrets, acquired_at, released_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .bind(c.claim_id.to_string())
        .bind(&c.tenant)
        .bind(&c.template)
        .bind(&c.container_id)
        .bind(&c.host)
        .bind(&c.runtime)
        .bind(c.replica_id.to_string())
        .bind(&c.served)
        .bind(&c.workdir)
        .bind(serde_json::to_string(&c.env).map_err(json_err)?)
        .bind(serde_json::to_string(&c.secrets).map_err(json_err)?)
        .bind(c.acquired_at)
        .bind(c.released_at)
        .execute(&mut *tx)
        .await?;
        if let Some(key) = idempotency_key {
            let done = sqlx::query(
                "UPDATE pool_idempotency SET claim_id = ?3
                 WHERE tenant = ?1 AND key = ?2 AND claim_id IS NULL",
            )
            .bind(&c.tenant)
            .bind(key)
            .bind(c.claim_id.to_string())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(PoolError::Conflict(format!(
                    "Idempotency-Key `{key}` was taken over by another request"
                )));
            }
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn open_claim(
        &self,
        claim_id: Uuid,
        tenant: &str,
    ) -> Result<Option<ClaimRow>, PoolError> {
        let row = sqlx::query(
            "SELECT * FROM pool_claims WHERE claim_id = ?1 AND tenant = ?2 AND released_at IS NULL",
        )
        .bind(claim_id.to_string())
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(claim).transpose()
    }

    async fn is_released(&self, claim_id: Uuid) -> Result<bool, PoolError> {
        let open: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM pool_claims WHERE claim_id = ?1 AND released_at IS NULL",
        )
        .bind(claim_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(open.is_none())
    }

    async fn release_claim(
        &self,
        claim_id: Uuid,
        at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<bool, PoolError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE pool_claims SET released_at = ?2 WHERE claim_id = ?1 AND released_at IS NULL",
        )
        .bind(claim_id.to_string())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn release_claims_of(
        &self,
        replica_id: Uuid,
        at: DateTime<Utc>,
        event: &ReleaseEvent,
    ) -> Result<u64, PoolError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE pool_claims SET released_at = ?2 WHERE replica_id = ?1 AND released_at IS NULL
             RETURNING *",
        )
        .bind(replica_id.to_string())
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::new();
        for r in &rows {
            events.extend(event(&claim(r)?));
        }
        insert_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn enqueue_events(&self, events: &[Event]) -> Result<(), PoolError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lease_events(
        &self,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<Event>, PoolError> {
        // One UPDATE takes SQLite's write lock: no two relays lease the same rows.
        let rows: Vec<String> = sqlx::query_scalar(
            "UPDATE pool_outbox SET locked_until_ms = ?1 + ?2
             WHERE event_id IN (
               SELECT event_id FROM pool_outbox WHERE locked_until_ms <= ?1
               ORDER BY event_id LIMIT ?3)
             RETURNING event",
        )
        .bind(now_ms)
        .bind(lease_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(|t| event_of(t))
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn delete_events(&self, ids: &[Uuid]) -> Result<(), PoolError> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM pool_outbox WHERE event_id = ?1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn begin_idempotent(
        &self,
        tenant: &str,
        key: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<IdempotencyState, PoolError> {
        for _ in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO pool_idempotency (tenant, key, claim_id, created_ms)
                 VALUES (?1, ?2, NULL, ?3) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(key)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(IdempotencyState::Owned);
            }
            let row: Option<(Option<String>, i64)> = sqlx::query_as(
                "SELECT claim_id, created_ms FROM pool_idempotency WHERE tenant = ?1 AND key = ?2",
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                None => continue,
                Some((Some(id), _)) => return Ok(IdempotencyState::Claimed(uuid_of(id)?)),
                Some((None, created)) if created < stale_before_ms => {
                    sqlx::query(
                        "DELETE FROM pool_idempotency WHERE tenant = ?1 AND key = ?2
                         AND claim_id IS NULL AND created_ms = ?3",
                    )
                    .bind(tenant)
                    .bind(key)
                    .bind(created)
                    .execute(&self.pool)
                    .await?;
                }
                Some((None, _)) => return Ok(IdempotencyState::Pending),
            }
        }
        Ok(IdempotencyState::Pending)
    }

    async fn abandon_idempotent(&self, tenant: &str, key: &str) -> Result<(), PoolError> {
        sqlx::query(
            "DELETE FROM pool_idempotency WHERE tenant = ?1 AND key = ?2 AND claim_id IS NULL",
        )
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn expire_idempotent(&self, before_ms: i64) -> Result<u64, PoolError> {
        let done = sqlx::query("DELETE FROM pool_idempotency WHERE created_ms < ?1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn put_template(&self, name: &str, config: &TemplateConfig) -> Result<(), PoolError> {
        sqlx::query(
            "INSERT INTO pool_templates (name, config, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, updated_at = EXCLUDED.updated_at",
        )
        .bind(name)
        .bind(serde_json::to_string(config).map_err(json_err)?)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn templates(&self) -> Result<Vec<(String, TemplateConfig)>, PoolError> {
        let rows = sqlx::query("SELECT name, config FROM pool_templates ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let config: String = r.try_get("config")?;
                Ok((
                    r.try_get("name")?,
                    serde_json::from_str(&config).map_err(json_err)?,
                ))
            })
            .collect()
    }

    async fn delete_template(&self, name: &str) -> Result<bool, PoolError> {
        let done = sqlx::query("DELETE FROM pool_templates WHERE name = ?1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
