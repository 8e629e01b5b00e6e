//! The task engine: runs executors, keeps every task's state and event log in the store, and
//! serves streams that never miss or reorder events.
//!
//! Writes: one driver per running execution applies the executor's events to the task snapshot
//! and appends them to the log with the next sequence number (optimistic concurrency on the
//! sequence, so a cancel from another replica wins cleanly), then publishes the event on the
//! bus subject `a2a.task.<id>`.
//!
//! Reads: a subscriber first subscribes to that subject, then reads the snapshot (Task and its
//! sequence number), sends the Task, back-fills from the log whatever came after it, and then
//! forwards live events in sequence order, back-filling from the log on any gap and on a
//! periodic poll. Because the log is written before the event is published, this holds across
//! replicas and even when the bus drops a message. A blocking SendMessage whose execution runs
//! on this replica waits on its driver's committed progress instead (still polling the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use liquid_a2a::pb::{self, stream_response::Payload};
use liquid_a2a::timestamp::Timestamp;
use liquid_a2a::{A2aError, EventStream};
use liquid_bus::{EventBus, Headers};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::agents::{AgentExecutor, Execution};
use crate::domain::cursor::Cursor;
use crate::domain::state::{is_cancelable, is_final, is_terminal};
use crate::domain::{AgentEvent, apply_event, trim_history};
use crate::store::{Abandoned, Appended, Created, StoredTask, TaskQuery, TaskStore};

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a task is kept after it reached a terminal state.
    pub task_ttl: Duration,
    /// Most push notification configs per task.
    pub push_configs_per_task: u32,
    /// How often an idle subscriber re-reads the log (covers lost bus messages).
    pub poll_interval: Duration,
    /// ListTasks page size when the request has none.
    pub default_page_size: u32,
    /// Treat a SendMessage whose messageId was seen before (for the tenant and agent) as a
    /// retry of that message (spec §3.3.1 allows it): it returns the task the first one
    /// created or continued and runs nothing.
    pub idempotent_message_ids: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            task_ttl: Duration::from_secs(7 * 24 * 3600),
            push_configs_per_task: 10,
            poll_interval: Duration::from_secs(1),
            default_page_size: 50,
            idempotent_message_ids: true,
        }
    }
}

/// Receives every event the engine writes (push notification delivery, metrics).
pub trait EventObserver: Send + Sync + 'static {
    /// Called after `event` was stored as `seq` for `task`.
    fn observe(&self, tenant: &str, task: &pb::Task, seq: i64, event: &pb::StreamResponse);
}

#[derive(Serialize, Deserialize)]
struct Notification {
    seq: i64,
    event: pb::StreamResponse,
}

fn task_subject(id: &str) -> String {
    format!("a2a.task.{id}")
}

const CANCEL_SUBJECT_PREFIX: &str = "a2a.cancel.";

fn internal(e: impl std::fmt::Display) -> A2aError {
    A2aError::internal(e)
}

/// How SendMessage started.
#[derive(Debug)]
pub enum Started {
    /// The agent answered with a message and no task.
    Message(pb::Message),
    /// A task was created or continued; `task` is its snapshot at `seq`.
    Task {
        /// The snapshot.
        task: pb::Task,
        /// Its sequence number.
        seq: i64,
        /// The task's progress as this replica's driver commits it, when this call started
        /// the execution (see [`TaskEngine::wait_final_started`]).
        progress: Option<Progress>,
    },
}

/// The last snapshot a task's driver committed, with its sequence number: updated only after
/// the write's transaction committed, so whatever a waiter reads from it is durable.
#[derive(Debug, Clone)]
pub struct Progress(watch::Receiver<(i64, pb::Task)>);

/// Most executor events stored in one write.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// Moves the events `rx` already holds into `events` (up to [`MAX_EVENTS_PER_WRITE`]), without
/// waiting for more.
fn take_ready(rx: &mut mpsc::Receiver<AgentEvent>, events: &mut Vec<AgentEvent>) {
    while events.len() < MAX_EVENTS_PER_WRITE {
        match rx.try_recv() {
            Ok(event) => events.push(event),
            Err(_) => return,
        }
    }
}

/// Applies `events` to `task` in order and returns what each logs; stops after one that leaves
/// the task in a terminal state (a terminal task takes no more events).
fn apply_all(task: &mut pb::Task, events: Vec<AgentEvent>) -> Vec<pb::StreamResponse> {
    let mut logged = Vec::with_capacity(events.len());
    for event in events {
        logged.push(apply_event(task, event, Timestamp::now()));
        if is_terminal(task.status.as_ref().map(|s| s.state).unwrap_or_default()) {
            break;
        }
    }
    logged
}

