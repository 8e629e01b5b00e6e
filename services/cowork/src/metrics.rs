//! The cowork service's domain metrics (`liquid_cowork_*`), beside the RED metrics the
//! runtime records. Every series the dashboard (`deploy/grafana/cowork.json`) queries is
//! registered at start-up by [`register`], so it is present in the first scrape.

use crate::domain::permission::Stage;
use crate::domain::state::SandboxState;

/// Gauge: sandboxes by `state` (from the database; every replica reports the same numbers).
pub const SANDBOXES: &str = "liquid_cowork_sandboxes";
/// Counter: permission pipeline denials by `stage`.
pub const DENIALS: &str = "liquid_cowork_permission_denials_total";
/// Counter: permission pipeline decisions that allowed the operation, by `operation`.
pub const ALLOWED: &str = "liquid_cowork_permission_allowed_total";
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
    metrics::counter!(APPLY_CONFLICTS).increment(0);
    metrics::counter!(EXPIRED).increment(0);
    let _ = metrics::histogram!(CREATE_SECONDS);
    let _ = metrics::histogram!(DIFF_SECONDS);
    let _ = metrics::histogram!(APPLY_SECONDS);
}
