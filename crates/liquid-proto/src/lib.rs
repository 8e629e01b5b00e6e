//! Generated tonic/prost code for the platform's own contracts under `proto/liquid/`: one module
//! per proto package (`liquid::platform::v1`, ...), re-exported at the top for short paths
//! (`liquid_proto::platform::v1`).
//!
//! Nothing here is written by hand except this file; edit the .proto files instead.

#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

pub use liquid::*;
