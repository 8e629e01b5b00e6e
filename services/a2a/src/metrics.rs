//! The a2a service's domain metrics (beside the RED metrics the service host records): tasks
//! by state (counted in the database, so every replica reports the same figure), task state
//! transitions, tasks failed because their replica stopped, live stream subscribers, and push
//! notification deliveries and attempts.
//! Every series is exported at zero from the start, so dashboards see a zero, not a gap.

use std::sync::Arc;
use std::time::Duration;

use liquid_a2a::pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::engine::EventObserver;
use crate::store::TaskStore;

/// Gauge: tasks in the database by `state` (`TASK_STATE_...`).
pub const TASKS: &str = "liquid_a2a_tasks";
/// Counter: task status changes by `state` reached.
pub const TASK_TRANSITIONS: &str = "liquid_a2a_task_transitions_total";
/// Counter: tasks this replica failed because the replica running them stopped (their owner
/// lease ran out; see [`crate::lease`]).
pub const TASKS_RECOVERED: &str = "liquid_a2a_tasks_recovered_total";
/// Gauge: open SendStreamingMessage / SubscribeToTask streams on this replica.
pub const STREAM_SUBSCRIBERS: &str = "liquid_a2a_stream_subscribers";
/// Counter: push notifications by `result` (`delivered` or `failed` after every attempt).
pub const PUSH_DELIVERIES: &str = "liquid_a2a_push_deliveries_total";
/// Counter: single push POSTs by `outcome` (`ok`, `server_error`, `client_error`, `timeout`,
/// `connect_error`, `refused`).
pub const PUSH_ATTEMPTS: &str = "liquid_a2a_push_attempts_total";
/// Histogram: time from a task event to its push notification's final outcome.
pub const PUSH_DELIVERY_SECONDS: &str = "liquid_a2a_push_delivery_duration_seconds";

/// Every task state a gauge series is kept for.
const STATES: [pb::TaskState; 9] = [
    pb::TaskState::Submitted,
    pb::TaskState::Working,
    pb::TaskState::InputRequired,
    pb::TaskState::AuthRequired,
    pb::TaskState::Completed,
    pb::TaskState::Failed,
    pb::TaskState::Canceled,
    pb::TaskState::Rejected,
    pb::TaskState::Unspecified,
];

/// Exports every series at zero.
pub fn register() {
    for state in STATES {
        metrics::gauge!(TASKS, "state" => state.as_str_name()).set(0.0);
        metrics::counter!(TASK_TRANSITIONS, "state" => state.as_str_name()).absolute(0);
    }
    metrics::counter!(TASKS_RECOVERED).absolute(0);
    metrics::gauge!(STREAM_SUBSCRIBERS).set(0.0);
    for result in ["delivered", "failed"] {
        metrics::counter!(PUSH_DELIVERIES, "result" => result).absolute(0);
    }
    for outcome in [
        "ok",
        "server_error",
        "client_error",
        "timeout",
        "connect_error",
        "refused",
    ] {
        metrics::counter!(PUSH_ATTEMPTS, "outcome" => outcome).absolute(0);
    }
}

/// Refreshes the tasks-by-state gauge from the store every `every` until `shutdown`.
pub fn spawn_task_gauge(
    store: Arc<dyn TaskStore>,
    every: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    tracker.spawn(
        async move {
            loop {
                match store.count_by_state().await {
                    Ok(counts) => {
                        for state in STATES {
                            let n = counts
                                .iter()
                                .find(|(s, _)| *s == state as i32)
                                .map_or(0, |(_, n)| *n);
                            metrics::gauge!(TASKS, "state" => state.as_str_name()).set(n as f64);
                        }
                    }
                    Err(error) => warn!(%error, "tasks by state could not be counted"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        }
        .instrument(info_span!("a2a_task_gauge")),
    );
}

/// Counts status changes as the engine stores them.
pub struct TransitionCounter;

impl EventObserver for TransitionCounter {
    fn observe(&self, _tenant: &str, _task: &pb::Task, _seq: i64, event: &pb::StreamResponse) {
        if let Some(pb::stream_response::Payload::StatusUpdate(update)) = &event.payload {
            let state = update
                .status
                .as_ref()
                .and_then(|s| pb::TaskState::try_from(s.state).ok())
                .unwrap_or(pb::TaskState::Unspecified);
            metrics::counter!(TASK_TRANSITIONS, "state" => state.as_str_name()).increment(1);
        }
    }
}

/// Counts one open stream for as long as it lives.
pub struct SubscriberGuard;

impl SubscriberGuard {
    /// Counts a new stream.
    pub fn open() -> SubscriberGuard {
        metrics::gauge!(STREAM_SUBSCRIBERS).increment(1.0);
        SubscriberGuard
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        metrics::gauge!(STREAM_SUBSCRIBERS).decrement(1.0);
    }
}
