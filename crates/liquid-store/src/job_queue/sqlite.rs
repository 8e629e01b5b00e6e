//! The job queue on SQLite (embedded mode), with the same semantics as Postgres.
//!
//! SQLite has one writer at a time, so a claim takes the write lock up front with
//! `BEGIN IMMEDIATE` and leases rows with one `UPDATE ... RETURNING`; concurrent claims queue on
//! the busy timeout instead of failing on a lock upgrade, and can never see the same row as
//! due. Ids are stored as hyphenated UUID text and times as fixed-width RFC 3339 UTC text with
//! milliseconds, so text comparison is time comparison. Times come from this process's clock
//! (one host reads and writes the file).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{
    ClaimedJob, Enqueued, Job, JobCounts, JobQueue, JobState, LEASE_EXPIRED, LEASE_EXPIRED_FINAL,
    Lease, NewJob, Retry, attempts_from_db, check_name, claimed, lease_lost, lease_millis,
    sort_claimed, state_from_db, truncate_error,
};
use crate::{DatabaseKind, StoreError};

/// Columns read back into a [`Job`].
macro_rules! job_columns {
    () => {
        "id, queue, tenant, payload, priority, state, attempts, max_attempts, run_at, dedupe_key, \
         lease_owner, lease_expires_at, last_error, created_at, updated_at, finished_at"
    };
}

/// The job queue on a SQLite pool. The schema must be migrated (see [`super::open`]).
#[derive(Debug, Clone)]
pub struct SqliteJobQueue {
    pool: SqlitePool,
}

impl SqliteJobQueue {
    /// Wraps a pool whose database has [`super::MIGRATIONS`] applied.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteJobQueue { pool }
    }
}

/// The stored form of a time. Clamped to years 0000..=9999, where the text is fixed-width
/// (chrono writes a sign and more digits outside them, which would break text ordering).
fn ts(t: DateTime<Utc>) -> String {
    let first = NaiveDate::from_ymd_opt(0, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let last = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999))
        .map(|t| t.and_utc());
    let t = match (first, last) {
        (Some(first), Some(last)) => t.clamp(first, last),
        _ => t,
    };
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `now + delay`, saturating at the largest time chrono represents.
fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn time_from_db(what: &'static str, value: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            what,
            reason: format!("`{value}`: {e}"),
        })
}

fn optional_time(
    row: &SqliteRow,
    column: &'static str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<String>, _>(column)?
        .map(|v| time_from_db(column, &v))
        .transpose()
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("id")?;
    let payload: String = row.try_get("payload")?;
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt {
            what: "job id",
            reason: format!("`{id}`: {e}"),
        })?,
        queue: row.try_get("queue")?,
        tenant: row.try_get("tenant")?,
        payload: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt {
            what: "job payload",
            reason: e.to_string(),
        })?,
        priority: row.try_get("priority")?,
        state: state_from_db(&state)?,
        attempts: attempts_from_db("job attempts", row.try_get("attempts")?)?,
        max_attempts: attempts_from_db("job max_attempts", row.try_get("max_attempts")?)?,
        run_at: time_from_db("run_at", &row.try_get::<String, _>("run_at")?)?,
        dedupe_key: row.try_get("dedupe_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: optional_time(row, "lease_expires_at")?,
        last_error: row.try_get("last_error")?,
        created_at: time_from_db("created_at", &row.try_get::<String, _>("created_at")?)?,
        updated_at: time_from_db("updated_at", &row.try_get::<String, _>("updated_at")?)?,
        finished_at: optional_time(row, "finished_at")?,
    })
}

