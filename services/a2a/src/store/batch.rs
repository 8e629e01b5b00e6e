//! Group commit of task writes.
//!
//! Every new task and every event costs a committed (fsynced) write, and a blocking SendMessage
//! waits for its task's last one; one transaction per write bounds the service at the disk's
//! commit rate. [`GroupCommit`] puts the creates and appends of all concurrent tasks through a
//! few writer tasks, each of which takes whatever has queued up (at most [`MAX_BATCH`]) and
//! writes it in ONE transaction. A caller's future resolves only after the transaction holding
//! its write committed, so what a client is told is exactly as durable as before; only the
//! number of commits drops.
//!
//! Order: a task's writes come from one driver that awaits each before making the next (and a
//! cancel goes through the same optimistic check on the sequence number), writes are applied in
//! queue order within a batch, and a batch sees its own earlier writes, so two writes of one
//! task in one batch chain exactly as two transactions would.
//!
//! Isolation of failures: when a batch fails as a whole (a database error, a deadlock between
//! two replicas' batches), each of its writes is retried in a transaction of its own, so an
//! error reaches only the caller whose write caused it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_a2a::pb;
use liquid_store::StoreError;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{Instrument, info_span};

use super::{
    Abandoned, Appended, Created, StoredTask, TaskPage, TaskQuery, TaskStore, state_of,
    status_time, to_json,
};
use crate::domain::cursor::Cursor;

/// Most writes in one transaction.
pub const MAX_BATCH: usize = 256;

/// A new task, its creation event (sequence 1) and any events that followed it (2, 3, ...),
/// and its message id record, encoded.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The caller's tenant.
    pub tenant: String,
    /// The hosting agent.
    pub agent: String,
    /// The message id (or the task id when ids are not deduplicated).
    pub message_id: String,
    /// The task id.
    pub id: String,
    /// The task's context.
    pub context_id: String,
    /// The task's state.
    pub state: i32,
    /// The status time the task sorts by.
    pub status_at: DateTime<Utc>,
    /// The snapshot after the last event, ProtoJSON.
    pub task: String,
    /// The creation event and the events after it, ProtoJSON; the task is stored at the
    /// sequence number of the last.
    pub events: Vec<String>,
    /// The write time.
    pub now: DateTime<Utc>,
}

impl NewTask {
    /// The sequence number the task is stored at.
    pub fn seq(&self) -> i64 {
        i64::try_from(self.events.len()).unwrap_or(i64::MAX).max(1)
    }
}

/// A snapshot replacing the one at `expected_seq`, with the events that led to it (none, one or
/// several, stored as `expected_seq + 1, + 2, ...`), encoded.
#[derive(Debug, Clone)]
pub struct TaskUpdate {
    /// The caller's tenant.
    pub tenant: String,
    /// The task id.
    pub id: String,
    /// The sequence number the stored task must be at.
    pub expected_seq: i64,
    /// The new state.
    pub state: i32,
    /// The status time the task sorts by.
    pub status_at: DateTime<Utc>,
    /// The new snapshot, ProtoJSON.
    pub task: String,
    /// The events, ProtoJSON, in order.
    pub events: Vec<String>,
    /// Set when the task reached a terminal state.
    pub expires_at: Option<DateTime<Utc>>,
    /// The write time.
    pub now: DateTime<Utc>,
}

impl TaskUpdate {
    /// The sequence number the update stores.
    pub fn next_seq(&self) -> i64 {
        self.expected_seq + i64::try_from(self.events.len()).unwrap_or(i64::MAX)
    }
}

/// One task write.
#[derive(Debug, Clone)]
pub enum Write {
    /// [`TaskStore::create`].
    Create(NewTask),
    /// [`TaskStore::append`].
    Append(TaskUpdate),
}

/// What a [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The result of a create.
    Created(Created),
    /// The result of an append.
    Appended(Appended),
}

impl Write {
    pub(crate) fn create(
        tenant: &str,
        agent: &str,
        message_id: &str,
        task: &pb::Task,
        events: &[pb::StreamResponse],
    ) -> Result<Write, StoreError> {
        let now = Utc::now();
        Ok(Write::Create(NewTask {
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            message_id: message_id.to_owned(),
            id: task.id.clone(),
            context_id: task.context_id.clone(),
            state: state_of(task),
            status_at: status_time(task, now),
            task: to_json(task)?,
            events: events.iter().map(to_json).collect::<Result<_, _>>()?,
            now,
        }))
    }