/// Most terminal tasks [`TaskEngine::load`] keeps in memory.
const TERMINAL_CACHE_SIZE: usize = 10_000;
/// Longest a terminal task is served from memory.
const TERMINAL_CACHE_AGE: Duration = Duration::from_secs(60);

/// Tasks in a terminal state, which never change again (a terminal task takes no message, no
/// cancel and no event), so GetTask and the end of a blocking SendMessage skip the database.
/// An entry is dropped before the task's TTL can have deleted it from the store: it lives at
/// most [`TERMINAL_CACHE_AGE`] and never past the terminal status time plus the TTL (the
/// store's `expires_at` is set after that status time, so it is never earlier).
#[derive(Default)]
struct TerminalCache {
    tasks: HashMap<(String, String), (StoredTask, std::time::Instant)>,
}

struct Inner {
    store: Arc<dyn TaskStore>,
    terminal: Mutex<TerminalCache>,
    bus: Arc<dyn EventBus>,
    config: EngineConfig,
    running: Mutex<HashMap<String, CancellationToken>>,
    observers: Mutex<Vec<Arc<dyn EventObserver>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// A task in the running set (whose lease this replica renews) with its execution's token.
/// Dropping it stops the execution and takes the task out of the set, unless a later
/// execution of the same task (the next turn) has taken its place.
struct RunningEntry {
    engine: TaskEngine,
    id: String,
    cancel: CancellationToken,
}

impl Drop for RunningEntry {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Ok(mut running) = self.engine.inner.running.lock()
            && running
                .get(&self.id)
                .is_some_and(CancellationToken::is_cancelled)
        {
            running.remove(&self.id);
        }
    }
}

/// The task engine of one replica. Cheap to clone.
#[derive(Clone)]
pub struct TaskEngine {
    inner: Arc<Inner>,
}

