//! The durable task store: tasks (ProtoJSON snapshots with a sequence number), their event
//! logs, the messageId → task map that makes SendMessage idempotent, and push notification
//! configs. One trait, a Postgres and a SQLite implementation, one test suite
//! (`tests/store.rs`). Writers use optimistic concurrency on the sequence number, so two
//! replicas never interleave a task's events.
//!
//! Owner leases: a store opened with a [`Lease`] records, on every write that leaves a task
//! SUBMITTED or WORKING (the states a replica drives), this replica as the task's owner and a
//! lease expiry, and clears both on every other write (waiting for the client, terminal). The
//! engine renews its running tasks' leases in bulk ([`TaskStore::renew_leases`]) and claims
//! tasks whose lease ran out ([`TaskStore::claim_expired`]) to fail them. On PostgreSQL lease
//! times are the database's clock, so replicas' clocks need not agree.

mod batch;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_a2a::pb;
use liquid_store::{Database, StoreError};

pub use batch::{BatchWriter, GroupCommit, MAX_BATCH, NewTask, TaskUpdate, Write, Written};
pub use postgres::PostgresTaskStore;
pub use sqlite::SqliteTaskStore;

/// A task as stored: its snapshot, the agent hosting it and its last event's sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// The snapshot (full history and artifacts).
    pub task: pb::Task,
    /// The hosting agent's name.
    pub agent: String,
    /// Sequence number of the task's last event (the creation event is 1).
    pub seq: i64,
}

/// This replica's identity as the driver of tasks, and how long its claim on each holds
/// without a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The replica id recorded as the owner.
    pub owner: String,
    /// How long a lease lasts from its last write or renewal.
    pub length: Duration,
}

/// A task whose owner's lease ran out, now claimed (owned, with a fresh lease) by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Abandoned {
    /// The task's tenant.
    pub tenant: String,
    /// The task as stored when it was claimed.
    pub stored: StoredTask,
    /// The replica that owned it.
    pub previous_owner: String,
}

/// What ListTasks asks the store for (already validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    /// Only this agent's tasks.
    pub agent: String,
    /// Only tasks of this context (empty: any).
    pub context_id: String,
    /// Only tasks in this state (0: any).
    pub state: i32,
    /// Only tasks whose status changed at or after this time.
    pub status_after: Option<DateTime<Utc>>,
    /// Start strictly after this position (newest first).
    pub after: Option<crate::domain::cursor::Cursor>,
    /// Most tasks to return.
    pub limit: u32,
}

/// One page of tasks, newest status first, and the number of matching tasks before paging.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// The tasks with their sort positions.
    pub tasks: Vec<(pb::Task, crate::domain::cursor::Cursor)>,
    /// Matching tasks in all pages.
    pub total: i64,
}

/// Result of [`TaskStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The task was stored.
    New,
    /// The message id was already used for this task: nothing was written.
    Existing(String),
}

/// Result of [`TaskStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored with this sequence number.
    At(i64),
    /// Another writer moved the task on (or it was evicted); reload and decide again.
    Conflict,
}