#[async_trait]
impl JobQueue for SqliteJobQueue {
    fn kind(&self) -> DatabaseKind {
        DatabaseKind::Sqlite
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        job.validate()?;
        let id = Uuid::now_v7();
        let now = Utc::now();
        let payload =
            serde_json::to_string(&job.payload).map_err(|e| StoreError::InvalidArgument {
                name: "payload",
                reason: e.to_string(),
            })?;
        // Writes are serialised, so the dedupe read after a conflict sees the winning row; it
        // can only miss if that job was purged in between, hence the short retry loop.
        for _ in 0..3 {
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO liquid_jobs (id, queue, tenant, payload, priority, state, attempts, \
                     max_attempts, run_at, dedupe_key, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?7, ?8, ?9, ?9) \
                 ON CONFLICT (queue, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING \
                 RETURNING id",
            )
            .bind(id.to_string())
            .bind(&job.queue)
            .bind(&job.tenant)
            .bind(&payload)
            .bind(job.priority)
            .bind(i64::from(job.max_attempts))
            .bind(ts(job.run_at.unwrap_or(now)))
            .bind(&job.dedupe_key)
            .bind(ts(now))
            .fetch_optional(&self.pool)
            .await?;
            if inserted.is_some() {
                debug!(job_id = %id, queue = %job.queue, tenant = %job.tenant, "job enqueued");
                return Ok(Enqueued { id, created: true });
            }
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM liquid_jobs WHERE queue = ?1 AND tenant = ?2 AND dedupe_key = ?3",
            )
            .bind(&job.queue)
            .bind(&job.tenant)
            .bind(&job.dedupe_key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(existing) = existing {
                let id = Uuid::parse_str(&existing).map_err(|e| StoreError::Corrupt {
                    what: "job id",
                    reason: format!("`{existing}`: {e}"),
                })?;
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
        lease_millis("lease", lease)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Taken after the write lock, so no other claim moves the clock under this one.
        let now = Utc::now();
        let buried: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE liquid_jobs \
             SET state = 'dead', lease_expires_at = NULL, last_error = ?3, finished_at = ?2, \
                 updated_at = ?2 \
             WHERE queue = ?1 AND state = 'running' AND lease_expires_at <= ?2 \
               AND attempts >= max_attempts \
             RETURNING id, attempts",
        )
        .bind(queue)
        .bind(ts(now))
        .bind(LEASE_EXPIRED_FINAL)
        .fetch_all(&mut *tx)
        .await?;
        let rows = sqlx::query(concat!(
            "UPDATE liquid_jobs \
             SET last_error = CASE WHEN state = 'running' THEN ?5 ELSE last_error END, \
                 state = 'running', attempts = attempts + 1, lease_owner = ?3, \
                 lease_expires_at = ?4, updated_at = ?2 \
             WHERE id IN ( \
                 SELECT id FROM liquid_jobs \
                 WHERE queue = ?1 \
                   AND ((state = 'queued' AND run_at <= ?2) \
                     OR (state = 'running' AND lease_expires_at <= ?2 \
                         AND attempts < max_attempts)) \
                 ORDER BY priority DESC, run_at, id \
                 LIMIT ?6 \
             ) \
             RETURNING ",
            job_columns!()
        ))
        .bind(queue)
        .bind(ts(now))
        .bind(worker)
        .bind(ts(later(now, lease)))
        .bind(LEASE_EXPIRED)
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (job_id, attempts) in buried {
            warn!(%job_id, queue, attempts, "job dead-lettered: lease expired on final attempt");
        }
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
        lease_millis("extend", extend)?;
        let now = Utc::now();
        let expires_at = later(now, extend);
        let renewed = sqlx::query(
            "UPDATE liquid_jobs SET lease_expires_at = ?4, updated_at = ?5 \
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 AND attempts = ?3",
        )
        .bind(lease.job_id.to_string())
        .bind(&lease.worker)
        .bind(i64::from(lease.attempt))
        .bind(ts(expires_at))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        if renewed.rows_affected() == 0 {
            return Err(lease_lost(lease));
        }
        // Report what was stored (millisecond precision), as Postgres does.
        Ok(Lease {
            expires_at: time_from_db("lease_expires_at", &ts(expires_at))?,
            ..lease.clone()
        })
    }

    async fn complete(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = ts(Utc::now());
        let done = sqlx::query(
            "UPDATE liquid_jobs \
             SET state = 'completed', lease_expires_at = NULL, finished_at = ?4, updated_at = ?4 \
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 AND attempts = ?3",
        )
        .bind(lease.job_id.to_string())
        .bind(&lease.worker)
        .bind(i64::from(lease.attempt))
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(lease));
        }
        debug!(job_id = %lease.job_id, worker = %lease.worker, "job completed");
        Ok(())
    }

    async fn fail(&self, lease: &Lease, error: &str, retry: Retry) -> Result<JobState, StoreError> {
        let now = Utc::now();
        let retry_at = match retry {
            Retry::After(delay) => Some(later(now, delay)),
            Retry::At(at) => Some(at),
            Retry::Never => None,
        };
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE liquid_jobs \
             SET state = CASE WHEN ?4 IS NOT NULL AND attempts < max_attempts \
                     THEN 'queued' ELSE 'dead' END, \
                 run_at = CASE WHEN ?4 IS NOT NULL AND attempts < max_attempts \
                     THEN ?4 ELSE run_at END, \
                 finished_at = CASE WHEN ?4 IS NOT NULL AND attempts < max_attempts \
                     THEN NULL ELSE ?5 END, \
                 last_error = ?6, lease_expires_at = NULL, updated_at = ?5 \
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 AND attempts = ?3 \
             RETURNING state",
        )
        .bind(lease.job_id.to_string())
        .bind(&lease.worker)
        .bind(i64::from(lease.attempt))
        .bind(retry_at.map(ts))
        .bind(ts(now))
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
            " FROM liquid_jobs WHERE id = ?1 AND tenant = ?2"
        ))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn counts(&self, queue: &str) -> Result<JobCounts, StoreError> {
        let (ready, scheduled, running, completed, dead): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT \
                     COUNT(*) FILTER (WHERE state = 'queued' AND run_at <= ?2), \
                     COUNT(*) FILTER (WHERE state = 'queued' AND run_at > ?2), \
                     COUNT(*) FILTER (WHERE state = 'running'), \
                     COUNT(*) FILTER (WHERE state = 'completed'), \
                     COUNT(*) FILTER (WHERE state = 'dead') \
                 FROM liquid_jobs WHERE queue = ?1",
            )
            .bind(queue)
            .bind(ts(Utc::now()))
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
        let cutoff = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let purged = sqlx::query(
            "DELETE FROM liquid_jobs \
             WHERE queue = ?1 AND state IN ('completed', 'dead') AND finished_at <= ?2",
        )
        .bind(queue)
        .bind(ts(cutoff))
        .execute(&self.pool)
        .await?;
        Ok(purged.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text_and_round_trip() {
        let early = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let late = later(early, Duration::from_millis(700));
        assert_eq!(ts(early), "2026-01-02T03:04:05.500Z");
        assert_eq!(ts(late), "2026-01-02T03:04:06.200Z");
        assert!(ts(early) < ts(late));
        assert_eq!(time_from_db("t", &ts(late)).unwrap(), late);
    }

    #[test]
    fn far_future_times_keep_their_text_order() {
        let now = Utc::now();
        let far = ts(later(now, Duration::MAX));
        assert_eq!(far, "9999-12-31T23:59:59.999Z");
        assert!(ts(now) < far);
        assert_eq!(ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000Z");
    }
}
