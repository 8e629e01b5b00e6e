//! The cowork service's domain metrics (`liquid_cowork_*`), beside the RED metrics the
//! runtime records. Every series the dashboards (`helm/cowork/dashboards/cowork.json`, and the Helm
//! chart's `helm/cowork/dashboards/cowork.json`) query is registered at start-up by
//! [`register`], so it is present in the first scrape.

use crate::domain::permission::Stage;
use crate::domain::state::SandboxState;

/// Gauge: sandboxes by `state` (from the database; every replica reports the same numbers).
pub const SANDBOXES: &str = "liquid_cowork_sandboxes";
/// Counter: permission pipeline denials by `stage`.
pub const DENIALS: &str = "liquid_cowork_permission_denials_total";
/// Counter: permission pipeline decisions that allowed the operation, by `operation`.
pub const ALLOWED: &str = "liquid_cowork_permission_allowed_total";
/// Counter: changes container commands made to a work copy, by the pipeline's `decision`
/// (`permitted` or `reverted`).
pub const CONTAINER_CHANGES: &str = "liquid_cowork_container_changes_total";
/// Counter: files reported as conflicts by apply or rollback.
pub const APPLY_CONFLICTS: &str = "liquid_cowork_apply_conflicts_total";
/// Histogram: seconds to create a sandbox (copy and hash).
pub const CREATE_SECONDS: &str = "liquid_cowork_sandbox_create_duration_seconds";
/// Histogram: seconds to diff a sandbox.
pub const DIFF_SECONDS: &str = "liquid_cowork_sandbox_diff_duration_seconds";
/// Histogram: seconds to apply a sandbox.
pub const APPLY_SECONDS: &str = "liquid_cowork_sandbox_apply_duration_seconds";
/// Counter: sandboxes the cleanup job expired.
pub const EXPIRED: &str = "liquid_cowork_sandboxes_expired_total";

/// Gauge: sessions by `state` (from the database).
pub const SESSIONS: &str = "liquid_cowork_sessions";
/// Counter: sessions created.
pub const SESSIONS_CREATED: &str = "liquid_cowork_sessions_created_total";
/// Counter: plans made, by `source` (`model`, `offline`).
pub const PLANS: &str = "liquid_cowork_plans_total";
/// Gauge: agents by `state` (from the database).
pub const AGENTS: &str = "liquid_cowork_agents";
/// Gauge: agents waiting in the queue (every tenant).
pub const QUEUE_DEPTH: &str = "liquid_cowork_queue_depth";
/// Gauge: agents alive (running under a lease, every replica).
pub const AGENTS_ALIVE: &str = "liquid_cowork_agents_alive";
/// Gauge: agents running on this replica.
pub const AGENTS_RUNNING_HERE: &str = "liquid_cowork_agents_running_local";
/// Counter: agents declared dead.
pub const AGENTS_DEAD: &str = "liquid_cowork_agents_dead_total";
/// Counter: step retries.
pub const RETRIES: &str = "liquid_cowork_step_retries_total";
/// Histogram: seconds a step's agent ran, by `outcome`.
pub const STEP_SECONDS: &str = "liquid_cowork_step_duration_seconds";

/// Registers every series at zero.
pub fn register() {
    // Install the process-wide recorder first, or these registrations would go nowhere.
    let _ = liquid_kit::metrics::handle();
    for stage in Stage::ALL {
        metrics::counter!(DENIALS, "stage" => stage.as_str()).increment(0);
    }
    for op in ["read", "write", "delete", "list", "execute"] {
        metrics::counter!(ALLOWED, "operation" => op).increment(0);
    }
    for state in SandboxState::ALL {
        metrics::gauge!(SANDBOXES, "state" => state.as_str()).set(0.0);
    }
    for decision in ["permitted", "reverted"] {
        metrics::counter!(CONTAINER_CHANGES, "decision" => decision).increment(0);
    }
    metrics::counter!(APPLY_CONFLICTS).increment(0);
    metrics::counter!(EXPIRED).increment(0);
    let _ = metrics::histogram!(CREATE_SECONDS);
    let _ = metrics::histogram!(DIFF_SECONDS);
    let _ = metrics::histogram!(APPLY_SECONDS);
    for state in crate::domain::schedule::SessionState::ALL {
        metrics::gauge!(SESSIONS, "state" => state.as_str()).set(0.0);
    }
    for state in crate::domain::schedule::AgentState::ALL {
        metrics::gauge!(AGENTS, "state" => state.as_str()).set(0.0);
    }
    for source in ["model", "offline"] {
        metrics::counter!(PLANS, "source" => source).increment(0);
    }
    metrics::counter!(SESSIONS_CREATED).increment(0);
    metrics::gauge!(QUEUE_DEPTH).set(0.0);
    metrics::gauge!(AGENTS_ALIVE).set(0.0);
    metrics::gauge!(AGENTS_RUNNING_HERE).set(0.0);
    metrics::counter!(AGENTS_DEAD).increment(0);
    metrics::counter!(RETRIES).increment(0);
    for outcome in ["succeeded", "failed", "cancelled"] {
        let _ = metrics::histogram!(STEP_SECONDS, "outcome" => outcome);
    }
}
