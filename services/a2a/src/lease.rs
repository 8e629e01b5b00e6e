//! Owner leases of running tasks, so a task whose replica died (SIGKILL, lost host) fails
//! instead of staying SUBMITTED or WORKING forever.
//!
//! The store records the driving replica and a lease expiry on every write that leaves a task
//! driven (see [`crate::store`]). Here two background loops run on every replica: one renews
//! the leases of all tasks this replica runs in one statement per interval; the other, at
//! start-up and then every interval, claims tasks whose lease ran out (atomically, so one
//! replica takes each) and fails them through the engine's event path, so the event log,
//! subscribers on every replica and push notifications see the failure. Tasks waiting for the
//! client (input or auth required) hold no lease: whichever replica gets the next message
//! drives them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::engine::TaskEngine;

/// The status message of a task failed because its replica stopped (stable wording: clients
/// and tests may match it).
pub const REPLICA_STOPPED: &str = "the replica running the task stopped";

/// Most tasks claimed in one statement.
const CLAIM_BATCH: u32 = 100;

/// Starts the renewal and recovery loops of `engine`'s store (opened with a lease); the first
/// recovery sweep runs at once.
pub fn spawn(
    engine: &TaskEngine,
    renew_every: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let renewer = engine.clone();
    let stop = shutdown.clone();
    tracker.spawn(
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(renew_every) => {}
                }
                let ids = renewer.running_ids();
                if ids.is_empty() {
                    continue;
                }
                if let Err(error) = renewer.store().renew_leases(&ids).await {
                    warn!(%error, tasks = ids.len(), "task leases could not be renewed");
                }
            }
        }
        .instrument(info_span!("a2a_lease_renewal")),
    );
    let engine = engine.clone();
    tracker.spawn(
        async move {
            loop {
                recover(&engine).await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(renew_every) => {}
                }
            }
        }
        .instrument(info_span!("a2a_task_recovery")),
    );
}

/// Claims and fails every task whose lease ran out, a batch at a time.
async fn recover(engine: &TaskEngine) {
    loop {
        let claimed = match engine.store().claim_expired(CLAIM_BATCH).await {
            Ok(claimed) => claimed,
            Err(error) => {
                warn!(%error, "tasks with expired leases could not be claimed");
                return;
            }
        };
        for abandoned in &claimed {
            let task_id = abandoned.stored.task.id.as_str();
            match engine.fail_abandoned(abandoned, REPLICA_STOPPED).await {
                Ok(true) => {
                    metrics::counter!(crate::metrics::TASKS_RECOVERED).increment(1);
                    warn!(
                        task_id,
                        tenant = %abandoned.tenant,
                        agent = %abandoned.stored.agent,
                        previous_owner = %abandoned.previous_owner,
                        "task failed: the replica running it stopped"
                    );
                }
                // The task moved on after the claim: its owner is alive after all.
                Ok(false) => {}
                // The claim's own lease runs out in turn and a later sweep tries again.
                Err(error) => warn!(%error, task_id, "abandoned task could not be failed"),
            }
        }
        if claimed.len() < CLAIM_BATCH as usize {
            return;
        }
    }
}
