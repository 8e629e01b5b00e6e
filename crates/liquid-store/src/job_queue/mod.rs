//! The durable job queue services share for work that must survive restarts (media jobs,
//! cowork steps, healer intake): a `liquid_jobs` table in the service's own database.
//!
//! Workers claim jobs under a lease (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: one
//! `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`), so two workers never hold the same job.
//! A worker that dies simply stops renewing its lease; once the lease passes, another worker
//! claims the job again with the attempt count raised by one. After `max_attempts` the job is
//! dead-lettered (state `dead`) and stays for inspection until purged.
//!
//! Delivery is at-least-once: a job can run again after a crash, so handlers must be idempotent.
//! This module owns the queue's schema and semantics; what a payload means belongs to the
//! service that enqueued it.
//!
//! # Schema
//!
//! The table ships with this crate as [`MIGRATIONS`], tracked in its own migrations table
//! (`_liquid_store_job_queue_migrations`) so that its version numbers never collide with the
//! service's own migrations in `_sqlx_migrations`. [`open`] runs it; services need no copy of
//! the SQL.

mod postgres;
mod sqlite;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use uuid::Uuid;

pub use self::postgres::PostgresJobQueue;
pub use self::sqlite::SqliteJobQueue;
use crate::{Database, DatabaseKind, Migrations, StoreError};

/// Attempts a job gets unless [`NewJob::max_attempts`] says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Most attempts a job may be given.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;
/// Longest lease a worker may take or extend to in one call.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// Longest error text kept per job; longer messages are cut at a character boundary.
pub const MAX_ERROR_LEN: usize = 4_096;
/// Longest queue name, tenant or dedupe key.
pub const MAX_NAME_LEN: usize = 200;

/// The migrations table of the job queue, separate from the service's `_sqlx_migrations`.
const MIGRATIONS_TABLE: &str = "_liquid_store_job_queue_migrations";

/// The job queue's schema for both backends, tracked in its own migrations table.
///
/// [`open`] applies it; `Database::migrate(&MIGRATIONS)` does the same for tools such as
/// `liquid migrate`.
pub static MIGRATIONS: LazyLock<Migrations> = LazyLock::new(|| Migrations {
    postgres: tracked_separately(&sqlx::migrate!("migrations/job_queue/postgres")),
    sqlite: tracked_separately(&sqlx::migrate!("migrations/job_queue/sqlite")),
});

