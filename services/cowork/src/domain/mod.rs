//! Pure decision logic of cowork: path syntax, the permission pipeline's seven stages, sandbox
//! states, baseline manifests and change classification, text diffs; plans and their graph,
//! decomposition strategies and the offline planner, file patterns, and the agent manager's
//! priorities, back-off and session states. Nothing here touches the filesystem, the
//! database or the clock; the edges (`fs`, `store`, `sandbox`, `api`, the executor) gather
//! facts and carry decisions out.

pub mod decompose;
pub mod diff;
pub mod glob;
pub mod manifest;
pub mod path;
pub mod permission;
pub mod plan;
pub mod schedule;
pub mod state;