    pub(crate) fn append(
        tenant: &str,
        id: &str,
        expected_seq: i64,
        task: &pb::Task,
        events: &[pb::StreamResponse],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Write, StoreError> {
        let now = Utc::now();
        Ok(Write::Append(TaskUpdate {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            expected_seq,
            state: state_of(task),
            status_at: status_time(task, now),
            task: to_json(task)?,
            events: events.iter().map(to_json).collect::<Result<_, _>>()?,
            expires_at,
            now,
        }))
    }
}

/// A backend that writes a list of [`Write`]s in one transaction, in order, and returns what
/// each did; an error rolls the whole list back.
#[async_trait]
pub trait BatchWriter: TaskStore {
    /// Writes `writes` in one transaction.
    async fn write_batch(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError>;
}

pub(crate) fn created(mut written: Vec<Written>) -> Result<Created, StoreError> {
    match written.pop() {
        Some(Written::Created(c)) => Ok(c),
        _ => Err(unexpected()),
    }
}

pub(crate) fn appended(mut written: Vec<Written>) -> Result<Appended, StoreError> {
    match written.pop() {
        Some(Written::Appended(a)) => Ok(a),
        _ => Err(unexpected()),
    }
}

fn unexpected() -> StoreError {
    StoreError::Corrupt {
        what: "a2a batch write",
        reason: "the batch returned no result for a write".to_owned(),
    }
}

type Job = (Write, oneshot::Sender<Result<Written, StoreError>>);

/// A [`TaskStore`] whose creates and appends are group-committed by `writers` writer tasks;
/// every other call goes straight to the backend.
pub struct GroupCommit<S> {
    inner: Arc<S>,
    queue: mpsc::Sender<Job>,
}

impl<S> std::fmt::Debug for GroupCommit<S>
where
    S: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: BatchWriter + 'static> GroupCommit<S> {
    /// Wraps `inner` and starts `writers` writer tasks on the current Tokio runtime; they end
    /// when the store is dropped.
    pub fn new(inner: S, writers: usize) -> Self {
        let inner = Arc::new(inner);
        let (queue, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(
                writer(inner.clone(), rx.clone()).instrument(info_span!("a2a_task_writer")),
            );
        }
        GroupCommit { inner, queue }
    }

    async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unreachable {
            role: "database",
            url: String::new(),
            reason: "the a2a task writer stopped".to_owned(),
        };
        self.queue.send((write, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn writer<S: BatchWriter>(store: Arc<S>, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs: Vec<Job> = Vec::new();
        {
            // One writer collects at a time; the others are committing meanwhile.
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let (writes, replies): (Vec<Write>, Vec<_>) = jobs.into_iter().unzip();
        match store.write_batch(&writes).await {
            Ok(results) if results.len() == writes.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(unexpected()));
                }
            }
            Err(error) if writes.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(error));
                }
            }
            Err(_) => {
                // Each write on its own, so only the failing one reports an error.
                for (write, reply) in writes.into_iter().zip(replies) {
                    let result = store
                        .write_batch(std::slice::from_ref(&write))
                        .await
                        .and_then(|mut r| r.pop().ok_or_else(unexpected));
                    let _ = reply.send(result);
                }
            }
        }
    }
}

#[async_trait]
impl<S: BatchWriter + 'static> TaskStore for GroupCommit<S> {
    async fn create_with_events(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task: &pb::Task,
        events: &[pb::StreamResponse],
    ) -> Result<Created, StoreError> {
        let write = Write::create(tenant, agent, message_id, task, events)?;
        created(vec![self.submit(write).await?])
    }

    async fn record_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task_id: &str,
    ) -> Result<Created, StoreError> {
        self.inner
            .record_message(tenant, agent, message_id, task_id)
            .await
    }

    async fn task_for_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.inner.task_for_message(tenant, agent, message_id).await
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Option<StoredTask>, StoreError> {
        self.inner.load(tenant, id).await
    }

    async fn append_events(
        &self,
        tenant: &str,
        id: &str,
        expected_seq: i64,
        task: &pb::Task,
        events: &[pb::StreamResponse],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Appended, StoreError> {
        let write = Write::append(tenant, id, expected_seq, task, events, expires_at)?;
        appended(vec![self.submit(write).await?])
    }

    async fn events_after(
        &self,
        tenant: &str,
        id: &str,
        seq: i64,
    ) -> Result<Vec<(i64, pb::StreamResponse)>, StoreError> {
        self.inner.events_after(tenant, id, seq).await
    }

    async fn list(&self, tenant: &str, query: &TaskQuery) -> Result<TaskPage, StoreError> {
        self.inner.list(tenant, query).await
    }

    async fn count_by_state(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        self.inner.count_by_state().await
    }

    async fn evict_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.evict_expired(now).await
    }

    async fn renew_leases(&self, ids: &[String]) -> Result<u64, StoreError> {
        self.inner.renew_leases(ids).await
    }

    async fn claim_expired(&self, limit: u32) -> Result<Vec<Abandoned>, StoreError> {
        self.inner.claim_expired(limit).await
    }

    async fn put_push_config(
        &self,
        tenant: &str,
        config: &pb::TaskPushNotificationConfig,
        cap: u32,
    ) -> Result<bool, StoreError> {
        self.inner.put_push_config(tenant, config, cap).await
    }

    async fn get_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<Option<pb::TaskPushNotificationConfig>, StoreError> {
        self.inner.get_push_config(tenant, task_id, id).await
    }

    async fn list_push_configs(
        &self,
        tenant: &str,
        task_id: &str,
    ) -> Result<Vec<pb::TaskPushNotificationConfig>, StoreError> {
        self.inner.list_push_configs(tenant, task_id).await
    }

    async fn tasks_with_push_configs(
        &self,
        tasks: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        self.inner.tasks_with_push_configs(tasks).await
    }

    async fn list_push_configs_page(
        &self,
        tenant: &str,
        task_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<(pb::TaskPushNotificationConfig, Cursor)>, StoreError> {
        self.inner
            .list_push_configs_page(tenant, task_id, after, limit)
            .await
    }

    async fn delete_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        self.inner.delete_push_config(tenant, task_id, id).await
    }
}
