//! The filesystem edge of cowork: descriptor-based resolution confined beneath a root
//! ([`beneath`]), whole-tree copying, hashing and atomic installs ([`tree`]) and file-event
//! change detection ([`watch`]). Decisions are made in `crate::domain`; this module carries them
//! out and gathers the facts they need.

pub mod beneath;
pub mod scan;
pub mod tree;
pub mod watch;