fn tracked_separately(embedded: &Migrator) -> Migrator {
    let mut migrator = Migrator::with_migrations(embedded.iter().cloned().collect());
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Applies [`MIGRATIONS`] to `db` and returns the queue for its backend.
pub async fn open(db: &Database) -> Result<Arc<dyn JobQueue>, StoreError> {
    db.migrate(&MIGRATIONS).await?;
    Ok(match db {
        Database::Postgres(pool) => Arc::new(PostgresJobQueue::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqliteJobQueue::new(pool.clone())),
    })
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` and a worker.
    Queued,
    /// Leased by a worker (or its lease expired and it awaits another worker).
    Running,
    /// Finished successfully.
    Completed,
    /// Failed for good: out of attempts or given up on.
    Dead,
}

impl JobState {
    /// The stored and serialised form.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<JobState> {
        match s {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "completed" => Some(JobState::Completed),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue; build with [`NewJob::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Queue name, e.g. `media.generate`.
    pub queue: String,
    /// Tenant the job belongs to; scopes dedupe keys and [`JobQueue::get`].
    pub tenant: String,
    /// What the worker needs, as JSON.
    pub payload: serde_json::Value,
    /// Higher runs first; equal priorities run in `run_at` order.
    pub priority: i32,
    /// Not before this time; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Enqueuing the same key again (same queue and tenant) returns the existing job.
    pub dedupe_key: Option<String>,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: u32,
}

impl NewJob {
    /// A job with priority 0, due now, no dedupe key and [`DEFAULT_MAX_ATTEMPTS`].
    pub fn new(
        queue: impl Into<String>,
        tenant: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        NewJob {
            queue: queue.into(),
            tenant: tenant.into(),
            payload,
            priority: 0,
            run_at: None,
            dedupe_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Sets the priority (higher runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Delays the job until `run_at`.
    pub fn run_at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    /// Sets the idempotency key.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Sets how many attempts the job gets.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    fn validate(&self) -> Result<(), StoreError> {
        check_name("queue", &self.queue)?;
        check_name("tenant", &self.tenant)?;
        if let Some(key) = &self.dedupe_key {
            check_name("dedupe_key", key)?;
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(StoreError::InvalidArgument {
                name: "max_attempts",
                reason: format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            });
        }
        Ok(())
    }
}

/// The result of [`JobQueue::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (UUIDv7).
    pub id: Uuid,
    /// False when the dedupe key matched an existing job, whose id this is.
    pub created: bool,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// UUIDv7.
    pub id: Uuid,
    /// Queue name.
    pub queue: String,
    /// Owning tenant.
    pub tenant: String,
    /// What the worker needs.
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i32,
    /// Where the job is in its life.
    pub state: JobState,
    /// Attempts started so far (the current one included while running).
    pub attempts: u32,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: u32,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// Idempotency key, if any.
    pub dedupe_key: Option<String>,
    /// The worker holding, or that last held, the lease.
    pub lease_owner: Option<String>,
    /// When the current lease ends (running jobs only).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The last failure reported for the job.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it completed or died.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Proof that a worker holds a job: the job, the worker and the attempt. Every call that
/// finishes or extends a job presents it, and fails with [`StoreError::LeaseLost`] once another
/// worker has claimed the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased job.
    pub job_id: Uuid,
    /// The worker that holds it.
    pub worker: String,
    /// Which attempt this lease is for (1-based).
    pub attempt: u32,
    /// When the lease ends unless extended.
    pub expires_at: DateTime<Utc>,
}

/// A job handed to a worker by [`JobQueue::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    /// The job, in state [`JobState::Running`].
    pub job: Job,
    /// What the worker presents to complete, fail or extend it.
    pub lease: Lease,
}

/// What to do with a job whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Run again after this delay, if attempts remain.
    After(Duration),
    /// Run again at this time, if attempts remain.
    At(DateTime<Utc>),
    /// Give up: the job goes straight to [`JobState::Dead`].
    Never,
}

impl Retry {
    /// Exponential backoff: `base * 2^(attempt-1)`, at most `cap`.
    pub fn exponential(attempt: u32, base: Duration, cap: Duration) -> Retry {
        let factor = 2u32
            .checked_pow(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        Retry::After(base.checked_mul(factor).unwrap_or(cap).min(cap))
    }
}

/// How many jobs of a queue are in each state (for queue-depth metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Queued and due now.
    pub ready: u64,
    /// Queued for a later `run_at` (including retries waiting out their backoff).
    pub scheduled: u64,
    /// Leased by a worker, or with an expired lease awaiting another worker.
    pub running: u64,
    /// Finished successfully and not yet purged.
    pub completed: u64,
    /// Dead-lettered and not yet purged.
    pub dead: u64,
}

/// A durable queue of jobs with leases, retries and dead-lettering.
///
/// Claiming is across tenants (workers serve everyone); reading a job back is per tenant.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// The database behind the queue.
    fn kind(&self) -> DatabaseKind;

    /// Adds a job. With a dedupe key already used in the same queue by the same tenant, returns
    /// the existing job's id with `created: false` and changes nothing.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError>;

    /// Leases up to `max` due jobs of `queue` to `worker` for `lease`: highest priority first,
    /// then earliest `run_at`. Jobs whose lease expired are claimed again (attempt + 1); ones
    /// that expired on their final attempt are dead-lettered instead.
    async fn claim(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: u32,
    ) -> Result<Vec<ClaimedJob>, StoreError>;

    /// Extends a held lease to `extend` from now; returns the renewed lease.
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease, StoreError>;

    /// Marks the job completed.
    async fn complete(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Records a failed attempt. The job is queued again as `retry` says while attempts remain,
    /// otherwise it is dead-lettered; returns the state it ended in.
    async fn fail(&self, lease: &Lease, error: &str, retry: Retry) -> Result<JobState, StoreError>;

    /// Reads a job of `tenant`; another tenant's job is `None`.
    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<Job>, StoreError>;

    /// Counts the jobs of `queue` by state.
    async fn counts(&self, queue: &str) -> Result<JobCounts, StoreError>;

    /// Deletes completed and dead jobs of `queue` that finished more than `older_than` ago
    /// (their dedupe keys become free again); returns how many.
    async fn purge_finished(&self, queue: &str, older_than: Duration) -> Result<u64, StoreError>;
}