impl TaskEngine {
    /// An engine over `store` and `bus`; background work is tracked by `tracker` and stops on
    /// `shutdown`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        bus: Arc<dyn EventBus>,
        config: EngineConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> TaskEngine {
        TaskEngine {
            inner: Arc::new(Inner {
                store,
                terminal: Mutex::new(TerminalCache::default()),
                bus,
                config,
                running: Mutex::new(HashMap::new()),
                observers: Mutex::new(Vec::new()),
                tracker,
                shutdown,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Adds an observer of stored events.
    pub fn observe(&self, observer: Arc<dyn EventObserver>) {
        if let Ok(mut o) = self.inner.observers.lock() {
            o.push(observer);
        }
    }

    /// Starts the background work: cross-replica cancel signals and TTL eviction.
    pub async fn start_background(&self) -> Result<(), liquid_bus::BusError> {
        let mut cancels = self
            .inner
            .bus
            .subscribe(&format!("{CANCEL_SUBJECT_PREFIX}>"))
            .await?;
        let engine = self.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tracker.spawn(
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = cancels.next() => match message {
                            Some(m) => {
                                let id = m.subject.trim_start_matches(CANCEL_SUBJECT_PREFIX);
                                engine.cancel_local(id);
                            }
                            None => return,
                        },
                    }
                }
            }
            .instrument(info_span!("a2a_cancel_listener")),
        );
        let engine = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let every = (self.inner.config.task_ttl / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.inner.tracker.spawn(
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(every) => {
                            if let Err(error) = engine.inner.store.evict_expired(Utc::now()).await {
                                warn!(%error, "task eviction failed");
                            }
                        }
                    }
                }
            }
            .instrument(info_span!("a2a_task_eviction")),
        );
        Ok(())
    }

    /// The tasks this replica is running (whose leases it renews).
    pub fn running_ids(&self) -> Vec<String> {
        self.inner
            .running
            .lock()
            .map(|running| {
                running
                    .iter()
                    .filter(|(_, token)| !token.is_cancelled())
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails a task this replica claimed because its owner's lease ran out: FAILED with
    /// `reason`, stored, published and observed like any event. `false` when the task moved
    /// on since the claim (its owner is alive after all, or it was canceled): then it is left
    /// alone. A local execution of the task, if any, is stopped.
    pub async fn fail_abandoned(
        &self,
        abandoned: &Abandoned,
        reason: &str,
    ) -> Result<bool, A2aError> {
        let tenant = abandoned.tenant.as_str();
        let mut task = abandoned.stored.task.clone();
        let event = apply_event(
            &mut task,
            AgentEvent::Status {
                state: pb::TaskState::Failed,
                message: Some(crate::agents::agent_text(reason)),
            },
            Timestamp::now(),
        );
        let expires = Some(Utc::now() + self.ttl());
        match self
            .inner
            .store
            .append(
                tenant,
                &task.id,
                abandoned.stored.seq,
                &task,
                Some(&event),
                expires,
            )
            .await
            .map_err(internal)?
        {
            Appended::At(seq) => {
                self.publish(&task.id, seq, &event).await;
                self.notify_observers(tenant, &task, seq, &event);
                self.cancel_local(&task.id);
                Ok(true)
            }
            Appended::Conflict => Ok(false),
        }
    }

    fn cancel_local(&self, task_id: &str) {
        if let Ok(running) = self.inner.running.lock()
            && let Some(token) = running.get(task_id)
        {
            token.cancel();
        }
    }

    /// Loads a task of `tenant` hosted by `agent`.
    pub async fn load(&self, tenant: &str, agent: &str, id: &str) -> Result<StoredTask, A2aError> {
        let cached = self.inner.terminal.lock().ok().and_then(|cache| {
            let (stored, until) = cache.tasks.get(&(tenant.to_owned(), id.to_owned()))?;
            (*until > std::time::Instant::now()).then(|| stored.clone())
        });
        let loaded = match cached {
            Some(t) => Some(t),
            None => {
                let loaded = self.inner.store.load(tenant, id).await.map_err(internal)?;
                if let Some(t) = &loaded {
                    self.remember_terminal(tenant, t);
                }
                loaded
            }
        };
        match loaded {
            Some(t) if t.agent == agent => Ok(t),
            _ => Err(A2aError::TaskNotFound {
                task_id: id.to_owned(),
            }),
        }
    }

    /// Keeps `stored` in the terminal cache when its state is terminal.
    fn remember_terminal(&self, tenant: &str, stored: &StoredTask) {
        let status = stored.task.status.as_ref();
        if !is_terminal(status.map(|s| s.state).unwrap_or_default()) {
            return;
        }
        let Some(at) = status
            .and_then(|s| s.timestamp)
            .and_then(|t| t.to_datetime())
        else {
            return;
        };
        let left = (at + self.ttl() - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(TERMINAL_CACHE_AGE);
        if left.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        if let Ok(mut cache) = self.inner.terminal.lock() {
            if cache.tasks.len() >= TERMINAL_CACHE_SIZE {
                cache.tasks.retain(|_, (_, until)| *until > now);
                if cache.tasks.len() >= TERMINAL_CACHE_SIZE {
                    cache.tasks.clear();
                }
            }
            cache.tasks.insert(
                (tenant.to_owned(), stored.task.id.clone()),
                (stored.clone(), now + left),
            );
        }
    }

    /// Starts work on a message: continues the task it names or creates one, runs the executor
    /// and returns once the executor's first event decided between a task and a direct message.
    /// A message id seen before for this tenant and agent returns that task and runs nothing.
    pub async fn start(
        &self,
        tenant: &str,
        agent: &str,
        executor: Arc<dyn AgentExecutor>,
        mut message: pb::Message,
        push: Option<pb::TaskPushNotificationConfig>,
    ) -> Result<Started, A2aError> {
        let store = &self.inner.store;
        if !message.task_id.is_empty() {
            let stored = self.load(tenant, agent, &message.task_id).await?;
            let mut task = stored.task;
            if !message.context_id.is_empty() && message.context_id != task.context_id {
                return Err(A2aError::invalid_params(
                    "message.contextId does not match the task's context",
                ));
            }
            let dedupe = self.inner.config.idempotent_message_ids;
            if dedupe
                && store
                    .task_for_message(tenant, agent, &message.message_id)
                    .await
                    .map_err(internal)?
                    .is_some_and(|id| id == task.id)
            {
                // A retry of a message this task already took.
                return Ok(Started::Task {
                    task,
                    seq: stored.seq,
                    progress: None,
                });
            }
            if is_terminal(task.status.as_ref().map(|s| s.state).unwrap_or_default()) {
                return Err(A2aError::unsupported(
                    "the task is in a terminal state and takes no more messages",
                ));
            }
            if dedupe
                && let Created::Existing(id) = store
                    .record_message(tenant, agent, &message.message_id, &task.id)
                    .await
                    .map_err(internal)?
                && id == task.id
            {
                // A concurrent retry recorded it first.
                return Ok(Started::Task {
                    task,
                    seq: stored.seq,
                    progress: None,
                });
            }
            if let Some(config) = push {
                self.attach_push(tenant, &task.id, config).await?;
            }
            message.context_id = task.context_id.clone();
            let previous = task.clone();
            task.history.push(message.clone());
            // The task resumes: WORKING is logged before the executor runs, so a blocking
            // caller waits for what this message leads to, not for the state it answered.
            let resumed = apply_event(
                &mut task,
                AgentEvent::Status {
                    state: pb::TaskState::Working,
                    message: None,
                },
                Timestamp::now(),
            );
            let seq = match store
                .append(tenant, &task.id, stored.seq, &task, Some(&resumed), None)
                .await
                .map_err(internal)?
            {
                Appended::At(seq) => seq,
                Appended::Conflict => {
                    return Err(A2aError::internal(
                        "the task changed while it was continued",
                    ));
                }
            };
            self.publish(&task.id, seq, &resumed).await;
            self.notify_observers(tenant, &task, seq, &resumed);
            let execution = Execution {
                tenant: tenant.to_owned(),
                task_id: task.id.clone(),
                context_id: task.context_id.clone(),
                message,
                previous: Some(previous),
            };
            let (tx, rx) = mpsc::channel(64);
            let running = self.spawn_executor(executor, execution, tx);
            let progress = self.spawn_driver(tenant, agent, task.clone(), seq, rx, running);
            return Ok(Started::Task {
                task,
                seq,
                progress: Some(progress),
            });
        }

        let dedupe = self.inner.config.idempotent_message_ids;
        if dedupe
            && let Some(id) = store
                .task_for_message(tenant, agent, &message.message_id)
                .await
                .map_err(internal)?
        {
            let stored = self.load(tenant, agent, &id).await?;
            return Ok(Started::Task {
                task: stored.task,
                seq: stored.seq,
                progress: None,
            });
        }
        let task_id = uuid::Uuid::now_v7().to_string();
        if message.context_id.is_empty() {
            message.context_id = uuid::Uuid::now_v7().to_string();
        }
        message.task_id = task_id.clone();
        let task = pb::Task {
            id: task_id.clone(),
            context_id: message.context_id.clone(),
            status: Some(pb::TaskStatus {
                state: pb::TaskState::Submitted as i32,
                message: None,
                timestamp: Some(Timestamp::now()),
            }),
            artifacts: Vec::new(),
            history: vec![message.clone()],
            metadata: None,
        };
        let execution = Execution {
            tenant: tenant.to_owned(),
            task_id: task_id.clone(),
            context_id: task.context_id.clone(),
            message: message.clone(),
            previous: None,
        };
        let (tx, mut rx) = mpsc::channel(64);
        // Dropped on every way out before the driver takes it: the execution stops and the
        // task leaves the running set.
        let running = self.spawn_executor(executor, execution, tx);
        let first = rx.recv().await;
        if let Some(AgentEvent::Message(mut reply)) = first {
            // A direct reply: no task is kept (its id is not the client's business).
            drop(running);
            reply.task_id.clear();
            reply.context_id = task.context_id.clone();
            return Ok(Started::Message(reply));
        }
        let snapshot = pb::StreamResponse {
            payload: Some(Payload::Task(task.clone())),
        };
        // The events the executor has reported by now are stored with the task, in the
        // creating transaction (one commit for all); later ones go through the driver.
        let mut ready = vec![first.unwrap_or(AgentEvent::Status {
            state: pb::TaskState::Failed,
            message: Some(crate::agents::agent_text("the agent produced no result")),
        })];
        take_ready(&mut rx, &mut ready);
        let mut current = task.clone();
        let mut events = vec![snapshot];
        events.extend(apply_all(&mut current, ready));
        // Without deduplication the task id stands in for the message id, so nothing matches.
        let message_key = if dedupe {
            message.message_id.as_str()
        } else {
            task.id.as_str()
        };
        match store
            .create_with_events(tenant, agent, message_key, &current, &events)
            .await
            .map_err(internal)?
        {
            Created::New => {}
            Created::Existing(id) => {
                drop(running);
                let stored = self.load(tenant, agent, &id).await?;
                return Ok(Started::Task {
                    task: stored.task,
                    seq: stored.seq,
                    progress: None,
                });
            }
        }
        // The config is stored before the first event is published, so its webhook hears
        // about every update of the task.
        if let Some(config) = push {
            self.attach_push(tenant, &task.id, config).await?;
        }
        let mut seq = 0;
        for event in &events {
            seq += 1;
            self.publish(&task.id, seq, event).await;
            self.notify_observers(tenant, &current, seq, event);
        }
        let progress = self.spawn_driver(tenant, agent, current, seq, rx, running);
        // The caller gets the task as created; a stream carries the events after it.
        Ok(Started::Task {
            task,
            seq: 1,
            progress: Some(progress),
        })
    }

    /// Stores a push notification config for a task (a fresh id when it has none), refusing
    /// it when the task already has as many as the per-task cap allows.
    pub async fn attach_push(
        &self,
        tenant: &str,
        task_id: &str,
        mut config: pb::TaskPushNotificationConfig,
    ) -> Result<pb::TaskPushNotificationConfig, A2aError> {
        config.task_id = task_id.to_owned();
        if config.id.is_empty() {
            config.id = uuid::Uuid::now_v7().to_string();
        }
        let cap = self.inner.config.push_configs_per_task;
        if !self
            .inner
            .store
            .put_push_config(tenant, &config, cap)
            .await
            .map_err(internal)?
        {
            return Err(A2aError::invalid_params(format!(
                "a task can have at most {cap} push notification configs"
            )));
        }
        Ok(config)
    }

    fn spawn_executor(
        &self,
        executor: Arc<dyn AgentExecutor>,
        execution: Execution,
        tx: mpsc::Sender<AgentEvent>,
    ) -> RunningEntry {
        let cancel = self.inner.shutdown.child_token();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(execution.task_id.clone(), cancel.clone());
        }
        let entry = RunningEntry {
            engine: self.clone(),
            id: execution.task_id.clone(),
            cancel: cancel.clone(),
        };
        let span = info_span!("a2a_executor", task_id = %execution.task_id);
        self.inner
            .tracker
            .spawn(async move { executor.execute(execution, tx, cancel).await }.instrument(span));
        entry
    }

    /// Runs the task's driver: applies and stores the executor's events in order. The returned
    /// [`Progress`] follows what it committed.
    fn spawn_driver(
        &self,
        tenant: &str,
        agent: &str,
        task: pb::Task,
        seq: i64,
        mut rx: mpsc::Receiver<AgentEvent>,
        running: RunningEntry,
    ) -> Progress {
        let engine = self.clone();
        let tenant = tenant.to_owned();
        let agent = agent.to_owned();
        let (progress, watcher) = watch::channel((seq, task.clone()));
        let span = info_span!("a2a_task_driver", task_id = %task.id);
        self.inner.tracker.spawn(
            async move {
                let mut task = task;
                let mut seq = seq;
                // Whether the execution ended without the task reaching a final state.
                let mut unfinished = false;
                // After each committed write: tell the local waiters, and keep a terminal
                // task for `load` (it never changes again).
                let committed = |task: &pb::Task, seq: i64| {
                    progress.send_replace((seq, task.clone()));
                    engine.remember_terminal(
                        &tenant,
                        &StoredTask {
                            task: task.clone(),
                            agent: agent.clone(),
                            seq,
                        },
                    );
                };
                let state_of =
                    |task: &pb::Task| task.status.as_ref().map(|s| s.state).unwrap_or_default();
                if is_terminal(state_of(&task)) {
                    // Finished in the creating transaction.
                    committed(&task, seq);
                }
                while !is_terminal(state_of(&task)) {
                    let event = tokio::select! {
                        e = rx.recv() => match e {
                            Some(e) => e,
                            None => {
                                unfinished = true;
                                break;
                            }
                        },
                        () = running.cancel.cancelled() => {
                            unfinished = true;
                            break;
                        }
                    };
                    // Whatever else the executor reported meanwhile goes in the same write.
                    let mut events = vec![event];
                    take_ready(&mut rx, &mut events);
                    match engine.write(&tenant, &mut task, &mut seq, events).await {
                        Ok(true) => committed(&task, seq),
                        Ok(false) => break,
                        Err(error) => {
                            warn!(%error, "task event could not be stored");
                            break;
                        }
                    }
                }
                // An execution that is gone (the agent returned early, or this replica is
                // stopping) cannot be resumed elsewhere: the task fails rather than staying
                // WORKING forever. A task canceled meanwhile stays canceled (`write` sees it).
                if unfinished
                    && !is_final(task.status.as_ref().map(|s| s.state).unwrap_or_default())
                {
                    let reason = if engine.inner.shutdown.is_cancelled() {
                        "the service stopped while the task was running"
                    } else {
                        "the agent stopped without a final state"
                    };
                    let failed = AgentEvent::Status {
                        state: pb::TaskState::Failed,
                        message: Some(crate::agents::agent_text(reason)),
                    };
                    match engine
                        .write(&tenant, &mut task, &mut seq, vec![failed])
                        .await
                    {
                        Ok(true) => committed(&task, seq),
                        Ok(false) => {}
                        Err(error) => warn!(%error, "task failure could not be stored"),
                    }
                }
                drop(running);
            }
            .instrument(span),
        );
        Progress(watcher)
    }

    /// Applies and stores events (in one write), retrying on a concurrent write. `Ok(false)`
    /// when the task reached a terminal state elsewhere (canceled) or vanished, so the
    /// execution must stop. Events after one that ends the task are dropped.
    async fn write(
        &self,
        tenant: &str,
        task: &mut pb::Task,
        seq: &mut i64,
        events: Vec<AgentEvent>,
    ) -> Result<bool, A2aError> {
        loop {
            let mut next = task.clone();
            let stream_events = apply_all(&mut next, events.clone());
            let state = next.status.as_ref().map(|s| s.state).unwrap_or_default();
            let expires = is_terminal(state).then(|| Utc::now() + self.ttl());
            match self
                .inner
                .store
                .append_events(tenant, &next.id, *seq, &next, &stream_events, expires)
                .await
                .map_err(internal)?
            {
                Appended::At(n) => {
                    let mut k = *seq;
                    *seq = n;
                    *task = next;
                    for event in &stream_events {
                        k += 1;
                        self.publish(&task.id, k, event).await;
                        self.notify_observers(tenant, task, k, event);
                    }
                    return Ok(true);
                }
                Appended::Conflict => match self
                    .inner
                    .store
                    .load(tenant, &task.id)
                    .await
                    .map_err(internal)?
                {
                    Some(current)
                        if !is_terminal(
                            current
                                .task
                                .status
                                .as_ref()
                                .map(|s| s.state)
                                .unwrap_or_default(),
                        ) =>
                    {
                        *task = current.task;
                        *seq = current.seq;
                    }
                    _ => return Ok(false),
                },
            }
        }
    }

    fn ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.inner.config.task_ttl).unwrap_or(chrono::Duration::days(7))
    }

    async fn publish(&self, task_id: &str, seq: i64, event: &pb::StreamResponse) {
        let body = match serde_json::to_vec(&Notification {
            seq,
            event: event.clone(),
        }) {
            Ok(b) => b,
            Err(error) => {
                warn!(%error, "task event could not be encoded");
                return;
            }
        };
        if let Err(error) = self
            .inner
            .bus
            .publish(&task_subject(task_id), Headers::new(), body.into())
            .await
        {
            // Subscribers back-fill from the log; a lost notification only delays them.
            warn!(%error, task_id, "task event notification failed");
        }
    }

    fn notify_observers(
        &self,
        tenant: &str,
        task: &pb::Task,
        seq: i64,
        event: &pb::StreamResponse,
    ) {
        let observers = self
            .inner
            .observers
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default();
        for o in observers {
            o.observe(tenant, task, seq, event);
        }
    }

    /// The events of a task after `snapshot` (which is sent first), in order, until a terminal
    /// state (or, with `stop_at_interrupted`, an interrupted one). The bus subscription is made
    /// before the log is read, so no event can fall between the two.
    pub async fn follow(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
        stop_at_interrupted: bool,
    ) -> Result<EventStream, A2aError> {
        self.follow_from(tenant, agent, id, stop_at_interrupted, None)
            .await
    }

    /// [`TaskEngine::follow`], starting from a snapshot the caller already holds (the task as
    /// SendStreamingMessage created it, at its sequence number) instead of the current one, so
    /// the stream carries every event after it.
    pub async fn follow_from(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
        stop_at_interrupted: bool,
        snapshot: Option<(pb::Task, i64)>,
    ) -> Result<EventStream, A2aError> {
        let subscription = self
            .inner
            .bus
            .subscribe(&task_subject(id))
            .await
            .map_err(internal)?;
        let stored = match snapshot {
            Some((task, seq)) => StoredTask {
                task,
                agent: agent.to_owned(),
                seq,
            },
            None => self.load(tenant, agent, id).await?,
        };
        let ends = move |state: i32| is_terminal(state) || (stop_at_interrupted && is_final(state));
        let state = stored
            .task
            .status
            .as_ref()
            .map(|s| s.state)
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel::<Result<pb::StreamResponse, A2aError>>(64);
        let first = pb::StreamResponse {
            payload: Some(Payload::Task(stored.task)),
        };
        let store = self.inner.store.clone();
        let poll = self.inner.config.poll_interval;
        let tenant = tenant.to_owned();
        let id = id.to_owned();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(
            async move {
                let _counted = crate::metrics::SubscriberGuard::open();
                if tx.send(Ok(first)).await.is_err() || ends(state) {
                    return;
                }
                let mut subscription = subscription;
                let mut last = stored.seq;
                let mut backfill = true;
                loop {
                    // Back-fill whatever the log has beyond `last` (at the start, after a gap
                    // and when the bus was quiet for a poll interval).
                    if backfill {
                        backfill = false;
                        match store.events_after(&tenant, &id, last).await {
                            Ok(events) => {
                                for (seq, event) in events {
                                    last = seq;
                                    let done =
                                        liquid_a2a::client::event_state(&event).is_some_and(ends);
                                    if tx.send(Ok(event)).await.is_err() || done {
                                        return;
                                    }
                                }
                            }
                            Err(error) => {
                                let _ = tx.send(Err(internal(error))).await;
                                return;
                            }
                        }
                    }
                    // Then wait for the next live event (or the poll interval).
                    let live = tokio::select! {
                        m = subscription.next() => m,
                        () = tokio::time::sleep(poll) => {
                            backfill = true;
                            continue;
                        }
                        () = tx.closed() => return,
                        () = shutdown.cancelled() => return,
                    };
                    let Some(message) = live else { return };
                    let Ok(n) = serde_json::from_slice::<Notification>(&message.payload) else {
                        continue;
                    };
                    if n.seq == last + 1 {
                        last = n.seq;
                        let done = liquid_a2a::client::event_state(&n.event).is_some_and(ends);
                        if tx.send(Ok(n.event)).await.is_err() || done {
                            return;
                        }
                    } else if n.seq > last + 1 {
                        // A gap: the log has what the bus lost.
                        backfill = true;
                    }
                    // Older sequence numbers are duplicates and are skipped.
                }
            }
            .instrument(info_span!("a2a_subscriber")),
        );
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// [`TaskEngine::wait_final`] for a task this call started: when this replica drives it,
    /// the driver's committed snapshots answer without reading the store or subscribing to the
    /// bus. The store is still read every poll interval (a cancel recorded by another replica
    /// whose signal was lost ends the wait as it ends a stream), and once the driver stopped
    /// short of a final state (the task was canceled elsewhere, or a write failed) the wait
    /// goes on from the store like any other.
    pub async fn wait_final_started(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
        progress: Option<Progress>,
    ) -> Result<pb::Task, A2aError> {
        let final_state =
            |task: &pb::Task| is_final(task.status.as_ref().map(|s| s.state).unwrap_or_default());
        if let Some(Progress(mut progress)) = progress {
            loop {
                {
                    let current = progress.borrow_and_update();
                    if final_state(&current.1) {
                        return Ok(current.1.clone());
                    }
                }
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() {
                        // The driver stopped; the loop's check above saw its last commit.
                        let last = progress.borrow().1.clone();
                        if final_state(&last) {
                            return Ok(last);
                        }
                        break;
                    },
                    () = tokio::time::sleep(self.inner.config.poll_interval) => {
                        let stored = self.load(tenant, agent, id).await?;
                        if final_state(&stored.task) {
                            return Ok(stored.task);
                        }
                    }
                }
            }
        }
        self.wait_final(tenant, agent, id).await
    }

    /// Waits until the task reaches a final (terminal or interrupted) state and returns it.
    pub async fn wait_final(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
    ) -> Result<pb::Task, A2aError> {
        let mut events = self.follow(tenant, agent, id, true).await?;
        while let Some(event) = events.next().await {
            event?;
        }
        Ok(self.load(tenant, agent, id).await?.task)
    }

    /// Cancels a task: records CANCELED (unless it is terminal already) and stops its executor
    /// on whichever replica runs it.
    pub async fn cancel(&self, tenant: &str, agent: &str, id: &str) -> Result<pb::Task, A2aError> {
        loop {
            let stored = self.load(tenant, agent, id).await?;
            let state = stored
                .task
                .status
                .as_ref()
                .map(|s| s.state)
                .unwrap_or_default();
            if !is_cancelable(state) {
                return Err(A2aError::TaskNotCancelable {
                    task_id: id.to_owned(),
                });
            }
            let mut task = stored.task;
            let event = apply_event(
                &mut task,
                AgentEvent::Status {
                    state: pb::TaskState::Canceled,
                    message: None,
                },
                Timestamp::now(),
            );
            match self
                .inner
                .store
                .append(
                    tenant,
                    id,
                    stored.seq,
                    &task,
                    Some(&event),
                    Some(Utc::now() + self.ttl()),
                )
                .await
                .map_err(internal)?
            {
                Appended::At(seq) => {
                    self.publish(id, seq, &event).await;
                    self.notify_observers(tenant, &task, seq, &event);
                    self.cancel_local(id);
                    if let Err(error) = self
                        .inner
                        .bus
                        .publish(
                            &format!("{CANCEL_SUBJECT_PREFIX}{id}"),
                            Headers::new(),
                            Default::default(),
                        )
                        .await
                    {
                        warn!(%error, task_id = id, "cancel signal failed");
                    }
                    return Ok(task);
                }
                Appended::Conflict => continue,
            }
        }
    }

    /// ListTasks for one agent.
    pub async fn list(
        &self,
        tenant: &str,
        agent: &str,
        request: &pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, A2aError> {
        let page_size = request
            .page_size
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(self.inner.config.default_page_size);
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                Cursor::decode(&request.page_token)
                    .ok_or_else(|| A2aError::invalid_params("pageToken is not valid"))?,
            )
        };
        let query = TaskQuery {
            agent: agent.to_owned(),
            context_id: request.context_id.clone(),
            state: request.status,
            status_after: request.status_timestamp_after.and_then(|t| t.to_datetime()),
            after,
            limit: page_size + 1,
        };
        let page = self
            .inner
            .store
            .list(tenant, &query)
            .await
            .map_err(internal)?;
        let more = page.tasks.len() > page_size as usize;
        let mut tasks = page.tasks;
        tasks.truncate(page_size as usize);
        let next_page_token = if more {
            tasks.last().map(|(_, c)| c.encode()).unwrap_or_default()
        } else {
            String::new()
        };
        let include_artifacts = request.include_artifacts.unwrap_or(false);
        let tasks = tasks
            .into_iter()
            .map(|(mut t, _)| {
                trim_history(&mut t, request.history_length);
                if !include_artifacts {
                    t.artifacts.clear();
                }
                t
            })
            .collect();
        Ok(pb::ListTasksResponse {
            tasks,
            next_page_token,
            page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
            total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_trait::async_trait;
    use liquid_store::Database;

    use super::*;
    use crate::agents::agent_text;

    /// Answers with a direct message when asked `reply`, otherwise completes a task.
    struct Agent;

    #[async_trait]
    impl AgentExecutor for Agent {
        async fn execute(
            &self,
            execution: Execution,
            events: mpsc::Sender<AgentEvent>,
            _cancel: CancellationToken,
        ) {
            let event = if crate::agents::message_text(&execution.message) == "reply" {
                AgentEvent::Message(agent_text("hello"))
            } else {
                AgentEvent::Status {
                    state: pb::TaskState::Completed,
                    message: None,
                }
            };
            let _ = events.send(event).await;
        }
    }

    /// Entries of the running set, stopped ones included.
    fn entries(engine: &TaskEngine) -> usize {
        engine.inner.running.lock().unwrap().len()
    }

    async fn engine() -> TaskEngine {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        db.migrate(&crate::MIGRATIONS).await.unwrap();
        TaskEngine::new(
            crate::store::open(&db),
            Arc::new(liquid_bus::MemoryBus::new()),
            EngineConfig::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    fn message(id: &str, text: &str) -> pb::Message {
        pb::Message {
            message_id: id.into(),
            role: pb::Role::User as i32,
            parts: agent_text(text).parts,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn no_execution_stays_in_the_running_set_after_it_ended() {
        let engine = engine().await;
        let started = engine
            .start("t", "a", Arc::new(Agent), message("m1", "reply"), None)
            .await
            .unwrap();
        assert!(matches!(started, Started::Message(_)));
        assert_eq!(entries(&engine), 0);

        let Started::Task { task, progress, .. } = engine
            .start("t", "a", Arc::new(Agent), message("m2", "work"), None)
            .await
            .unwrap()
        else {
            panic!("a task was expected");
        };
        let done = engine
            .wait_final_started("t", "a", &task.id, progress)
            .await
            .unwrap();
        assert_eq!(done.status.unwrap().state, pb::TaskState::Completed as i32);
        // The driver leaves the set right after its last write.
        for _ in 0..100 {
            if entries(&engine) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(entries(&engine), 0);
    }
}
