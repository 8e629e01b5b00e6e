//! Generated `lf.a2a.v1` types: prost messages, the tonic client and server, and pbjson
//! ProtoJSON serde impls (see build.rs). Nothing here is written by hand.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

include!(concat!(env!("OUT_DIR"), "/lf.a2a.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/lf.a2a.v1.serde.rs"));