fn check_name(name: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidArgument {
            name,
            reason: format!("must be 1 to {MAX_NAME_LEN} bytes"),
        });
    }
    Ok(())
}

/// Checks a lease duration and returns it in milliseconds.
fn lease_millis(name: &'static str, lease: Duration) -> Result<i64, StoreError> {
    if lease < Duration::from_millis(1) || lease > MAX_LEASE {
        return Err(StoreError::InvalidArgument {
            name,
            reason: format!("must be between 1ms and {}s", MAX_LEASE.as_secs()),
        });
    }
    // At most MAX_LEASE here.
    Ok(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// A delay in whole milliseconds for SQL arithmetic, capped at a century (a retry that far
/// away is as good as never, and stays inside every backend's time range).
fn delay_millis(delay: Duration) -> i64 {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    i64::try_from(delay.min(CENTURY).as_millis()).unwrap_or(i64::MAX)
}

/// Cuts an error message to [`MAX_ERROR_LEN`] bytes at a character boundary.
fn truncate_error(error: &str) -> &str {
    if error.len() <= MAX_ERROR_LEN {
        return error;
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

fn attempts_from_db(what: &'static str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        reason: format!("negative value {value}"),
    })
}

fn state_from_db(state: &str) -> Result<JobState, StoreError> {
    JobState::parse(state).ok_or_else(|| StoreError::Corrupt {
        what: "job state",
        reason: format!("unknown state `{state}`"),
    })
}

/// A claimed row as a job plus the lease that proves it.
fn claimed(job: Job) -> Result<ClaimedJob, StoreError> {
    let (Some(worker), Some(expires_at)) = (job.lease_owner.clone(), job.lease_expires_at) else {
        return Err(StoreError::Corrupt {
            what: "claimed job",
            reason: format!("job {} came back from a claim without a lease", job.id),
        });
    };
    let lease = Lease {
        job_id: job.id,
        worker,
        attempt: job.attempts,
        expires_at,
    };
    Ok(ClaimedJob { job, lease })
}

/// Claim order: highest priority, then earliest `run_at`, then oldest id.
fn sort_claimed(jobs: &mut [ClaimedJob]) {
    jobs.sort_by(|a, b| {
        b.job
            .priority
            .cmp(&a.job.priority)
            .then(a.job.run_at.cmp(&b.job.run_at))
            .then(a.job.id.cmp(&b.job.id))
    });
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        job_id: lease.job_id,
        worker: lease.worker.clone(),
    }
}

fn attempt_to_db(lease: &Lease) -> i32 {
    // Attempts never exceed MAX_ATTEMPTS_LIMIT; a larger value matches no row.
    i32::try_from(lease.attempt).unwrap_or(i32::MAX)
}

/// Message stored on a job reclaimed after its lease ran out.
const LEASE_EXPIRED: &str = "lease expired before the job finished";
/// Message stored on a job dead-lettered because its final attempt's lease ran out.
const LEASE_EXPIRED_FINAL: &str = "lease expired on the final attempt";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Completed,
            JobState::Dead,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(Retry::exponential(1, base, cap), Retry::After(base));
        assert_eq!(
            Retry::exponential(4, base, cap),
            Retry::After(Duration::from_secs(8))
        );
        assert_eq!(Retry::exponential(40, base, cap), Retry::After(cap));
        assert_eq!(Retry::exponential(0, base, cap), Retry::After(base));
    }

    #[test]
    fn new_jobs_are_validated() {
        let ok = NewJob::new("q", "t", serde_json::json!({}));
        assert!(ok.validate().is_ok());
        assert!(ok.clone().max_attempts(0).validate().is_err());
        assert!(
            NewJob::new("", "t", serde_json::json!({}))
                .validate()
                .is_err()
        );
        assert!(ok.clone().dedupe_key("").validate().is_err());
        assert!(ok.max_attempts(MAX_ATTEMPTS_LIMIT + 1).validate().is_err());
    }

    #[test]
    fn leases_are_bounded() {
        assert!(lease_millis("lease", Duration::ZERO).is_err());
        assert!(lease_millis("lease", MAX_LEASE + Duration::from_secs(1)).is_err());
        assert_eq!(
            lease_millis("lease", Duration::from_secs(2)).unwrap(),
            2_000
        );
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_error("short"), "short");
    }
}
