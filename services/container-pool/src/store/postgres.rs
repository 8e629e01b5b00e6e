//! [`PoolStore`] on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{ClaimRow, PoolStore, ReplicaRow, json_err};
use crate::config::TemplateConfig;
use crate::error::PoolError;

/// The pool's tables on Postgres.
#[derive(Debug, Clone)]
pub struct PostgresPoolStore {
    pool: PgPool,
}

impl PostgresPoolStore {
    /// A store on `pool` (migrated).
    pub fn new(pool: PgPool) -> Self {
        PostgresPoolStore { pool }
    }
}

fn claim(row: &sqlx::postgres::PgRow) -> Result<ClaimRow, PoolError> {
    Ok(ClaimRow {
        claim_id: row.try_get("claim_id")?,
        tenant: row.try_get("tenant")?,
        template: row.try_get("template")?,
        container_id: row.try_get("container_id")?,
        host: row.try_get("host")?,
        runtime: row.try_get("runtime")?,
        replica_id: row.try_get("replica_id")?,
        served: row.try_get("served")?,
        workdir: row.try_get("workdir")?,
        env: serde_json::from_value(row.try_get("env")?).map_err(json_err)?,
        secrets: serde_json::from_value(row.try_get("secrets")?).map_err(json_err)?,
        acquired_at: row.try_get("acquired_at")?,
        released_at: row.try_get("released_at")?,
    })
}

#[async_trait]
impl PoolStore for PostgresPoolStore {
    async fn heartbeat(&self, r: &ReplicaRow) -> Result<(), PoolError> {
        sqlx::query(
            "INSERT INTO pool_replicas (replica_id, hostname, process, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
        )
        .bind(r.replica_id)
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
                    replica_id: r.try_get("replica_id")?,
                    hostname: r.try_get("hostname")?,
                    process: r.try_get("process")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                })
            })
            .collect()
    }

    async fn delete_replica(&self, replica_id: Uuid) -> Result<(), PoolError> {
        sqlx::query("DELETE FROM pool_replicas WHERE replica_id = $1")
            .bind(replica_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_claim(&self, c: &ClaimRow) -> Result<(), PoolError> {
        sqlx::query(
            "INSERT INTO pool_claims (claim_id, tenant, template, container_id, host, runtime,
               replica_id, served, workdir, env, secrets, acquired_at, released_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(c.claim_id)
        .bind(&c.tenant)
        .bind(&c.template)
        .bind(&c.container_id)
        .bind(&c.host)
        .bind(&c.runtime)
        .bind(c.replica_id)
        .bind(&c.served)
        .bind(&c.workdir)
        .bind(serde_json::to_value(&c.env).map_err(json_err)?)
        .bind(serde_json::to_value(&c.secrets).map_err(json_err)?)
        .bind(c.acquired_at)
        .bind(c.released_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn open_claim(
        &self,
        claim_id: Uuid,
        tenant: &str,
    ) -> Result<Option<ClaimRow>, PoolError> {
        let row = sqlx::query(
            "SELECT * FROM pool_claims WHERE claim_id = $1 AND tenant = $2 AND released_at IS NULL",
        )
        .bind(claim_id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(claim).transpose()
    }

    async fn is_released(&self, claim_id: Uuid) -> Result<bool, PoolError> {
        let open: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM pool_claims WHERE claim_id = $1 AND released_at IS NULL",
        )
        .bind(claim_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(open.is_none())
    }

    async fn release_claim(&self, claim_id: Uuid, at: DateTime<Utc>) -> Result<bool, PoolError> {
        let done = sqlx::query(
            "UPDATE pool_claims SET released_at = $2 WHERE claim_id = $1 AND released_at IS NULL",
        )
        .bind(claim_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_claims_of(
        &self,
        replica_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, PoolError> {
        let done = sqlx::query(
            "UPDATE pool_claims SET released_at = $2 WHERE replica_id = $1 AND released_at IS NULL",
        )
        .bind(replica_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn put_template(&self, name: &str, config: &TemplateConfig) -> Result<(), PoolError> {
        sqlx::query(
            "INSERT INTO pool_templates (name, config, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, updated_at = EXCLUDED.updated_at",
        )
        .bind(name)
        .bind(serde_json::to_value(config).map_err(json_err)?)
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
                let config: serde_json::Value = r.try_get("config")?;
                Ok((
                    r.try_get("name")?,
                    serde_json::from_value(config).map_err(json_err)?,
                ))
            })
            .collect()
    }

    async fn delete_template(&self, name: &str) -> Result<bool, PoolError> {
        let done = sqlx::query("DELETE FROM pool_templates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
