//! Pure decision logic of cowork: path syntax, the permission pipeline's seven stages, sandbox
//! states, baseline manifests and change classification, text diffs. Nothing here touches the
//! filesystem, the database or the clock; the edges (`fs`, `store`, `sandbox`, `api`) gather
//! facts and carry decisions out.

pub mod diff;
pub mod manifest;
pub mod path;
pub mod permission;
pub mod state;
