//! The job queue on PostgreSQL.
//!
//! Claims select due rows with `FOR UPDATE SKIP LOCKED` and lease them in the same statement,
//! so concurrent workers (in one process or many replicas) skip each other's rows instead of
//! waiting or double-claiming. All times come from the database clock (`now()`), so replicas
//! with skewed clocks agree on when a lease has expired.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{
    ClaimedJob, Enqueued, Job, JobCounts, JobQueue, JobState, LEASE_EXPIRED, LEASE_EXPIRED_FINAL,
    Lease, NewJob, Retry, attempt_to_db, attempts_from_db, check_name, claimed, delay_millis,
    lease_lost, lease_millis, sort_claimed, state_from_db, truncate_error,
};
use crate::{DatabaseKind, StoreError};

/// Columns read back into a [`Job`].
macro_rules! job_columns {
    () => {
        "id, queue, tenant, payload, priority, state, attempts, max_attempts, run_at, dedupe_key, \
         lease_owner, lease_expires_at, last_error, created_at, updated_at, finished_at"
    };
}

/// The job queue on a Postgres pool. The schema must be migrated (see [`super::open`]).
#[derive(Debug, Clone)]
pub struct PostgresJobQueue {
    pool: PgPool,
}

impl PostgresJobQueue {
    /// Wraps a pool whose database has [`super::MIGRATIONS`] applied.
    pub fn new(pool: PgPool) -> Self {
        PostgresJobQueue { pool }
    }