/// Persistence of tasks, events and push configs; every call is scoped to a tenant.
#[async_trait]
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Stores a new task with its creation event (sequence 1) and records `message_id` for it,
    /// in one transaction. When `message_id` is already recorded for `(tenant, agent)`, nothing
    /// is written and the existing task id is returned.
    async fn create(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task: &pb::Task,
        event: &pb::StreamResponse,
    ) -> Result<Created, StoreError> {
        self.create_with_events(tenant, agent, message_id, task, std::slice::from_ref(event))
            .await
    }

    /// [`TaskStore::create`] with the events that followed the creation event (`events[0]`)
    /// already applied to `task`: they are stored as sequence 1, 2, ... and the task at the
    /// last one, in the same transaction.
    async fn create_with_events(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task: &pb::Task,
        events: &[pb::StreamResponse],
    ) -> Result<Created, StoreError>;

    /// Records that `message_id` continued `task_id` (so a retry finds the task).
    async fn record_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task_id: &str,
    ) -> Result<Created, StoreError>;

    /// The task a message id created or continued.
    async fn task_for_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Loads a task.
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<StoredTask>, StoreError>;

    /// Replaces the snapshot and appends `event` as `expected_seq + 1`, if the task is still at
    /// `expected_seq`. `expires_at` is set when the task reached a terminal state.
    async fn append(
        &self,
        tenant: &str,
        id: &str,
        expected_seq: i64,
        task: &pb::Task,
        event: Option<&pb::StreamResponse>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Appended, StoreError> {
        let events = event.map(std::slice::from_ref).unwrap_or_default();
        self.append_events(tenant, id, expected_seq, task, events, expires_at)
            .await
    }

    /// [`TaskStore::append`] of several events at once: stored as `expected_seq + 1, + 2, ...`
    /// with `task` (the snapshot after the last) in one transaction, all or none.
    async fn append_events(
        &self,
        tenant: &str,
        id: &str,
        expected_seq: i64,
        task: &pb::Task,
        events: &[pb::StreamResponse],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Appended, StoreError>;

    /// The task's events after `seq`, in order.
    async fn events_after(
        &self,
        tenant: &str,
        id: &str,
        seq: i64,
    ) -> Result<Vec<(i64, pb::StreamResponse)>, StoreError>;

    /// A page of tasks.
    async fn list(&self, tenant: &str, query: &TaskQuery) -> Result<TaskPage, StoreError>;

    /// How many tasks (of every tenant and agent) are in each state, for the tasks-by-state
    /// gauge; states without tasks are absent.
    async fn count_by_state(&self) -> Result<Vec<(i32, i64)>, StoreError>;

    /// Deletes tasks whose `expires_at` has passed (with their events and configs).
    async fn evict_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Extends the leases of the tasks `ids` that are still this store's [`Lease`] owner's, in
    /// one statement; how many were extended. Nothing without a lease or ids.
    async fn renew_leases(&self, ids: &[String]) -> Result<u64, StoreError>;

    /// Claims at most `limit` tasks still SUBMITTED or WORKING whose lease ran out, whoever
    /// owned them (a lease an older replica left on another state is ignored): each becomes
    /// this store's [`Lease`] owner's with a fresh lease, atomically, so only one replica
    /// claims a task. Nothing without a lease.
    async fn claim_expired(&self, limit: u32) -> Result<Vec<Abandoned>, StoreError>;

    /// Stores a push config (replacing one with the same id) unless the task already has `cap`
    /// other configs; `false` when the cap stopped it.
    async fn put_push_config(
        &self,
        tenant: &str,
        config: &pb::TaskPushNotificationConfig,
        cap: u32,
    ) -> Result<bool, StoreError>;

    /// One push config.
    async fn get_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<Option<pb::TaskPushNotificationConfig>, StoreError>;

    /// A task's push configs, oldest first.
    async fn list_push_configs(
        &self,
        tenant: &str,
        task_id: &str,
    ) -> Result<Vec<pb::TaskPushNotificationConfig>, StoreError>;

    /// Which of `tasks` (tenant, task id) have at least one push config, in one query: push
    /// delivery skips the others without reading each one's configs.
    async fn tasks_with_push_configs(
        &self,
        tasks: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError>;

    /// A page of a task's push configs, oldest first, starting strictly after `after` (its
    /// `status_at_us` is the config's creation time), at most `limit`, each with its position.
    async fn list_push_configs_page(
        &self,
        tenant: &str,
        task_id: &str,
        after: Option<&crate::domain::cursor::Cursor>,
        limit: u32,
    ) -> Result<
        Vec<(
            pb::TaskPushNotificationConfig,
            crate::domain::cursor::Cursor,
        )>,
        StoreError,
    >;

    /// Deletes a push config; `false` when there was none.
    async fn delete_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<bool, StoreError>;
}

/// Writer tasks of a PostgreSQL store: batches commit concurrently on separate connections.
const POSTGRES_WRITERS: usize = 4;

/// The store for a database, with group commit of task writes (see [`GroupCommit`]): one
/// writer on SQLite (which has one writer anyway), a few on PostgreSQL. Must be called on a
/// Tokio runtime. Writes record no owner (see [`open_leased`]).
pub fn open(database: &Database) -> Arc<dyn TaskStore> {
    open_with(database, None)
}

/// [`open`], recording `lease`'s owner on the tasks this replica drives.
pub fn open_leased(database: &Database, lease: Lease) -> Arc<dyn TaskStore> {
    open_with(database, Some(lease))
}

fn open_with(database: &Database, lease: Option<Lease>) -> Arc<dyn TaskStore> {
    match database {
        Database::Postgres(pool) => Arc::new(GroupCommit::new(
            PostgresTaskStore::new(pool.clone()).with_lease(lease),
            POSTGRES_WRITERS,
        )),
        Database::Sqlite(pool) => Arc::new(GroupCommit::new(
            SqliteTaskStore::new(pool.clone()).with_lease(lease),
            1,
        )),
    }
}

/// Whether a replica drives a task in this state (so it holds a lease on it).
pub(crate) fn is_driven(state: i32) -> bool {
    state == pb::TaskState::Submitted as i32 || state == pb::TaskState::Working as i32
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "a2a json",
        reason: e.to_string(),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: "a2a json",
        reason: e.to_string(),
    })
}

/// The status time a task sorts by (its status timestamp, else `fallback`).
pub(crate) fn status_time(task: &pb::Task, fallback: DateTime<Utc>) -> DateTime<Utc> {
    task.status
        .as_ref()
        .and_then(|s| s.timestamp)
        .and_then(|t| t.to_datetime())
        .unwrap_or(fallback)
}

pub(crate) fn state_of(task: &pb::Task) -> i32 {
    task.status.as_ref().map(|s| s.state).unwrap_or_default()
}