    /// Dead-letters jobs whose final attempt's lease ran out.
    async fn bury_exhausted(&self, queue: &str) -> Result<(), StoreError> {
        let buried: Vec<(Uuid, i32)> = sqlx::query_as(
            "WITH exhausted AS ( \
                 SELECT id AS exhausted_id FROM liquid_jobs \
                 WHERE queue = $1 AND state = 'running' AND lease_expires_at <= now() \
                   AND attempts >= max_attempts \
                 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE liquid_jobs \
             SET state = 'dead', lease_expires_at = NULL, last_error = $2, \
                 finished_at = now(), updated_at = now() \
             FROM exhausted WHERE liquid_jobs.id = exhausted.exhausted_id \
             RETURNING id, attempts",
        )
        .bind(queue)
        .bind(LEASE_EXPIRED_FINAL)
        .fetch_all(&self.pool)
        .await?;
        for (job_id, attempts) in buried {
            warn!(%job_id, queue, attempts, "job dead-lettered: lease expired on final attempt");
        }
        Ok(())
    }
}

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        tenant: row.try_get("tenant")?,
        payload: row.try_get::<Json<serde_json::Value>, _>("payload")?.0,
        priority: row.try_get("priority")?,
        state: state_from_db(&state)?,
        attempts: attempts_from_db("job attempts", row.try_get("attempts")?)?,
        max_attempts: attempts_from_db("job max_attempts", row.try_get("max_attempts")?)?,
        run_at: row.try_get("run_at")?,
        dedupe_key: row.try_get("dedupe_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl JobQueue for PostgresJobQueue {
    fn kind(&self) -> DatabaseKind {
        DatabaseKind::Postgres
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        job.validate()?;
        let id = Uuid::now_v7();
        let max_attempts = i32::try_from(job.max_attempts).unwrap_or(i32::MAX);
        // A dedupe hit inserts nothing; the existing row is read next. A concurrent enqueue of
        // the same key waits on the unique index until the first commits, then also reads it.
        // The read can only miss if the job was purged in between, hence the short retry loop.
        for _ in 0..3 {
            let inserted: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO liquid_jobs (id, queue, tenant, payload, priority, state, attempts, \
                     max_attempts, run_at, dedupe_key, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, COALESCE($7, now()), $8, now(), \
                     now()) \
                 ON CONFLICT (queue, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING \
                 RETURNING id",
            )
            .bind(id)
            .bind(&job.queue)
            .bind(&job.tenant)
            .bind(Json(&job.payload))
            .bind(job.priority)
            .bind(max_attempts)
            .bind(job.run_at)
            .bind(&job.dedupe_key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(id) = inserted {
                debug!(job_id = %id, queue = %job.queue, tenant = %job.tenant, "job enqueued");
                return Ok(Enqueued { id, created: true });
            }
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM liquid_jobs WHERE queue = $1 AND tenant = $2 AND dedupe_key = $3",
            )
            .bind(&job.queue)
            .bind(&job.tenant)
            .bind(&job.dedupe_key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(id) = existing {
                return Ok(Enqueued { id, created: false });
            }
        }
        Err(StoreError::Corrupt {
            what: "dedupe key",
            reason: "the conflicting job disappeared three times in a row".into(),
        })
    }

    async fn claim(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: u32,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        check_name("queue", queue)?;
        check_name("worker", worker)?;
        let lease_ms = lease_millis("lease", lease)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        self.bury_exhausted(queue).await?;
        let rows = sqlx::query(concat!(
            "WITH picked AS ( \
                 SELECT id AS picked_id FROM liquid_jobs \
                 WHERE queue = $1 \
                   AND ((state = 'queued' AND run_at <= now()) \
                     OR (state = 'running' AND lease_expires_at <= now() \
                         AND attempts < max_attempts)) \
                 ORDER BY priority DESC, run_at, id \
                 LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE liquid_jobs \
             SET last_error = CASE WHEN state = 'running' THEN $5 ELSE last_error END, \
                 state = 'running', attempts = attempts + 1, lease_owner = $3, \
                 lease_expires_at = now() + ($4::float8 * interval '1 millisecond'), \
                 updated_at = now() \
             FROM picked WHERE liquid_jobs.id = picked.picked_id \
             RETURNING ",
            job_columns!()
        ))
        .bind(queue)
        .bind(i64::from(max))
        .bind(worker)
        .bind(lease_ms)
        .bind(LEASE_EXPIRED)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|row| job_from_row(row).and_then(claimed))
            .collect::<Result<Vec<_>, _>>()?;
        sort_claimed(&mut jobs);
        if !jobs.is_empty() {
            debug!(queue, worker, claimed = jobs.len(), "jobs claimed");
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease, StoreError> {
        let extend_ms = lease_millis("extend", extend)?;
        let expires_at = sqlx::query_scalar(
            "UPDATE liquid_jobs \
             SET lease_expires_at = now() + ($4::float8 * interval '1 millisecond'), \
                 updated_at = now() \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3 \
             RETURNING lease_expires_at",
        )
        .bind(lease.job_id)
        .bind(&lease.worker)
        .bind(attempt_to_db(lease))
        .bind(extend_ms)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| lease_lost(lease))?;
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn complete(&self, lease: &Lease) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE liquid_jobs \
             SET state = 'completed', lease_expires_at = NULL, finished_at = now(), \
                 updated_at = now() \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3",
        )
        .bind(lease.job_id)
        .bind(&lease.worker)
        .bind(attempt_to_db(lease))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(lease));
        }
        debug!(job_id = %lease.job_id, worker = %lease.worker, "job completed");
        Ok(())
    }

    async fn fail(&self, lease: &Lease, error: &str, retry: Retry) -> Result<JobState, StoreError> {
        let (retrying, retry_at, retry_after_ms) = match retry {
            Retry::After(delay) => (true, None, Some(delay_millis(delay))),
            Retry::At(at) => (true, Some(at), None),
            Retry::Never => (false, None, None),
        };
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE liquid_jobs \
             SET state = CASE WHEN $4 AND attempts < max_attempts THEN 'queued' ELSE 'dead' END, \
                 run_at = CASE WHEN $4 AND attempts < max_attempts \
                     THEN COALESCE($5, now() + ($6::float8 * interval '1 millisecond')) \
                     ELSE run_at END, \
                 finished_at = CASE WHEN $4 AND attempts < max_attempts THEN NULL \
                     ELSE now() END, \
                 last_error = $7, lease_expires_at = NULL, updated_at = now() \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3 \
             RETURNING state",
        )
        .bind(lease.job_id)
        .bind(&lease.worker)
        .bind(attempt_to_db(lease))
        .bind(retrying)
        .bind(retry_at)
        .bind(retry_after_ms)
        .bind(truncate_error(error))
        .fetch_optional(&self.pool)
        .await?;
        let state = state.ok_or_else(|| lease_lost(lease))?;
        let state = state_from_db(&state)?;
        if state == JobState::Dead {
            warn!(job_id = %lease.job_id, attempt = lease.attempt, error, "job dead-lettered");
        } else {
            debug!(job_id = %lease.job_id, attempt = lease.attempt, error, "job failed, will retry");
        }
        Ok(state)
    }

    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM liquid_jobs WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn counts(&self, queue: &str) -> Result<JobCounts, StoreError> {
        let (ready, scheduled, running, completed, dead): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT \
                     COUNT(*) FILTER (WHERE state = 'queued' AND run_at <= now()), \
                     COUNT(*) FILTER (WHERE state = 'queued' AND run_at > now()), \
                     COUNT(*) FILTER (WHERE state = 'running'), \
                     COUNT(*) FILTER (WHERE state = 'completed'), \
                     COUNT(*) FILTER (WHERE state = 'dead') \
                 FROM liquid_jobs WHERE queue = $1",
            )
            .bind(queue)
            .fetch_one(&self.pool)
            .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or_default();
        Ok(JobCounts {
            ready: count(ready),
            scheduled: count(scheduled),
            running: count(running),
            completed: count(completed),
            dead: count(dead),
        })
    }

    async fn purge_finished(&self, queue: &str, older_than: Duration) -> Result<u64, StoreError> {
        let purged = sqlx::query(
            "DELETE FROM liquid_jobs \
             WHERE queue = $1 AND state IN ('completed', 'dead') \
               AND finished_at <= now() - ($2::float8 * interval '1 millisecond')",
        )
        .bind(queue)
        .bind(delay_millis(older_than))
        .execute(&self.pool)
        .await?;
        Ok(purged.rows_affected())
    }
}
